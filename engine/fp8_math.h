// FP8 E4M3 arithmetic written once for the host and the device: encoding a float (round to nearest even, saturating),
// decoding, and the power-of-two scale of a 128-element tile or 128x128 block. The CPU quantise ops call all of it;
// the CUDA kernels take the scales from here and encode with the GPU's conversion instruction, which rounds exactly
// as e4m3_from_float (tests/gpu/test_fp8.cpp), so a quantised tensor has the same bits on either backend
// (docs/fp8.md).
#pragma once
#include <cstdint>
#include <cstring>

#include "engine/host_device.h"

namespace monta::engine::fp8 {

constexpr int64_t kTile = 128;      // elements per scaling tile along the contraction dimension (and block side)
constexpr float kE4M3Max = 448.f;   // largest finite E4M3 magnitude: 1.75 · 2^8
constexpr uint8_t kE4M3Nan = 0x7F;  // S.1111.111 is E4M3's only NaN; there is no infinity
constexpr int kMinScaleExp = -120;  // scales stay >= 2^-120, so 1/scale is a finite float

// Number of kTile-wide tiles covering n elements; the row stride of a 128x128 block-scale matrix (cuBLASLt wants the
// leading dimension of a BLK128x128 scale tensor padded to a multiple of 4 floats).
MONTA_HD int64_t tiles(int64_t n) { return (n + kTile - 1) / kTile; }
MONTA_HD int64_t block_scale_ld(int64_t n) { return (tiles(n) + 3) / 4 * 4; }
// Bytes of one packed row of n elements (fp8_pack_rows, the FP8 dispatch payload): n codes padded to a multiple of 4,
// then the row's tiles(n) fp32 scales, so the scales are 4-byte aligned whenever the row is.
MONTA_HD int64_t packed_scales_at(int64_t n) { return (n + 3) / 4 * 4; }
MONTA_HD int64_t packed_row_bytes(int64_t n) { return packed_scales_at(n) + 4 * tiles(n); }

MONTA_HD uint32_t f32_bits(float f) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
MONTA_HD float f32_from_bits(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// float -> E4M3 code, as CUDA's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3): round to nearest even, finite
// values beyond 448 (and ±inf) saturate to ±448, NaN stays NaN. Integer arithmetic only: exact on both sides.
MONTA_HD uint8_t e4m3_from_float(float x) {
  const uint32_t u = f32_bits(x);
  const uint8_t sign = uint8_t((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return uint8_t(sign | kE4M3Nan);
  if (a < 0x3C800000u) {  // |x| < 2^-6: E4M3 subnormals m·2^-9 (m = 8 is the smallest normal, code 0x08)
    // Round |x|·2^9 to an integer, ties to even, on the float's bits: |x| < 2^-6 keeps the shifted mantissa below 2^24.
    const int e = int(a >> 23);  // biased exponent; |x| = (implicit | mantissa) · 2^(e - 150)
    if (e < 126 - 9) return sign;  // below 2^-10, under half the smallest subnormal (e <= 116 holds |x| < 2^-10)
    const uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;  // e >= 117: a normal float
    const int shift = 141 - e;                            // |x|·2^9 = mant · 2^-shift, shift in [21, 24]
    const uint32_t half = 1u << (shift - 1), rest = mant & ((1u << shift) - 1u);
    uint32_t m = mant >> shift;
    if (rest > half || (rest == half && (m & 1u))) ++m;
    return uint8_t(sign | m);
  }
  // Normal: keep 3 mantissa bits, round to nearest even by adding below the cut; a carry moves into the exponent.
  uint32_t code = ((a + 0x7FFFFu + ((a >> 20) & 1u)) >> 20) - ((127u - 7u) << 3);
  if (code > 0x7Eu) code = 0x7Eu;  // above 448 (incl. infinity): saturate
  return uint8_t(sign | code);
}

MONTA_HD float e4m3_to_float(uint8_t c) {
  const uint32_t sign = uint32_t(c & 0x80u) << 24;
  const uint32_t e = (c >> 3) & 15u, m = c & 7u;
  if (e == 15u && m == 7u) return f32_from_bits(sign | 0x7FC00000u);
  if (e == 0u) return f32_from_bits(sign | f32_bits(float(m) * 0.001953125f));  // m · 2^-9, exact
  return f32_from_bits(sign | ((e + 120u) << 23) | (m << 20));
}

// The scale of a tile with largest magnitude amax: the smallest power of two 2^k with amax / 2^k <= 448, k >= -120.
// A power of two makes x / scale exact (so quantising and dequantising change nothing but E4M3's rounding) and needs
// no division whose rounding could differ between compilers. amax = 0 gives 2^-120 (every code 0). Non-finite amax:
// the caller marks the tile instead (tile_scale).
MONTA_HD int scale_exponent(float amax) {
  const uint32_t a = f32_bits(amax) & 0x7FFFFFFFu;
  const int e = int(a >> 23);
  if (e == 0) return kMinScaleExp;  // zero or subnormal: far below 448 · 2^-120
  // amax = 1.m · 2^(e-127); 448 = 1.75 · 2^8: k = e - 135 when 1.m <= 1.75, else one more.
  const int k = e - 135 + ((a & 0x7FFFFFu) > 0x600000u ? 1 : 0);
  return k < kMinScaleExp ? kMinScaleExp : k;
}
MONTA_HD float pow2(int k) { return f32_from_bits(uint32_t(k + 127) << 23); }  // k in [-126, 127]

// A tile's scale: pow2(scale_exponent(amax)) for a finite tile, NaN for one holding a non-finite value (its codes are
// all NaN too), so an overflow upstream reaches the GEMM's output and the trainer's non-finite check instead of being
// clamped to ±448 silently.
MONTA_HD float tile_scale(float amax, bool finite) {
  return finite ? pow2(scale_exponent(amax)) : f32_from_bits(0x7FC00000u);
}

// Quantise one value of a finite tile with scale 2^k: x · 2^-k is exact, so only E4M3's rounding remains.
MONTA_HD uint8_t quantize(float x, float inv_scale, bool finite) {
  return finite ? e4m3_from_float(x * inv_scale) : kE4M3Nan;
}

}  // namespace monta::engine::fp8
