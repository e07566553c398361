// Linear layers as GEMMs: out = x · wᵀ (weights stored (out_features, in_features), like PyTorch), and the
// batched form for experts, where every expert has the same capacity C so one strided batched GEMM serves.
#pragma once
#include "engine/tensor.h"

namespace monta::engine {
// out (M, O) = x (M, I) · w (O, I)ᵀ; out += instead when accumulate.
void linear_forward(Tensor out, const Tensor& x, const Tensor& w, bool accumulate = false, Stream s = nullptr);
// out (M, O) = residual (M, O) + x · wᵀ: a residual connection added by the GEMM itself (its C operand, rounded once
// with the product), so no separate add reads and writes the residual stream again. out may alias residual.
void linear_forward_residual(Tensor out, const Tensor& x, const Tensor& w, const Tensor& residual, Stream s = nullptr);
// dx (M, I) = dout · w (overwritten, or += when accumulate_dx); dw (O, I) += doutᵀ · x (parameter: accumulates),
// or = when accumulate_dw is false: the step's first write of a gradient that is logically zero (ParamStore's lazy
// zeroing), which spares the zero fill and the GEMM's read of the f32 gradient. Either dx or dw may be empty.
void linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                     bool accumulate_dx = false, bool accumulate_dw = true, Stream s = nullptr);
// Batched over experts: out (E, C, O) = x (E, C, I) · w (E, O, I)ᵀ per expert. Same gradient rules.
void expert_linear_forward(Tensor out, const Tensor& x, const Tensor& w, Stream s = nullptr);
void expert_linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                            bool accumulate_dx = false, bool accumulate_dw = true, Stream s = nullptr);
namespace cpu {
void linear_forward(Tensor out, const Tensor& x, const Tensor& w, bool accumulate, Stream s);
void linear_forward_residual(Tensor out, const Tensor& x, const Tensor& w, const Tensor& residual, Stream s);
void linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, bool accumulate_dx,
                     bool accumulate_dw, Stream s);
void expert_linear_forward(Tensor out, const Tensor& x, const Tensor& w, Stream s);
void expert_linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, bool accumulate_dx,
                            bool accumulate_dw, Stream s);
}  // namespace cpu
namespace cuda {
void linear_forward(Tensor out, const Tensor& x, const Tensor& w, bool accumulate, Stream s);
void linear_forward_residual(Tensor out, const Tensor& x, const Tensor& w, const Tensor& residual, Stream s);
void linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, bool accumulate_dx,
                     bool accumulate_dw, Stream s);
void expert_linear_forward(Tensor out, const Tensor& x, const Tensor& w, Stream s);
void expert_linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, bool accumulate_dx,
                            bool accumulate_dw, Stream s);
}  // namespace cuda
}  // namespace monta::engine
