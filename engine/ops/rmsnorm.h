// RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight, over the last dimension.
#pragma once
#include "engine/ops/declare.h"

// rmsnorm_forward: out (N, H); rstd (N) saved, dtype stat_dtype(x); x (N, H); weight (H).
// rmsnorm_backward: dx (N, H) overwritten, or accumulated into with Write::accumulate (a residual stream's
// gradient: one rounding); dweight (H) accumulates.
#define MONTA_OPS_RMSNORM(X)                                                                                   \
  X(rmsnorm_forward, out, (Tensor out, Tensor rstd, const Tensor& x, const Tensor& weight, float eps),         \
    (out, rstd, x, weight, eps))                                                                              \
  X(rmsnorm_backward, dout,                                                                                    \
    (Tensor dx, Tensor dweight, const Tensor& dout, const Tensor& x, const Tensor& weight, const Tensor& rstd, \
     Write dx_write MONTA_OR(Write::overwrite)),                                                               \
    (dx, dweight, dout, x, weight, rstd, dx_write))

namespace monta::engine {
MONTA_DECLARE_OPS(MONTA_OPS_RMSNORM)
}  // namespace monta::engine
