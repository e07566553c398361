// GPU tests: causal GQA attention forward and backward, CUDA vs CPU, over shapes that exercise partial
// tiles, several query heads per KV head, MHA, and every supported head dim class; plus run-to-run
// bit-identity of the backward (it must not depend on scheduling). These cover the hand-written kernels:
// AttentionPath::handwritten keeps bf16 off the cuDNN path here (test_attention_cudnn.cpp tests that one).
#include <cstdlib>

#include "engine/ops/attention.h"
#include "engine/settings.h"
#include "gpu_test_util.h"

namespace monta::gputest {
namespace {

// Sets engine::settings().attention for a scope, restoring the previous value.
struct ScopedAttentionPath {
  engine::AttentionPath old = engine::settings().attention;
  explicit ScopedAttentionPath(engine::AttentionPath path) { engine::settings().attention = path; }
  ~ScopedAttentionPath() { engine::settings().attention = old; }
};

struct AttnCase {
  const char* name;
  int64_t B, S, A, G, D;
  DType dt;
};

class GpuAttention : public testing::TestWithParam<AttnCase> {};

TEST_P(GpuAttention, ForwardBackwardMatchCpu) {
  MONTA_REQUIRE_GPU();
  ScopedAttentionPath flash(engine::AttentionPath::handwritten);
  const AttnCase c = GetParam();
  const DType dt = c.dt;
  Pair q({c.B, c.S, c.A, c.D}, dt), k({c.B, c.S, c.G, c.D}, dt), v({c.B, c.S, c.G, c.D}, dt);
  Pair dout({c.B, c.S, c.A, c.D}, dt);
  Pair out = output({c.B, c.S, c.A, c.D}, dt), lse = output({c.B, c.A, c.S}, DType::f32);
  engine::attention_forward(out.c(), lse.c(), q.c(), k.c(), v.c());
  engine::attention_forward(out.g(), lse.g(), q.g(), k.g(), v.g());
  expect_close(out, tol_for(dt), "out");
  expect_close(lse, 1e-5, "lse");

  Pair dq = output({c.B, c.S, c.A, c.D}, dt), dk = output({c.B, c.S, c.G, c.D}, dt),
       dv = output({c.B, c.S, c.G, c.D}, dt);
  engine::attention_backward(dq.c(), dk.c(), dv.c(), dout.c(), q.c(), k.c(), v.c(), out.c(), lse.c());
  engine::attention_backward(dq.g(), dk.g(), dv.g(), dout.g(), q.g(), k.g(), v.g(), out.g(), lse.g());
  double tol = dt == DType::bf16 ? 2e-2 : 1e-5;  // bf16: the GPU's out is rounded before D = dO·O
  expect_close(dq, tol, "dq");
  expect_close(dk, tol, "dk");
  expect_close(dv, tol, "dv");

  // Same inputs again: bit-identical gradients.
  std::vector<float> dq1 = download(dq.g()), dk1 = download(dk.g()), dv1 = download(dv.g());
  dq.poison();
  dk.poison();
  dv.poison();
  engine::attention_backward(dq.g(), dk.g(), dv.g(), dout.g(), q.g(), k.g(), v.g(), out.g(), lse.g());
  EXPECT_EQ(download(dq.g()), dq1);
  EXPECT_EQ(download(dk.g()), dk1);
  EXPECT_EQ(download(dv.g()), dv1);
}

std::string attn_name(const testing::TestParamInfo<AttnCase>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(
    Shapes, GpuAttention,
    testing::Values(AttnCase{"gqa_s128_d64_f32", 2, 128, 4, 2, 64, DType::f32},
                    AttnCase{"gqa_s128_d64_bf16", 2, 128, 4, 2, 64, DType::bf16},
                    AttnCase{"partial_tiles_s100_d128_f32", 1, 100, 8, 2, 128, DType::f32},
                    AttnCase{"partial_tiles_s100_d128_bf16", 1, 100, 8, 2, 128, DType::bf16},
                    AttnCase{"mha_s77_d32_f32", 2, 77, 3, 3, 32, DType::f32},
                    AttnCase{"mqa_s160_d96_f32", 1, 160, 4, 1, 96, DType::f32},
                    AttnCase{"tiny_s3_d64_f32", 2, 3, 2, 1, 64, DType::f32}),
    attn_name);

}  // namespace
}  // namespace monta::gputest
