// Rotary position embedding (Llama "rotate half" convention): for i < D/2 the pair (x[i], x[i + D/2]) is
// rotated by angle s · theta^(-2i/D), s the position in the sequence. In place is allowed (out == x).
#pragma once
#include "engine/tensor.h"

namespace monta::engine {
// out, x (B, S, heads, D).
void rope_forward(Tensor out, const Tensor& x, float theta, Stream s = nullptr);
// dx (B, S, heads, D) overwritten: the inverse rotation of dout.
void rope_backward(Tensor dx, const Tensor& dout, float theta, Stream s = nullptr);
namespace cpu {
void rope_forward(Tensor out, const Tensor& x, float theta, Stream s);
void rope_backward(Tensor dx, const Tensor& dout, float theta, Stream s);
}  // namespace cpu
namespace cuda {
void rope_forward(Tensor out, const Tensor& x, float theta, Stream s);
void rope_backward(Tensor dx, const Tensor& dout, float theta, Stream s);
}  // namespace cuda
}  // namespace monta::engine
