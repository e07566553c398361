// GPU tests of FP8 E4M3 (engine/ops/fp8.h): the shared encoder and decoder against CUDA's own conversions
// (cuda_fp8.h), and every quantise op on the GPU against the CPU op, bit for bit, codes and scales, from f32 and bf16.
#include <cuda_fp8.h>
#include <cuda_fp16.h>

#include <cstring>

#include "engine/fp8_math.h"
#include "engine/ops/fp8.h"
#include "engine/ops/swiglu.h"
#include "gpu_test_util.h"

namespace monta::gputest {
namespace {

using engine::fp8::block_scale_ld;
using engine::fp8::tiles;

// Every 37th float bit pattern of either sign, and a million random ones: ours = __nv_cvt_float_to_fp8 (SATFINITE),
// and decoding = __nv_cvt_fp8_to_halfraw. Host code: runs without a GPU too.
TEST(GpuFp8Codec, MatchesCudaConversions) {
  std::mt19937 g(1);
  int64_t bad = 0, n = 0;
  auto check = [&](uint32_t u) {
    float x;
    std::memcpy(&x, &u, 4);
    if (std::isnan(x)) return;
    const uint8_t ours = engine::fp8::e4m3_from_float(x);
    const auto theirs = uint8_t(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
    ++n;
    if (ours != theirs && bad++ < 5) ADD_FAILURE() << "x = " << x << ": ours " << int(ours) << ", CUDA " << int(theirs);
    const __half_raw h = __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t(ours), __NV_E4M3);
    __half hh;
    std::memcpy(&hh, &h, 2);
    const float d = __half2float(hh), e = engine::fp8::e4m3_to_float(ours);
    if (!(d == e || (std::isnan(d) && std::isnan(e))) && bad++ < 5) ADD_FAILURE() << "decode " << int(ours);
  };
  for (uint32_t u = 0; u < 0x80000000u; u += 37) {
    check(u);
    check(u | 0x80000000u);
  }
  for (int i = 0; i < 1000000; ++i) check(uint32_t(g()));
  EXPECT_EQ(bad, 0) << "of " << n;
}

// Raw bytes of a tensor on either device.
std::vector<uint8_t> bytes_of(const Tensor& t) {
  std::vector<uint8_t> v(t.bytes());
  engine::copy(Tensor(v.data(), {int64_t(v.size())}, DType::u8), engine::make_view(t.data, {int64_t(v.size())},
                                                                                  DType::u8, t.device));
  engine::sync_device(Device::cuda);
  return v;
}
void expect_same_bytes(const Tensor& gpu, const Tensor& cpu, const std::string& what) {
  const std::vector<uint8_t> a = bytes_of(gpu), b = bytes_of(cpu);
  ASSERT_EQ(a.size(), b.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i] && bad++ < 5) ADD_FAILURE() << what << " byte " << i << ": gpu " << int(a[i]) << " cpu " << int(b[i]);
  EXPECT_EQ(bad, 0u) << what << ": not bit-identical";
}

// The same values bit for bit, but any NaN equal to any NaN (a payload carries no meaning; CUDA's canonical NaN is
// all ones where the host's quiet NaN is 0x7fc0...): f32 or bf16 elements.
void expect_same_values(const Tensor& gpu, const Tensor& cpu, const std::string& what) {
  const std::vector<uint8_t> a = bytes_of(gpu), b = bytes_of(cpu);
  ASSERT_EQ(a.size(), b.size()) << what;
  const size_t w = cpu.dtype == DType::bf16 ? 2 : 4;
  ASSERT_TRUE(cpu.dtype == DType::bf16 || cpu.dtype == DType::f32) << what;
  const auto value = [w](const uint8_t* p) {  // widened to f32 bits
    uint32_t u = 0;
    if (w == 2) {
      uint16_t h;
      std::memcpy(&h, p, 2);
      u = uint32_t(h) << 16;
    } else {
      std::memcpy(&u, p, 4);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return std::pair<uint32_t, bool>{u, std::isnan(f)};
  };
  size_t bad = 0;
  for (size_t i = 0; i + w <= a.size(); i += w) {
    const auto [x, xn] = value(&a[i]);
    const auto [y, yn] = value(&b[i]);
    if (!(x == y || (xn && yn)) && bad++ < 5) ADD_FAILURE() << what << " element " << i / w << ": gpu " << x << " cpu " << y;
  }
  EXPECT_EQ(bad, 0u) << what << ": not bit-identical (NaNs aside)";
}

// Values spread over many binades, with one non-finite tile, bf16-representable when dt is bf16.
Pair spread(std::vector<int64_t> shape, DType dt, uint32_t seed, bool with_inf) {
  int64_t n = 1;
  for (int64_t v : shape) n *= v;
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::uniform_int_distribution<int> ex(-24, 14);
  std::vector<float> v(static_cast<size_t>(n), 0.f);
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = std::ldexp(u(g), (i / 128) % 5 == 0 ? ex(g) : ex(g) / 8);
  if (with_inf) v[size_t(n / 3)] = INFINITY;
  return Pair(v, shape, dt);
}

// A pair of outputs of one dtype, the CUDA one poisoned with 0xff.
struct Out {
  Buf cpu, gpu;
  Out(std::vector<int64_t> shape, DType dt) : cpu(shape, dt, Device::cpu), gpu(shape, dt, Device::cuda) {
    Buf ff(shape, dt, Device::cpu);
    std::memset(ff.t.data, 0xff, ff.t.bytes());
    engine::copy(gpu.t, ff.t);
  }
};

class GpuFp8 : public testing::TestWithParam<DType> {};

TEST_P(GpuFp8, QuantizeRowsColsBlocksMatchCpu) {
  MONTA_REQUIRE_GPU();
  const DType dt = GetParam();
  // Ragged tiles both ways; the kernels' vector paths (rows: K % 8 == 0; cols: K % 8 == 0 to load, R % 16 == 0 to
  // store) and their scalar paths (odd sizes).
  for (const auto [R, K] : {std::pair<int64_t, int64_t>{300, 520}, {272, 392}, {131, 261}}) {
    SCOPED_TRACE("R " + std::to_string(R) + ", K " + std::to_string(K));
    const int64_t B = 2;
    Pair x = spread({B, R, K}, dt, 5, true);

    Out q({B, R, K}, DType::e4m3), s({B, tiles(K), R}, DType::f32);
    engine::fp8_quantize_rows(q.cpu, s.cpu, x.c());
    engine::fp8_quantize_rows(q.gpu, s.gpu, x.g());
    expect_same_bytes(q.gpu, q.cpu, "rows: codes");
    expect_same_bytes(s.gpu, s.cpu, "rows: scales");

    Out qt({B, K, R}, DType::e4m3), st({B, tiles(R), K}, DType::f32);
    engine::fp8_quantize_cols(qt.cpu, st.cpu, x.c());
    engine::fp8_quantize_cols(qt.gpu, st.gpu, x.g());
    expect_same_bytes(qt.gpu, qt.cpu, "cols: codes");
    expect_same_bytes(st.gpu, st.cpu, "cols: scales");

    Out wq({B, R, K}, DType::e4m3), ws({B, tiles(R), block_scale_ld(K)}, DType::f32);
    Out wqt({B, K, R}, DType::e4m3), wst({B, tiles(K), block_scale_ld(R)}, DType::f32);
    engine::fp8_quantize_blocks(wq.cpu, ws.cpu, wqt.cpu, wst.cpu, x.c());
    engine::fp8_quantize_blocks(wq.gpu, ws.gpu, wqt.gpu, wst.gpu, x.g());
    expect_same_bytes(wq.gpu, wq.cpu, "blocks: codes");
    expect_same_bytes(ws.gpu, ws.cpu, "blocks: scales");
    expect_same_bytes(wqt.gpu, wqt.cpu, "blocks: transposed codes");
    expect_same_bytes(wst.gpu, wst.cpu, "blocks: transposed scales");
  }
}

// The kernels encode with the GPU's conversion instruction, the CPU with fp8::e4m3_from_float: every 37th float bit
// pattern of magnitude <= 448 (subnormals, ties and both signs included), in tiles whose maximum is 448 (scale 1, so
// a code is the encoding of the value itself), through the row kernel's vector path (pairs) and the block kernel
// (single values): the same bytes on both devices.
TEST(GpuFp8Codes, HardwareCodesMatchCpuOnFloatPatterns) {
  MONTA_REQUIRE_GPU();
  std::vector<float> v;
  const uint32_t top = 0x43E00000u;  // 448
  for (uint32_t u = 0; u <= top; u += 37)
    for (const uint32_t sign : {0u, 0x80000000u}) {
      if (v.size() % 128 == 0) v.push_back(v.size() % 256 == 0 ? 448.f : -448.f);  // each tile's maximum
      float x;
      const uint32_t bits = u | sign;
      std::memcpy(&x, &bits, 4);
      v.push_back(x);
    }
  const int64_t K = 8192, R = (int64_t(v.size()) + K - 1) / K;
  while (int64_t(v.size()) < R * K) v.push_back(v.size() % 128 == 0 ? 448.f : 0.f);
  Pair x(v, {1, R, K}, DType::f32);
  Out q({1, R, K}, DType::e4m3), s({1, tiles(K), R}, DType::f32);
  engine::fp8_quantize_rows(q.cpu, s.cpu, x.c());
  engine::fp8_quantize_rows(q.gpu, s.gpu, x.g());
  expect_same_bytes(q.gpu, q.cpu, "rows: codes");
  expect_same_bytes(s.gpu, s.cpu, "rows: scales");
  Out wq({1, R, K}, DType::e4m3), ws({1, tiles(R), block_scale_ld(K)}, DType::f32);
  engine::fp8_quantize_blocks(wq.cpu, ws.cpu, Tensor(), Tensor(), x.c());
  engine::fp8_quantize_blocks(wq.gpu, ws.gpu, Tensor(), Tensor(), x.g());
  expect_same_bytes(wq.gpu, wq.cpu, "blocks: codes");
}

// The dispatch payload: packing CUDA = CPU byte for byte (codes, scales, zero padding), unpacking too.
TEST_P(GpuFp8, PackAndUnpackRowsMatchCpu) {
  MONTA_REQUIRE_GPU();
  const DType dt = GetParam();
  const int64_t B = 2, R = 300, K = 522;  // ragged tiles, K not a multiple of 4
  const int64_t P = engine::fp8::packed_row_bytes(K) + 12;
  Pair x = spread({B, R, K}, dt, 6, true);
  Out packed({B, R, P}, DType::u8);
  engine::fp8_pack_rows(packed.cpu, x.c());
  engine::fp8_pack_rows(packed.gpu, x.g());
  expect_same_bytes(packed.gpu, packed.cpu, "packed rows");
  Out back({B, R, K}, dt);
  engine::fp8_unpack_rows(back.cpu, packed.cpu);
  engine::fp8_unpack_rows(back.gpu, packed.gpu);
  expect_same_values(back.gpu, back.cpu, "unpacked rows");  // the non-finite tile: NaN payloads differ (CUDA's 0x7fff...)
}

// SwiGLU with its output quantised in the same kernel = swiglu_forward then fp8_quantize_rows on the GPU, byte for byte
// (output, codes, scales); and its codes = the CPU's fused op's wherever the two backends' SwiGLU outputs agree.
TEST_P(GpuFp8, FusedSwigluQuantiseMatchesTheTwoOps) {
  MONTA_REQUIRE_GPU();
  const DType dt = GetParam();
  // Ragged last tile; the vector path (K % 8 == 0) and the scalar one.
  for (const auto [R, K] : {std::pair<int64_t, int64_t>{200, 400}, {67, 203}}) {
    SCOPED_TRACE("R " + std::to_string(R) + ", K " + std::to_string(K));
    const int64_t B = 2;
    Pair gate = spread({B, R, K}, dt, 9, false), up = spread({B, R, K}, dt, 10, true);
    Out act({B, R, K}, dt), q({B, R, K}, DType::e4m3), s({B, tiles(K), R}, DType::f32);
    Out act2({B, R, K}, dt), q2({B, R, K}, DType::e4m3), s2({B, tiles(K), R}, DType::f32);
    engine::fp8_swiglu_forward(act.gpu, q.gpu, s.gpu, gate.g(), up.g());
    engine::swiglu_forward(act2.gpu, gate.g(), up.g());
    engine::fp8_quantize_rows(q2.gpu, s2.gpu, act2.gpu);
    expect_same_bytes(act.gpu, act2.gpu, "fused swiglu: output");
    expect_same_bytes(q.gpu, q2.gpu, "fused swiglu: codes");
    expect_same_bytes(s.gpu, s2.gpu, "fused swiglu: scales");
    // Against the CPU: quantising the GPU's SwiGLU output on the CPU gives the fused kernel's codes.
    Out q3({B, R, K}, DType::e4m3), s3({B, tiles(K), R}, DType::f32), act_cpu({B, R, K}, dt);
    engine::copy(act_cpu.cpu, act.gpu);
    engine::sync_device(Device::cuda);
    engine::fp8_quantize_rows(q3.cpu, s3.cpu, act_cpu.cpu);
    expect_same_bytes(q.gpu, q3.cpu, "fused swiglu: codes vs the CPU's quantisation");
    expect_same_bytes(s.gpu, s3.cpu, "fused swiglu: scales vs the CPU's quantisation");
  }
}

// The GEMM on cuBLASLt against the CPU's exact dequantise-then-multiply, from the same codes and scales (quantised on
// each device: equal, as above): bf16 out within 1e-2 relative (Frobenius; its own rounding), f32 out within 1e-4
// (fp32 accumulation in another order), overwriting and accumulating, with 128x128-block and 1x128-tile b scales.
TEST_P(GpuFp8, GemmMatchesCpuReference) {
  MONTA_REQUIRE_GPU();
  const DType dt = GetParam();
  const int64_t B = 2, M = 48, N = 160, K = 336;  // 16 | M, N, K; ragged 128-tiles along N and K
  Pair a = spread({B, M, K}, DType::f32, 7, false), b = spread({B, N, K}, DType::f32, 8, false);
  for (const bool blocks : {true, false}) {
    const std::string what = blocks ? "1x128 x 128x128" : "1x128 x 1x128";
    Out aq({B, M, K}, DType::e4m3), as({B, tiles(K), M}, DType::f32), bq({B, N, K}, DType::e4m3);
    Out bs = blocks ? Out({B, tiles(N), block_scale_ld(K)}, DType::f32) : Out({B, tiles(K), N}, DType::f32);
    engine::fp8_quantize_rows(aq.cpu, as.cpu, a.c());
    engine::fp8_quantize_rows(aq.gpu, as.gpu, a.g());
    if (blocks) {
      engine::fp8_quantize_blocks(bq.cpu, bs.cpu, Tensor(), Tensor(), b.c());
      engine::fp8_quantize_blocks(bq.gpu, bs.gpu, Tensor(), Tensor(), b.g());
    } else {
      engine::fp8_quantize_rows(bq.cpu, bs.cpu, b.c());
      engine::fp8_quantize_rows(bq.gpu, bs.gpu, b.g());
    }
    const auto sc = blocks ? engine::Fp8Scaling::blocks : engine::Fp8Scaling::tiles;
    const double tol = dt == DType::bf16 ? 1e-2 : 1e-4;
    Pair out = output({B, M, N}, dt);
    engine::fp8_gemm(out.c(), aq.cpu, as.cpu, bq.cpu, bs.cpu, sc);
    engine::fp8_gemm(out.g(), aq.gpu, as.gpu, bq.gpu, bs.gpu, sc);
    expect_close(out, tol, what + ": out");
    engine::fp8_gemm(out.c(), aq.cpu, as.cpu, bq.cpu, bs.cpu, sc, engine::Write::accumulate);
    engine::fp8_gemm(out.g(), aq.gpu, as.gpu, bq.gpu, bs.gpu, sc, engine::Write::accumulate);
    expect_close(out, tol, what + ": out (accumulate)");
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GpuFp8, testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace monta::gputest
