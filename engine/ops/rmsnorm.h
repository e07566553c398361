// RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight, over the last dimension.
#pragma once
#include "engine/tensor.h"

namespace monta::engine {
// out (N, H); rstd (N) saved, dtype stat_dtype(x); x (N, H); weight (H).
void rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& x, const Tensor& weight, float eps, Stream s = nullptr);
// dx (N, H) overwritten, or accumulated into with accumulate_dx (a residual stream's gradient: one rounding);
// dweight (H) accumulates.
void rmsnorm_backward(Tensor dx, Tensor dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      const Tensor& rstd, bool accumulate_dx = false, Stream s = nullptr);
namespace cpu {
void rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& x, const Tensor& weight, float eps, Stream s);
void rmsnorm_backward(Tensor dx, Tensor dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      const Tensor& rstd, bool accumulate_dx, Stream s);
}  // namespace cpu
namespace cuda {
void rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& x, const Tensor& weight, float eps, Stream s);
void rmsnorm_backward(Tensor dx, Tensor dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      const Tensor& rstd, bool accumulate_dx, Stream s);
}  // namespace cuda
}  // namespace monta::engine
