// FP8 E4M3 on the CPU: the encoder against known codes (subnormals, ties, saturation, NaN) and against a brute-force
// nearest-code search, the decoder's round trip, the power-of-two tile scale, and the three quantise ops' tiles,
// scales and layouts (docs/fp8.md).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "engine/fp8_math.h"
#include "engine/ops/fp8.h"
#include "engine/ops/swiglu.h"
#include "test_util.h"

namespace monta::enginetest {
namespace {

using engine::fp8::e4m3_from_float;
using engine::fp8::e4m3_to_float;

// The reference: the finite code nearest to x, ties to the even code (E4M3's last mantissa bit is the code's last
// bit), magnitudes beyond 448 saturated; found by trying all 254 finite codes.
uint8_t nearest_code(float x) {
  if (std::isnan(x)) return std::signbit(x) ? 0xFF : 0x7F;
  const double a = std::fabs(double(x));
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  if (a >= 448.0) return sign | 0x7E;
  int best = 0;
  double best_d = std::numeric_limits<double>::infinity();
  for (int c = 0; c <= 0x7E; ++c) {
    const double d = std::fabs(double(e4m3_to_float(uint8_t(c))) - a);
    if (d < best_d || (d == best_d && (c & 1) == 0)) {
      best_d = d;
      best = c;
    }
  }
  return uint8_t(sign | best);
}

TEST(Fp8Codec, KnownEncodings) {
  struct Case {
    float x;
    uint8_t code;
  };
  const float sub = std::ldexp(1.f, -9);  // smallest subnormal
  const Case cases[] = {
      {0.f, 0x00},          {-0.f, 0x80},
      {1.f, 0x38},          {-2.f, 0xC0},
      {448.f, 0x7E},        {-448.f, 0xFE},
      {240.f, 0x77},        {0.0625f, 0x18},          // 1.875·2^7; 2^-4
      {464.f, 0x7E},        {470.f, 0x7E},            // tie 448|480 -> even (448); beyond: saturate
      {1e30f, 0x7E},        {-1e30f, 0xFE},
      {INFINITY, 0x7E},     {-INFINITY, 0xFE},        // saturating conversion: ±inf -> ±448
      {1.0625f, 0x38},      {1.1875f, 0x3A},          // ties: 1 | 1.125 -> 1; 1.125 | 1.25 -> 1.25
      {1.0626f, 0x39},      {1.9375f, 0x40},          // just above a tie; 1.875 | 2 -> 2 (carry into the exponent)
      {sub, 0x01},          {-sub, 0x81},
      {7 * sub, 0x07},      {std::ldexp(1.f, -6), 0x08},  // largest subnormal; smallest normal
      {0.5f * sub, 0x00},   {1.5f * sub, 0x02},       // subnormal ties: 0 | 1 -> 0; 1 | 2 -> 2
      {2.5f * sub, 0x02},   {7.5f * sub, 0x08},       // 2 | 3 -> 2; 7 | 8 -> 8 (the smallest normal)
      {0.51f * sub, 0x01},  {std::ldexp(1.f, -11), 0x00},
      {1e-30f, 0x00},       {-1e-42f, 0x80},          // far below; a float subnormal
  };
  for (const Case& c : cases) EXPECT_EQ(int(e4m3_from_float(c.x)), int(c.code)) << "x = " << c.x;
  EXPECT_EQ(e4m3_from_float(NAN) & 0x7F, 0x7F);
  EXPECT_EQ(int(e4m3_from_float(-NAN)), 0xFF);
}

TEST(Fp8Codec, MatchesNearestCodeSearch) {
  std::mt19937 g(7);
  std::uniform_real_distribution<float> mant(-1.f, 1.f);
  std::uniform_int_distribution<int> ex(-14, 10);
  int checked = 0;
  for (int i = 0; i < 20000; ++i) {
    const float x = std::ldexp(mant(g), ex(g));
    ASSERT_EQ(int(e4m3_from_float(x)), int(nearest_code(x))) << "x = " << x;
    ++checked;
  }
  // Every midpoint between neighbouring codes, and a hair either side of it.
  for (int c = 0; c < 0x7E; ++c) {
    const float lo = e4m3_to_float(uint8_t(c)), hi = e4m3_to_float(uint8_t(c + 1));
    const float mid = 0.5f * (lo + hi);
    for (float x : {mid, std::nextafter(mid, 0.f), std::nextafter(mid, 1e9f)}) {
      ASSERT_EQ(int(e4m3_from_float(x)), int(nearest_code(x))) << "x = " << x;
      ASSERT_EQ(int(e4m3_from_float(-x)), int(nearest_code(-x))) << "x = " << -x;
    }
  }
  EXPECT_GT(checked, 0);
}

TEST(Fp8Codec, DecodeRoundTrip) {
  EXPECT_EQ(e4m3_to_float(0x01), std::ldexp(1.f, -9));
  EXPECT_EQ(e4m3_to_float(0x08), std::ldexp(1.f, -6));
  EXPECT_EQ(e4m3_to_float(0x7E), 448.f);
  EXPECT_EQ(e4m3_to_float(0xB9), -1.125f);
  EXPECT_TRUE(std::signbit(e4m3_to_float(0x80)) && e4m3_to_float(0x80) == 0.f);
  EXPECT_TRUE(std::isnan(e4m3_to_float(0x7F)));
  EXPECT_TRUE(std::isnan(e4m3_to_float(0xFF)));
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F) continue;
    EXPECT_EQ(int(e4m3_from_float(e4m3_to_float(uint8_t(c)))), c) << "code " << c;
  }
  // Decoded values increase strictly with the code (positive half).
  for (int c = 1; c < 0x7F; ++c) EXPECT_LT(e4m3_to_float(uint8_t(c - 1)), e4m3_to_float(uint8_t(c)));
}

TEST(Fp8Codec, ScaleIsTheSmallestPowerOfTwoThatFits) {
  using engine::fp8::scale_exponent;
  EXPECT_EQ(scale_exponent(448.f), 0);
  EXPECT_EQ(scale_exponent(std::nextafter(448.f, 1e9f)), 1);
  EXPECT_EQ(scale_exponent(224.f), -1);
  EXPECT_EQ(scale_exponent(1.f), -8);
  EXPECT_EQ(scale_exponent(0.f), engine::fp8::kMinScaleExp);
  EXPECT_EQ(scale_exponent(1e-38f), engine::fp8::kMinScaleExp);
  std::mt19937 g(3);
  std::uniform_real_distribution<double> lg(-30, 30);
  for (int i = 0; i < 2000; ++i) {
    const float amax = float(std::pow(2.0, lg(g)));
    const int k = scale_exponent(amax);
    EXPECT_LE(double(amax) / std::ldexp(1.0, k), 448.0) << amax;
    EXPECT_GT(double(amax) / std::ldexp(1.0, k - 1), 448.0) << amax;
  }
}

// Values with a spread of magnitudes (so tiles get different scales), in f32.
Buf spread_values(std::vector<int64_t> shape, uint32_t seed) {
  Buf b(shape, DType::f32);
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::uniform_int_distribution<int> ex(-20, 12);
  for (int64_t i = 0; i < b.numel(); ++i) b.t.as<float>()[i] = std::ldexp(u(g), ex(g) / 4 * 4 + (i % 7 == 0 ? 3 : 0));
  return b;
}

float amax_of(const std::vector<float>& v) {
  float a = 0;
  for (float x : v) a = std::max(a, std::fabs(x));
  return a;
}

// A tile's codes and scale against the definition: scale = 2^scale_exponent(amax), code = nearest(x / scale).
void expect_tile(const std::vector<float>& x, const std::vector<uint8_t>& q, float scale, const std::string& where) {
  const float amax = amax_of(x);
  EXPECT_EQ(scale, std::ldexp(1.f, engine::fp8::scale_exponent(amax))) << where;
  if (amax > 0) EXPECT_GT(amax / scale, 224.f) << where;
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(int(q[i]), int(nearest_code(x[i] / scale))) << where << " element " << i;
    const float back = e4m3_to_float(q[i]) * scale;  // within half a step of E4M3 at x's magnitude
    EXPECT_LE(std::fabs(back - x[i]), std::max(std::fabs(x[i]) * 0.0625f, scale * std::ldexp(1.f, -10))) << where;
  }
}

TEST(Fp8Quantize, RowTilesAlongTheLastDimension) {
  const int64_t B = 2, R = 3, K = 300;  // 3 tiles a row, the last one ragged (44)
  Buf x = spread_values({B, R, K}, 11);
  Buf q({B, R, K}, DType::e4m3), s({B, 3, R}, DType::f32);
  engine::fp8_quantize_rows(q, s, x);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t t = 0; t < 3; ++t) {
        std::vector<float> xv;
        std::vector<uint8_t> qv;
        for (int64_t c = t * 128; c < std::min(K, (t + 1) * 128); ++c) {
          xv.push_back(x.t.as<float>()[(b * R + r) * K + c]);
          qv.push_back(q.t.as<uint8_t>()[(b * R + r) * K + c]);
        }
        expect_tile(xv, qv, s.t.as<float>()[(b * 3 + t) * R + r], "tile b" + std::to_string(b) + " r" +
                                                                      std::to_string(r) + " t" + std::to_string(t));
      }
}

// The dispatch payload: each packed row holds fp8_quantize_rows' codes and scales of that row (the scales moved into
// the row), zero padding, and unpacks to code · scale exactly.
TEST(Fp8Quantize, PackedRowsHoldTheRowTilesAndUnpackExactly) {
  const int64_t B = 2, R = 3, K = 302;  // ragged last tile; K not a multiple of 4 (padding before the scales)
  const int64_t T = 3, at = engine::fp8::packed_scales_at(K), P = engine::fp8::packed_row_bytes(K) + 8;
  ASSERT_EQ(at, 304);
  Buf x = spread_values({B, R, K}, 13);
  x.t.as<float>()[R * K + 5] = INFINITY;  // one non-finite tile (b 1, r 0, t 0)
  Buf q({B, R, K}, DType::e4m3), s({B, T, R}, DType::f32), packed({B, R, P}, DType::u8);
  std::memset(packed.t.data, 0xAB, size_t(packed.numel()));
  engine::fp8_quantize_rows(q, s, x);
  engine::fp8_pack_rows(packed, x);
  Buf back({B, R, K}, DType::f32);
  engine::fp8_unpack_rows(back, packed);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < R; ++r) {
      const uint8_t* row = packed.t.as<uint8_t>() + (b * R + r) * P;
      for (int64_t c = 0; c < K; ++c) ASSERT_EQ(row[c], q.t.as<uint8_t>()[(b * R + r) * K + c]) << b << " " << r << " " << c;
      for (int64_t c = K; c < at; ++c) ASSERT_EQ(row[c], 0) << "padding before the scales";
      for (int64_t c = at + 4 * T; c < P; ++c) ASSERT_EQ(row[c], 0) << "padding after the scales";
      for (int64_t t = 0; t < T; ++t) {
        float sc;
        std::memcpy(&sc, row + at + 4 * t, 4);
        const float want = s.t.as<float>()[(b * T + t) * R + r];
        ASSERT_TRUE(sc == want || (std::isnan(sc) && std::isnan(want))) << "scale " << b << " " << r << " " << t;
        for (int64_t c = t * 128; c < std::min(K, (t + 1) * 128); ++c) {
          const float v = back.t.as<float>()[(b * R + r) * K + c];
          const float w = e4m3_to_float(row[c]) * want;
          ASSERT_TRUE(v == w || (std::isnan(v) && std::isnan(w))) << "unpack " << b << " " << r << " " << c;
        }
      }
    }
  EXPECT_TRUE(std::isnan(back.t.as<float>()[R * K]));  // the marked tile unpacks to NaN
  EXPECT_FALSE(std::isnan(back.t.as<float>()[R * K + 200]));
}

// The fused SwiGLU + quantise op: the SwiGLU output as swiglu_forward writes it, and its row tiles.
TEST(Fp8Quantize, FusedSwigluEqualsSwigluThenRowTiles) {
  const int64_t B = 2, R = 5, K = 200;
  Buf gate = spread_values({B, R, K}, 21), up = spread_values({B, R, K}, 22);
  Buf act({B, R, K}, DType::f32), q({B, R, K}, DType::e4m3), s({B, 2, R}, DType::f32);
  Buf act2({B, R, K}, DType::f32), q2({B, R, K}, DType::e4m3), s2({B, 2, R}, DType::f32);
  engine::fp8_swiglu_forward(act, q, s, gate, up);
  engine::swiglu_forward(act2, gate, up);
  engine::fp8_quantize_rows(q2, s2, act2);
  EXPECT_EQ(std::memcmp(act.t.data, act2.t.data, act.t.bytes()), 0);
  EXPECT_EQ(std::memcmp(q.t.data, q2.t.data, q.t.bytes()), 0);
  EXPECT_EQ(std::memcmp(s.t.data, s2.t.data, s.t.bytes()), 0);
  bool nonzero = false;
  for (int64_t i = 0; i < q.numel(); ++i) nonzero = nonzero || (q.t.as<uint8_t>()[i] & 0x7F) != 0;
  EXPECT_TRUE(nonzero);
}

TEST(Fp8Quantize, ColumnTilesEqualRowTilesOfTheTranspose) {
  const int64_t B = 2, R = 260, K = 40;
  Buf x = spread_values({B, R, K}, 12);
  Buf xt({B, K, R}, DType::f32);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < K; ++c) xt.t.as<float>()[(b * K + c) * R + r] = x.t.as<float>()[(b * R + r) * K + c];
  Buf qt({B, K, R}, DType::e4m3), s({B, 3, K}, DType::f32), qr({B, K, R}, DType::e4m3), sr({B, 3, K}, DType::f32);
  engine::fp8_quantize_cols(qt, s, x);
  engine::fp8_quantize_rows(qr, sr, xt);
  EXPECT_EQ(std::memcmp(qt.t.data, qr.t.data, qt.t.bytes()), 0);
  EXPECT_EQ(std::memcmp(s.t.data, sr.t.data, s.t.bytes()), 0);
  // And not trivially: the tiles have different scales.
  EXPECT_NE(s.t.as<float>()[0], s.t.as<float>()[K]);
}

TEST(Fp8Quantize, WeightBlocksAndTheirTranspose) {
  const int64_t B = 2, O = 200, I = 300;  // 2 x 3 blocks, ragged both ways; scale rows padded to 4
  Buf w = spread_values({B, O, I}, 13);
  Buf q({B, O, I}, DType::e4m3), s({B, 2, 4}, DType::f32), qt({B, I, O}, DType::e4m3), st({B, 3, 4}, DType::f32);
  for (int64_t i = 0; i < s.numel(); ++i) s.t.as<float>()[i] = -1.f;  // the padding must be written
  for (int64_t i = 0; i < st.numel(); ++i) st.t.as<float>()[i] = -1.f;
  engine::fp8_quantize_blocks(q, s, qt, st, w);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t bo = 0; bo < 2; ++bo) {
      for (int64_t bi = 0; bi < 3; ++bi) {
        std::vector<float> xv;
        std::vector<uint8_t> qv;
        for (int64_t o = bo * 128; o < std::min(O, (bo + 1) * 128); ++o)
          for (int64_t i = bi * 128; i < std::min(I, (bi + 1) * 128); ++i) {
            xv.push_back(w.t.as<float>()[(b * O + o) * I + i]);
            qv.push_back(q.t.as<uint8_t>()[(b * O + o) * I + i]);
          }
        const float sc = s.t.as<float>()[(b * 2 + bo) * 4 + bi];
        expect_tile(xv, qv, sc, "block " + std::to_string(bo) + "," + std::to_string(bi));
        EXPECT_EQ(st.t.as<float>()[(b * 3 + bi) * 4 + bo], sc);
      }
      EXPECT_EQ(s.t.as<float>()[(b * 2 + bo) * 4 + 3], 0.f);  // padding
    }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t bi = 0; bi < 3; ++bi)
      for (int64_t p = 2; p < 4; ++p) EXPECT_EQ(st.t.as<float>()[(b * 3 + bi) * 4 + p], 0.f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i)
        ASSERT_EQ(q.t.as<uint8_t>()[(b * O + o) * I + i], qt.t.as<uint8_t>()[(b * I + i) * O + o]);
  // The transpose alone (dgrad's use): the same codes and scales.
  Buf qt2({B, I, O}, DType::e4m3), st2({B, 3, 4}, DType::f32);
  engine::fp8_quantize_blocks(Tensor(), Tensor(), qt2, st2, w);
  EXPECT_EQ(std::memcmp(qt2.t.data, qt.t.data, qt.t.bytes()), 0);
  EXPECT_EQ(std::memcmp(st2.t.data, st.t.data, st.t.bytes()), 0);
}

TEST(Fp8Quantize, NonFiniteTileIsMarkedAndOthersAreNot) {
  Buf x({2, 256}, DType::f32);
  for (int64_t i = 0; i < x.numel(); ++i) x.t.as<float>()[i] = float(i % 13) - 6.f;
  x.t.as<float>()[5] = INFINITY;    // row 0, tile 0
  x.t.as<float>()[256 + 200] = NAN;  // row 1, tile 1
  Buf q({2, 256}, DType::e4m3), s({2, 2}, DType::f32);  // scale (T, R)
  engine::fp8_quantize_rows(q, s, x);
  const float* sc = s.t.as<float>();
  EXPECT_TRUE(std::isnan(sc[0 * 2 + 0]));  // tile 0 of row 0
  EXPECT_FALSE(std::isnan(sc[0 * 2 + 1]));  // tile 0 of row 1
  EXPECT_FALSE(std::isnan(sc[1 * 2 + 0]));  // tile 1 of row 0
  EXPECT_TRUE(std::isnan(sc[1 * 2 + 1]));  // tile 1 of row 1
  EXPECT_EQ(int(q.t.as<uint8_t>()[0]), 0x7F);
  EXPECT_EQ(sc[1 * 2 + 0], std::ldexp(1.f, engine::fp8::scale_exponent(6.f)));
}

TEST(Fp8Quantize, ZeroTileGivesZeroCodes) {
  Buf x({1, 128}, DType::f32), q({1, 128}, DType::e4m3), s({1, 1}, DType::f32);
  for (int64_t i = 0; i < 128; ++i) q.t.as<uint8_t>()[i] = 0x55;
  engine::fp8_quantize_rows(q, s, x);
  for (int64_t i = 0; i < 128; ++i) EXPECT_EQ(int(q.t.as<uint8_t>()[i]), 0);
  EXPECT_GT(s.t.as<float>()[0], 0.f);
}

// ---- the FP8 GEMM's CPU reference ----

// deq(q) in double from codes and a tile (scale (B, T(K), R)) or block (scale (B, T(R), Ld(K))) scale, by hand.
std::vector<double> deq(const Buf& q, const Buf& s, bool blocks) {
  const int64_t B = q.t.dim(0), R = q.t.dim(1), K = q.t.dim(2), TK = (K + 127) / 128, TR = (R + 127) / 128;
  const int64_t ld = (TK + 3) / 4 * 4;
  std::vector<double> v(size_t(q.numel()));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t k = 0; k < K; ++k) {
        const double sc = blocks ? s.t.as<float>()[(b * TR + r / 128) * ld + k / 128]
                                 : s.t.as<float>()[(b * TK + k / 128) * R + r];
        v[size_t((b * R + r) * K + k)] = double(e4m3_to_float(q.t.as<uint8_t>()[(b * R + r) * K + k])) * sc;
      }
  return v;
}

// wgrad quantises its activation operand in 128x128 blocks instead of 1x128 tiles (docs/fp8.md): with power-of-two
// scales both give every value above 1/14336 of its block's maximum exactly the same dequantised value; below that the
// block's coarser scale pushes values into E4M3's subnormals (the data reaches there, so the bound is exercised).
TEST(Fp8Quantize, BlocksKeepTheTileValuesAboveTheBlocksSubnormalRange) {
  const int64_t R = 256, K = 384;
  Buf x = spread_values({1, R, K}, 17);
  Buf qr({1, R, K}, DType::e4m3), sr({1, 3, R}, DType::f32), qb({1, R, K}, DType::e4m3), sb({1, 2, 4}, DType::f32);
  engine::fp8_quantize_rows(qr, sr, x);
  engine::fp8_quantize_blocks(qb, sb, Tensor(), Tensor(), x);
  const std::vector<double> tiles = deq(qr, sr, false), blocks = deq(qb, sb, true);
  std::vector<float> bmax(6, 0.f);
  const float* xv = x.t.as<float>();
  auto block = [](int64_t r, int64_t k) { return size_t(r / 128 * 3 + k / 128); };
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < K; ++k) bmax[block(r, k)] = std::max(bmax[block(r, k)], std::fabs(xv[r * K + k]));
  int64_t above = 0, below_differ = 0;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t k = 0; k < K; ++k) {
      const size_t i = size_t(r * K + k);
      if (std::fabs(xv[i]) >= bmax[block(r, k)] / 14336.f) {
        ++above;
        ASSERT_EQ(tiles[i], blocks[i]) << "x = " << xv[i] << " at (" << r << ", " << k << ")";
      } else if (tiles[i] != blocks[i]) {
        ++below_differ;
      }
    }
  EXPECT_GT(above, R * K / 4);  // the values span 35 binades: about 55% lie above the bound
  EXPECT_GT(below_differ, 0);
}

// out (B, M, N) = a (B, M, K) · b (B, N, K)ᵀ in double, and Σ|a||b| per element (the scale of rounding errors).
void gemm_ref(const std::vector<double>& a, const std::vector<double>& b, int64_t B, int64_t M, int64_t N, int64_t K,
              std::vector<double>& out, std::vector<double>& mag) {
  out.assign(size_t(B * M * N), 0.0);
  mag.assign(size_t(B * M * N), 0.0);
  for (int64_t e = 0; e < B; ++e)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const double x = a[size_t((e * M + m) * K + k)], y = b[size_t((e * N + n) * K + k)];
          out[size_t((e * M + m) * N + n)] += x * y;
          mag[size_t((e * M + m) * N + n)] += std::fabs(x * y);
        }
}

struct GemmCase {
  const char* name;
  bool blocks;
  DType out;
};

class Fp8Gemm : public testing::TestWithParam<GemmCase> {};

// The op equals the double-precision product of the dequantised operands within f32 (or f64) accumulation error,
// overwriting and accumulating.
TEST_P(Fp8Gemm, EqualsDoubleProductOfDequantisedOperands) {
  const GemmCase c = GetParam();
  const int64_t B = 2, M = 40, N = 150, K = 300;
  Buf a = spread_values({B, M, K}, 21), b = spread_values({B, N, K}, 22);
  Buf aq({B, M, K}, DType::e4m3), as({B, 3, M}, DType::f32), bq({B, N, K}, DType::e4m3);
  Buf bs = c.blocks ? Buf({B, 2, 4}, DType::f32) : Buf({B, 3, N}, DType::f32);
  engine::fp8_quantize_rows(aq, as, a);
  if (c.blocks)
    engine::fp8_quantize_blocks(bq, bs, Tensor(), Tensor(), b);
  else
    engine::fp8_quantize_rows(bq, bs, b);
  std::vector<double> ref, mag;
  gemm_ref(deq(aq, as, false), deq(bq, bs, c.blocks), B, M, N, K, ref, mag);
  const double eps = c.out == DType::f32 ? 1e-5 : 1e-13;
  const auto fp8s = c.blocks ? engine::Fp8Scaling::blocks : engine::Fp8Scaling::tiles;
  Buf out = random_buf({B, M, N}, c.out, 23);
  const std::vector<double> before = out.values();
  engine::fp8_gemm(out, aq, as, bq, bs, fp8s, engine::Write::accumulate);
  const std::vector<double> after = out.values();
  for (size_t i = 0; i < ref.size(); ++i)
    ASSERT_LE(std::fabs(after[i] - before[i] - ref[i]), eps * (mag[i] + 1.0)) << "accumulate, element " << i;
  engine::fp8_gemm(out, aq, as, bq, bs, fp8s);
  for (size_t i = 0; i < ref.size(); ++i)
    ASSERT_LE(std::fabs(out.get(int64_t(i)) - ref[i]), eps * mag[i]) << "overwrite, element " << i;
}

INSTANTIATE_TEST_SUITE_P(Cases, Fp8Gemm,
                         testing::Values(GemmCase{"blocks_f32", true, DType::f32},
                                         GemmCase{"tiles_f32", false, DType::f32},
                                         GemmCase{"blocks_f64", true, DType::f64}),
                         [](const testing::TestParamInfo<GemmCase>& i) { return std::string(i.param.name); });

// Against the unquantised product: E4M3 keeps 4 significant bits, so each operand is off by at most 2^-4 relative
// (about 2^-4/sqrt(3) RMS); on random operands the product's relative (Frobenius) error stays under 0.08.
TEST(Fp8GemmBound, WithinTheQuantisationBoundOfTheFloatProduct) {
  const int64_t M = 64, N = 96, K = 256;
  Buf a = random_buf({1, M, K}, DType::f32, 31), b = random_buf({1, N, K}, DType::f32, 32);
  Buf aq({1, M, K}, DType::e4m3), as({1, 2, M}, DType::f32), bq({1, N, K}, DType::e4m3), bs({1, 1, 4}, DType::f32);
  engine::fp8_quantize_rows(aq, as, a);
  engine::fp8_quantize_blocks(bq, bs, Tensor(), Tensor(), b);
  Buf out({1, M, N}, DType::f32);
  engine::fp8_gemm(out, aq, as, bq, bs, engine::Fp8Scaling::blocks);
  std::vector<double> ref, mag;
  gemm_ref(a.values(), b.values(), 1, M, N, K, ref, mag);
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (out.get(int64_t(i)) - ref[i]) * (out.get(int64_t(i)) - ref[i]);
    den += ref[i] * ref[i];
  }
  const double rel = std::sqrt(num / den);
  EXPECT_LT(rel, 0.08);
  EXPECT_GT(rel, 1e-4);  // it did quantise
}

using Fp8Errors = ThrowingHandler;

TEST_F(Fp8Errors, ShapesAndDtypesAreChecked) {
  Buf x({4, 300}, DType::f32), q({4, 300}, DType::e4m3), s({3, 4}, DType::f32), bad_s({4, 3}, DType::f32);
  Buf q_u8({4, 300}, DType::u8), qt({300, 4}, DType::e4m3);
  MONTA_EXPECT_ERROR(engine::fp8_quantize_rows(q, bad_s, x), "scale");
  MONTA_EXPECT_ERROR(engine::fp8_quantize_rows(q_u8, s, x), "must be e4m3");
  MONTA_EXPECT_ERROR(engine::fp8_quantize_cols(q, s, x), "qt");
  Buf ws({1, 4}, DType::f32);
  MONTA_EXPECT_ERROR(engine::fp8_quantize_blocks(q, ws, qt, Tensor(), x), "scale_t");
  MONTA_EXPECT_ERROR(engine::fp8_quantize_blocks(q, s, Tensor(), Tensor(), x), "scale");
  Buf out({4, 4}, DType::f32), tile_s({3, 4}, DType::f32);
  MONTA_EXPECT_ERROR(engine::fp8_gemm(out, q, s, q, tile_s, engine::Fp8Scaling::blocks), "b_scale");
  MONTA_EXPECT_ERROR(engine::fp8_gemm(out, q, s, qt, tile_s, engine::Fp8Scaling::tiles), "want a (B, M, K)");
}

}  // namespace
}  // namespace monta::enginetest
