// CUDA MoE router pieces (the biased top-k and the renormalised weights beside the plain ones). Capacity assignment
// is exact and deterministic: one block per expert walks the (token, choice) pairs in choice-major order and hands
// out slots with a block-wide prefix count (ballot + popc per warp, then the warp totals), so slot numbers never
// depend on scheduling.
#include "engine/cuda/common.cuh"
#include "engine/ops/router.h"

namespace monta::engine::cuda {

constexpr int kMaxTopK = 8;

// One warp per row: probs = softmax(logits).
static __global__ void softmax_forward_kernel(void* probs, bool p_bf, const void* logits, bool l_bf, int64_t N,
                                              int64_t E) {
  int64_t n = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  int lane = threadIdx.x & 31;
  if (n >= N) return;
  const int64_t o = n * E;
  float mx = -INFINITY;
  for (int64_t e = lane; e < E; e += 32) mx = fmaxf(mx, ld(logits, o + e, l_bf));
  mx = warp_max(mx);
  float sum = 0.f;
  for (int64_t e = lane; e < E; e += 32) sum += expf(ld(logits, o + e, l_bf) - mx);
  sum = warp_sum(sum);
  float inv = 1.f / sum;
  for (int64_t e = lane; e < E; e += 32) st(probs, o + e, p_bf, expf(ld(logits, o + e, l_bf) - mx) * inv);
}

// dlogits = p · (dp − Σ dp·p)
static __global__ void softmax_backward_kernel(void* dlogits, bool dl_bf, const void* dprobs, bool dp_bf,
                                               const void* probs, bool p_bf, int64_t N, int64_t E) {
  int64_t n = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  int lane = threadIdx.x & 31;
  if (n >= N) return;
  const int64_t o = n * E;
  float dot = 0.f;
  for (int64_t e = lane; e < E; e += 32) dot += ld(dprobs, o + e, dp_bf) * ld(probs, o + e, p_bf);
  dot = warp_sum(dot);
  for (int64_t e = lane; e < E; e += 32)
    st(dlogits, o + e, dl_bf, ld(probs, o + e, p_bf) * (ld(dprobs, o + e, dp_bf) - dot));
}

// One thread per token: top-k experts by probs (+ bias, when not null: summed in f32 as the CPU does), descending,
// ties to the lower id.
static __global__ void topk_kernel(int32_t* __restrict__ expert_idx, const void* probs, bool p_bf, const void* bias,
                                   bool b_bf, int64_t N, int64_t E, int K) {
  int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  int chosen[kMaxTopK];
  for (int k = 0; k < K; ++k) {
    int best = -1;
    float bv = 0.f;
    for (int64_t e = 0; e < E; ++e) {
      bool taken = false;
      for (int j = 0; j < k; ++j) taken |= (chosen[j] == int(e));
      if (taken) continue;
      float v = ld(probs, n * E + e, p_bf);
      if (bias) v = __fadd_rn(v, ld(bias, e, b_bf));
      if (best < 0 || v > bv) {
        best = int(e);
        bv = v;
      }
    }
    chosen[k] = best;
    expert_idx[n * K + k] = best;
  }
}

// One block (1024 threads) per expert e: positions p = k·N + n in order; slot = number of earlier positions
// that chose e, or -1 at/after capacity. counts[e] = total.
static __global__ void assign_slots_kernel(int32_t* __restrict__ slot, int32_t* __restrict__ counts,
                                           const int32_t* __restrict__ expert_idx, int64_t N, int K,
                                           int64_t capacity) {
  __shared__ int warp_tot[32];
  const int e = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int64_t total = N * K;
  int64_t running = 0;
  for (int64_t base = 0; base < total; base += blockDim.x) {
    int64_t p = base + threadIdx.x;
    int64_t n = 0, k = 0;
    bool mine = false;
    if (p < total) {
      k = p / N;
      n = p - k * N;
      mine = expert_idx[n * K + k] == e;
    }
    unsigned ball = __ballot_sync(0xffffffffu, mine);
    int before_in_warp = __popc(ball & ((1u << lane) - 1u));
    if (lane == 0) warp_tot[warp] = __popc(ball);
    __syncthreads();
    int before_warps = 0, chunk = 0;
    for (int w = 0; w < nw; ++w) {
      int t = warp_tot[w];
      before_warps += (w < warp) ? t : 0;
      chunk += t;
    }
    if (mine) {
      int64_t sl = running + before_warps + before_in_warp;
      slot[n * K + k] = sl < capacity ? int32_t(sl) : -1;
    }
    running += chunk;
    __syncthreads();  // warp_tot is rewritten by the next chunk
  }
  if (threadIdx.x == 0) counts[e] = int32_t(running);
}

static __global__ void topk_weights_forward_kernel(void* weight, bool w_bf, const void* probs, bool p_bf,
                                                   const int32_t* __restrict__ idx, int64_t N, int64_t E, int K) {
  int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= N * K) return;
  int64_t n = i / K;
  st(weight, i, w_bf, ld(probs, n * E + idx[i], p_bf));
}

// One thread per token: a token's K experts are distinct, so no two writes collide.
static __global__ void topk_weights_backward_kernel(void* dprobs, bool dp_bf, const void* dweight, bool dw_bf,
                                                    const int32_t* __restrict__ idx, int64_t N, int64_t E, int K) {
  int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  for (int k = 0; k < K; ++k) {
    int64_t j = n * E + idx[n * K + k];
    st(dprobs, j, dp_bf, ld(dprobs, j, dp_bf) + ld(dweight, n * K + k, dw_bf));
  }
}

// One thread per token: w_k = p_k / S, S = Σ_j p_j over the chosen experts (in f32, in k order as the CPU sums).
static __global__ void topk_weights_norm_forward_kernel(void* weight, bool w_bf, const void* probs, bool p_bf,
                                                        const int32_t* __restrict__ idx, int64_t N, int64_t E, int K) {
  int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  float sum = 0.f;
  for (int k = 0; k < K; ++k) sum = __fadd_rn(sum, ld(probs, n * E + idx[n * K + k], p_bf));
  for (int k = 0; k < K; ++k) st(weight, n * K + k, w_bf, __fdiv_rn(ld(probs, n * E + idx[n * K + k], p_bf), sum));
}

// One thread per token: dp_i += (dw_i − Σ_k dw_k · w_k) / S at the chosen experts (distinct, so no collisions).
static __global__ void topk_weights_norm_backward_kernel(void* dprobs, bool dp_bf, const void* dweight, bool dw_bf,
                                                         const void* probs, bool p_bf,
                                                         const int32_t* __restrict__ idx, int64_t N, int64_t E,
                                                         int K) {
  int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  float sum = 0.f, dot = 0.f;
  for (int k = 0; k < K; ++k) sum = __fadd_rn(sum, ld(probs, n * E + idx[n * K + k], p_bf));
  for (int k = 0; k < K; ++k) {
    const float w = __fdiv_rn(ld(probs, n * E + idx[n * K + k], p_bf), sum);
    dot = __fadd_rn(dot, __fmul_rn(ld(dweight, n * K + k, dw_bf), w));
  }
  for (int k = 0; k < K; ++k) {
    int64_t j = n * E + idx[n * K + k];
    st(dprobs, j, dp_bf, ld(dprobs, j, dp_bf) + __fdiv_rn(ld(dweight, n * K + k, dw_bf) - dot, sum));
  }
}

// One block: loss = E · Σ_e f_e · P_e.
static __global__ void load_balance_forward_kernel(float* loss, const void* probs, bool p_bf,
                                                   const int32_t* __restrict__ counts, int64_t N, int64_t E,
                                                   int64_t top_k) {
  __shared__ float red[32];
  float total = 0.f;
  for (int64_t e = 0; e < E; ++e) {
    float acc = 0.f;
    for (int64_t n = threadIdx.x; n < N; n += blockDim.x) acc += ld(probs, n * E + e, p_bf);
    acc = block_sum(acc, red);
    float f = float(counts[e]) / float(N * top_k);
    total += f * acc / float(N);
  }
  if (threadIdx.x == 0) loss[0] = float(E) * total;
}

static __global__ void load_balance_backward_kernel(void* dprobs, bool dp_bf, const int32_t* __restrict__ counts,
                                                    int64_t N, int64_t E, int64_t top_k, float dloss) {
  int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= N * E) return;
  int64_t e = i % E;
  float f = float(counts[e]) / float(N * top_k);
  st(dprobs, i, dp_bf, ld(dprobs, i, dp_bf) + dloss * float(E) * f / float(N));
}

// One warp per row: lse[n] = logsumexp(logits[n]).
static __global__ void row_lse_kernel(float* lse, const void* logits, bool l_bf, int64_t N, int64_t E) {
  int64_t n = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32;
  int lane = threadIdx.x & 31;
  if (n >= N) return;
  float mx = -INFINITY;
  for (int64_t e = lane; e < E; e += 32) mx = fmaxf(mx, ld(logits, n * E + e, l_bf));
  mx = warp_max(mx);
  float sum = 0.f;
  for (int64_t e = lane; e < E; e += 32) sum += expf(ld(logits, n * E + e, l_bf) - mx);
  sum = warp_sum(sum);
  if (lane == 0) lse[n] = mx + logf(sum);
}

static __global__ void mean_square_kernel(float* loss, const float* lse, int64_t N) {
  __shared__ float red[32];
  float acc = 0.f;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) acc += lse[n] * lse[n];
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) loss[0] = acc / float(N);
}

static __global__ void z_loss_backward_kernel(void* dlogits, bool dl_bf, const float* lse, const void* probs,
                                              bool p_bf, int64_t N, int64_t E, float dloss) {
  int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= N * E) return;
  int64_t n = i / E;
  st(dlogits, i, dl_bf, ld(dlogits, i, dl_bf) + dloss * 2.f * lse[n] * ld(probs, i, p_bf) / float(N));
}

static unsigned warp_rows_grid(int64_t N) { return unsigned((N + 7) / 8); }

void softmax_forward(Tensor probs, const Tensor& logits, Stream s) {
  const char* op = "softmax_forward";
  need_float(probs, op, "probs");
  need_float(logits, op, "logits");
  int64_t E = logits.dim(-1), N = logits.numel() / E;
  if (N == 0) return;
  softmax_forward_kernel<<<warp_rows_grid(N), 256, 0, stream_of(s)>>>(probs.data, is_bf16(probs), logits.data,
                                                                      is_bf16(logits), N, E);
  MONTA_LAUNCH_CHECK();
}

void softmax_backward(Tensor dlogits, const Tensor& dprobs, const Tensor& probs, Stream s) {
  const char* op = "softmax_backward";
  need_float(dlogits, op, "dlogits");
  need_float(dprobs, op, "dprobs");
  need_float(probs, op, "probs");
  int64_t E = probs.dim(-1), N = probs.numel() / E;
  if (N == 0) return;
  softmax_backward_kernel<<<warp_rows_grid(N), 256, 0, stream_of(s)>>>(
      dlogits.data, is_bf16(dlogits), dprobs.data, is_bf16(dprobs), probs.data, is_bf16(probs), N, E);
  MONTA_LAUNCH_CHECK();
}

static void topk_assign(const char* op, Tensor expert_idx, Tensor slot, Tensor counts, const Tensor& probs,
                        const Tensor& bias, int64_t capacity, Stream s) {
  need_float(probs, op, "probs");
  if (!bias.empty()) need_float(bias, op, "bias");
  need_dtype(expert_idx, DType::i32, op, "expert_idx");
  need_dtype(slot, DType::i32, op, "slot");
  need_dtype(counts, DType::i32, op, "counts");
  int64_t N = probs.dim(0), E = probs.dim(1), K = expert_idx.dim(1);
  MONTA_CHECK(K <= kMaxTopK, std::string(op) + ": the CUDA top-k takes K <= 8, got expert_idx " + expert_idx.str());
  cudaStream_t st = stream_of(s);
  if (N > 0) {
    topk_kernel<<<grid_1d(N, 128), 128, 0, st>>>(expert_idx.as<int32_t>(), probs.data, is_bf16(probs),
                                                  bias.empty() ? nullptr : bias.data, !bias.empty() && is_bf16(bias), N,
                                                  E, int(K));
    MONTA_LAUNCH_CHECK();
  }
  assign_slots_kernel<<<unsigned(E), 1024, 0, st>>>(slot.as<int32_t>(), counts.as<int32_t>(),
                                                    expert_idx.as<int32_t>(), N, int(K), capacity);
  MONTA_LAUNCH_CHECK();
}

void router_topk_assign(Tensor expert_idx, Tensor slot, Tensor counts, const Tensor& probs, int64_t capacity,
                        Stream s) {
  topk_assign("router_topk_assign", expert_idx, slot, counts, probs, Tensor(), capacity, s);
}

void router_topk_assign_biased(Tensor expert_idx, Tensor slot, Tensor counts, const Tensor& probs, const Tensor& bias,
                               int64_t capacity, Stream s) {
  topk_assign("router_topk_assign_biased", expert_idx, slot, counts, probs, bias, capacity, s);
}

void topk_weights_forward(Tensor weight, const Tensor& probs, const Tensor& expert_idx, Stream s) {
  const char* op = "topk_weights_forward";
  need_float(weight, op, "weight");
  need_float(probs, op, "probs");
  need_dtype(expert_idx, DType::i32, op, "expert_idx");
  int64_t N = probs.dim(0), E = probs.dim(1), K = expert_idx.dim(1);
  if (N * K == 0) return;
  topk_weights_forward_kernel<<<grid_1d(N * K, 256), 256, 0, stream_of(s)>>>(
      weight.data, is_bf16(weight), probs.data, is_bf16(probs), expert_idx.as<int32_t>(), N, E, int(K));
  MONTA_LAUNCH_CHECK();
}

void topk_weights_backward(Tensor dprobs, const Tensor& dweight, const Tensor& expert_idx, Stream s) {
  const char* op = "topk_weights_backward";
  need_float(dprobs, op, "dprobs");
  need_float(dweight, op, "dweight");
  need_dtype(expert_idx, DType::i32, op, "expert_idx");
  int64_t N = dprobs.dim(0), E = dprobs.dim(1), K = expert_idx.dim(1);
  if (N == 0) return;
  topk_weights_backward_kernel<<<grid_1d(N, 256), 256, 0, stream_of(s)>>>(
      dprobs.data, is_bf16(dprobs), dweight.data, is_bf16(dweight), expert_idx.as<int32_t>(), N, E, int(K));
  MONTA_LAUNCH_CHECK();
}

void topk_weights_norm_forward(Tensor weight, const Tensor& probs, const Tensor& expert_idx, Stream s) {
  const char* op = "topk_weights_norm_forward";
  need_float(weight, op, "weight");
  need_float(probs, op, "probs");
  need_dtype(expert_idx, DType::i32, op, "expert_idx");
  int64_t N = probs.dim(0), E = probs.dim(1), K = expert_idx.dim(1);
  if (N == 0) return;
  topk_weights_norm_forward_kernel<<<grid_1d(N, 256), 256, 0, stream_of(s)>>>(
      weight.data, is_bf16(weight), probs.data, is_bf16(probs), expert_idx.as<int32_t>(), N, E, int(K));
  MONTA_LAUNCH_CHECK();
}

void topk_weights_norm_backward(Tensor dprobs, const Tensor& dweight, const Tensor& probs, const Tensor& expert_idx,
                                Stream s) {
  const char* op = "topk_weights_norm_backward";
  need_float(dprobs, op, "dprobs");
  need_float(dweight, op, "dweight");
  need_float(probs, op, "probs");
  need_dtype(expert_idx, DType::i32, op, "expert_idx");
  int64_t N = probs.dim(0), E = probs.dim(1), K = expert_idx.dim(1);
  if (N == 0) return;
  topk_weights_norm_backward_kernel<<<grid_1d(N, 256), 256, 0, stream_of(s)>>>(
      dprobs.data, is_bf16(dprobs), dweight.data, is_bf16(dweight), probs.data, is_bf16(probs),
      expert_idx.as<int32_t>(), N, E, int(K));
  MONTA_LAUNCH_CHECK();
}

void load_balance_loss_forward(Tensor loss, const Tensor& probs, const Tensor& counts, int64_t top_k, Stream s) {
  const char* op = "load_balance_loss_forward";
  need_dtype(loss, DType::f32, op, "loss");
  need_float(probs, op, "probs");
  need_dtype(counts, DType::i32, op, "counts");
  int64_t N = probs.dim(0), E = probs.dim(1);
  load_balance_forward_kernel<<<1, 1024, 0, stream_of(s)>>>(loss.as<float>(), probs.data, is_bf16(probs),
                                                            counts.as<int32_t>(), N, E, top_k);
  MONTA_LAUNCH_CHECK();
}

void load_balance_loss_backward(Tensor dprobs, const Tensor& counts, int64_t top_k, float dloss, Stream s) {
  const char* op = "load_balance_loss_backward";
  need_float(dprobs, op, "dprobs");
  need_dtype(counts, DType::i32, op, "counts");
  int64_t N = dprobs.dim(0), E = dprobs.dim(1);
  if (N == 0) return;
  load_balance_backward_kernel<<<grid_1d(N * E, 256), 256, 0, stream_of(s)>>>(
      dprobs.data, is_bf16(dprobs), counts.as<int32_t>(), N, E, top_k, dloss);
  MONTA_LAUNCH_CHECK();
}

void router_z_loss_forward(Tensor loss, Tensor lse, const Tensor& logits, Stream s) {
  const char* op = "router_z_loss_forward";
  need_dtype(loss, DType::f32, op, "loss");
  need_dtype(lse, DType::f32, op, "lse");
  need_float(logits, op, "logits");
  int64_t E = logits.dim(-1), N = logits.numel() / E;
  cudaStream_t st = stream_of(s);
  row_lse_kernel<<<warp_rows_grid(N), 256, 0, st>>>(lse.as<float>(), logits.data, is_bf16(logits), N, E);
  MONTA_LAUNCH_CHECK();
  mean_square_kernel<<<1, 1024, 0, st>>>(loss.as<float>(), lse.as<float>(), N);
  MONTA_LAUNCH_CHECK();
}

void router_z_loss_backward(Tensor dlogits, const Tensor& lse, const Tensor& probs, float dloss, Stream s) {
  const char* op = "router_z_loss_backward";
  need_float(dlogits, op, "dlogits");
  need_dtype(lse, DType::f32, op, "lse");
  need_float(probs, op, "probs");
  int64_t E = probs.dim(-1), N = probs.numel() / E;
  if (N == 0) return;
  z_loss_backward_kernel<<<grid_1d(N * E, 256), 256, 0, stream_of(s)>>>(
      dlogits.data, is_bf16(dlogits), lse.as<float>(), probs.data, is_bf16(probs), N, E, dloss);
  MONTA_LAUNCH_CHECK();
}

}  // namespace monta::engine::cuda
