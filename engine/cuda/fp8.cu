// CUDA FP8 E4M3 quantisation: 1x128 row tiles (one warp per tile), 1x128 tiles down the columns written transposed
// (a shared-memory transpose per 128x32 panel), and 128x128 weight blocks with an optional transposed copy. Codes and
// scales come from engine/fp8_math.h, the CPU's arithmetic, so both backends give the same bits. A non-finite element
// enters the tile maximum as +inf, which marks the tile (NaN scale and codes, fp8::tile_scale).
#include <cfloat>

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

// One warp per (b, r, tile): 4 elements a lane.
static __global__ void quantize_rows_kernel(uint8_t* __restrict__ q, float* __restrict__ scale, const void* __restrict__ x,
                                            bool xb, int64_t B, int64_t R, int64_t K) {
  const int64_t T = fp8::tiles(K);
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= B * R * T) return;  // whole warps leave together
  const int64_t t = warp % T, br = warp / T, b = br / R, r = br % R;
  const int64_t row = br * K, c0 = t * kTile + lane * 4;
  float v[4];
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    v[j] = c0 + j < K ? ld(x, row + c0 + j, xb) : 0.f;
    amax = fmaxf(amax, mag(v[j]));
  }
  amax = warp_max(amax);
  const bool finite = amax <= FLT_MAX;
  if (lane == 0) scale[(b * T + t) * R + r] = fp8::tile_scale(amax, finite);
  const float inv = finite ? fp8::pow2(-fp8::scale_exponent(amax)) : 1.f;
#pragma unroll
  for (int j = 0; j < 4; ++j)
    if (c0 + j < K) q[row + c0 + j] = fp8::quantize(v[j], inv, finite);
}

// One block of 32x8 threads per (b, 128-row tile, 32 columns): column maxima over the tile, then the codes through
// shared memory so the transposed writes run along R.
constexpr int kColsPanel = 32;
static __global__ void quantize_cols_kernel(uint8_t* __restrict__ qt, float* __restrict__ scale, const void* __restrict__ x,
                                            bool xb, int64_t R, int64_t K) {
  __shared__ float red[8][kColsPanel];
  __shared__ uint8_t codes[kColsPanel][kTile + 4];
  const int64_t T = fp8::tiles(R);
  const int64_t b = blockIdx.z, t = blockIdx.y, c = int64_t(blockIdx.x) * kColsPanel + threadIdx.x;
  const int64_t r0 = t * kTile;
  const bool col_ok = c < K;
  float v[kTile / 8];
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < kTile / 8; ++j) {
    const int64_t r = r0 + threadIdx.y + 8 * j;
    v[j] = col_ok && r < R ? ld(x, (b * R + r) * K + c, xb) : 0.f;
    amax = fmaxf(amax, mag(v[j]));
  }
  red[threadIdx.y][threadIdx.x] = amax;
  __syncthreads();
  amax = red[0][threadIdx.x];
#pragma unroll
  for (int y = 1; y < 8; ++y) amax = fmaxf(amax, red[y][threadIdx.x]);
  const bool finite = amax <= FLT_MAX;
  if (threadIdx.y == 0 && col_ok) scale[(b * T + t) * K + c] = fp8::tile_scale(amax, finite);
  const float inv = finite ? fp8::pow2(-fp8::scale_exponent(amax)) : 1.f;
#pragma unroll
  for (int j = 0; j < kTile / 8; ++j) codes[threadIdx.x][threadIdx.y + 8 * j] = fp8::quantize(v[j], inv, finite);
  __syncthreads();
  const int tid = threadIdx.y * kColsPanel + threadIdx.x;
  for (int i = tid; i < kColsPanel * kTile; i += kColsPanel * 8) {
    const int cc = i / kTile, rr = i % kTile;
    const int64_t col = int64_t(blockIdx.x) * kColsPanel + cc, r = r0 + rr;
    if (col < K && r < R) qt[(b * K + col) * R + r] = codes[cc][rr];
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
    scale[(b * TO + bo) * lds + bi] = s;
    if (bi == TI - 1)
      for (int64_t p = TI; p < lds; ++p) scale[(b * TO + bo) * lds + p] = 0.f;
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
      q[(b * O + o) * I + i] = code;
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

}  // namespace

void fp8_quantize_rows(Tensor q, Tensor scale, const Tensor& x, Stream s) {
  const char* op = "fp8_quantize_rows";
  need_source(x, op, "x");
  need_dtype(q, DType::e4m3, op, "q");
  need_dtype(scale, DType::f32, op, "scale");
  const D3 d = d3(x);
  const int64_t warps = d.b * d.r * fp8::tiles(d.c);
  if (warps == 0) return;
  quantize_rows_kernel<<<grid_1d(warps * 32, 256), 256, 0, stream_of(s)>>>(q.as<uint8_t>(), scale.as<float>(), x.data,
                                                                           is_bf16(x), d.b, d.r, d.c);
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
  quantize_cols_kernel<<<grid, dim3(kColsPanel, 8), 0, stream_of(s)>>>(qt.as<uint8_t>(), scale.as<float>(), x.data,
                                                                      is_bf16(x), d.r, d.c);
  MONTA_LAUNCH_CHECK();
}

void fp8_quantize_blocks(Tensor q, Tensor scale, Tensor qt, Tensor scale_t, const Tensor& w, Stream s) {
  const char* op = "fp8_quantize_blocks";
  need_source(w, op, "w");
  need_dtype(q, DType::e4m3, op, "q");
  need_dtype(scale, DType::f32, op, "scale");
  if (!qt.empty()) {
    need_dtype(qt, DType::e4m3, op, "qt");
    need_dtype(scale_t, DType::f32, op, "scale_t");
  }
  const D3 d = d3(w);
  if (d.b * d.r * d.c == 0) return;
  MONTA_CHECK(d.b <= 65535 && fp8::tiles(d.r) <= 65535, std::string(op) + ": too many blocks for one grid, " + w.str());
  const dim3 grid(unsigned(fp8::tiles(d.c)), unsigned(fp8::tiles(d.r)), unsigned(d.b));
  quantize_blocks_kernel<<<grid, 256, 0, stream_of(s)>>>(q.as<uint8_t>(), scale.as<float>(),
                                                         qt.empty() ? nullptr : qt.as<uint8_t>(),
                                                         qt.empty() ? nullptr : scale_t.as<float>(), w.data, is_bf16(w),
                                                         d.r, d.c);
  MONTA_LAUNCH_CHECK();
}

}  // namespace monta::engine::cuda
