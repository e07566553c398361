// Internal helpers shared by the CUDA op files: stream cast, launch checks, argument checks, bf16/f32
// element access, block reductions, and the per-device cuBLASLt handle and per-stream scratch.
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "engine/check.h"
#include "engine/tensor.h"

namespace monta::engine::cuda {

using bf16 = __nv_bfloat16;

inline cudaStream_t stream_of(Stream s) { return static_cast<cudaStream_t>(s); }

// Every launch is followed by this: a bad configuration surfaces at the launch, not at the next sync.
#define MONTA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

inline unsigned grid_1d(int64_t n, int threads, int64_t max_blocks = 2147483647LL) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > max_blocks) b = max_blocks;
  return unsigned(b);
}

// ---- argument checks (host): dtype and device; shapes are the op's contract (engine/ops/dispatch.cpp) ----
inline void need_cuda(const Tensor& t, const char* op, const char* name) {
  MONTA_CHECK(t.device == Device::cuda && t.data != nullptr,
              std::string(op) + ": " + name + " must be a non-empty CUDA tensor, got " + t.str());
}
inline void need_float(const Tensor& t, const char* op, const char* name) {
  need_cuda(t, op, name);
  MONTA_CHECK(t.dtype == DType::f32 || t.dtype == DType::bf16,
              std::string(op) + ": " + name + " must be f32 or bf16 on CUDA, got " + t.str());
}
inline void need_dtype(const Tensor& t, DType d, const char* op, const char* name) {
  need_cuda(t, op, name);
  MONTA_CHECK(t.dtype == d, std::string(op) + ": " + name + " must be " + dtype_name(d) + ", got " + t.str());
}

// ---- element access ----
// Typed (templated kernels) ...
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

// ... and by run-time dtype flag (small or secondary tensors; the branch is uniform across the grid).
__device__ __forceinline__ float ld(const void* p, int64_t i, bool is_bf16) {
  return is_bf16 ? __bfloat162float(static_cast<const bf16*>(p)[i]) : static_cast<const float*>(p)[i];
}
__device__ __forceinline__ void st(void* p, int64_t i, bool is_bf16, float v) {
  if (is_bf16)
    static_cast<bf16*>(p)[i] = __float2bfloat16_rn(v);
  else
    static_cast<float*>(p)[i] = v;
}
inline bool is_bf16(const Tensor& t) { return t.dtype == DType::bf16; }

// ---- 16-byte vector access (8 bf16 or 4 f32 per uint4) ----
template <class T> struct Vec16 {
  static constexpr int n = 16 / int(sizeof(T));
};
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
// Loads 16 bytes at p (16-byte aligned) and widens to f32.
__device__ __forceinline__ void load16(const float* p, float (&f)[4]) {
  float4 u = *reinterpret_cast<const float4*>(p);
  f[0] = u.x; f[1] = u.y; f[2] = u.z; f[3] = u.w;
}
__device__ __forceinline__ void load16(const bf16* p, float (&f)[8]) {
  uint4 u = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    f[2 * j] = __uint_as_float(w[j] << 16);             // low half: element 2j
    f[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);  // high half: element 2j+1
  }
}
// Rounds (bf16: to nearest even, as from_f) and stores 16 bytes at p (16-byte aligned).
__device__ __forceinline__ void store16(float* p, const float (&f)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
}
__device__ __forceinline__ void store16(bf16* p, const float (&f)[8]) {
  uint32_t w[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(f[2 * j]));
    uint32_t hi = __bfloat16_as_ushort(__float2bfloat16_rn(f[2 * j + 1]));
    w[j] = lo | (hi << 16);
  }
  *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
}

// ---- reductions ----
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Block-wide sum/max in a fixed order (deterministic); every thread gets the result. blockDim.x % 32 == 0,
// at most 1024 threads; `red` is 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* red) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : 0.f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* red) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nw ? red[lane] : -INFINITY;
  return warp_max(v);
}

// Typed dispatch over the two activation dtypes: runs BODY with T bound to float or bf16.
#define MONTA_FLOAT_TYPES(dtype, T, ...)        \
  do {                                          \
    if ((dtype) == ::monta::engine::DType::bf16) { \
      using T = ::monta::engine::cuda::bf16;    \
      __VA_ARGS__;                              \
    } else {                                    \
      using T = float;                          \
      __VA_ARGS__;                              \
    }                                           \
  } while (0)

// ---- per-device / per-stream resources (runtime.cu) ----
cublasLtHandle_t lt_handle();  // for the current device, created once
// Scratch owned by (current device, stream), allocated on first use and kept: cuBLASLt workspace and the
// partial sums of the deterministic two-pass reductions. Work on one stream is ordered, so no races.
constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;
constexpr int kReduceBlocks = 256;  // fixed grid of the two-pass reductions: same result on every device
void* lt_workspace(Stream s);
// The descriptors of one cuBLASLt matmul (operation and the three layouts), destroyed together.
struct LtDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  ~LtDescs() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// Optional autotuning of cuBLASLt GEMMs, bf16 (linear.cu) and FP8 (fp8.cu) alike (engine::settings().gemm_tune;
// MONTA_GEMM_TUNE=1 sets it): the heuristic's first kTuneCandidates algorithms (`found` of them in res) are timed once
// per key on the real operands A, B, writing into a scratch output of c_bytes (a beta = 1 accumulation is never
// disturbed), and the fastest is returned for the caller to cache; the heuristic's pick stays unless another is at
// least 3% faster when timed again beside it, or when the scratch cannot be allocated. GEMMs under kTuneMinFlops are
// not tuned. Off by default: on the H200 (2026-11-29, `monta bench ops`, same run, tuned vs not) it made the expert
// backward GEMM 1.7% faster but the gate forward 14% slower, and the whole 2x70B layer moved by less than the
// run-to-run spread (74.3 vs 74.9 ms). Tuning allocates and syncs once per shape, on its first use.
constexpr int kTuneCandidates = 8;
constexpr double kTuneMinFlops = 1e11;
cublasLtMatmulAlgo_t lt_tune(cublasLtHandle_t h, const LtDescs& d, int found, const cublasLtMatmulHeuristicResult_t* res,
                             const void* A, const void* B, size_t c_bytes, float beta, cudaStream_t st);

float* reduce_scratch(Stream s);  // kReduceBlocks floats
constexpr int64_t kColumnScratchFloats = int64_t(1) << 20;  // partial column sums (rmsnorm weight gradient)
float* column_scratch(Stream s);                            // kColumnScratchFloats floats

}  // namespace monta::engine::cuda
