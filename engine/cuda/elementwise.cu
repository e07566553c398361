// CUDA elementwise glue (add, accumulate, scale, cast) and the deterministic two-pass reductions
// (sum_squares, sum): a fixed grid of partial sums, then one block adds them in a fixed order.
#include "engine/cuda/common.cuh"
#include "engine/ops/elementwise.h"

namespace monta::engine::cuda {

static __global__ void add_kernel(void* out, bool out_bf, const void* a, bool a_bf, const void* b, bool b_bf,
                                  int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    st(out, i, out_bf, ld(a, i, a_bf) + ld(b, i, b_bf));
}

// 16-byte vector form of add (all operands of one dtype, 16-byte aligned, n % V == 0): the same f32 math per
// element, so the same bits as add_kernel, at the copy rate instead of 2-byte accesses.
template <class T>
static __global__ void add_vec_kernel(T* __restrict__ out, const T* a, const T* b, int64_t nvec) {
  constexpr int V = Vec16<T>::n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < nvec; i += int64_t(gridDim.x) * blockDim.x) {
    float x[V], y[V];
    load16(a + i * V, x);
    load16(b + i * V, y);
#pragma unroll
    for (int j = 0; j < V; ++j) x[j] = x[j] + y[j];
    store16(out + i * V, x);
  }
}

static bool vec_same(const Tensor& a, const Tensor& b, const Tensor& c) {
  return a.dtype == b.dtype && a.dtype == c.dtype && aligned16(a.data) && aligned16(b.data) && aligned16(c.data) &&
         a.numel() % (16 / int64_t(dtype_size(a.dtype))) == 0;
}

static __global__ void scale_kernel(void* t, bool t_bf, float alpha, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    st(t, i, t_bf, ld(t, i, t_bf) * alpha);
}

static __global__ void cast_kernel(void* out, bool out_bf, const void* in, bool in_bf, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    st(out, i, out_bf, ld(in, i, in_bf));
}

// Pass 1: block b sums its grid-stride share into partial[b]. squares: sum x² instead of x.
static __global__ void partial_sum_kernel(float* partial, const void* x, bool x_bf, int64_t n, bool squares) {
  __shared__ float red[32];
  float acc = 0.f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float v = ld(x, i, x_bf);
    acc += squares ? v * v : v;
  }
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Pass 2: one block of kReduceBlocks threads; out = alpha·Σ partial (+ out when accumulate).
static __global__ void finish_sum_kernel(float* out, const float* partial, float alpha, bool accumulate) {
  __shared__ float red[32];
  float v = block_sum(partial[threadIdx.x], red);
  if (threadIdx.x == 0) out[0] = (accumulate ? out[0] : 0.f) + alpha * v;
}

static void launch_reduce(float* out, const Tensor& x, float alpha, bool squares, bool accumulate, Stream s) {
  cudaStream_t st = stream_of(s);
  float* partial = reduce_scratch(s);
  partial_sum_kernel<<<kReduceBlocks, 256, 0, st>>>(partial, x.data, is_bf16(x), x.numel(), squares);
  MONTA_LAUNCH_CHECK();
  finish_sum_kernel<<<1, kReduceBlocks, 0, st>>>(out, partial, alpha, accumulate);
  MONTA_LAUNCH_CHECK();
}

// out = a + b elementwise; accumulate is add(dst, dst, src) (the same f32 sum and rounding per element).
static void launch_add(Tensor out, const Tensor& a, const Tensor& b, Stream s) {
  const int64_t n = out.numel();
  if (n > 0 && vec_same(out, a, b)) {
    MONTA_FLOAT_TYPES(out.dtype, T, {
      const int64_t nvec = n / Vec16<T>::n;
      add_vec_kernel<T><<<grid_1d(nvec, 256, 132 * 16), 256, 0, stream_of(s)>>>(out.as<T>(), a.as<T>(), b.as<T>(), nvec);
    });
  } else {
    add_kernel<<<grid_1d(n, 256), 256, 0, stream_of(s)>>>(out.data, is_bf16(out), a.data, is_bf16(a), b.data,
                                                          is_bf16(b), n);
  }
  MONTA_LAUNCH_CHECK();
}

void add(Tensor out, const Tensor& a, const Tensor& b, Stream s) {
  need_float(out, "add", "out");
  need_float(a, "add", "a");
  need_float(b, "add", "b");
  launch_add(out, a, b, s);
}

void accumulate(Tensor dst, const Tensor& src, Stream s) {
  need_float(dst, "accumulate", "dst");
  need_float(src, "accumulate", "src");
  launch_add(dst, dst, src, s);
}

void scale(Tensor t, double alpha, Stream s) {
  need_float(t, "scale", "t");
  int64_t n = t.numel();
  scale_kernel<<<grid_1d(n, 256), 256, 0, stream_of(s)>>>(t.data, is_bf16(t), float(alpha), n);
  MONTA_LAUNCH_CHECK();
}

void cast(Tensor out, const Tensor& in, Stream s) {
  need_float(out, "cast", "out");
  need_float(in, "cast", "in");
  int64_t n = out.numel();
  if (out.dtype == in.dtype) {
    CUDA_CHECK(cudaMemcpyAsync(out.data, in.data, out.bytes(), cudaMemcpyDeviceToDevice, stream_of(s)));
    return;
  }
  cast_kernel<<<grid_1d(n, 256), 256, 0, stream_of(s)>>>(out.data, is_bf16(out), in.data, is_bf16(in), n);
  MONTA_LAUNCH_CHECK();
}

void sum_squares(Tensor out, const Tensor& x, Stream s) {
  need_dtype(out, DType::f32, "sum_squares", "out");
  need_float(x, "sum_squares", "x");
  launch_reduce(out.as<float>(), x, 1.f, true, true, s);
}

void sum(Tensor out, const Tensor& x, double alpha, Stream s) {
  need_dtype(out, DType::f32, "sum", "out");
  need_float(x, "sum", "x");
  launch_reduce(out.as<float>(), x, float(alpha), false, false, s);
}

}  // namespace monta::engine::cuda
