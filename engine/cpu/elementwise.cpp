// CPU elementwise and reduction glue: add, accumulate (dtypes may differ, e.g. f32 += bf16), scale, cast
// between f32/f64/bf16, and the two scalar reductions the optimizer needs (sum of squares, scaled sum).
// Reductions run in double; equal-dtype paths stay typed loops the compiler vectorizes.
#include <cstdint>
#include <string>

#include "engine/check.h"
#include "engine/ops/elementwise.h"

namespace monta::engine::cpu {
namespace {

bool is_float(DType t) { return t == DType::f32 || t == DType::f64 || t == DType::bf16; }

void need(const char* op, const char* name, const Tensor& t) {
  MONTA_CHECK(t.device == Device::cpu && t.data != nullptr,
              std::string(op) + ": " + name + " must be a non-empty CPU tensor, got " + t.str());
  MONTA_CHECK(is_float(t.dtype), std::string(op) + ": " + name + " must be f32, f64 or bf16, got " + t.str());
}

double load(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::f32: return double(t.as<float>()[i]);
    case DType::f64: return t.as<double>()[i];
    default: return double(bf16_to_float(t.as<bf16_t>()[i]));
  }
}

void store(const Tensor& t, int64_t i, double v) {
  switch (t.dtype) {
    case DType::f32: t.as<float>()[i] = float(v); break;
    case DType::f64: t.as<double>()[i] = v; break;
    default: t.as<bf16_t>()[i] = float_to_bf16(float(v)); break;
  }
}

template <class T> void add_typed(T* out, const T* a, const T* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}
template <class T> void acc_typed(T* dst, const T* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}
template <class T> void scale_typed(T* t, T alpha, int64_t n) {
  for (int64_t i = 0; i < n; ++i) t[i] *= alpha;
}

}  // namespace

void add(Tensor out, const Tensor& a, const Tensor& b, Stream) {
  const char* op = "add";
  need(op, "out", out);
  need(op, "a", a);
  need(op, "b", b);
  MONTA_CHECK(out.dtype == a.dtype && out.dtype == b.dtype && out.dtype != DType::bf16,
              std::string(op) + ": out, a, b must share dtype f32 or f64, got " + out.str() + ", " + a.str() + ", " +
                  b.str());
  if (out.dtype == DType::f32)
    add_typed(out.as<float>(), a.as<float>(), b.as<float>(), out.numel());
  else
    add_typed(out.as<double>(), a.as<double>(), b.as<double>(), out.numel());
}

void accumulate(Tensor dst, const Tensor& src, Stream) {
  const char* op = "accumulate";
  need(op, "dst", dst);
  need(op, "src", src);
  const int64_t n = dst.numel();
  if (dst.dtype == DType::f32 && src.dtype == DType::f32) return acc_typed(dst.as<float>(), src.as<float>(), n);
  if (dst.dtype == DType::f64 && src.dtype == DType::f64) return acc_typed(dst.as<double>(), src.as<double>(), n);
  MONTA_CHECK(dst.dtype != DType::bf16, std::string(op) + ": dst " + dst.str() + " must be f32 or f64 for source " +
                                            src.str());
  for (int64_t i = 0; i < n; ++i) store(dst, i, load(dst, i) + load(src, i));
}

void scale(Tensor t, double alpha, Stream) {
  need("scale", "t", t);
  const int64_t n = t.numel();
  if (t.dtype == DType::f32) return scale_typed(t.as<float>(), float(alpha), n);
  if (t.dtype == DType::f64) return scale_typed(t.as<double>(), alpha, n);
  for (int64_t i = 0; i < n; ++i) store(t, i, load(t, i) * alpha);
}

// bf16 targets round to nearest even from the f32 value (f64 sources are first rounded to f32).
void cast(Tensor out, const Tensor& in, Stream) {
  const char* op = "cast";
  need(op, "out", out);
  need(op, "in", in);
  const int64_t n = out.numel();
  if (out.dtype == in.dtype) {
    if (out.data != in.data)
      for (int64_t i = 0; i < n; ++i) store(out, i, load(in, i));
    return;
  }
  if (out.dtype == DType::bf16 && in.dtype == DType::f32) {
    for (int64_t i = 0; i < n; ++i) out.as<bf16_t>()[i] = float_to_bf16(in.as<float>()[i]);
    return;
  }
  if (out.dtype == DType::f32 && in.dtype == DType::bf16) {
    for (int64_t i = 0; i < n; ++i) out.as<float>()[i] = bf16_to_float(in.as<bf16_t>()[i]);
    return;
  }
  for (int64_t i = 0; i < n; ++i) store(out, i, load(in, i));
}

// A reduction's operands: x and its one-element accumulator out in x's statistics dtype.
static void need_stat_out(const char* op, const Tensor& out, const Tensor& x) {
  need(op, "x", x);
  need(op, "out", out);
  MONTA_CHECK(out.dtype == stat_dtype(x.dtype),
              std::string(op) + ": out must be " + dtype_name(stat_dtype(x.dtype)) + " for x " + x.str() + ", got " +
                  out.str());
}

void sum_squares(Tensor out, const Tensor& x, Stream) {
  const char* op = "sum_squares";
  need_stat_out(op, out, x);
  double s = 0;
  const int64_t n = x.numel();
  if (x.dtype == DType::f32) {
    const float* p = x.as<float>();
    for (int64_t i = 0; i < n; ++i) s += double(p[i]) * double(p[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const double v = load(x, i);
      s += v * v;
    }
  }
  store(out, 0, load(out, 0) + s);
}

void sum(Tensor out, const Tensor& x, double alpha, Stream) {
  const char* op = "sum";
  need_stat_out(op, out, x);
  double s = 0;
  for (int64_t i = 0, n = x.numel(); i < n; ++i) s += load(x, i);
  store(out, 0, alpha * s);
}

}  // namespace monta::engine::cpu
