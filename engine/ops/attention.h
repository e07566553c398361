// Causal scaled-dot-product attention with grouped-query heads: query head a reads KV head a / (A / G);
// scale 1/sqrt(D). Saves the row log-sum-exp so backward recomputes probabilities (flash-attention style).
#pragma once
#include "engine/ops/declare.h"

// attention_forward: out (B, S, A, D); lse (B, A, S) dtype stat_dtype(q); q (B, S, A, D); k, v (B, S, G, D).
// attention_backward: dq, dk, dv overwritten.
#define MONTA_OPS_ATTENTION(X)                                                                                       \
  X(attention_forward, out, (Tensor out, Tensor lse, const Tensor& q, const Tensor& k, const Tensor& v),             \
    (out, lse, q, k, v))                                                                                             \
  X(attention_backward, dout,                                                                                        \
    (Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,          \
     const Tensor& out, const Tensor& lse),                                                                          \
    (dq, dk, dv, dout, q, k, v, out, lse))

namespace monta::engine {
MONTA_DECLARE_OPS(MONTA_OPS_ATTENTION)
}  // namespace monta::engine
