// GPU tests: the dense layers (linear, expert_linear, RMSNorm, embedding, RoPE, SwiGLU), forward and
// backward, CUDA vs CPU, f32 tightly and bf16 loosely (the CPU reference runs in f32 on the same
// bf16-representable inputs).
#include "engine/ops/embedding.h"
#include "engine/ops/linear.h"
#include "engine/ops/rmsnorm.h"
#include "engine/ops/rope.h"
#include "engine/ops/swiglu.h"
#include "gpu_test_util.h"

namespace monta::gputest {
namespace {

using engine::Write;

class GpuLayers : public testing::TestWithParam<DType> {};

TEST_P(GpuLayers, LinearForwardBackward) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t M = 300, I = 256, O = 192;
  Pair x({M, I}, dt), w({O, I}, dt), dout({M, O}, dt);
  Pair out = output({M, O}, dt);
  engine::linear_forward(out.c(), x.c(), w.c(), Write::overwrite);
  engine::linear_forward(out.g(), x.g(), w.g(), Write::overwrite);
  expect_close(out, tol_for(dt), "out");
  engine::linear_forward(out.c(), x.c(), w.c(), Write::accumulate);  // accumulate
  engine::linear_forward(out.g(), x.g(), w.g(), Write::accumulate);
  expect_close(out, tol_for(dt), "out (accumulate)");
  Pair res({M, O}, dt);
  engine::linear_forward_residual(out.c(), x.c(), w.c(), res.c());  // out = res + x·wᵀ (the GEMM's C operand)
  engine::linear_forward_residual(out.g(), x.g(), w.g(), res.g());
  expect_close(out, tol_for(dt), "out (residual)");

  Pair dx = output({M, I}, dt);
  Pair dw({O, I}, DType::f32);  // f32 parameter gradient, accumulates onto its random contents
  engine::linear_backward(dx.c(), dw.c(), dout.c(), x.c(), w.c(), Write::overwrite);
  engine::linear_backward(dx.g(), dw.g(), dout.g(), x.g(), w.g(), Write::overwrite);
  expect_close(dx, tol_for(dt), "dx");
  expect_close(dw, tol_for(dt), "dw");
  engine::linear_backward(dx.c(), Tensor(), dout.c(), x.c(), w.c(), Write::accumulate);  // dx accumulates, dw skipped
  engine::linear_backward(dx.g(), Tensor(), dout.g(), x.g(), w.g(), Write::accumulate);
  expect_close(dx, tol_for(dt), "dx (accumulate)");
  expect_close(dw, tol_for(dt), "dw (untouched)");
  // First write: dw overwritten.
  engine::linear_backward(Tensor(), dw.c(), dout.c(), x.c(), w.c(), Write::overwrite, Write::overwrite);
  engine::linear_backward(Tensor(), dw.g(), dout.g(), x.g(), w.g(), Write::overwrite, Write::overwrite);
  expect_close(dw, tol_for(dt), "dw (overwritten)");
}

// The router's shape (a handful of outputs) takes the small-O kernels: each O of 1..8, both gradient flags.
TEST_P(GpuLayers, LinearBackwardWithFewOutputs) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t M = 300, I = 256;
  for (int64_t O : {1, 2, 3, 8}) {
    Pair x({M, I}, dt), w({O, I}, dt), dout({M, O}, dt), dx({M, I}, dt), dw({O, I}, DType::f32);
    for (Write acc : {Write::overwrite, Write::accumulate}) {
      engine::linear_backward(dx.c(), dw.c(), dout.c(), x.c(), w.c(), acc, acc);
      engine::linear_backward(dx.g(), dw.g(), dout.g(), x.g(), w.g(), acc, acc);
      const std::string what = "O " + std::to_string(O) + (acc == Write::accumulate ? " accumulate" : " overwrite");
      expect_close(dx, tol_for(dt), "dx, " + what);
      expect_close(dw, tol_for(dt), "dw, " + what);
    }
  }
}

TEST_P(GpuLayers, ExpertLinearForwardBackward) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t E = 4, C = 40, I = 128, O = 96;
  Pair x({E, C, I}, dt), w({E, O, I}, dt), dout({E, C, O}, dt);
  Pair out = output({E, C, O}, dt);
  engine::expert_linear_forward(out.c(), x.c(), w.c());
  engine::expert_linear_forward(out.g(), x.g(), w.g());
  expect_close(out, tol_for(dt), "out");
  Pair dx = output({E, C, I}, dt);
  Pair dw({E, O, I}, DType::f32);
  engine::expert_linear_backward(dx.c(), dw.c(), dout.c(), x.c(), w.c());
  engine::expert_linear_backward(dx.g(), dw.g(), dout.g(), x.g(), w.g());
  expect_close(dx, tol_for(dt), "dx");
  expect_close(dw, tol_for(dt), "dw");
  // dx accumulates, dw skipped.
  engine::expert_linear_backward(dx.c(), Tensor(), dout.c(), x.c(), w.c(), Write::accumulate);
  engine::expert_linear_backward(dx.g(), Tensor(), dout.g(), x.g(), w.g(), Write::accumulate);
  expect_close(dx, tol_for(dt), "dx (accumulate)");
  expect_close(dw, tol_for(dt), "dw (untouched)");
  // The step's first write (dw_write overwrite, beta 0): dw overwritten; accumulating would keep its old contents.
  engine::expert_linear_backward(Tensor(), dw.c(), dout.c(), x.c(), w.c(), Write::overwrite, Write::overwrite);
  engine::expert_linear_backward(Tensor(), dw.g(), dout.g(), x.g(), w.g(), Write::overwrite, Write::overwrite);
  expect_close(dw, tol_for(dt), "dw (overwritten)");
}

TEST_P(GpuLayers, RmsNormForwardBackward) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  for (const int64_t H : {int64_t(256), int64_t(100)}) {  // the 16-byte vector kernels, then the scalar ones
    SCOPED_TRACE("H " + std::to_string(H));
    const int64_t N = 300;
    Pair x({N, H}, dt, -2.f, 2.f), w({H}, DType::f32, 0.5f, 1.5f), dout({N, H}, dt);
    Pair out = output({N, H}, dt), rstd = output({N}, DType::f32);
    engine::rmsnorm_forward(out.c(), rstd.c(), x.c(), w.c(), 1e-5f);
    engine::rmsnorm_forward(out.g(), rstd.g(), x.g(), w.g(), 1e-5f);
    expect_close(out, tol_for(dt), "out");
    expect_close(rstd, 1e-5, "rstd");
    Pair dx = output({N, H}, dt);
    Pair dw({H}, DType::f32);  // accumulates
    engine::rmsnorm_backward(dx.c(), dw.c(), dout.c(), x.c(), w.c(), rstd.c());
    engine::rmsnorm_backward(dx.g(), dw.g(), dout.g(), x.g(), w.g(), rstd.g());
    expect_close(dx, tol_for(dt), "dx");
    expect_close(dw, tol_for(dt), "dweight");
    Pair dxa({N, H}, dt);  // Write::accumulate: dx += the gradient
    engine::rmsnorm_backward(dxa.c(), dw.c(), dout.c(), x.c(), w.c(), rstd.c(), Write::accumulate);
    engine::rmsnorm_backward(dxa.g(), dw.g(), dout.g(), x.g(), w.g(), rstd.g(), Write::accumulate);
    expect_close(dxa, tol_for(dt), "dx accumulated");
  }
}

TEST_P(GpuLayers, EmbeddingShardForwardBackward) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t N = 300, H = 96, V = 200, vocab_begin = 100;
  std::vector<float> tok(N);
  std::uniform_int_distribution<int> d(0, 399);  // about half the tokens fall outside this shard
  for (auto& t : tok) t = float(d(rng()));
  tok[1] = tok[0];  // a repeated token: its gradient rows add
  Pair tokens(tok, {N}, DType::i32);
  Pair table({V, H}, dt), dout({N, H}, dt);
  Pair out = output({N, H}, dt);
  engine::embedding_forward(out.c(), tokens.c(), table.c(), vocab_begin);
  engine::embedding_forward(out.g(), tokens.g(), table.g(), vocab_begin);
  expect_close(out, 1e-12, "out");
  Pair dtable({V, H}, DType::f32);
  engine::embedding_backward(dtable.c(), dout.c(), tokens.c(), vocab_begin);
  engine::embedding_backward(dtable.g(), dout.g(), tokens.g(), vocab_begin);
  expect_close(dtable, 1e-6, "dtable");
}

TEST_P(GpuLayers, RopeForwardBackwardAndInPlace) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t B = 2, S = 128, Hd = 4, D = 64;
  Pair x({B, S, Hd, D}, dt), dout({B, S, Hd, D}, dt);
  Pair out = output({B, S, Hd, D}, dt);
  engine::rope_forward(out.c(), x.c(), 10000.f);
  engine::rope_forward(out.g(), x.g(), 10000.f);
  expect_close(out, tol_for(dt), "out");
  Pair dx = output({B, S, Hd, D}, dt);
  engine::rope_backward(dx.c(), dout.c(), 10000.f);
  engine::rope_backward(dx.g(), dout.g(), 10000.f);
  expect_close(dx, tol_for(dt), "dx");
  engine::rope_forward(x.c(), x.c(), 500000.f);  // in place
  engine::rope_forward(x.g(), x.g(), 500000.f);
  expect_close(x, tol_for(dt), "in place");
}

TEST_P(GpuLayers, SwigluForwardBackward) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t N = 300, F = 130;
  Pair gate({N, F}, dt, -4.f, 4.f), up({N, F}, dt), dout({N, F}, dt);
  Pair out = output({N, F}, dt);
  engine::swiglu_forward(out.c(), gate.c(), up.c());
  engine::swiglu_forward(out.g(), gate.g(), up.g());
  expect_close(out, tol_for(dt), "out");
  Pair dgate = output({N, F}, dt), dup = output({N, F}, dt);
  engine::swiglu_backward(dgate.c(), dup.c(), dout.c(), gate.c(), up.c());
  engine::swiglu_backward(dgate.g(), dup.g(), dout.g(), gate.g(), up.g());
  expect_close(dgate, tol_for(dt), "dgate");
  expect_close(dup, tol_for(dt), "dup");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GpuLayers, testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace monta::gputest
