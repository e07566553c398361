// CUDA RMSNorm: one block per row with f32 math; the weight gradient is a separate column-owned
// reduction (row ranges summed in a fixed order, then the ranges in a fixed order), so it needs no atomics
// and gives the same bits on every run.
#include <algorithm>

#include "engine/cuda/common.cuh"
#include "engine/ops/rmsnorm.h"

namespace monta::engine::cuda {

template <class T>
static __global__ void rmsnorm_forward_kernel(T* __restrict__ out, float* __restrict__ rstd, const T* __restrict__ x,
                                              const void* __restrict__ w, bool w_bf, float eps, int64_t H) {
  __shared__ float red[32];
  const T* xr = x + blockIdx.x * H;
  T* yr = out + blockIdx.x * H;
  float ss = 0.f;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    float v = to_f(xr[h]);
    ss += v * v;
  }
  ss = block_sum(ss, red);
  float r = rsqrtf(ss / float(H) + eps);
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) yr[h] = from_f<T>(to_f(xr[h]) * r * ld(w, h, w_bf));
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

// dx = r·w·g − x · r³/H · Σ_j w_j g_j x_j
template <class T>
static __global__ void rmsnorm_backward_dx_kernel(T* __restrict__ dx, const T* __restrict__ dout,
                                                  const T* __restrict__ x, const void* __restrict__ w, bool w_bf,
                                                  const float* __restrict__ rstd, int64_t H, bool acc) {
  __shared__ float red[32];
  const T* xr = x + blockIdx.x * H;
  const T* gr = dout + blockIdx.x * H;
  T* dxr = dx + blockIdx.x * H;
  float r = rstd[blockIdx.x];
  float dot = 0.f;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) dot += ld(w, h, w_bf) * to_f(gr[h]) * to_f(xr[h]);
  dot = block_sum(dot, red);
  float c = dot * r * r * r / float(H);
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x)
    dxr[h] = from_f<T>((acc ? to_f(dxr[h]) : 0.f) + (r * ld(w, h, w_bf) * to_f(gr[h]) - to_f(xr[h]) * c));
}

// 16-byte vector paths of the two row kernels (x, out, dout, weight 16-byte aligned, H % V == 0): each
// thread takes whole vectors of its row; the block sum is in a fixed order, so the bits repeat run to run.
template <class T>
static __device__ __forceinline__ void load_w16(const void* w, bool w_bf, int64_t h, float (&f)[Vec16<T>::n]) {
  constexpr int V = Vec16<T>::n;
  if constexpr (V == 8) {
    if (w_bf) {
      load16(static_cast<const bf16*>(w) + h, f);
      return;
    }
  } else {
    if (!w_bf) {
      load16(static_cast<const float*>(w) + h, f);
      return;
    }
  }
#pragma unroll
  for (int j = 0; j < V; ++j) f[j] = ld(w, h + j, w_bf);
}

template <class T>
static __global__ void rmsnorm_forward_vec_kernel(T* __restrict__ out, float* __restrict__ rstd,
                                                  const T* __restrict__ x, const void* __restrict__ w, bool w_bf,
                                                  float eps, int64_t H) {
  constexpr int V = Vec16<T>::n;
  __shared__ float red[32];
  const T* xr = x + blockIdx.x * H;
  T* yr = out + blockIdx.x * H;
  float ss = 0.f;
#pragma unroll 4
  for (int64_t h = threadIdx.x * int64_t(V); h < H; h += int64_t(blockDim.x) * V) {
    float v[V];
    load16(xr + h, v);
#pragma unroll
    for (int j = 0; j < V; ++j) ss += v[j] * v[j];
  }
  ss = block_sum(ss, red);
  float r = rsqrtf(ss / float(H) + eps);
#pragma unroll 4
  for (int64_t h = threadIdx.x * int64_t(V); h < H; h += int64_t(blockDim.x) * V) {
    float v[V], wv[V], o[V];
    load16(xr + h, v);
    load_w16<T>(w, w_bf, h, wv);
#pragma unroll
    for (int j = 0; j < V; ++j) o[j] = v[j] * r * wv[j];
    store16(yr + h, o);
  }
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
}

template <class T>
static __global__ void rmsnorm_backward_dx_vec_kernel(T* __restrict__ dx, const T* __restrict__ dout,
                                                      const T* __restrict__ x, const void* __restrict__ w, bool w_bf,
                                                      const float* __restrict__ rstd, int64_t H, bool acc) {
  constexpr int V = Vec16<T>::n;
  __shared__ float red[32];
  const T* xr = x + blockIdx.x * H;
  const T* gr = dout + blockIdx.x * H;
  T* dxr = dx + blockIdx.x * H;
  float r = rstd[blockIdx.x];
  float dot = 0.f;
#pragma unroll 4
  for (int64_t h = threadIdx.x * int64_t(V); h < H; h += int64_t(blockDim.x) * V) {
    float xv[V], gv[V], wv[V];
    load16(xr + h, xv);
    load16(gr + h, gv);
    load_w16<T>(w, w_bf, h, wv);
#pragma unroll
    for (int j = 0; j < V; ++j) dot += wv[j] * gv[j] * xv[j];
  }
  dot = block_sum(dot, red);
  float c = dot * r * r * r / float(H);
#pragma unroll 4
  for (int64_t h = threadIdx.x * int64_t(V); h < H; h += int64_t(blockDim.x) * V) {
    float xv[V], gv[V], wv[V], o[V];
    load16(xr + h, xv);
    load16(gr + h, gv);
    load_w16<T>(w, w_bf, h, wv);
    if (acc) {
      load16(dxr + h, o);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) o[j] = 0.f;
    }
#pragma unroll
    for (int j = 0; j < V; ++j) o[j] += r * wv[j] * gv[j] - xv[j] * c;
    store16(dxr + h, o);
  }
}

// dweight[h] += Σ_n dout[n,h]·x[n,h]·rstd[n]; block (32, 8) owns 32 columns.
template <class T>
static __global__ void rmsnorm_backward_dw_kernel(float* __restrict__ dweight, const T* __restrict__ dout,
                                                  const T* __restrict__ x, const float* __restrict__ rstd, int64_t N,
                                                  int64_t H) {
  __shared__ float part[8][33];
  int64_t h = blockIdx.x * 32 + threadIdx.x;
  float acc = 0.f;
  if (h < H)
    for (int64_t n = threadIdx.y; n < N; n += 8) acc += to_f(dout[n * H + h]) * to_f(x[n * H + h]) * rstd[n];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && h < H) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) s += part[i][threadIdx.x];
    dweight[h] += s;
  }
}

// Two passes for the weight gradient when H is a multiple of 4: pass 1, block (32, 8) owns 128 columns (4 per
// thread, one 8-byte load for bf16) of one of R row ranges and writes its column sums to partial (R, H); pass 2
// adds the R partials of each column in order. Fixed order throughout, so bit-identical run to run.
constexpr int kDwRowSplits = 16;
__device__ __forceinline__ void load4(const float* p, float (&f)[4]) {
  const float4 u = *reinterpret_cast<const float4*>(p);
  f[0] = u.x; f[1] = u.y; f[2] = u.z; f[3] = u.w;
}
__device__ __forceinline__ void load4(const bf16* p, float (&f)[4]) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  f[0] = __uint_as_float(u.x << 16);
  f[1] = __uint_as_float(u.x & 0xffff0000u);
  f[2] = __uint_as_float(u.y << 16);
  f[3] = __uint_as_float(u.y & 0xffff0000u);
}
template <class T>
static __global__ void rmsnorm_dw_partial_kernel(float* __restrict__ partial, const T* __restrict__ dout,
                                                 const T* __restrict__ x, const float* __restrict__ rstd, int64_t N,
                                                 int64_t H) {
  __shared__ float part[8][32 * 4 + 4];
  const int64_t h0 = (int64_t(blockIdx.x) * 32 + threadIdx.x) * 4;
  const int64_t rows = (N + gridDim.y - 1) / gridDim.y, n0 = int64_t(blockIdx.y) * rows;
  const int64_t n1 = n0 + rows < N ? n0 + rows : N;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  if (h0 < H)
    for (int64_t n = n0 + threadIdx.y; n < n1; n += 8) {
      const float r = rstd[n];
      float g[4], v[4];
      load4(dout + n * H + h0, g);
      load4(x + n * H + h0, v);
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] += g[i] * v[i] * r;
    }
#pragma unroll
  for (int i = 0; i < 4; ++i) part[threadIdx.y][threadIdx.x * 4 + i] = acc[i];
  __syncthreads();
  if (threadIdx.y < 4) {  // 4 rows of 32 threads sum the 8 row lanes of 128 columns, one column each
    const int c = threadIdx.y * 32 + threadIdx.x;
    const int64_t h = int64_t(blockIdx.x) * 128 + c;
    if (h < H) {
      float s = 0.f;
#pragma unroll
      for (int i = 0; i < 8; ++i) s += part[i][c];
      partial[int64_t(blockIdx.y) * H + h] = s;
    }
  }
}

static __global__ void rmsnorm_dw_finish_kernel(float* __restrict__ dweight, const float* __restrict__ partial,
                                                int splits, int64_t H) {
  const int64_t h = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (h >= H) return;
  float s = 0.f;
  for (int r = 0; r < splits; ++r) s += partial[int64_t(r) * H + h];
  dweight[h] += s;
}

static int row_threads(int64_t H) { return H >= 1024 ? 512 : (H >= 256 ? 256 : 128); }
// Vector path: H / V vectors per row, about two per thread for H 8192 bf16 (512 threads), at least 32.
static int row_threads_vec(int64_t nvec) {
  int64_t t = (nvec + 1) / 2;
  t = (t + 31) / 32 * 32;
  return int(t < 32 ? 32 : (t > 512 ? 512 : t));
}

void rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& x, const Tensor& weight, float eps, Stream s) {
  const char* op = "rmsnorm_forward";
  need_float(out, op, "out");
  need_float(x, op, "x");
  need_float(weight, op, "weight");
  need_dtype(rstd, DType::f32, op, "rstd");
  MONTA_CHECK(out.dtype == x.dtype, "rmsnorm_forward: out and x must share a dtype");
  int64_t H = x.dim(-1), N = x.numel() / H;
  if (N == 0) return;
  bool al = aligned16(out.data) && aligned16(x.data) && aligned16(weight.data);
  MONTA_FLOAT_TYPES(x.dtype, T, {
    if (al && H % Vec16<T>::n == 0)
      rmsnorm_forward_vec_kernel<T><<<unsigned(N), row_threads_vec(H / Vec16<T>::n), 0, stream_of(s)>>>(
          out.as<T>(), rstd.as<float>(), x.as<T>(), weight.data, is_bf16(weight), eps, H);
    else
      rmsnorm_forward_kernel<T><<<unsigned(N), row_threads(H), 0, stream_of(s)>>>(
          out.as<T>(), rstd.as<float>(), x.as<T>(), weight.data, is_bf16(weight), eps, H);
  });
  MONTA_LAUNCH_CHECK();
}

void rmsnorm_backward(Tensor dx, Tensor dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      const Tensor& rstd, Write dx_write, Stream s) {
  const char* op = "rmsnorm_backward";
  const bool accumulate_dx = dx_write == Write::accumulate;
  need_float(dx, op, "dx");
  need_float(dout, op, "dout");
  need_float(x, op, "x");
  need_float(weight, op, "weight");
  need_dtype(rstd, DType::f32, op, "rstd");
  MONTA_CHECK(dx.dtype == x.dtype && dout.dtype == x.dtype, "rmsnorm_backward: dx, dout and x must share a dtype");
  int64_t H = x.dim(-1), N = x.numel() / H;
  if (N == 0) return;
  cudaStream_t st = stream_of(s);
  bool al = aligned16(dx.data) && aligned16(dout.data) && aligned16(x.data) && aligned16(weight.data);
  MONTA_FLOAT_TYPES(x.dtype, T, {
    if (al && H % Vec16<T>::n == 0)
      rmsnorm_backward_dx_vec_kernel<T><<<unsigned(N), row_threads_vec(H / Vec16<T>::n), 0, st>>>(
          dx.as<T>(), dout.as<T>(), x.as<T>(), weight.data, is_bf16(weight), rstd.as<float>(), H, accumulate_dx);
    else
      rmsnorm_backward_dx_kernel<T><<<unsigned(N), row_threads(H), 0, st>>>(
          dx.as<T>(), dout.as<T>(), x.as<T>(), weight.data, is_bf16(weight), rstd.as<float>(), H, accumulate_dx);
  });
  MONTA_LAUNCH_CHECK();
  if (!dweight.empty()) {
    need_dtype(dweight, DType::f32, op, "dweight");
    const int splits = int(std::min<int64_t>(kDwRowSplits, std::min<int64_t>(N, kColumnScratchFloats / H)));
    if (H % 4 == 0 && splits >= 2 && aligned16(dout.data) && aligned16(x.data)) {
      float* partial = column_scratch(s);
      MONTA_FLOAT_TYPES(x.dtype, T,
                        rmsnorm_dw_partial_kernel<T><<<dim3(unsigned((H + 127) / 128), unsigned(splits)), dim3(32, 8),
                                                       0, st>>>(partial, dout.as<T>(), x.as<T>(), rstd.as<float>(), N, H));
      MONTA_LAUNCH_CHECK();
      rmsnorm_dw_finish_kernel<<<unsigned((H + 255) / 256), 256, 0, st>>>(dweight.as<float>(), partial, splits, H);
    } else {
      MONTA_FLOAT_TYPES(x.dtype, T, rmsnorm_backward_dw_kernel<T><<<unsigned((H + 31) / 32), dim3(32, 8), 0, st>>>(
                                        dweight.as<float>(), dout.as<T>(), x.as<T>(), rstd.as<float>(), N, H));
    }
    MONTA_LAUNCH_CHECK();
  }
}

}  // namespace monta::engine::cuda
