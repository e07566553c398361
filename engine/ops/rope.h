// Rotary position embedding (Llama "rotate half" convention): for i < D/2 the pair (x[i], x[i + D/2]) is
// rotated by angle s · theta^(-2i/D), s the position in the sequence. In place is allowed (out == x).
#pragma once
#include "engine/ops/declare.h"

// rope_forward: out, x (B, S, heads, D). rope_backward: dx (B, S, heads, D) overwritten: the inverse rotation of dout.
#define MONTA_OPS_ROPE(X)                                                           \
  X(rope_forward, out, (Tensor out, const Tensor& x, float theta), (out, x, theta)) \
  X(rope_backward, dx, (Tensor dx, const Tensor& dout, float theta), (dx, dout, theta))

namespace monta::engine {
MONTA_DECLARE_OPS(MONTA_OPS_ROPE)
}  // namespace monta::engine
