// CUDA token embedding (vocabulary-parallel shard). The backward scatter is column-owned: each thread owns
// one hidden column and walks the tokens in order, so repeated tokens add in a fixed order (no atomics).
#include "engine/cuda/common.cuh"
#include "engine/ops/embedding.h"

namespace monta::engine::cuda {

static __global__ void embedding_forward_kernel(void* out, bool out_bf, const int32_t* __restrict__ tokens,
                                                const void* table, bool table_bf, int64_t vocab_begin,
                                                int64_t V, int64_t N, int64_t H) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * H; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n = i / H, h = i - n * H;
    int64_t t = int64_t(tokens[n]) - vocab_begin;
    st(out, i, out_bf, (t >= 0 && t < V) ? ld(table, t * H + h, table_bf) : 0.f);
  }
}

static __global__ void embedding_backward_kernel(float* dtable, const void* dout, bool dout_bf,
                                                 const int32_t* __restrict__ tokens, int64_t vocab_begin, int64_t V,
                                                 int64_t N, int64_t H) {
  int64_t h = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (h >= H) return;
  for (int64_t n = 0; n < N; ++n) {
    int64_t t = int64_t(tokens[n]) - vocab_begin;
    if (t >= 0 && t < V) dtable[t * H + h] += ld(dout, n * H + h, dout_bf);
  }
}

void embedding_forward(Tensor out, const Tensor& tokens, const Tensor& table, int64_t vocab_begin, Stream s) {
  const char* op = "embedding_forward";
  need_float(out, op, "out");
  need_float(table, op, "table");
  need_dtype(tokens, DType::i32, op, "tokens");
  int64_t V = table.dim(0), H = table.row_elems(), N = tokens.numel();
  if (N == 0) return;
  embedding_forward_kernel<<<grid_1d(N * H, 256), 256, 0, stream_of(s)>>>(
      out.data, is_bf16(out), tokens.as<int32_t>(), table.data, is_bf16(table), vocab_begin, V, N, H);
  MONTA_LAUNCH_CHECK();
}

void embedding_backward(Tensor dtable, const Tensor& dout, const Tensor& tokens, int64_t vocab_begin, Stream s) {
  const char* op = "embedding_backward";
  need_dtype(dtable, DType::f32, op, "dtable");
  need_float(dout, op, "dout");
  need_dtype(tokens, DType::i32, op, "tokens");
  int64_t V = dtable.dim(0), H = dtable.row_elems(), N = tokens.numel();
  if (N == 0) return;
  embedding_backward_kernel<<<grid_1d(H, 64), 64, 0, stream_of(s)>>>(dtable.as<float>(), dout.data, is_bf16(dout),
                                                                     tokens.as<int32_t>(), vocab_begin, V, N, H);
  MONTA_LAUNCH_CHECK();
}

}  // namespace monta::engine::cuda
