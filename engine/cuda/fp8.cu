// CUDA FP8 E4M3 quantisation: 1x128 row tiles (a block per row, 16 lanes a tile), 1x128 tiles down the columns
// written transposed (a shared-memory transpose per 128x64 panel), and 128x128 weight blocks with an optional
// transposed copy. Scales come from engine/fp8_math.h, the CPU's arithmetic; codes from the hardware conversion, which
// rounds as fp8_math.h's encoder does (checked by the GPU tests), so both backends give the same bits. A non-finite
// element enters the tile maximum as +inf, which marks the tile (NaN scale and codes, fp8::tile_scale). Where shapes
// and alignment allow, a thread moves its elements with 16-byte loads and its codes with one 8- or 4-byte store (the
// kernels' vec flags: the quantise passes are memory-bound); the scalar path covers the rest, with the same arithmetic.
// fp8_gemm runs on cuBLASLt's block-scaled FP8 GEMM (CUDA >= 12.9, Hopper): VEC128_32F scales for 1x128 tiles,
// BLK128x128_32F for weight blocks, E4M3 operands in the "TN" layout FP8 needs on Hopper (both K-contiguous), fp32
// accumulation; one call per batch entry (expert), see docs/fp8.md for why not a strided batch.
#include <cuda_fp8.h>

#include <algorithm>
#include <cfloat>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "engine/cuda/common.cuh"
#include "engine/fp8_math.h"
#include "engine/ops/fp8.h"
#include "engine/settings.h"

namespace monta::engine::cuda {
namespace {

using fp8::kTile;

struct D3 {
  int64_t b, r, c;
};
D3 d3(const Tensor& t) { return t.ndim == 2 ? D3{1, t.dim(0), t.dim(1)} : D3{t.dim(0), t.dim(1), t.dim(2)}; }

__device__ __forceinline__ float mag(float v) { return isfinite(v) ? fabsf(v) : INFINITY; }

// E4M3 codes of values of a finite tile with scale 2^k (inv = 2^-k; x · inv is exact), by the hardware conversion
// (cvt.rn.satfinite.e4m3x2.f32: round to nearest even, saturating, as fp8::e4m3_from_float; one instruction per pair
// where the integer emulation took dozens, which made the quantise passes compute-bound). GpuFp8Codec and
// GpuFp8Codes.HardwareCodesMatchCpuOnFloatPatterns check the two agree. A non-finite tile's codes are all NaN.
__device__ __forceinline__ uint32_t code_pair(float a, float b, float inv) {
  return uint32_t(__nv_cvt_float2_to_fp8x2(make_float2(a * inv, b * inv), __NV_SATFINITE, __NV_E4M3));
}
__device__ __forceinline__ uint8_t code_one(float x, float inv, bool finite) {
  return finite ? uint8_t(__nv_cvt_float_to_fp8(x * inv, __NV_SATFINITE, __NV_E4M3)) : fp8::kE4M3Nan;
}
__device__ __forceinline__ float inv_scale(float amax, bool finite) {
  return finite ? fp8::pow2(-fp8::scale_exponent(amax)) : 1.f;
}

// Row tiles: 16 lanes a 1x128 tile, 8 elements a lane, so a warp quantises two tiles at once.
constexpr int kLaneElems = 8, kTileLanes = int(kTile) / kLaneElems;

// 8 consecutive elements x[i..i+7] of a bf16 or f32 source as floats: one 16-byte load (bf16) or two (f32) when vec
// (i a multiple of 8, x 16-byte aligned), else element by element, zeros from n on.
__device__ __forceinline__ void load8(float (&v)[8], const void* __restrict__ x, int64_t i, bool xb, int64_t n,
                                      bool vec) {
  if (vec && xb) {
    const uint4 w = *reinterpret_cast<const uint4*>(static_cast<const bf16*>(x) + i);
    const uint32_t parts[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&parts[j]));
      v[2 * j] = f.x, v[2 * j + 1] = f.y;
    }
    return;
  }
  if (vec) {
    const float4 a = *reinterpret_cast<const float4*>(static_cast<const float*>(x) + i);
    const float4 b = *reinterpret_cast<const float4*>(static_cast<const float*>(x) + i + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    return;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = j < n ? ld(x, i + j, xb) : 0.f;
}

// The inverse: v[0..min(n, 8)) to x[i..], one 16-byte store (bf16) or two (f32) when vec.
__device__ __forceinline__ void store8(void* __restrict__ x, int64_t i, bool xb, const float (&v)[8], int64_t n,
                                       bool vec) {
  if (vec && xb) {
    uint32_t parts[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
      parts[j] = *reinterpret_cast<const uint32_t*>(&h);
    }
    *reinterpret_cast<uint4*>(static_cast<bf16*>(x) + i) = make_uint4(parts[0], parts[1], parts[2], parts[3]);
    return;
  }
  if (vec) {
    *reinterpret_cast<float4*>(static_cast<float*>(x) + i) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4*>(static_cast<float*>(x) + i + 4) = make_float4(v[4], v[5], v[6], v[7]);
    return;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (j < n) st(x, i + j, xb, v[j]);
}

// The maximum over the 16 lanes of one tile (the xor partners stay inside each half-warp).
__device__ __forceinline__ float tile_max(float v) {
#pragma unroll
  for (int o = kTileLanes / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// What fp8_quantize_rows quantises: the source's values.
struct RowsSource {
  const void* x;
  bool xb;
  __device__ __forceinline__ void operator()(float (&v)[8], int64_t i, int64_t n, bool vec) const {
    load8(v, x, i, xb, n, vec);
  }
};
// fp8_swiglu_forward: out = silu(gate)·up computed as swiglu.cu does (the same f32 expression), stored in out's
// dtype and quantised from the stored value, so the codes equal swiglu_forward followed by fp8_quantize_rows.
struct SwigluSource {
  void* out;
  const void* gate;
  const void* up;
  bool b16;
  __device__ __forceinline__ void operator()(float (&v)[8], int64_t i, int64_t n, bool vec) const {
    float g[8], u[8];
    load8(g, gate, i, b16, n, vec);
    load8(u, up, i, b16, n, vec);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float sg = 1.f / (1.f + expf(-g[j]));
      const float y = g[j] * sg * u[j];
      v[j] = j < n ? (b16 ? __bfloat162float(__float2bfloat16_rn(y)) : y) : 0.f;  // the stored value
    }
    store8(out, i, b16, v, n, vec);
  }
};

// 1x128 row tiles: one block per row (b, r) = (blockIdx.y, blockIdx.x), its warps striding over the row's tile pairs
// (no per-thread index division); a tile's scale goes to scale[(b, t, r)] (cuBLASLt's VEC128 layout). vec: K % 8 == 0,
// the source 16-byte and q 8-byte aligned (the callers check), so a lane's elements are one or two vector accesses and
// its 8 codes one 8-byte store; the scalar path covers the rest with the same arithmetic.
template <class Source>
static __global__ void quantize_rows_kernel(uint8_t* __restrict__ q, float* __restrict__ scale, Source src, int64_t R,
                                            int64_t K, bool vec) {
  const int64_t b = blockIdx.y, r = blockIdx.x, T = fp8::tiles(K), row = (b * R + r) * K;
  const int lane = threadIdx.x & 31, half = lane / kTileLanes, sub = lane % kTileLanes;
  const int warps = int(blockDim.x >> 5);
  for (int64_t p = threadIdx.x >> 5; p < (T + 1) / 2; p += warps) {  // whole warps iterate together (shuffles)
    const int64_t t = 2 * p + half, c0 = t * kTile + sub * kLaneElems;
    const int64_t n = t < T ? K - c0 : 0;  // this lane's elements in the row (<= 0: none)
    const bool lane_vec = vec && n > 0;  // K % 8 == 0: then all 8 are in
    float v[8];
    src(v, row + c0, n, lane_vec);
    float amax = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) amax = fmaxf(amax, mag(v[j]));
    amax = tile_max(amax);
    const bool finite = amax <= FLT_MAX;
    if (t < T && sub == 0) scale[(b * T + t) * R + r] = fp8::tile_scale(amax, finite);
    const float inv = inv_scale(amax, finite);
    if (lane_vec) {
      uint2 w = make_uint2(0x7F7F7F7Fu, 0x7F7F7F7Fu);
      if (finite) {
        w.x = code_pair(v[0], v[1], inv) | code_pair(v[2], v[3], inv) << 16;
        w.y = code_pair(v[4], v[5], inv) | code_pair(v[6], v[7], inv) << 16;
      }
      *reinterpret_cast<uint2*>(q + row + c0) = w;
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (j < n) q[row + c0 + j] = code_one(v[j], inv, finite);
    }
  }
}

// The row kernels' launch: grid (R, B), up to 8 warps a row.
template <class Source>
void launch_rows(uint8_t* q, float* scale, const Source& src, int64_t B, int64_t R, int64_t K, bool vec, Stream s) {
  MONTA_CHECK(B <= 65535 && R <= 2147483647LL, "fp8 row quantise: too many rows for one grid");
  const int64_t pairs = (fp8::tiles(K) + 1) / 2;
  const int threads = 32 * int(std::min<int64_t>(8, pairs));
  quantize_rows_kernel<<<dim3(unsigned(R), unsigned(B)), threads, 0, stream_of(s)>>>(q, scale, src, R, K, vec);
  MONTA_LAUNCH_CHECK();
}

// fp8_pack_rows: one warp per 1x128 tile, 4 elements a lane, written into the packed row (codes, then the scale at
// its slot); the warp of tile 0 also zeroes the row's padding bytes so the payload is deterministic.
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
  const float inv = inv_scale(amax, finite);
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (c0 + j < K) row[c0 + j] = code_one(v[j], inv, finite);
  if (t == 0) {
    for (int64_t i = K + lane; i < at; i += 32) row[i] = 0;
    for (int64_t i = at + 4 * T + lane; i < P; i += 32) row[i] = 0;
  }
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

// The transposing quantisers, fp8_quantize_cols and fp8_quantize_blocks, share one kernel: a block per (b, 128-row
// tile t, panel of P columns), P/8 x 32 threads, thread (tx, ty) holding rows 4·ty .. 4·ty + 3 of the tile and
// columns 8·tx .. 8·tx + 7 of the panel (one 16-byte load a row for bf16, two for f32; a warp reads 4 rows of 128
// bytes). Column maxima over the tile go through shared memory. Cols (P = 64): one scale per column of the tile.
// Blocks (P = 128): the panel is one 128x128 block, its maximum the one scale; the row-major codes q go straight from
// registers (8 codes, one 8-byte store), and the scale rows' padding is zeroed by the last block of a row (column).
// Both: each thread's 4 codes of a column are consecutive in the transposed output, one word in shared memory, and
// the panel goes out as 16-byte stores (a column's 128 codes are one contiguous run of qt). vec_load: K % 8 == 0 and
// x 16-byte aligned; vec_store: R % 16 == 0, qt 16-byte and q 8-byte aligned (the launchers check); otherwise element
// by element, with the same arithmetic.
constexpr int kRowsPerThread = 4, kRowQuads = int(kTile) / kRowsPerThread;
template <int P, bool kBlocks>
static __global__ void __launch_bounds__(P * 4) transpose_quantize_kernel(
    uint8_t* __restrict__ q, float* __restrict__ scale, uint8_t* __restrict__ qt, float* __restrict__ scale_t,
    const void* __restrict__ x, bool xb, int64_t R, int64_t K, bool vec_load, bool vec_store) {
  constexpr int kThreads = P * 4;
  __shared__ float red[kRowQuads][P];  // per (row quad, column) maxima
  __shared__ float col_max[P];
  __shared__ uint32_t codes[P][kRowQuads + 1];  // column cc's codes, 4 rows a word (+1: fewer bank conflicts)
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * (P / kLaneElems) + tx;
  const int64_t T = fp8::tiles(R), TK = fp8::tiles(K);
  const int64_t b = blockIdx.z, t = blockIdx.y, c0 = int64_t(blockIdx.x) * P, r0 = t * kTile;
  const int64_t c = c0 + kLaneElems * tx;
  float v[kRowsPerThread][kLaneElems];
  float amax[kLaneElems];
#pragma unroll
  for (int k = 0; k < kLaneElems; ++k) amax[k] = 0.f;
#pragma unroll
  for (int j = 0; j < kRowsPerThread; ++j) {
    const int64_t r = r0 + kRowsPerThread * ty + j;
    const int64_t n = r < R ? K - c : 0;
    load8(v[j], x, (b * R + r) * K + c, xb, n, vec_load && n > 0);
#pragma unroll
    for (int k = 0; k < kLaneElems; ++k) amax[k] = fmaxf(amax[k], mag(v[j][k]));
  }
#pragma unroll
  for (int k = 0; k < kLaneElems; ++k) red[ty][kLaneElems * tx + k] = amax[k];
  __syncthreads();
  {  // column cc = tid / 4: 4 threads reduce 8 row quads each, then one another (xor 1, 2 stay within the 4)
    const int cc = tid >> 2, part = tid & 3;
    float m = 0.f;
#pragma unroll
    for (int y = 0; y < kRowQuads / 4; ++y) m = fmaxf(m, red[(kRowQuads / 4) * part + y][cc]);
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
    m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
    if (part == 0) {
      col_max[cc] = m;
      if (!kBlocks && c0 + cc < K) scale_t[(b * T + t) * K + c0 + cc] = fp8::tile_scale(m, m <= FLT_MAX);
    }
  }
  __syncthreads();
  if (kBlocks) {  // the block's maximum, by warp 0, into col_max[0]
    if (tid < 32) {
      float m = 0.f;
      for (int i = tid; i < P; i += 32) m = fmaxf(m, col_max[i]);
      m = warp_max(m);
      __syncwarp();
      if (tid == 0) {
        col_max[0] = m;
        const float sc = fp8::tile_scale(m, m <= FLT_MAX);
        const int64_t bi = blockIdx.x, lds = fp8::block_scale_ld(K), lds_t = fp8::block_scale_ld(R);
        if (scale) {
          scale[(b * T + t) * lds + bi] = sc;
          if (bi == TK - 1)
            for (int64_t p = TK; p < lds; ++p) scale[(b * T + t) * lds + p] = 0.f;
        }
        if (scale_t) {
          scale_t[(b * TK + bi) * lds_t + t] = sc;
          if (t == T - 1)
            for (int64_t p = T; p < lds_t; ++p) scale_t[(b * TK + bi) * lds_t + p] = 0.f;
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int k = 0; k < kLaneElems; ++k) {
    const float m = col_max[kBlocks ? 0 : kLaneElems * tx + k];
    const bool finite = m <= FLT_MAX;
    const float inv = inv_scale(m, finite);
    codes[kLaneElems * tx + k][ty] =
        finite ? code_pair(v[0][k], v[1][k], inv) | code_pair(v[2][k], v[3][k], inv) << 16 : 0x7F7F7F7Fu;
  }
  if (kBlocks && q) {  // row-major codes: this thread's 8 columns of each of its rows
    const float m = col_max[0];
    const bool finite = m <= FLT_MAX;
    const float inv = inv_scale(m, finite);
#pragma unroll
    for (int j = 0; j < kRowsPerThread; ++j) {
      const int64_t r = r0 + kRowsPerThread * ty + j;
      if (r >= R || c >= K) continue;
      uint8_t* dst = q + (b * R + r) * K + c;
      if (vec_store && vec_load) {
        uint2 w = make_uint2(0x7F7F7F7Fu, 0x7F7F7F7Fu);
        if (finite) {
          w.x = code_pair(v[j][0], v[j][1], inv) | code_pair(v[j][2], v[j][3], inv) << 16;
          w.y = code_pair(v[j][4], v[j][5], inv) | code_pair(v[j][6], v[j][7], inv) << 16;
        }
        *reinterpret_cast<uint2*>(dst) = w;
      } else {
        for (int k = 0; k < kLaneElems && c + k < K; ++k) dst[k] = code_one(v[j][k], inv, finite);
      }
    }
  }
  if (!qt) return;
  __syncthreads();
  // Column cc of the panel is the contiguous run qt[(b, c0 + cc), r0 .. r0 + 127]: 8 pieces of 16 codes.
  for (int w = tid; w < P * 8; w += kThreads) {
    const int cc = w >> 3, piece = w & 7;
    const int64_t col = c0 + cc, r = r0 + 16 * piece;
    if (col >= K || r >= R) continue;
    const uint32_t* src = &codes[cc][4 * piece];
    uint8_t* dst = qt + (b * K + col) * R + r;
    if (vec_store && r + 15 < R) {
      *reinterpret_cast<uint4*>(dst) = make_uint4(src[0], src[1], src[2], src[3]);
    } else {
      for (int k = 0; k < 16 && r + k < R; ++k) dst[k] = uint8_t(src[k / 4] >> (8 * (k % 4)));
    }
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
  if (d.b * d.r * d.c == 0) return;
  const bool vec = d.c % kLaneElems == 0 && aligned(x.data, 16) && aligned(q.data, 8);
  launch_rows(q.as<uint8_t>(), scale.as<float>(), RowsSource{x.data, is_bf16(x)}, d.b, d.r, d.c, vec, s);
}

void fp8_quantize_cols(Tensor qt, Tensor scale, const Tensor& x, Stream s) {
  const char* op = "fp8_quantize_cols";
  need_source(x, op, "x");
  need_dtype(qt, DType::e4m3, op, "qt");
  need_dtype(scale, DType::f32, op, "scale");
  const D3 d = d3(x);
  if (d.b * d.r * d.c == 0) return;
  MONTA_CHECK(d.b <= 65535 && fp8::tiles(d.r) <= 65535, std::string(op) + ": too many tiles for one grid, " + x.str());
  constexpr int P = 64;
  const dim3 grid(unsigned((d.c + P - 1) / P), unsigned(fp8::tiles(d.r)), unsigned(d.b));
  const bool vec_load = d.c % kLaneElems == 0 && aligned(x.data, 16), vec_store = d.r % 16 == 0 && aligned(qt.data, 16);
  transpose_quantize_kernel<P, false><<<grid, dim3(P / kLaneElems, kRowQuads), 0, stream_of(s)>>>(
      nullptr, nullptr, qt.as<uint8_t>(), scale.as<float>(), x.data, is_bf16(x), d.r, d.c, vec_load, vec_store);
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
  constexpr int P = int(kTile);
  const dim3 grid(unsigned(fp8::tiles(d.c)), unsigned(fp8::tiles(d.r)), unsigned(d.b));
  const bool vec_load = d.c % kLaneElems == 0 && aligned(w.data, 16);
  const bool vec_store = d.r % 16 == 0 && (qt.empty() || aligned(qt.data, 16)) && (q.empty() || aligned(q.data, 8));
  transpose_quantize_kernel<P, true><<<grid, dim3(P / kLaneElems, kRowQuads), 0, stream_of(s)>>>(
      q.empty() ? nullptr : q.as<uint8_t>(), q.empty() ? nullptr : scale.as<float>(),
      qt.empty() ? nullptr : qt.as<uint8_t>(), qt.empty() ? nullptr : scale_t.as<float>(), w.data, is_bf16(w), d.r,
      d.c, vec_load, vec_store);
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
  if (d.b * d.r * d.c == 0) return;
  const bool vec = d.c % kLaneElems == 0 && aligned(out.data, 16) && aligned(gate.data, 16) && aligned(up.data, 16) &&
                   aligned(q.data, 8);
  launch_rows(q.as<uint8_t>(), scale.as<float>(), SwigluSource{out.data, gate.data, up.data, is_bf16(out)}, d.b, d.r,
              d.c, vec, s);
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
      cublasLtMatmulHeuristicResult_t res[kTuneCandidates];
      std::memset(res, 0, sizeof(res));
      int found = 0;
      const cublasStatus_t st =
          cublasLtMatmulAlgoGetHeuristic(h, d.op, d.a, d.b, d.c, d.c, pref, kTuneCandidates, res, &found);
      cublasLtMatmulPreferenceDestroy(pref);
      MONTA_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0,
                  std::string("cuBLASLt has no block-scaled FP8 algorithm for M=") + std::to_string(M) +
                      " N=" + std::to_string(N) + " K=" + std::to_string(K) + " (" + dtype_name(out_dtype) + " out, " +
                      (blocks ? "1x128 x 128x128" : "1x128 x 1x128") + " scales): this needs cuBLAS >= 12.9 on sm_90");
      algo = res[0].algo;
      if (found > 1 && 2.0 * double(M) * double(N) * double(K) >= kTuneMinFlops && settings().gemm_tune)
        algo = lt_tune(h, d, found, res, b, a, size_t(M * N) * dtype_size(out_dtype), beta, stream_of(s));
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
