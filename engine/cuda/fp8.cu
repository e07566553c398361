// CUDA FP8 E4M3 quantisation: 1x128 row tiles (one warp per tile), 1x128 tiles down the columns written transposed
// (a shared-memory transpose per 128x64 panel), and 128x128 weight blocks with an optional transposed copy. Codes and
// scales come from engine/fp8_math.h, the CPU's arithmetic, so both backends give the same bits. A non-finite element
// enters the tile maximum as +inf, which marks the tile (NaN scale and codes, fp8::tile_scale). Where shapes and
// alignment allow, a thread moves its elements with one vector load and its codes with one 4-byte store (the kernels'
// vec flags: the quantise passes are memory-bound); the scalar path covers the rest, with the same arithmetic.
// fp8_gemm runs on cuBLASLt's block-scaled FP8 GEMM (CUDA >= 12.9, Hopper): VEC128_32F scales for 1x128 tiles,
// BLK128x128_32F for weight blocks, E4M3 operands in the "TN" layout FP8 needs on Hopper (both K-contiguous), fp32
// accumulation; one call per batch entry (expert), see docs/fp8.md for why not a strided batch.
#include <cfloat>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "engine/cuda/common.cuh"
#include "engine/fp8_math.h"
#include "engine/ops/fp8.h"

namespace monta::engine::cuda {
namespace {

using fp8::kTile;

struct D3 {
  int64_t b, r, c;
};
D3 d3(const Tensor& t) { return t.ndim == 2 ? D3{1, t.dim(0), t.dim(1)} : D3{t.dim(0), t.dim(1), t.dim(2)}; }

__device__ __forceinline__ float mag(float v) { return isfinite(v) ? fabsf(v) : INFINITY; }

// The end of a 1×128 row tile's quantisation, one warp per tile: this lane's 4 values v (of which `valid` are in the
// row) and its |max|, reduced over the warp into the tile's scale (written by lane 0 at scale[s]) and the codes at
// q[at..]. Shared by fp8_quantize_rows and the fused SwiGLU, so both give the same bytes.
// vec: the 4 codes go out as one 4-byte store (the caller checked that q + at is 4-byte aligned and valid >= 4).
__device__ __forceinline__ void quantize_lane(uint8_t* __restrict__ q, float* __restrict__ scale, const float (&v)[4],
                                              float amax, int lane, int64_t s, int64_t at, int64_t valid, bool vec) {
  amax = warp_max(amax);
  const bool finite = amax <= FLT_MAX;
  if (lane == 0) scale[s] = fp8::tile_scale(amax, finite);
  const float inv = finite ? fp8::pow2(-fp8::scale_exponent(amax)) : 1.f;
  if (vec) {
    uint32_t word = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) word |= uint32_t(fp8::quantize(v[j], inv, finite)) << (8 * j);
    *reinterpret_cast<uint32_t*>(q + at) = word;
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (j < valid) q[at + j] = fp8::quantize(v[j], inv, finite);
}

// 4 consecutive elements x[i..i+3] of a bf16 or f32 source as floats: one 8- or 16-byte load when vec (i a multiple
// of 4 and x 16-byte aligned), else element by element, zeros past n.
__device__ __forceinline__ void load_quad(float (&v)[4], const void* __restrict__ x, int64_t i, bool xb, int64_t n,
                                          bool vec) {
  if (vec) {
    if (xb) {
      const uint2 w = *reinterpret_cast<const uint2*>(static_cast<const bf16*>(x) + i);
      const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w.x));
      const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w.y));
      v[0] = a.x, v[1] = a.y, v[2] = b.x, v[3] = b.y;
    } else {
      const float4 w = *reinterpret_cast<const float4*>(static_cast<const float*>(x) + i);
      v[0] = w.x, v[1] = w.y, v[2] = w.z, v[3] = w.w;
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = j < n ? ld(x, i + j, xb) : 0.f;
}

// One warp per (b, r, tile): 4 elements a lane.
// vec: K % 4 == 0, x 16-byte and q 4-byte aligned (fp8_quantize_rows checks), so every lane's 4 elements are one
// aligned load and its 4 codes one store (a lane past K has none: c0 >= K).
static __global__ void quantize_rows_kernel(uint8_t* __restrict__ q, float* __restrict__ scale, const void* __restrict__ x,
                                            bool xb, int64_t B, int64_t R, int64_t K, bool vec) {
  const int64_t T = fp8::tiles(K);
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= B * R * T) return;  // whole warps leave together
  const int64_t t = warp % T, br = warp / T, b = br / R, r = br % R;
  const int64_t row = br * K, c0 = t * kTile + lane * 4;
  const bool lane_vec = vec && c0 < K;
  float v[4];
  load_quad(v, x, row + c0, xb, K - c0, lane_vec);
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) amax = fmaxf(amax, mag(v[j]));
  quantize_lane(q, scale, v, amax, lane, (b * T + t) * R + r, row + c0, K - c0, lane_vec);
}

// fp8_pack_rows: quantize_rows_kernel's tile, written into the packed row (codes, then the scale at its slot); the
// warp of tile 0 also zeroes the row's padding bytes so the payload is deterministic.
static __global__ void pack_rows_kernel(uint8_t* __restrict__ packed, const void* __restrict__ x, bool xb, int64_t rows,
                                        int64_t K, int64_t P) {
  const int64_t T = fp8::tiles(K), at = fp8::packed_scales_at(K);
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= rows * T) return;
  const int64_t t = warp % T, r = warp / T;
  uint8_t* row = packed + r * P;
  const int64_t c0 = t * kTile + lane * 4;
  float v[4];
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    v[j] = c0 + j < K ? ld(x, r * K + c0 + j, xb) : 0.f;
    amax = fmaxf(amax, mag(v[j]));
  }
  amax = warp_max(amax);
  const bool finite = amax <= FLT_MAX;
  if (lane == 0) reinterpret_cast<float*>(row + at)[t] = fp8::tile_scale(amax, finite);
  const float inv = finite ? fp8::pow2(-fp8::scale_exponent(amax)) : 1.f;
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (c0 + j < K) row[c0 + j] = fp8::quantize(v[j], inv, finite);
  if (t == 0) {
    for (int64_t i = K + lane; i < at; i += 32) row[i] = 0;
    for (int64_t i = at + 4 * T + lane; i < P; i += 32) row[i] = 0;
  }
}

// fp8_swiglu_forward: quantize_rows_kernel's tile over out = silu(gate)·up, computed as swiglu.cu does (the same f32
// expression), stored in out's dtype and quantised from the stored value, so the codes equal swiglu_forward followed
// by fp8_quantize_rows.
static __global__ void swiglu_rows_kernel(void* __restrict__ out, uint8_t* __restrict__ q, float* __restrict__ scale,
                                          const void* __restrict__ gate, const void* __restrict__ up, bool b16,
                                          int64_t B, int64_t R, int64_t K, bool vec) {
  const int64_t T = fp8::tiles(K);
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= B * R * T) return;
  const int64_t t = warp % T, br = warp / T, b = br / R, r = br % R;
  const int64_t row = br * K, c0 = t * kTile + lane * 4;
  const bool lane_vec = vec && c0 < K;
  float g[4], u[4], v[4];
  load_quad(g, gate, row + c0, b16, K - c0, lane_vec);
  load_quad(u, up, row + c0, b16, K - c0, lane_vec);
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float sg = 1.f / (1.f + expf(-g[j]));
    const float y = g[j] * sg * u[j];
    v[j] = c0 + j < K ? (b16 ? __bfloat162float(__float2bfloat16_rn(y)) : y) : 0.f;  // the stored value
    amax = fmaxf(amax, mag(v[j]));
  }
  if (lane_vec && b16) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v[0], v[1]), hi = __floats2bfloat162_rn(v[2], v[3]);
    uint2 w;
    w.x = *reinterpret_cast<const uint32_t*>(&lo);
    w.y = *reinterpret_cast<const uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(static_cast<bf16*>(out) + row + c0) = w;
  } else if (lane_vec) {
    *reinterpret_cast<float4*>(static_cast<float*>(out) + row + c0) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (c0 + j < K) st(out, row + c0 + j, b16, v[j]);
  }
  quantize_lane(q, scale, v, amax, lane, (b * T + t) * R + r, row + c0, K - c0, lane_vec);
}

// fp8_unpack_rows: one thread per element.
static __global__ void unpack_rows_kernel(void* __restrict__ out, bool ob, const uint8_t* __restrict__ packed,
                                          int64_t n, int64_t K, int64_t P) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t r = i / K, c = i % K;
  const uint8_t* row = packed + r * P;
  const float s = reinterpret_cast<const float*>(row + fp8::packed_scales_at(K))[c / kTile];
  st(out, i, ob, fp8::e4m3_to_float(row[c]) * s);
}

// One block per (b, 128-row tile, panel of 64 columns): 32 x 8 threads, each column pair (c, c+1) read by one
// thread column as a bf16x2 / float2 (128 bytes a warp), 16 rows per thread; the tile maximum per column over the
// block, the codes transposed through shared memory and written 4 rows at a time. vec: K even and x 8-byte aligned
// (the pair loads), R % 4 == 0 and qt 4-byte aligned (the 4-byte stores); fp8_quantize_cols checks.
constexpr int kColsPanel = 64;
static __global__ void quantize_cols_kernel(uint8_t* __restrict__ qt, float* __restrict__ scale, const void* __restrict__ x,
                                            bool xb, int64_t R, int64_t K, bool vec_load, bool vec_store) {
  __shared__ float red[8][kColsPanel];
  __shared__ __align__(4) uint8_t codes[kColsPanel][kTile + 4];
  const int64_t T = fp8::tiles(R);
  const int64_t b = blockIdx.z, t = blockIdx.y, c = int64_t(blockIdx.x) * kColsPanel + 2 * threadIdx.x;
  const int64_t r0 = t * kTile;
  float v[2][kTile / 8];
  float amax[2] = {0.f, 0.f};
#pragma unroll
  for (int j = 0; j < kTile / 8; ++j) {
    const int64_t r = r0 + threadIdx.y + 8 * j;
    const int64_t i = (b * R + r) * K + c;
    if (r < R && vec_load && c + 1 < K) {
      if (xb) {
        const float2 p = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(static_cast<const bf16*>(x) + i));
        v[0][j] = p.x, v[1][j] = p.y;
      } else {
        const float2 p = *reinterpret_cast<const float2*>(static_cast<const float*>(x) + i);
        v[0][j] = p.x, v[1][j] = p.y;
      }
    } else {
      v[0][j] = r < R && c < K ? ld(x, i, xb) : 0.f;
      v[1][j] = r < R && c + 1 < K ? ld(x, i + 1, xb) : 0.f;
    }
    amax[0] = fmaxf(amax[0], mag(v[0][j]));
    amax[1] = fmaxf(amax[1], mag(v[1][j]));
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) red[threadIdx.y][2 * threadIdx.x + h] = amax[h];
  __syncthreads();
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float m = red[0][2 * threadIdx.x + h];
#pragma unroll
    for (int y = 1; y < 8; ++y) m = fmaxf(m, red[y][2 * threadIdx.x + h]);
    const bool finite = m <= FLT_MAX;
    if (threadIdx.y == 0 && c + h < K) scale[(b * T + t) * K + c + h] = fp8::tile_scale(m, finite);
    const float inv = finite ? fp8::pow2(-fp8::scale_exponent(m)) : 1.f;
#pragma unroll
    for (int j = 0; j < kTile / 8; ++j)
      codes[2 * threadIdx.x + h][threadIdx.y + 8 * j] = fp8::quantize(v[h][j], inv, finite);
  }
  __syncthreads();
  // Column cc of the panel is the contiguous run qt[(b, c0 + cc), r0 .. r0 + 127]: 32 words of 4 codes.
  const int tid = threadIdx.y * 32 + threadIdx.x;
  for (int w = tid; w < kColsPanel * (kTile / 4); w += 256) {
    const int cc = w / (kTile / 4), rr = 4 * (w % (kTile / 4));
    const int64_t col = int64_t(blockIdx.x) * kColsPanel + cc, r = r0 + rr;
    if (col >= K || r >= R) continue;
    uint8_t* dst = qt + (b * K + col) * R + r;
    if (vec_store && r + 3 < R) {
      *reinterpret_cast<uint32_t*>(dst) = *reinterpret_cast<const uint32_t*>(&codes[cc][rr]);
    } else {
      for (int k = 0; k < 4 && r + k < R; ++k) dst[k] = codes[cc][rr + k];
    }
  }
}

// One block of 256 threads per (b, 128x128 block): the block maximum, then the codes row-major and, through shared
// memory, transposed. The last block of a row (column) also zeroes the scale row's padding.
static __global__ void quantize_blocks_kernel(uint8_t* __restrict__ q, float* __restrict__ scale, uint8_t* __restrict__ qt,
                                              float* __restrict__ scale_t, const void* __restrict__ w, bool wb, int64_t O,
                                              int64_t I) {
  __shared__ float red[32];
  __shared__ uint8_t codes[kTile][kTile + 4];
  const int64_t TO = fp8::tiles(O), TI = fp8::tiles(I);
  const int64_t lds = fp8::block_scale_ld(I), lds_t = fp8::block_scale_ld(O);  // scale row strides
  const int64_t b = blockIdx.z, bo = blockIdx.y, bi = blockIdx.x, o0 = bo * kTile, i0 = bi * kTile;
  const int tx = threadIdx.x & 127, ty = threadIdx.x >> 7;  // 128 columns x 2 rows per pass
  float amax = 0.f;
  for (int oo = ty; oo < kTile; oo += 2) {
    const int64_t o = o0 + oo, i = i0 + tx;
    const float v = o < O && i < I ? ld(w, (b * O + o) * I + i, wb) : 0.f;
    amax = fmaxf(amax, mag(v));
  }
  amax = block_max(amax, red);
  const bool finite = amax <= FLT_MAX;
  const float s = fp8::tile_scale(amax, finite);
  const float inv = finite ? fp8::pow2(-fp8::scale_exponent(amax)) : 1.f;
  if (threadIdx.x == 0) {
    if (scale) {
      scale[(b * TO + bo) * lds + bi] = s;
      if (bi == TI - 1)
        for (int64_t p = TI; p < lds; ++p) scale[(b * TO + bo) * lds + p] = 0.f;
    }
    if (scale_t) {
      scale_t[(b * TI + bi) * lds_t + bo] = s;
      if (bo == TO - 1)
        for (int64_t p = TO; p < lds_t; ++p) scale_t[(b * TI + bi) * lds_t + p] = 0.f;
    }
  }
  for (int oo = ty; oo < kTile; oo += 2) {
    const int64_t o = o0 + oo, i = i0 + tx;
    if (o < O && i < I) {
      const uint8_t code = fp8::quantize(ld(w, (b * O + o) * I + i, wb), inv, finite);
      if (q) q[(b * O + o) * I + i] = code;
      codes[oo][tx] = code;
    }
  }
  if (!qt) return;
  __syncthreads();
  for (int ii = ty; ii < kTile; ii += 2) {  // qt row i0 + ii holds column ii of the block
    const int64_t i = i0 + ii, o = o0 + tx;
    if (o < O && i < I) qt[(b * I + i) * O + o] = codes[tx][ii];
  }
}

void need_source(const Tensor& t, const char* op, const char* name) { need_float(t, op, name); }
bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

}  // namespace

void fp8_quantize_rows(Tensor q, Tensor scale, const Tensor& x, Stream s) {
  const char* op = "fp8_quantize_rows";
  need_source(x, op, "x");
  need_dtype(q, DType::e4m3, op, "q");
  need_dtype(scale, DType::f32, op, "scale");
  const D3 d = d3(x);
  const int64_t warps = d.b * d.r * fp8::tiles(d.c);
  if (warps == 0) return;
  const bool vec = d.c % 4 == 0 && aligned(x.data, 16) && aligned(q.data, 4);
  quantize_rows_kernel<<<grid_1d(warps * 32, 256), 256, 0, stream_of(s)>>>(q.as<uint8_t>(), scale.as<float>(), x.data,
                                                                           is_bf16(x), d.b, d.r, d.c, vec);
  MONTA_LAUNCH_CHECK();
}

void fp8_quantize_cols(Tensor qt, Tensor scale, const Tensor& x, Stream s) {
  const char* op = "fp8_quantize_cols";
  need_source(x, op, "x");
  need_dtype(qt, DType::e4m3, op, "qt");
  need_dtype(scale, DType::f32, op, "scale");
  const D3 d = d3(x);
  if (d.b * d.r * d.c == 0) return;
  MONTA_CHECK(d.b <= 65535 && fp8::tiles(d.r) <= 65535, std::string(op) + ": too many tiles for one grid, " + x.str());
  const dim3 grid(unsigned((d.c + kColsPanel - 1) / kColsPanel), unsigned(fp8::tiles(d.r)), unsigned(d.b));
  const bool vec_load = d.c % 2 == 0 && aligned(x.data, 8), vec_store = d.r % 4 == 0 && aligned(qt.data, 4);
  quantize_cols_kernel<<<grid, dim3(32, 8), 0, stream_of(s)>>>(qt.as<uint8_t>(), scale.as<float>(), x.data, is_bf16(x),
                                                              d.r, d.c, vec_load, vec_store);
  MONTA_LAUNCH_CHECK();
}

void fp8_quantize_blocks(Tensor q, Tensor scale, Tensor qt, Tensor scale_t, const Tensor& w, Stream s) {
  const char* op = "fp8_quantize_blocks";
  need_source(w, op, "w");
  if (!q.empty()) {
    need_dtype(q, DType::e4m3, op, "q");
    need_dtype(scale, DType::f32, op, "scale");
  }
  if (!qt.empty()) {
    need_dtype(qt, DType::e4m3, op, "qt");
    need_dtype(scale_t, DType::f32, op, "scale_t");
  }
  const D3 d = d3(w);
  if (d.b * d.r * d.c == 0) return;
  MONTA_CHECK(d.b <= 65535 && fp8::tiles(d.r) <= 65535, std::string(op) + ": too many blocks for one grid, " + w.str());
  const dim3 grid(unsigned(fp8::tiles(d.c)), unsigned(fp8::tiles(d.r)), unsigned(d.b));
  quantize_blocks_kernel<<<grid, 256, 0, stream_of(s)>>>(q.empty() ? nullptr : q.as<uint8_t>(),
                                                         q.empty() ? nullptr : scale.as<float>(),
                                                         qt.empty() ? nullptr : qt.as<uint8_t>(),
                                                         qt.empty() ? nullptr : scale_t.as<float>(), w.data, is_bf16(w),
                                                         d.r, d.c);
  MONTA_LAUNCH_CHECK();
}

void fp8_pack_rows(Tensor packed, const Tensor& x, Stream s) {
  const char* op = "fp8_pack_rows";
  need_source(x, op, "x");
  need_dtype(packed, DType::u8, op, "packed");
  const D3 d = d3(x);
  const int64_t P = packed.dim(packed.ndim - 1);
  MONTA_CHECK(reinterpret_cast<uintptr_t>(packed.data) % 4 == 0, std::string(op) + ": packed must be 4-byte aligned");
  const int64_t warps = d.b * d.r * fp8::tiles(d.c);
  if (warps == 0) return;
  pack_rows_kernel<<<grid_1d(warps * 32, 256), 256, 0, stream_of(s)>>>(packed.as<uint8_t>(), x.data, is_bf16(x),
                                                                       d.b * d.r, d.c, P);
  MONTA_LAUNCH_CHECK();
}

void fp8_unpack_rows(Tensor out, const Tensor& packed, Stream s) {
  const char* op = "fp8_unpack_rows";
  need_source(out, op, "out");
  need_dtype(packed, DType::u8, op, "packed");
  MONTA_CHECK(reinterpret_cast<uintptr_t>(packed.data) % 4 == 0, std::string(op) + ": packed must be 4-byte aligned");
  const D3 d = d3(out);
  const int64_t n = d.b * d.r * d.c;
  if (n == 0) return;
  unpack_rows_kernel<<<grid_1d(n, 256), 256, 0, stream_of(s)>>>(out.data, is_bf16(out), packed.as<uint8_t>(), n, d.c,
                                                                 packed.dim(packed.ndim - 1));
  MONTA_LAUNCH_CHECK();
}

void fp8_swiglu_forward(Tensor out, Tensor q, Tensor scale, const Tensor& gate, const Tensor& up, Stream s) {
  const char* op = "fp8_swiglu_forward";
  need_source(out, op, "out");
  need_dtype(q, DType::e4m3, op, "q");
  need_dtype(scale, DType::f32, op, "scale");
  const D3 d = d3(out);
  const int64_t warps = d.b * d.r * fp8::tiles(d.c);
  if (warps == 0) return;
  const bool vec = d.c % 4 == 0 && aligned(out.data, 16) && aligned(gate.data, 16) && aligned(up.data, 16) &&
                   aligned(q.data, 4);
  swiglu_rows_kernel<<<grid_1d(warps * 32, 256), 256, 0, stream_of(s)>>>(out.data, q.as<uint8_t>(), scale.as<float>(),
                                                                         gate.data, up.data, is_bf16(out), d.b, d.r,
                                                                         d.c, vec);
  MONTA_LAUNCH_CHECK();
}

namespace {

struct Fp8GemmKey {
  int device;
  int64_t m, n, k;
  int out_dtype, blocks;
  bool beta;
  auto tie() const { return std::tie(device, m, n, k, out_dtype, blocks, beta); }
  bool operator<(const Fp8GemmKey& o) const { return tie() < o.tie(); }
};
std::mutex g_fp8_mu;
std::map<Fp8GemmKey, cublasLtMatmulAlgo_t> g_fp8_algos;


void set_attr(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const void* v, size_t n) {
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, attr, v, n));
}

// Row-major out (M, N) = a (M, K) · b (N, K)ᵀ is column-major out'(N×M) = op_T(b'(K×N)) · a'(K×M): cuBLASLt's A is our
// b and its B our a, both K-contiguous (TN). out_dtype: bf16 or f32; beta 1 accumulates into out.
void fp8_gemm_one(void* out, DType out_dtype, const uint8_t* a, const float* a_scale, const uint8_t* b,
                  const float* b_scale, bool blocks, int64_t M, int64_t N, int64_t K, float beta, Stream s) {
  cublasLtHandle_t h = lt_handle();
  LtDescs d;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t opa = CUBLAS_OP_T, opb = CUBLAS_OP_N;
  set_attr(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa));
  set_attr(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb));
  const cublasLtMatmulMatrixScale_t mode_a =
      blocks ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F : CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  const cublasLtMatmulMatrixScale_t mode_b = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  set_attr(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode_a, sizeof(mode_a));
  set_attr(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode_b, sizeof(mode_b));
  set_attr(d.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &b_scale, sizeof(b_scale));
  set_attr(d.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &a_scale, sizeof(a_scale));
  const cudaDataType_t ct = out_dtype == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.a, CUDA_R_8F_E4M3, uint64_t(K), uint64_t(N), K));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.b, CUDA_R_8F_E4M3, uint64_t(K), uint64_t(M), K));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d.c, ct, uint64_t(N), uint64_t(M), N));
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  const Fp8GemmKey key{device, M, N, K, int(out_dtype), int(blocks), beta != 0.f};
  cublasLtMatmulAlgo_t algo;
  {
    std::lock_guard<std::mutex> lock(g_fp8_mu);
    auto it = g_fp8_algos.find(key);
    if (it != g_fp8_algos.end()) {
      algo = it->second;
    } else {
      cublasLtMatmulPreference_t pref = nullptr;
      CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
      uint64_t ws = kLtWorkspaceBytes;
      CUBLAS_CHECK(
          cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
      cublasLtMatmulHeuristicResult_t res;
      std::memset(&res, 0, sizeof(res));
      int found = 0;
      const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h, d.op, d.a, d.b, d.c, d.c, pref, 1, &res, &found);
      cublasLtMatmulPreferenceDestroy(pref);
      MONTA_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0,
                  std::string("cuBLASLt has no block-scaled FP8 algorithm for M=") + std::to_string(M) +
                      " N=" + std::to_string(N) + " K=" + std::to_string(K) + " (" + dtype_name(out_dtype) + " out, " +
                      (blocks ? "1x128 x 128x128" : "1x128 x 1x128") + " scales): this needs cuBLAS >= 12.9 on sm_90");
      algo = res.algo;
      g_fp8_algos.emplace(key, algo);
    }
  }
  const float alpha = 1.f;
  CUBLAS_CHECK(cublasLtMatmul(h, d.op, &alpha, b, d.a, a, d.b, &beta, out, d.c, out, d.c, &algo, lt_workspace(s),
                              kLtWorkspaceBytes, stream_of(s)));
}

}  // namespace

void fp8_gemm(Tensor out, const Tensor& a, const Tensor& a_scale, const Tensor& b, const Tensor& b_scale,
              Fp8Scaling b_scaling, Write write, Stream s) {
  const char* op = "fp8_gemm";
  need_float(out, op, "out");
  need_dtype(a, DType::e4m3, op, "a");
  need_dtype(b, DType::e4m3, op, "b");
  need_dtype(a_scale, DType::f32, op, "a_scale");
  need_dtype(b_scale, DType::f32, op, "b_scale");
  const D3 da = d3(a), db = d3(b);
  const int64_t M = da.r, N = db.r, K = da.c;
  // FP8 GEMMs want 16-byte aligned rows and operands; with one call per batch entry that means 16 | M, N, K.
  MONTA_CHECK(M % 16 == 0 && N % 16 == 0 && K % 16 == 0,
              std::string(op) + ": on CUDA M, N and K must be multiples of 16, got M=" + std::to_string(M) +
                  " N=" + std::to_string(N) + " K=" + std::to_string(K) + " (" + a.str() + ", " + b.str() + ")");
  if (M == 0 || N == 0) return;
  const bool blocks = b_scaling == Fp8Scaling::blocks;
  const int64_t a_scales = fp8::tiles(K) * M;
  const int64_t b_scales = blocks ? fp8::tiles(N) * fp8::block_scale_ld(K) : fp8::tiles(K) * N;
  const size_t osz = dtype_size(out.dtype);
  for (int64_t e = 0; e < da.b; ++e) {
    if (K == 0) {  // an empty sum: 0, or out unchanged
      if (write == Write::overwrite)
        CUDA_CHECK(cudaMemsetAsync(static_cast<char*>(out.data) + size_t(e * M * N) * osz, 0, size_t(M * N) * osz,
                                   stream_of(s)));
      continue;
    }
    fp8_gemm_one(static_cast<char*>(out.data) + size_t(e * M * N) * osz, out.dtype, a.as<uint8_t>() + e * M * K,
                 a_scale.as<float>() + e * a_scales, b.as<uint8_t>() + e * N * K, b_scale.as<float>() + e * b_scales,
                 blocks, M, N, K, write == Write::accumulate ? 1.f : 0.f, s);
  }
}

}  // namespace monta::engine::cuda
