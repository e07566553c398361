// SwiGLU gate: out = silu(gate) * up, elementwise (the expert FFN's nonlinearity).
#pragma once
#include "engine/ops/declare.h"

// swiglu_forward: out, gate, up: same shape. swiglu_backward: dgate, dup overwritten.
#define MONTA_OPS_SWIGLU(X)                                                                                   \
  X(swiglu_forward, out, (Tensor out, const Tensor& gate, const Tensor& up), (out, gate, up))                 \
  X(swiglu_backward, dout, (Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up), \
    (dgate, dup, dout, gate, up))

namespace monta::engine {
MONTA_DECLARE_OPS(MONTA_OPS_SWIGLU)
}  // namespace monta::engine
