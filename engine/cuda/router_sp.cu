// CUDA capacity assignment under sequence parallelism (engine/ops/router_sp.h): the same integer arithmetic as the
// CPU op, one thread per count or per (token, choice), no atomics, so the slots match the CPU's exactly.
#include "engine/cuda/common.cuh"
#include "engine/ops/router_sp.h"

namespace monta::engine::cuda {

// counts[k, e] = #{n : expert_idx[n, k] == e}; one thread per (k, e) walks the tokens.
static __global__ void choice_counts_kernel(int32_t* __restrict__ counts, const int32_t* __restrict__ idx, int64_t N,
                                            int64_t K, int64_t E) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= K * E) return;
  const int64_t k = i / E, e = i - k * E;
  int32_t c = 0;
  for (int64_t n = 0; n < N; ++n) c += idx[n * K + k] == e ? 1 : 0;
  counts[i] = c;
}

// slot[n, k] += the choices before k of the other ranks + the k-th choices of the ranks before this one.
static __global__ void sp_slots_kernel(int32_t* __restrict__ slot, const int32_t* __restrict__ idx,
                                       const int32_t* __restrict__ g, int64_t N, int64_t K, int64_t E, int64_t t,
                                       int64_t rank, int64_t capacity) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= N * K) return;
  const int64_t k = i % K, e = idx[i];
  int64_t s = slot[i];
  for (int64_t kk = 0; kk < k; ++kk)
    for (int64_t r = 0; r < t; ++r) s += r == rank ? 0 : g[(r * K + kk) * E + e];
  for (int64_t r = 0; r < rank; ++r) s += g[(r * K + k) * E + e];
  slot[i] = s < capacity ? int32_t(s) : -1;
}

static __global__ void sp_counts_kernel(int32_t* __restrict__ counts, const int32_t* __restrict__ g, int64_t K,
                                        int64_t E, int64_t t) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= E) return;
  int32_t c = 0;
  for (int64_t r = 0; r < t; ++r)
    for (int64_t k = 0; k < K; ++k) c += g[(r * K + k) * E + e];
  counts[e] = c;
}

void router_choice_counts(Tensor counts, const Tensor& expert_idx, Stream s) {
  const char* op = "router_choice_counts";
  need_dtype(counts, DType::i32, op, "counts");
  need_dtype(expert_idx, DType::i32, op, "expert_idx");
  const int64_t N = expert_idx.dim(0), K = expert_idx.dim(1), E = counts.dim(1);
  if (K * E == 0) return;
  choice_counts_kernel<<<grid_1d(K * E, 128), 128, 0, stream_of(s)>>>(counts.as<int32_t>(), expert_idx.as<int32_t>(),
                                                                       N, K, E);
  MONTA_LAUNCH_CHECK();
}

void router_sp_slots(Tensor slot, Tensor counts, const Tensor& expert_idx, const Tensor& all_counts, int64_t tp_rank,
                     int64_t capacity, Stream s) {
  const char* op = "router_sp_slots";
  need_dtype(slot, DType::i32, op, "slot");
  need_dtype(counts, DType::i32, op, "counts");
  need_dtype(expert_idx, DType::i32, op, "expert_idx");
  need_dtype(all_counts, DType::i32, op, "all_counts");
  const int64_t N = expert_idx.dim(0), K = expert_idx.dim(1), t = all_counts.dim(0), E = all_counts.dim(2);
  cudaStream_t st = stream_of(s);
  if (N * K > 0) {
    sp_slots_kernel<<<grid_1d(N * K, 256), 256, 0, st>>>(slot.as<int32_t>(), expert_idx.as<int32_t>(),
                                                         all_counts.as<int32_t>(), N, K, E, t, tp_rank, capacity);
    MONTA_LAUNCH_CHECK();
  }
  sp_counts_kernel<<<grid_1d(E, 128), 128, 0, st>>>(counts.as<int32_t>(), all_counts.as<int32_t>(), K, E, t);
  MONTA_LAUNCH_CHECK();
}

}  // namespace monta::engine::cuda
