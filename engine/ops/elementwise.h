// Small elementwise and reduction ops the model and optimizer glue together with.
#pragma once
#include "engine/ops/declare.h"

// add: out = a + b. accumulate: dst += src (dtypes may differ). scale: t *= alpha. cast: between float dtypes.
// sum_squares: out (1) += Σ x², stat dtype. sum: out (1) = alpha · Σ x.
#define MONTA_OPS_ELEMENTWISE(X)                                                      \
  X(add, out, (Tensor out, const Tensor& a, const Tensor& b), (out, a, b))            \
  X(accumulate, dst, (Tensor dst, const Tensor& src), (dst, src))                     \
  X(scale, t, (Tensor t, double alpha), (t, alpha))                                   \
  X(cast, out, (Tensor out, const Tensor& in), (out, in))                             \
  X(sum_squares, x, (Tensor out, const Tensor& x), (out, x))                          \
  X(sum, x, (Tensor out, const Tensor& x, double alpha), (out, x, alpha))

namespace monta::engine {
MONTA_DECLARE_OPS(MONTA_OPS_ELEMENTWISE)
}  // namespace monta::engine
