// CUDA rotary position embedding ("rotate half"). Angles are computed in double: at position s the
// angle is s·theta^(-2i/D), and an f32 angle error grows with s.
#include "engine/cuda/common.cuh"
#include "engine/ops/rope.h"

#include <algorithm>

namespace monta::engine::cuda {

// One block per (s, b): the block first computes cos/sin for its position (same double-precision angle as
// before, once per i instead of once per (head, i)) into shared memory, then rotates every head of the row.
// VEC: each thread handles V consecutive i (16-byte loads of x[i..] and x[i+half..]); needs half % V == 0
// and 16-byte aligned x/out. sign = +1 forward rotation, -1 inverse (backward). In place is allowed: each
// element is read and written by the same thread.
template <class T, bool VEC>
static __global__ void rope_kernel(T* out, const T* x, double log_theta, int64_t S, int64_t heads, int64_t D,
                                   float sign) {
  extern __shared__ float cs[];  // cos[half], then sign·sin[half]
  int64_t half = D / 2;
  int64_t pos = blockIdx.x;
  int64_t row0 = (int64_t(blockIdx.y) * S + pos) * heads;  // first (b, s, head) row
  float* cs_c = cs;
  float* cs_s = cs + half;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    double ang = double(pos) * exp(-log_theta * double(2 * i) / double(D));
    double sd, cd;
    sincos(ang, &sd, &cd);
    cs_c[i] = float(cd);
    cs_s[i] = sign * float(sd);
  }
  __syncthreads();
  if constexpr (VEC) {
    constexpr int V = Vec16<T>::n;
    int64_t hv = half / V, work = heads * hv;
    for (int64_t w = threadIdx.x; w < work; w += blockDim.x) {
      int64_t hd = w / hv, i0 = (w - hd * hv) * V;
      int64_t base = (row0 + hd) * D + i0;
      float a[V], b[V], oa[V], ob[V];
      load16(x + base, a);
      load16(x + base + half, b);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float c = cs_c[i0 + j], sn = cs_s[i0 + j];
        oa[j] = a[j] * c - b[j] * sn;
        ob[j] = b[j] * c + a[j] * sn;
      }
      store16(out + base, oa);
      store16(out + base + half, ob);
    }
  } else {
    int64_t work = heads * half;
    for (int64_t w = threadIdx.x; w < work; w += blockDim.x) {
      int64_t hd = w / half, i = w - hd * half;
      int64_t base = (row0 + hd) * D + i;
      float c = cs_c[i], sn = cs_s[i];
      float a = to_f(x[base]), b = to_f(x[base + half]);
      out[base] = from_f<T>(a * c - b * sn);
      out[base + half] = from_f<T>(b * c + a * sn);
    }
  }
}

static void rope_launch(Tensor out, const Tensor& x, float theta, float sign, const char* op, Stream s) {
  need_float(out, op, "out");
  need_float(x, op, "x");
  MONTA_CHECK(out.dtype == x.dtype, std::string(op) + ": out and x must share a dtype, got " + out.str() + " " + x.str());
  int64_t S = x.dim(1), heads = x.dim(2), D = x.dim(3);
  int64_t pairs = x.numel() / 2;
  if (pairs == 0) return;
  int64_t B = x.dim(0), half = D / 2;
  MONTA_CHECK(B <= 65535, std::string(op) + ": batch too large for the grid");
  size_t smem = size_t(2 * half) * sizeof(float);
  MONTA_CHECK(smem <= 48 * 1024, std::string(op) + ": head dim too large");
  dim3 grid{unsigned(S), unsigned(B), 1u};
  cudaStream_t st = stream_of(s);
  double lt = std::log(double(theta));
  MONTA_FLOAT_TYPES(x.dtype, T, {
    bool vec = aligned16(out.data) && aligned16(x.data) && half % Vec16<T>::n == 0;
    int64_t work = heads * (vec ? half / Vec16<T>::n : half);
    int threads = work >= 256 ? 256 : int((std::max<int64_t>(work, half) + 31) / 32 * 32);
    if (threads > 256) threads = 256;
    if (vec)
      rope_kernel<T, true><<<grid, threads, smem, st>>>(out.as<T>(), x.as<T>(), lt, S, heads, D, sign);
    else
      rope_kernel<T, false><<<grid, threads, smem, st>>>(out.as<T>(), x.as<T>(), lt, S, heads, D, sign);
  });
  MONTA_LAUNCH_CHECK();
}

void rope_forward(Tensor out, const Tensor& x, float theta, Stream s) { rope_launch(out, x, theta, 1.f, "rope_forward", s); }
void rope_backward(Tensor dx, const Tensor& dout, float theta, Stream s) {
  rope_launch(dx, dout, theta, -1.f, "rope_backward", s);
}

}  // namespace monta::engine::cuda
