// MoE router pieces: softmax over experts, top-k choice with capacity assignment (token dropping), the
// gather of the chosen probabilities, the Switch/GShard load-balancing loss and the router z-loss.
#pragma once
#include "engine/tensor.h"

namespace monta::engine {
// probs (N, E) = softmax(logits (N, E)) over the last dim.
void softmax_forward(Tensor probs, const Tensor& logits, Stream s = nullptr);
// dlogits (N, E) overwritten.
void softmax_backward(Tensor dlogits, const Tensor& dprobs, const Tensor& probs, Stream s = nullptr);

// Top-k over probs (N, E) (descending; ties to the lower expert id), then capacity: slots of expert e are
// handed out choice-major (all tokens' 1st choices in token order, then all 2nd choices, ...; GShard),
// slot = -1 once `capacity` slots are taken (dropped). expert_idx, slot: i32 (N, K); counts: i32 (E), the
// number of (token, choice) pairs that picked each expert, before dropping.
void router_topk_assign(Tensor expert_idx, Tensor slot, Tensor counts, const Tensor& probs, int64_t capacity,
                        Stream s = nullptr);
// weight (N, K) = probs[n, expert_idx[n, k]].
void topk_weights_forward(Tensor weight, const Tensor& probs, const Tensor& expert_idx, Stream s = nullptr);
// dprobs (N, E) += scatter of dweight (accumulates: the aux losses add to the same dprobs).
void topk_weights_backward(Tensor dprobs, const Tensor& dweight, const Tensor& expert_idx, Stream s = nullptr);

// Switch load-balancing loss: loss (1) = E · Σ_e f_e · P_e, f_e = counts_e / (N · top_k), P_e = mean_n probs[n, e].
// The gradient flows through P only. loss dtype stat_dtype(probs).
void load_balance_loss_forward(Tensor loss, const Tensor& probs, const Tensor& counts, int64_t top_k,
                               Stream s = nullptr);
// dprobs (N, E) += dloss · E · f_e / N.
void load_balance_loss_backward(Tensor dprobs, const Tensor& counts, int64_t top_k, float dloss, Stream s = nullptr);
// Router z-loss: loss (1) = mean_n logsumexp(logits_n)²; lse (N) saved.
void router_z_loss_forward(Tensor loss, Tensor lse, const Tensor& logits, Stream s = nullptr);
// dlogits (N, E) += dloss · 2 · lse_n · probs[n, e] / N.
void router_z_loss_backward(Tensor dlogits, const Tensor& lse, const Tensor& probs, float dloss, Stream s = nullptr);

namespace cpu {
void softmax_forward(Tensor probs, const Tensor& logits, Stream s);
void softmax_backward(Tensor dlogits, const Tensor& dprobs, const Tensor& probs, Stream s);
void router_topk_assign(Tensor expert_idx, Tensor slot, Tensor counts, const Tensor& probs, int64_t capacity, Stream s);
void topk_weights_forward(Tensor weight, const Tensor& probs, const Tensor& expert_idx, Stream s);
void topk_weights_backward(Tensor dprobs, const Tensor& dweight, const Tensor& expert_idx, Stream s);
void load_balance_loss_forward(Tensor loss, const Tensor& probs, const Tensor& counts, int64_t top_k, Stream s);
void load_balance_loss_backward(Tensor dprobs, const Tensor& counts, int64_t top_k, float dloss, Stream s);
void router_z_loss_forward(Tensor loss, Tensor lse, const Tensor& logits, Stream s);
void router_z_loss_backward(Tensor dlogits, const Tensor& lse, const Tensor& probs, float dloss, Stream s);
}  // namespace cpu
namespace cuda {
void softmax_forward(Tensor probs, const Tensor& logits, Stream s);
void softmax_backward(Tensor dlogits, const Tensor& dprobs, const Tensor& probs, Stream s);
void router_topk_assign(Tensor expert_idx, Tensor slot, Tensor counts, const Tensor& probs, int64_t capacity, Stream s);
void topk_weights_forward(Tensor weight, const Tensor& probs, const Tensor& expert_idx, Stream s);
void topk_weights_backward(Tensor dprobs, const Tensor& dweight, const Tensor& expert_idx, Stream s);
void load_balance_loss_forward(Tensor loss, const Tensor& probs, const Tensor& counts, int64_t top_k, Stream s);
void load_balance_loss_backward(Tensor dprobs, const Tensor& counts, int64_t top_k, float dloss, Stream s);
void router_z_loss_forward(Tensor loss, Tensor lse, const Tensor& logits, Stream s);
void router_z_loss_backward(Tensor dlogits, const Tensor& lse, const Tensor& probs, float dloss, Stream s);
}  // namespace cuda
}  // namespace monta::engine
