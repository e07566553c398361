// Causal scaled-dot-product attention with grouped-query heads: query head a reads KV head a / (A / G);
// scale 1/sqrt(D). Saves the row log-sum-exp so backward recomputes probabilities (flash-attention style).
#pragma once
#include "engine/tensor.h"

namespace monta::engine {
// out (B, S, A, D); lse (B, A, S) dtype stat_dtype(q); q (B, S, A, D); k, v (B, S, G, D).
void attention_forward(Tensor out, Tensor lse, const Tensor& q, const Tensor& k, const Tensor& v, Stream s = nullptr);
// dq, dk, dv overwritten.
void attention_backward(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& lse, Stream s = nullptr);
namespace cpu {
void attention_forward(Tensor out, Tensor lse, const Tensor& q, const Tensor& k, const Tensor& v, Stream s);
void attention_backward(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& lse, Stream s);
}  // namespace cpu
namespace cuda {
void attention_forward(Tensor out, Tensor lse, const Tensor& q, const Tensor& k, const Tensor& v, Stream s);
void attention_backward(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& lse, Stream s);
}  // namespace cuda
}  // namespace monta::engine
