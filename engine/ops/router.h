// MoE router pieces: softmax over experts, top-k choice with capacity assignment (token dropping), optionally on
// scores shifted by a per-expert balancing bias (DeepSeek-V3), the gather of the chosen probabilities (raw or
// renormalised over the chosen experts), the Switch/GShard load-balancing loss and the router z-loss.
#pragma once
#include "engine/ops/declare.h"

// softmax_forward: probs (N, E) = softmax(logits (N, E)) over the last dim. softmax_backward: dlogits (N, E)
// overwritten.
// router_topk_assign: top-k over probs (N, E) (descending; ties to the lower expert id), then capacity: slots of
// expert e are handed out choice-major (all tokens' 1st choices in token order, then all 2nd choices, ...; GShard),
// slot = -1 once `capacity` slots are taken (dropped). expert_idx, slot: i32 (N, K); counts: i32 (E), the number of
// (token, choice) pairs that picked each expert, before dropping.
// router_topk_assign_biased: the same, the top-k taken over probs[n, e] + bias[e] (bias (E), probs' dtype; the sum in
// f32, or f64 for f64 probs); the bias steers the choice only, it enters no weight and no gradient.
// topk_weights_forward: weight (N, K) = probs[n, expert_idx[n, k]]. topk_weights_backward: dprobs (N, E) += scatter
// of dweight (accumulates: the aux losses add to the same dprobs).
// topk_weights_norm_forward: weight (N, K) = probs[n, expert_idx[n, k]] / S_n, S_n = Σ_j probs[n, expert_idx[n, j]]
// (Mixtral, Qwen). topk_weights_norm_backward: dprobs (N, E) += (dweight[n, k] − Σ_j dweight[n, j] · weight[n, j])
// / S_n at the chosen experts (accumulates, as topk_weights_backward), recomputing the weights from probs.
// load_balance_loss_forward: Switch load-balancing loss, loss (1) = E · Σ_e f_e · P_e, f_e = counts_e / (N · top_k),
// P_e = mean_n probs[n, e]; the gradient flows through P only; loss dtype stat_dtype(probs).
// load_balance_loss_backward: dprobs (N, E) += dloss · E · f_e / N.
// router_z_loss_forward: loss (1) = mean_n logsumexp(logits_n)²; lse (N) saved.
// router_z_loss_backward: dlogits (N, E) += dloss · 2 · lse_n · probs[n, e] / N.
#define MONTA_OPS_ROUTER(X)                                                                                          \
  X(softmax_forward, probs, (Tensor probs, const Tensor& logits), (probs, logits))                                   \
  X(softmax_backward, dlogits, (Tensor dlogits, const Tensor& dprobs, const Tensor& probs), (dlogits, dprobs, probs)) \
  X(router_topk_assign, probs,                                                                                       \
    (Tensor expert_idx, Tensor slot, Tensor counts, const Tensor& probs, int64_t capacity),                          \
    (expert_idx, slot, counts, probs, capacity))                                                                     \
  X(router_topk_assign_biased, probs,                                                                                \
    (Tensor expert_idx, Tensor slot, Tensor counts, const Tensor& probs, const Tensor& bias, int64_t capacity),       \
    (expert_idx, slot, counts, probs, bias, capacity))                                                               \
  X(topk_weights_forward, probs, (Tensor weight, const Tensor& probs, const Tensor& expert_idx),                     \
    (weight, probs, expert_idx))                                                                                     \
  X(topk_weights_backward, dprobs, (Tensor dprobs, const Tensor& dweight, const Tensor& expert_idx),                 \
    (dprobs, dweight, expert_idx))                                                                                   \
  X(topk_weights_norm_forward, probs, (Tensor weight, const Tensor& probs, const Tensor& expert_idx),                \
    (weight, probs, expert_idx))                                                                                     \
  X(topk_weights_norm_backward, dprobs,                                                                              \
    (Tensor dprobs, const Tensor& dweight, const Tensor& probs, const Tensor& expert_idx),                          \
    (dprobs, dweight, probs, expert_idx))                                                                            \
  X(load_balance_loss_forward, probs, (Tensor loss, const Tensor& probs, const Tensor& counts, int64_t top_k),        \
    (loss, probs, counts, top_k))                                                                                    \
  X(load_balance_loss_backward, dprobs, (Tensor dprobs, const Tensor& counts, int64_t top_k, float dloss),           \
    (dprobs, counts, top_k, dloss))                                                                                  \
  X(router_z_loss_forward, logits, (Tensor loss, Tensor lse, const Tensor& logits), (loss, lse, logits))             \
  X(router_z_loss_backward, dlogits, (Tensor dlogits, const Tensor& lse, const Tensor& probs, float dloss),          \
    (dlogits, lse, probs, dloss))

namespace monta::engine {
MONTA_DECLARE_OPS(MONTA_OPS_ROUTER)
}  // namespace monta::engine
