// CPU rotary position embedding ("rotate half"): the pair (x[i], x[i + D/2]) at position s turns by
// s · theta^(-2i/D); backward turns dout back by the same angle. Each pair is read before it is written,
// so out == x (in place) is allowed.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/ops/rope.h"

namespace monta::engine::cpu {
namespace {

void check_args(const char* op, const Tensor& out, const Tensor& in) {
  MONTA_CHECK(out.device == Device::cpu && in.device == Device::cpu && out.data && in.data,
              std::string(op) + ": tensors must be non-empty CPU tensors, got " + out.str() + ", " + in.str());
  MONTA_CHECK(in.dtype == DType::f32 || in.dtype == DType::f64,
              std::string(op) + ": input must be f32 or f64, got " + in.str());
  MONTA_CHECK(out.dtype == in.dtype, std::string(op) + ": want tensors of one dtype, got " + out.str() + ", " + in.str());
}

// sign +1: forward rotation; -1: the inverse (backward).
template <class T> void rotate(Tensor out, const Tensor& in, double theta, double sign) {
  const int64_t B = in.dim(0), S = in.dim(1), Hd = in.dim(2), D = in.dim(3), half = D / 2;
  const size_t nh = static_cast<size_t>(half);
  std::vector<double> inv_freq(nh), c(nh), s(nh);
  for (int64_t i = 0; i < half; ++i) inv_freq[size_t(i)] = std::pow(theta, -2.0 * double(i) / double(D));
  for (int64_t p = 0; p < S; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(p) * inv_freq[size_t(i)];
      c[size_t(i)] = std::cos(a);
      s[size_t(i)] = sign * std::sin(a);
    }
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < Hd; ++h) {
        const int64_t off = ((b * S + p) * Hd + h) * D;
        const T* x = in.as<T>() + off;
        T* o = out.as<T>() + off;
        for (int64_t i = 0; i < half; ++i) {
          const double x0 = double(x[i]), x1 = double(x[i + half]);
          o[i] = T(x0 * c[size_t(i)] - x1 * s[size_t(i)]);
          o[i + half] = T(x0 * s[size_t(i)] + x1 * c[size_t(i)]);
        }
      }
    }
  }
}

}  // namespace

void rope_forward(Tensor out, const Tensor& x, float theta, Stream) {
  check_args("rope_forward", out, x);
  if (x.dtype == DType::f32)
    rotate<float>(out, x, theta, 1.0);
  else
    rotate<double>(out, x, theta, 1.0);
}

void rope_backward(Tensor dx, const Tensor& dout, float theta, Stream) {
  check_args("rope_backward", dx, dout);
  if (dout.dtype == DType::f32)
    rotate<float>(dx, dout, theta, -1.0);
  else
    rotate<double>(dx, dout, theta, -1.0);
}

}  // namespace monta::engine::cpu
