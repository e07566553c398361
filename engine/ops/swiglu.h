// SwiGLU gate: out = silu(gate) * up, elementwise (the expert FFN's nonlinearity).
#pragma once
#include "engine/tensor.h"

namespace monta::engine {
// out, gate, up: same shape.
void swiglu_forward(Tensor out, const Tensor& gate, const Tensor& up, Stream s = nullptr);
// dgate, dup overwritten.
void swiglu_backward(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up,
                     Stream s = nullptr);
namespace cpu {
void swiglu_forward(Tensor out, const Tensor& gate, const Tensor& up, Stream s);
void swiglu_backward(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up, Stream s);
}  // namespace cpu
namespace cuda {
void swiglu_forward(Tensor out, const Tensor& gate, const Tensor& up, Stream s);
void swiglu_backward(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up, Stream s);
}  // namespace cuda
}  // namespace monta::engine
