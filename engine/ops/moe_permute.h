// Token permutation between the token order (N, H) and the expert dispatch buffer (E, C, H).
#pragma once
#include "engine/ops/declare.h"

// moe_dispatch_forward: buf (E, C, H): buf[e, c] = x[n] for every (n, k) with expert_idx = e, slot = c >= 0; other
// slots zero.
// moe_dispatch_backward: dx (N, H) overwritten: dx[n] = Σ_k dbuf[e_k, slot_k] over kept choices.
// moe_combine_forward: y (N, H) overwritten: y[n] = residual[n] + Σ_k weight[n, k] · ebuf[e_k, slot_k] over kept
// choices (dropped: 0); residual (N, H), not aliasing y, is optional (empty: 0): the layer's residual connection,
// added in the same pass.
// moe_combine_backward: debuf (E, C, H) overwritten (unused slots zero); dweight (N, K) overwritten (dropped: 0).
#define MONTA_OPS_MOE_PERMUTE(X)                                                                                      \
  X(moe_dispatch_forward, buf, (Tensor buf, const Tensor& x, const Tensor& expert_idx, const Tensor& slot),           \
    (buf, x, expert_idx, slot))                                                                                       \
  X(moe_dispatch_backward, dx, (Tensor dx, const Tensor& dbuf, const Tensor& expert_idx, const Tensor& slot),         \
    (dx, dbuf, expert_idx, slot))                                                                                     \
  X(moe_combine_forward, y,                                                                                           \
    (Tensor y, const Tensor& ebuf, const Tensor& weight, const Tensor& expert_idx, const Tensor& slot,                \
     const Tensor& residual MONTA_OR(Tensor())),                                                                      \
    (y, ebuf, weight, expert_idx, slot, residual))                                                                    \
  X(moe_combine_backward, dy,                                                                                         \
    (Tensor debuf, Tensor dweight, const Tensor& dy, const Tensor& ebuf, const Tensor& weight,                        \
     const Tensor& expert_idx, const Tensor& slot),                                                                   \
    (debuf, dweight, dy, ebuf, weight, expert_idx, slot))

namespace monta::engine {
MONTA_DECLARE_OPS(MONTA_OPS_MOE_PERMUTE)
}  // namespace monta::engine
