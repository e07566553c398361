// Token permutation between the token order (N, H) and the expert dispatch buffer (E, C, H).
#pragma once
#include "engine/tensor.h"

namespace monta::engine {
// buf (E, C, H): buf[e, c] = x[n] for every (n, k) with expert_idx = e, slot = c >= 0; other slots zero.
void moe_dispatch_forward(Tensor buf, const Tensor& x, const Tensor& expert_idx, const Tensor& slot, Stream s = nullptr);
// dx (N, H) overwritten: dx[n] = Σ_k dbuf[e_k, slot_k] over kept choices.
void moe_dispatch_backward(Tensor dx, const Tensor& dbuf, const Tensor& expert_idx, const Tensor& slot,
                           Stream s = nullptr);
// y (N, H) overwritten: y[n] = residual[n] + Σ_k weight[n, k] · ebuf[e_k, slot_k] over kept choices (dropped: 0);
// residual (N, H), not aliasing y, is optional (empty: 0): the layer's residual connection, added in the same pass.
void moe_combine_forward(Tensor y, const Tensor& ebuf, const Tensor& weight, const Tensor& expert_idx,
                         const Tensor& slot, const Tensor& residual = Tensor(), Stream s = nullptr);
// debuf (E, C, H) overwritten (unused slots zero); dweight (N, K) overwritten (dropped: 0).
void moe_combine_backward(Tensor debuf, Tensor dweight, const Tensor& dy, const Tensor& ebuf, const Tensor& weight,
                          const Tensor& expert_idx, const Tensor& slot, Stream s = nullptr);
namespace cpu {
void moe_dispatch_forward(Tensor buf, const Tensor& x, const Tensor& expert_idx, const Tensor& slot, Stream s);
void moe_dispatch_backward(Tensor dx, const Tensor& dbuf, const Tensor& expert_idx, const Tensor& slot, Stream s);
void moe_combine_forward(Tensor y, const Tensor& ebuf, const Tensor& weight, const Tensor& expert_idx,
                         const Tensor& slot, const Tensor& residual, Stream s);
void moe_combine_backward(Tensor debuf, Tensor dweight, const Tensor& dy, const Tensor& ebuf, const Tensor& weight,
                          const Tensor& expert_idx, const Tensor& slot, Stream s);
}  // namespace cpu
namespace cuda {
void moe_dispatch_forward(Tensor buf, const Tensor& x, const Tensor& expert_idx, const Tensor& slot, Stream s);
void moe_dispatch_backward(Tensor dx, const Tensor& dbuf, const Tensor& expert_idx, const Tensor& slot, Stream s);
void moe_combine_forward(Tensor y, const Tensor& ebuf, const Tensor& weight, const Tensor& expert_idx,
                         const Tensor& slot, const Tensor& residual, Stream s);
void moe_combine_backward(Tensor debuf, Tensor dweight, const Tensor& dy, const Tensor& ebuf, const Tensor& weight,
                          const Tensor& expert_idx, const Tensor& slot, Stream s);
}  // namespace cuda
}  // namespace monta::engine
