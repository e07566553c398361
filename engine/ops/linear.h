// Linear layers as GEMMs: out = x · wᵀ (weights stored (out_features, in_features), like PyTorch), and the
// batched form for experts, where every expert has the same capacity C so one strided batched GEMM serves.
#pragma once
#include "engine/tensor.h"

namespace monta::engine {
// out (M, O) = x (M, I) · w (O, I)ᵀ; out += instead when accumulate.
void linear_forward(Tensor out, const Tensor& x, const Tensor& w, bool accumulate = false, Stream s = nullptr);
// dx (M, I) = dout · w (overwritten, or += when accumulate_dx); dw (O, I) += doutᵀ · x (parameter: accumulates).
// Either dx or dw may be an empty Tensor to skip it.
void linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                     bool accumulate_dx = false, Stream s = nullptr);
// Batched over experts: out (E, C, O) = x (E, C, I) · w (E, O, I)ᵀ per expert. Same gradient rules.
void expert_linear_forward(Tensor out, const Tensor& x, const Tensor& w, Stream s = nullptr);
void expert_linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                            bool accumulate_dx = false, Stream s = nullptr);
namespace cpu {
void linear_forward(Tensor out, const Tensor& x, const Tensor& w, bool accumulate, Stream s);
void linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, bool accumulate_dx,
                     Stream s);
void expert_linear_forward(Tensor out, const Tensor& x, const Tensor& w, Stream s);
void expert_linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, bool accumulate_dx,
                            Stream s);
}  // namespace cpu
namespace cuda {
void linear_forward(Tensor out, const Tensor& x, const Tensor& w, bool accumulate, Stream s);
void linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, bool accumulate_dx,
                     Stream s);
void expert_linear_forward(Tensor out, const Tensor& x, const Tensor& w, Stream s);
void expert_linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, bool accumulate_dx,
                            Stream s);
}  // namespace cuda
}  // namespace monta::engine
