// Linear layers as GEMMs: out = x · wᵀ (weights stored (out_features, in_features), like PyTorch), and the
// batched form for experts, where every expert has the same capacity C so one strided batched GEMM serves.
#pragma once
#include "engine/ops/declare.h"

// linear_forward: out (M, O) = x (M, I) · w (O, I)ᵀ, or out += with Write::accumulate.
// linear_forward_residual: out (M, O) = residual (M, O) + x · wᵀ: a residual connection added by the GEMM itself (its
// C operand, rounded once with the product), so no separate add reads and writes the residual stream again. out may
// alias residual.
// linear_backward: dx (M, I) = dout · w (overwritten, or += with dx_write accumulate); dw (O, I) += doutᵀ · x
// (parameter: accumulates), or = with dw_write overwrite: the step's first write of a gradient that is logically zero
// (ParamStore's lazy zeroing), which spares the zero fill and the GEMM's read of the f32 gradient. Either dx or dw may
// be empty.
// expert_linear_*: batched over experts, out (E, C, O) = x (E, C, I) · w (E, O, I)ᵀ per expert. Same gradient rules.
#define MONTA_OPS_LINEAR(X)                                                                                          \
  X(linear_forward, out, (Tensor out, const Tensor& x, const Tensor& w, Write write MONTA_OR(Write::overwrite)),      \
    (out, x, w, write))                                                                                              \
  X(linear_forward_residual, out, (Tensor out, const Tensor& x, const Tensor& w, const Tensor& residual),            \
    (out, x, w, residual))                                                                                           \
  X(linear_backward, dout,                                                                                           \
    (Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w,                                     \
     Write dx_write MONTA_OR(Write::overwrite), Write dw_write MONTA_OR(Write::accumulate)),                         \
    (dx, dw, dout, x, w, dx_write, dw_write))                                                                        \
  X(expert_linear_forward, out, (Tensor out, const Tensor& x, const Tensor& w), (out, x, w))                         \
  X(expert_linear_backward, dout,                                                                                    \
    (Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w,                                     \
     Write dx_write MONTA_OR(Write::overwrite), Write dw_write MONTA_OR(Write::accumulate)),                         \
    (dx, dw, dout, x, w, dx_write, dw_write))

namespace monta::engine {
MONTA_DECLARE_OPS(MONTA_OPS_LINEAR)
}  // namespace monta::engine
