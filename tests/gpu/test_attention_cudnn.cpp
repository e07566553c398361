// GPU tests of the cuDNN fused-attention path (engine/cuda/attention_cudnn.cu): causal GQA bf16 forward
// (out and lse) and backward against the CPU reference and against the hand-written kernels, the routing of
// engine::attention_* to it, and (MONTA_ATTN_BENCH=1 only) a timing of both paths at S=8192, A=64, G=8, D=128.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "engine/cuda/attention_cudnn.h"
#include "engine/ops/attention.h"
#include "engine/settings.h"
#include "engine/timing.h"
#include "gpu_test_util.h"

namespace monta::gputest {
namespace {

// Sets engine::settings().attention for a scope, restoring the previous value.
struct ScopedPath {
  engine::AttentionPath old = engine::settings().attention;
  explicit ScopedPath(engine::AttentionPath path) { engine::settings().attention = path; }
  ~ScopedPath() { engine::settings().attention = old; }
};

struct CudnnCase {
  const char* name;
  int64_t B, S, A, G, D;
};

class GpuAttentionCudnn : public testing::TestWithParam<CudnnCase> {};

double gpu_rel(const Tensor& a, const Tensor& b) { return rel_err(download(a), download(b)); }

TEST_P(GpuAttentionCudnn, MatchesCpuAndHandWritten) {
  MONTA_REQUIRE_GPU();
  const CudnnCase c = GetParam();
  const DType dt = DType::bf16;
  Pair q({c.B, c.S, c.A, c.D}, dt), k({c.B, c.S, c.G, c.D}, dt), v({c.B, c.S, c.G, c.D}, dt);
  Pair dout({c.B, c.S, c.A, c.D}, dt);
  Pair out = output({c.B, c.S, c.A, c.D}, dt), lse = output({c.B, c.A, c.S}, DType::f32);
  engine::attention_forward(out.c(), lse.c(), q.c(), k.c(), v.c());
  if (!engine::cuda::cudnn_attention_forward(out.g(), lse.g(), q.g(), k.g(), v.g(), nullptr))
    GTEST_SKIP() << "cuDNN attention path reports this case unsupported (see the warning above)";
  expect_close(out, 1e-2, "out");
  expect_close(lse, 1e-4, "lse");

  Pair dq = output({c.B, c.S, c.A, c.D}, dt), dk = output({c.B, c.S, c.G, c.D}, dt),
       dv = output({c.B, c.S, c.G, c.D}, dt);
  engine::attention_backward(dq.c(), dk.c(), dv.c(), dout.c(), q.c(), k.c(), v.c(), out.c(), lse.c());
  ASSERT_TRUE(engine::cuda::cudnn_attention_backward(dq.g(), dk.g(), dv.g(), dout.g(), q.g(), k.g(), v.g(),
                                                     out.g(), lse.g(), nullptr))
      << "cuDNN forward ran but its backward could not";
  expect_close(dq, 2e-2, "dq");
  expect_close(dk, 2e-2, "dk");
  expect_close(dv, 2e-2, "dv");

  // Against the hand-written kernels on the same GPU inputs.
  {
    ScopedPath flash(engine::AttentionPath::handwritten);
    Pair out2 = output({c.B, c.S, c.A, c.D}, dt), lse2 = output({c.B, c.A, c.S}, DType::f32);
    engine::attention_forward(out2.g(), lse2.g(), q.g(), k.g(), v.g());
    double eo = gpu_rel(out.g(), out2.g()), el = gpu_rel(lse.g(), lse2.g());
    EXPECT_LT(eo, 1e-2) << "out, cuDNN vs hand-written";
    EXPECT_LT(el, 1e-4) << "lse, cuDNN vs hand-written";
    Pair dq2 = output({c.B, c.S, c.A, c.D}, dt), dk2 = output({c.B, c.S, c.G, c.D}, dt),
         dv2 = output({c.B, c.S, c.G, c.D}, dt);
    engine::attention_backward(dq2.g(), dk2.g(), dv2.g(), dout.g(), q.g(), k.g(), v.g(), out.g(), lse.g());
    double eq = gpu_rel(dq.g(), dq2.g()), ek = gpu_rel(dk.g(), dk2.g()), ev = gpu_rel(dv.g(), dv2.g());
    EXPECT_LT(eq, 2e-2) << "dq, cuDNN vs hand-written";
    EXPECT_LT(ek, 2e-2) << "dk, cuDNN vs hand-written";
    EXPECT_LT(ev, 2e-2) << "dv, cuDNN vs hand-written";
    std::printf("[ %s ] cuDNN vs hand-written rel err: out %.2e lse %.2e dq %.2e dk %.2e dv %.2e\n", c.name, eo, el,
                eq, ek, ev);
  }

  // Run to run: the forward is expected bit-identical; the backward is reported (cuDNN accumulates dQ
  // with atomics, so it need not be).
  std::vector<float> o1 = download(out.g()), q1 = download(dq.g()), k1 = download(dk.g()), v1 = download(dv.g());
  out.poison();
  dq.poison();
  dk.poison();
  dv.poison();
  ASSERT_TRUE(engine::cuda::cudnn_attention_forward(out.g(), lse.g(), q.g(), k.g(), v.g(), nullptr));
  ASSERT_TRUE(engine::cuda::cudnn_attention_backward(dq.g(), dk.g(), dv.g(), dout.g(), q.g(), k.g(), v.g(),
                                                     out.g(), lse.g(), nullptr));
  EXPECT_EQ(download(out.g()), o1) << "cuDNN forward not bit-identical run to run";
  std::printf("[ %s ] cuDNN backward bit-identical run to run: dq %d dk %d dv %d\n", c.name,
              int(download(dq.g()) == q1), int(download(dk.g()) == k1), int(download(dv.g()) == v1));
}

// engine::attention_* picks cuDNN for bf16 unless settings().attention is handwritten.
TEST(GpuAttentionCudnnRouting, DefaultIsCudnnForBf16) {
  MONTA_REQUIRE_GPU();
  const int64_t B = 1, S = 96, A = 4, G = 2, D = 64;
  Pair q({B, S, A, D}, DType::bf16), k({B, S, G, D}, DType::bf16), v({B, S, G, D}, DType::bf16);
  Pair o1 = output({B, S, A, D}, DType::bf16), l1 = output({B, A, S}, DType::f32);
  Pair o2 = output({B, S, A, D}, DType::bf16), l2 = output({B, A, S}, DType::f32);
  if (!engine::cuda::cudnn_attention_forward(o1.g(), l1.g(), q.g(), k.g(), v.g(), nullptr))
    GTEST_SKIP() << "cuDNN attention path reports this case unsupported";
  ScopedPath dflt(engine::AttentionPath::automatic);
  engine::attention_forward(o2.g(), l2.g(), q.g(), k.g(), v.g());
  EXPECT_EQ(download(o2.g()), download(o1.g()));
  EXPECT_EQ(download(l2.g()), download(l1.g()));
}

std::string case_name(const testing::TestParamInfo<CudnnCase>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Shapes, GpuAttentionCudnn,
                         testing::Values(CudnnCase{"gqa_s128_d64", 2, 128, 4, 2, 64},
                                         CudnnCase{"gqa_s256_d128_8to2", 1, 256, 8, 2, 128},
                                         CudnnCase{"partial_s100_d128", 1, 100, 8, 2, 128},
                                         CudnnCase{"mqa_s200_d64", 2, 200, 4, 1, 64},
                                         CudnnCase{"mha_s77_d64", 2, 77, 3, 3, 64},
                                         CudnnCase{"gqa_s1024_d128_16to4", 1, 1024, 16, 4, 128}),
                         case_name);

// ---- timing (MONTA_ATTN_BENCH=1) ----
template <class F>
double time_ms(F&& f, int reps) {
  f();  // warm-up (plan build, module load)
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    engine::DeviceInterval t;  // events on the default stream (engine/timing.h)
    t.begin(Device::cuda, nullptr);
    f();
    t.end();
    engine::sync_device(Device::cuda);
    ms.push_back(t.ms());
  }
  engine::recycle_device_intervals();
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

TEST(GpuAttentionCudnnBench, S8192_A64_G8_D128) {
  MONTA_REQUIRE_GPU();
  const char* on = std::getenv("MONTA_ATTN_BENCH");
  if (!on || std::string(on) != "1") GTEST_SKIP() << "set MONTA_ATTN_BENCH=1 to time";
  const int64_t B = 1, S = std::getenv("MONTA_ATTN_BENCH_S") ? std::atoll(std::getenv("MONTA_ATTN_BENCH_S")) : 8192,
                A = 64, G = 8, D = 128;
  const DType dt = DType::bf16;
  Buf q = upload(random_values(B * S * A * D), {B, S, A, D}, dt, Device::cuda);
  Buf k = upload(random_values(B * S * G * D), {B, S, G, D}, dt, Device::cuda);
  Buf v = upload(random_values(B * S * G * D), {B, S, G, D}, dt, Device::cuda);
  Buf dout = upload(random_values(B * S * A * D), {B, S, A, D}, dt, Device::cuda);
  Buf o1({B, S, A, D}, dt, Device::cuda), l1({B, A, S}, DType::f32, Device::cuda);
  Buf o2({B, S, A, D}, dt, Device::cuda), l2({B, A, S}, DType::f32, Device::cuda);
  Buf dq1({B, S, A, D}, dt, Device::cuda), dk1({B, S, G, D}, dt, Device::cuda), dv1({B, S, G, D}, dt, Device::cuda);
  Buf dq2({B, S, A, D}, dt, Device::cuda), dk2({B, S, G, D}, dt, Device::cuda), dv2({B, S, G, D}, dt, Device::cuda);
  const double fwd_flop = 2.0 * double(S) * double(S) * double(A) * double(D) * double(B);
  const double bwd_flop = 2.5 * fwd_flop;
  auto report = [&](const char* path, double f, double b) {
    std::printf("BENCH %-12s S=%lld fwd %8.3f ms %7.1f TFLOP/s | bwd %8.3f ms %7.1f TFLOP/s | fwd+bwd %8.3f ms "
                "%7.1f TFLOP/s\n",
                path, (long long)S, f, fwd_flop / f * 1e-9, b, bwd_flop / b * 1e-9, f + b,
                (fwd_flop + bwd_flop) / (f + b) * 1e-9);
  };
  {
    ScopedPath p(engine::AttentionPath::automatic);
    ASSERT_TRUE(engine::cuda::cudnn_attention_forward(o1.t, l1.t, q.t, k.t, v.t, nullptr));
    double f = time_ms([&] { engine::attention_forward(o1.t, l1.t, q.t, k.t, v.t); }, 20);
    double b = time_ms([&] { engine::attention_backward(dq1.t, dk1.t, dv1.t, dout.t, q.t, k.t, v.t, o1.t, l1.t); },
                       20);
    report("cudnn", f, b);
  }
  {
    ScopedPath p(engine::AttentionPath::handwritten);
    double f = time_ms([&] { engine::attention_forward(o2.t, l2.t, q.t, k.t, v.t); }, 3);
    double b = time_ms([&] { engine::attention_backward(dq2.t, dk2.t, dv2.t, dout.t, q.t, k.t, v.t, o1.t, l1.t); },
                       2);
    report("handwritten", f, b);
  }
  double eo = gpu_rel(o1.t, o2.t), el = gpu_rel(l1.t, l2.t), eq = gpu_rel(dq1.t, dq2.t), ek = gpu_rel(dk1.t, dk2.t),
         ev = gpu_rel(dv1.t, dv2.t);
  std::printf("BENCH S=%lld cuDNN vs hand-written rel err: out %.2e lse %.2e dq %.2e dk %.2e dv %.2e\n", (long long)S,
              eo, el, eq, ek, ev);
  EXPECT_LT(eo, 1e-2);
  EXPECT_LT(el, 1e-4);
  EXPECT_LT(eq, 2e-2);
  EXPECT_LT(ek, 2e-2);
  EXPECT_LT(ev, 2e-2);
}

}  // namespace
}  // namespace monta::gputest
