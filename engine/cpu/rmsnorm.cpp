// CPU RMSNorm over the last dimension, forward and backward. Sums run in double whatever T is, so the
// reference stays accurate for wide rows; rstd is saved for backward (dtype stat_dtype(x)).
#include <cmath>
#include <cstdint>
#include <string>

#include "engine/check.h"
#include "engine/cpu/check_args.h"
#include "engine/ops/rmsnorm.h"

namespace monta::engine::cpu {
namespace {

void check_x(const char* op, const Tensor& x) {
  MONTA_CHECK(x.dtype == DType::f32 || x.dtype == DType::f64, std::string(op) + ": x must be f32 or f64, got " + x.str());
}

template <class T> void fwd(Tensor out, Tensor rstd, const Tensor& x, const Tensor& weight, double eps) {
  const int64_t H = x.dim(-1), N = x.numel() / H;
  const T* w = weight.as<T>();
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x.as<T>() + n * H;
    T* o = out.as<T>() + n * H;
    double ss = 0;
    for (int64_t h = 0; h < H; ++h) ss += double(xr[h]) * double(xr[h]);
    const double r = 1.0 / std::sqrt(ss / double(H) + eps);
    rstd.as<T>()[n] = T(r);
    for (int64_t h = 0; h < H; ++h) o[h] = T(double(xr[h]) * r * double(w[h]));
  }
}

// y = x·r·w, r = (mean x² + eps)^-1/2:  dx = r·(w∘dy) − x·r³·Σ(w∘dy∘x)/H;  dw += Σ_n dy∘x·r.
template <class T> void bwd(Tensor dx, Tensor dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                            const Tensor& rstd, bool acc) {
  const int64_t H = x.dim(-1), N = x.numel() / H;
  const T* w = weight.as<T>();
  T* dw = dweight.as<T>();
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x.as<T>() + n * H;
    const T* g = dout.as<T>() + n * H;
    T* d = dx.as<T>() + n * H;
    const double r = double(rstd.as<T>()[n]);
    double dot = 0;
    for (int64_t h = 0; h < H; ++h) dot += double(g[h]) * double(w[h]) * double(xr[h]);
    const double c = r * r * r * dot / double(H);
    for (int64_t h = 0; h < H; ++h) {
      const double xh = double(xr[h]), gh = double(g[h]);
      d[h] = T((acc ? double(d[h]) : 0.0) + (r * gh * double(w[h]) - xh * c));
      dw[h] += T(gh * xh * r);
    }
  }
}

}  // namespace

void rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& x, const Tensor& weight, float eps, Stream) {
  const char* op = "rmsnorm_forward";
  check_x(op, x);
  need(op, "x", x, x.dtype);
  need(op, "out", out, x.dtype);
  need(op, "weight", weight, x.dtype);
  need(op, "rstd", rstd, stat_dtype(x.dtype));
  if (x.dtype == DType::f32)
    fwd<float>(out, rstd, x, weight, eps);
  else
    fwd<double>(out, rstd, x, weight, eps);
}

void rmsnorm_backward(Tensor dx, Tensor dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      const Tensor& rstd, Write dx_write, Stream) {
  const char* op = "rmsnorm_backward";
  check_x(op, x);
  need(op, "x", x, x.dtype);
  need(op, "dx", dx, x.dtype);
  need(op, "dout", dout, x.dtype);
  need(op, "weight", weight, x.dtype);
  need(op, "dweight", dweight, x.dtype);
  need(op, "rstd", rstd, stat_dtype(x.dtype));
  if (x.dtype == DType::f32)
    bwd<float>(dx, dweight, dout, x, weight, rstd, dx_write == Write::accumulate);
  else
    bwd<double>(dx, dweight, dout, x, weight, rstd, dx_write == Write::accumulate);
}

}  // namespace monta::engine::cpu
