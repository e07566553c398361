// Per-token layers on the CPU: embedding (vocab shards), RMSNorm, SwiGLU and RoPE; forward against hand
// values or naive formulas, backward by finite differences in double, and their argument checks.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/ops/embedding.h"
#include "engine/ops/rmsnorm.h"
#include "engine/ops/rope.h"
#include "engine/ops/swiglu.h"
#include "tests/engine/test_util.h"

namespace monta::enginetest {
namespace {

namespace eng = monta::engine;
using eng::Write;

Buf tokens_buf(const std::vector<int>& v) {
  Buf b({int64_t(v.size())}, DType::i32);
  for (size_t i = 0; i < v.size(); ++i) b.set(int64_t(i), v[i]);
  return b;
}

TEST(Embedding, ShardReadsOwnRowsAndZerosOthers) {
  const int64_t V = 4, H = 3, begin = 10;
  Buf table = random_buf({V, H}, DType::f32, 1);
  Buf tok = tokens_buf({10, 13, 9, 14, 12, -1});
  Buf out = filled({6, H}, DType::f32, 99.0);
  eng::embedding_forward(out, tok, table, begin);
  const int expect_row[6] = {0, 3, -1, -1, 2, -1};
  for (int n = 0; n < 6; ++n)
    for (int h = 0; h < H; ++h)
      EXPECT_EQ(out.get(n * H + h), expect_row[n] < 0 ? 0.0 : table.get(expect_row[n] * H + h)) << n << "," << h;
}

TEST(EmbeddingGrad, FiniteDifferenceTableAccumulates) {
  const int64_t V = 5, H = 3;
  Buf table = random_buf({V, H}, DType::f64, 2);
  Buf tok = tokens_buf({3, 7, 4, 3, 100, 5});  // shard [3, 8); 3 twice; 100 elsewhere
  Buf c = random_buf({6, H}, DType::f64, 3), out({6, H}, DType::f64);
  auto loss = [&] {
    eng::embedding_forward(out, tok, table, 3);
    return dot(out, c);
  };
  Buf dtable = random_buf({V, H}, DType::f64, 4);
  const auto d0 = dtable.values();
  eng::embedding_backward(dtable, c, tok, 3);
  expect_grad("embedding dtable", table, minus(dtable.values(), d0), loss);
}

TEST(RmsNorm, ForwardMatchesFormula) {
  const int64_t N = 3, H = 8;
  Buf x = random_buf({N, H}, DType::f32, 5), w = random_buf({H}, DType::f32, 6);
  Buf out({N, H}, DType::f32), rstd({N}, DType::f32);
  eng::rmsnorm_forward(out, rstd, x, w, 1e-5f);
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0;
    for (int64_t h = 0; h < H; ++h) ss += x.get(n * H + h) * x.get(n * H + h);
    const double r = 1.0 / std::sqrt(ss / H + 1e-5);
    EXPECT_NEAR(rstd.get(n), r, 1e-5 * r);
    for (int64_t h = 0; h < H; ++h) EXPECT_NEAR(out.get(n * H + h), x.get(n * H + h) * r * w.get(h), 1e-5);
  }
}

TEST(RmsNormGrad, FiniteDifferenceXAndWeight) {
  const int64_t N = 3, H = 6;
  Buf x = random_buf({N, H}, DType::f64, 7), w = random_buf({H}, DType::f64, 8, 0.5, 1.5);
  Buf c = random_buf({N, H}, DType::f64, 9), out({N, H}, DType::f64), rstd({N}, DType::f64);
  auto loss = [&] {
    eng::rmsnorm_forward(out, rstd, x, w, 1e-5f);
    return dot(out, c);
  };
  loss();
  Buf dx = filled({N, H}, DType::f64, 1e3), dw = random_buf({H}, DType::f64, 10);
  const auto dw0 = dw.values();
  eng::rmsnorm_backward(dx, dw, c, x, w, rstd);
  expect_grad("rmsnorm dx", x, dx.values(), loss);
  expect_grad("rmsnorm dweight", w, minus(dw.values(), dw0), loss);
  // Write::accumulate adds the same gradient to what dx holds (a residual stream's gradient).
  Buf dx2 = random_buf({N, H}, DType::f64, 11);
  const auto dx20 = dx2.values();
  eng::rmsnorm_backward(dx2, dw, c, x, w, rstd, Write::accumulate);
  const auto added = minus(dx2.values(), dx20);
  const auto once = dx.values();
  for (size_t i = 0; i < once.size(); ++i) EXPECT_NEAR(added[i], once[i], 1e-12) << i;
}

TEST(SwiGlu, ForwardMatchesFormula) {
  Buf g = random_buf({2, 5}, DType::f32, 11, -4, 4), u = random_buf({2, 5}, DType::f32, 12), out({2, 5}, DType::f32);
  eng::swiglu_forward(out, g, u);
  for (int64_t i = 0; i < 10; ++i)
    EXPECT_NEAR(out.get(i), g.get(i) / (1 + std::exp(-g.get(i))) * u.get(i), 1e-6);
}

TEST(SwiGluGrad, FiniteDifferenceGateAndUp) {
  Buf g = random_buf({3, 4}, DType::f64, 13, -4, 4), u = random_buf({3, 4}, DType::f64, 14);
  Buf c = random_buf({3, 4}, DType::f64, 15), out({3, 4}, DType::f64);
  auto loss = [&] {
    eng::swiglu_forward(out, g, u);
    return dot(out, c);
  };
  Buf dg = filled({3, 4}, DType::f64, 1e3), du = filled({3, 4}, DType::f64, 1e3);
  eng::swiglu_backward(dg, du, c, g, u);
  expect_grad("swiglu dgate", g, dg.values(), loss);
  expect_grad("swiglu dup", u, du.values(), loss);
}

TEST(Rope, RotatesKnownVector) {
  // B=1, S=3, one head, D=4: pairs (x0, x2) and (x1, x3); frequencies 1 and theta^(-1/2) = 0.01.
  const int64_t S = 3, D = 4;
  Buf x({1, S, 1, D}, DType::f64), out({1, S, 1, D}, DType::f64);
  for (int64_t s = 0; s < S; ++s) {
    x.set(s * D + 0, 1.0);
    x.set(s * D + 1, 2.0);
    x.set(s * D + 2, 0.0);
    x.set(s * D + 3, 3.0);
  }
  eng::rope_forward(out, x, 10000.f);
  for (int64_t s = 0; s < S; ++s) {
    const double a0 = double(s), a1 = double(s) * 0.01;
    EXPECT_NEAR(out.get(s * D + 0), std::cos(a0), 1e-12) << "pos " << s;
    EXPECT_NEAR(out.get(s * D + 2), std::sin(a0), 1e-12) << "pos " << s;
    EXPECT_NEAR(out.get(s * D + 1), 2 * std::cos(a1) - 3 * std::sin(a1), 1e-12) << "pos " << s;
    EXPECT_NEAR(out.get(s * D + 3), 2 * std::sin(a1) + 3 * std::cos(a1), 1e-12) << "pos " << s;
  }
  // Position 0 is the identity; norms are kept.
  for (int64_t d = 0; d < D; ++d) EXPECT_EQ(out.get(d), x.get(d));
}

TEST(Rope, InPlaceEqualsOutOfPlaceAndBackwardInverts) {
  Buf x = random_buf({2, 5, 3, 8}, DType::f32, 16), out({2, 5, 3, 8}, DType::f32), back({2, 5, 3, 8}, DType::f32);
  Buf y = random_buf({2, 5, 3, 8}, DType::f32, 16);
  eng::rope_forward(out, x, 500.f);
  eng::rope_forward(y, y, 500.f);
  EXPECT_EQ(out.values(), y.values());
  eng::rope_backward(back, out, 500.f);
  EXPECT_LE(max_abs_diff(back.values(), x.values()), 1e-6);
}

TEST(RopeGrad, FiniteDifferenceX) {
  Buf x = random_buf({2, 4, 2, 6}, DType::f64, 17), c = random_buf({2, 4, 2, 6}, DType::f64, 18);
  Buf out({2, 4, 2, 6}, DType::f64);
  auto loss = [&] {
    eng::rope_forward(out, x, 100.f);
    return dot(out, c);
  };
  Buf dx = filled({2, 4, 2, 6}, DType::f64, 1e3);
  eng::rope_backward(dx, c, 100.f);
  expect_grad("rope dx", x, dx.values(), loss);
}

using LayerErrors = ThrowingHandler;

TEST_F(LayerErrors, RejectBadDtypesAndShapes) {
  Buf x({2, 4}, DType::f32), w({5}, DType::f32), out({2, 4}, DType::f32), rstd({2}, DType::f32);
  MONTA_EXPECT_ERROR(eng::rmsnorm_forward(out, rstd, x, w, 1e-5f), "rmsnorm_forward");
  Buf w4({4}, DType::f32), rstd64({2}, DType::f64);
  MONTA_EXPECT_ERROR(eng::rmsnorm_forward(out, rstd64, x, w4, 1e-5f), "f64[2]@cpu");
  Buf xb({2, 4}, DType::bf16);
  MONTA_EXPECT_ERROR(eng::rmsnorm_forward(out, rstd, xb, w4, 1e-5f), "bf16[2,4]@cpu");
  Buf tokf({2}, DType::f32), table({3, 4}, DType::f32);
  MONTA_EXPECT_ERROR(eng::embedding_forward(out, tokf, table, 0), "embedding_forward");
  Buf odd({1, 2, 1, 3}, DType::f32);
  MONTA_EXPECT_ERROR(eng::rope_forward(odd, odd, 1e4f), "rope_forward");
  Buf g({2, 4}, DType::f32), u({2, 5}, DType::f32);
  MONTA_EXPECT_ERROR(eng::swiglu_forward(out, g, u), "swiglu_forward");
}

}  // namespace
}  // namespace monta::enginetest
