// CUDA rotary position embedding ("rotate half"). Angles are computed in double: at position s the
// angle is s·theta^(-2i/D), and an f32 angle error grows with s.
#include "engine/cuda/common.cuh"
#include "engine/ops/rope.h"

namespace monta::engine::cuda {

// One thread per (b, s, head, i < D/2). sign = +1 forward rotation, -1 inverse (backward).
template <class T>
static __global__ void rope_kernel(T* out, const T* x, double log_theta, int64_t S, int64_t heads, int64_t D,
                                   int64_t total_pairs, float sign) {
  int64_t half = D / 2;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < total_pairs;
       p += int64_t(gridDim.x) * blockDim.x) {
    int64_t i = p % half;
    int64_t row = p / half;  // (b, s, head)
    int64_t pos = (row / heads) % S;
    double ang = double(pos) * exp(-log_theta * double(2 * i) / double(D));
    double sd, cd;
    sincos(ang, &sd, &cd);
    float c = float(cd), sn = sign * float(sd);
    int64_t base = row * D + i;
    float a = to_f(x[base]), b = to_f(x[base + half]);
    out[base] = from_f<T>(a * c - b * sn);
    out[base + half] = from_f<T>(b * c + a * sn);
  }
}

static void rope_launch(Tensor out, const Tensor& x, float theta, float sign, const char* op, Stream s) {
  need_float(out, op, "out");
  need_float(x, op, "x");
  MONTA_CHECK(out.dtype == x.dtype && same_shape(out, x) && x.ndim == 4,
              std::string(op) + ": out and x must be (B, S, heads, D) of one dtype, got " + out.str() + " " + x.str());
  int64_t S = x.dim(1), heads = x.dim(2), D = x.dim(3);
  MONTA_CHECK(D % 2 == 0, std::string(op) + ": head dim must be even");
  int64_t pairs = x.numel() / 2;
  if (pairs == 0) return;
  MONTA_FLOAT_TYPES(x.dtype, T, rope_kernel<T><<<grid_1d(pairs, 256), 256, 0, stream_of(s)>>>(
                                    out.as<T>(), x.as<T>(), std::log(double(theta)), S, heads, D, pairs, sign));
  MONTA_LAUNCH_CHECK();
}

void rope_forward(Tensor out, const Tensor& x, float theta, Stream s) { rope_launch(out, x, theta, 1.f, "rope_forward", s); }
void rope_backward(Tensor dx, const Tensor& dout, float theta, Stream s) {
  rope_launch(dx, dout, theta, -1.f, "rope_backward", s);
}

}  // namespace monta::engine::cuda
