// Small elementwise and reduction ops the model and optimizer glue together with.
#pragma once
#include "engine/tensor.h"

namespace monta::engine {
void add(Tensor out, const Tensor& a, const Tensor& b, Stream s = nullptr);        // out = a + b
void accumulate(Tensor dst, const Tensor& src, Stream s = nullptr);               // dst += src (dtypes may differ)
void scale(Tensor t, double alpha, Stream s = nullptr);                           // t *= alpha
void cast(Tensor out, const Tensor& in, Stream s = nullptr);                      // between float dtypes
void sum_squares(Tensor out, const Tensor& x, Stream s = nullptr);               // out (1) += Σ x², stat dtype
void sum(Tensor out, const Tensor& x, double alpha, Stream s = nullptr);          // out (1) = alpha · Σ x
namespace cpu {
void add(Tensor out, const Tensor& a, const Tensor& b, Stream s);
void accumulate(Tensor dst, const Tensor& src, Stream s);
void scale(Tensor t, double alpha, Stream s);
void cast(Tensor out, const Tensor& in, Stream s);
void sum_squares(Tensor out, const Tensor& x, Stream s);
void sum(Tensor out, const Tensor& x, double alpha, Stream s);
}  // namespace cpu
namespace cuda {
void add(Tensor out, const Tensor& a, const Tensor& b, Stream s);
void accumulate(Tensor dst, const Tensor& src, Stream s);
void scale(Tensor t, double alpha, Stream s);
void cast(Tensor out, const Tensor& in, Stream s);
void sum_squares(Tensor out, const Tensor& x, Stream s);
void sum(Tensor out, const Tensor& x, double alpha, Stream s);
}  // namespace cuda
}  // namespace monta::engine
