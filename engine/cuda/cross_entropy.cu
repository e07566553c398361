// CUDA cross-entropy over a vocabulary shard, in the three steps of the header (row max, partial sums,
// finish) plus the backward. One block per row for the row reductions; f32 statistics throughout.
#include "engine/cuda/common.cuh"
#include "engine/ops/cross_entropy.h"

namespace monta::engine::cuda {

template <class T>
static __global__ void rowmax_kernel(float* rowmax, const T* __restrict__ logits, int64_t V) {
  __shared__ float red[32];
  const T* r = logits + blockIdx.x * V;
  float mx = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, to_f(r[v]));
  mx = block_max(mx, red);
  if (threadIdx.x == 0) rowmax[blockIdx.x] = mx;
}

template <class T>
static __global__ void partial_kernel(float* sumexp, float* target_logit, const T* __restrict__ logits,
                                      const float* __restrict__ rowmax, const int32_t* __restrict__ targets,
                                      int64_t vocab_begin, int64_t V) {
  __shared__ float red[32];
  const int64_t n = blockIdx.x;
  const T* r = logits + n * V;
  const float mx = rowmax[n];
  float acc = 0.f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) acc += expf(to_f(r[v]) - mx);
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) {
    sumexp[n] = acc;
    int64_t t = int64_t(targets[n]) - vocab_begin;
    target_logit[n] = (targets[n] >= 0 && t >= 0 && t < V) ? to_f(r[t]) : 0.f;
  }
}

static __global__ void finish_kernel(void* losses, bool l_bf, float* lse, const float* sumexp, const float* rowmax,
                                     const float* target_logit, const int32_t* targets, int64_t N) {
  int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  float l = rowmax[n] + logf(sumexp[n]);
  lse[n] = l;
  st(losses, n, l_bf, targets[n] < 0 ? 0.f : l - target_logit[n]);
}

template <class T>
static __global__ void ce_backward_kernel(T* __restrict__ dlogits, const T* __restrict__ logits,
                                          const int32_t* __restrict__ targets, const float* __restrict__ lse,
                                          int64_t vocab_begin, float scale, int64_t N, int64_t V) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * V; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n = i / V, v = i - n * V;
    int32_t t = targets[n];
    float g = 0.f;
    if (t >= 0) g = scale * (expf(to_f(logits[i]) - lse[n]) - (int64_t(t) - vocab_begin == v ? 1.f : 0.f));
    dlogits[i] = from_f<T>(g);
  }
}

static void rows_of(const Tensor& logits, int64_t* N, int64_t* V) {
  *V = logits.dim(-1);
  *N = *V ? logits.numel() / *V : 0;
}

void logits_rowmax(Tensor rowmax, const Tensor& logits, Stream s) {
  const char* op = "logits_rowmax";
  need_dtype(rowmax, DType::f32, op, "rowmax");
  need_float(logits, op, "logits");
  int64_t N, V;
  rows_of(logits, &N, &V);
  if (N == 0) return;
  MONTA_FLOAT_TYPES(logits.dtype, T,
                    rowmax_kernel<T><<<unsigned(N), 256, 0, stream_of(s)>>>(rowmax.as<float>(), logits.as<T>(), V));
  MONTA_LAUNCH_CHECK();
}

void cross_entropy_partial(Tensor sumexp, Tensor target_logit, const Tensor& logits, const Tensor& rowmax,
                           const Tensor& targets, int64_t vocab_begin, Stream s) {
  const char* op = "cross_entropy_partial";
  need_dtype(sumexp, DType::f32, op, "sumexp");
  need_dtype(target_logit, DType::f32, op, "target_logit");
  need_float(logits, op, "logits");
  need_dtype(rowmax, DType::f32, op, "rowmax");
  need_dtype(targets, DType::i32, op, "targets");
  int64_t N, V;
  rows_of(logits, &N, &V);
  if (N == 0) return;
  MONTA_FLOAT_TYPES(logits.dtype, T, partial_kernel<T><<<unsigned(N), 256, 0, stream_of(s)>>>(
                                         sumexp.as<float>(), target_logit.as<float>(), logits.as<T>(),
                                         rowmax.as<float>(), targets.as<int32_t>(), vocab_begin, V));
  MONTA_LAUNCH_CHECK();
}

void cross_entropy_finish(Tensor losses, Tensor lse, const Tensor& sumexp, const Tensor& rowmax,
                          const Tensor& target_logit, const Tensor& targets, Stream s) {
  const char* op = "cross_entropy_finish";
  need_float(losses, op, "losses");
  need_dtype(lse, DType::f32, op, "lse");
  need_dtype(sumexp, DType::f32, op, "sumexp");
  need_dtype(rowmax, DType::f32, op, "rowmax");
  need_dtype(target_logit, DType::f32, op, "target_logit");
  need_dtype(targets, DType::i32, op, "targets");
  int64_t N = targets.numel();
  if (N == 0) return;
  finish_kernel<<<grid_1d(N, 256), 256, 0, stream_of(s)>>>(losses.data, is_bf16(losses), lse.as<float>(),
                                                           sumexp.as<float>(), rowmax.as<float>(),
                                                           target_logit.as<float>(), targets.as<int32_t>(), N);
  MONTA_LAUNCH_CHECK();
}

void cross_entropy_backward(Tensor dlogits, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int64_t vocab_begin, float scale, Stream s) {
  const char* op = "cross_entropy_backward";
  need_float(dlogits, op, "dlogits");
  need_float(logits, op, "logits");
  need_dtype(targets, DType::i32, op, "targets");
  need_dtype(lse, DType::f32, op, "lse");
  MONTA_CHECK(dlogits.dtype == logits.dtype, "cross_entropy_backward: dlogits and logits must share a dtype");
  int64_t N, V;
  rows_of(logits, &N, &V);
  if (N * V == 0) return;
  MONTA_FLOAT_TYPES(logits.dtype, T, ce_backward_kernel<T><<<grid_1d(N * V, 256), 256, 0, stream_of(s)>>>(
                                         dlogits.as<T>(), logits.as<T>(), targets.as<int32_t>(), lse.as<float>(),
                                         vocab_begin, scale, N, V));
  MONTA_LAUNCH_CHECK();
}

}  // namespace monta::engine::cuda
