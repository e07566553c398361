// Causal GQA attention on the CPU: forward against an explicit masked softmax(QKᵀ/sqrt(D))·V with its
// log-sum-exp, and finite-difference gradients for q, k and v over named shapes (MHA, GQA, MQA).
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "engine/ops/attention.h"
#include "tests/engine/test_util.h"

namespace monta::enginetest {
namespace {

namespace eng = monta::engine;

struct AttnCase {
  const char* name;
  int64_t B, S, A, G, D;
};

std::string attn_name(const ::testing::TestParamInfo<AttnCase>& p) { return p.param.name; }
void PrintTo(const AttnCase& c, std::ostream* os) { *os << c.name; }

class AttentionCase : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionCase, ForwardMatchesExplicitMaskedSoftmax) {
  const auto c = GetParam();
  for (DType dt : {DType::f32, DType::f64}) {
    Buf q = random_buf({c.B, c.S, c.A, c.D}, dt, 1, -2, 2), k = random_buf({c.B, c.S, c.G, c.D}, dt, 2, -2, 2);
    Buf v = random_buf({c.B, c.S, c.G, c.D}, dt, 3);
    Buf out({c.B, c.S, c.A, c.D}, dt), lse({c.B, c.A, c.S}, eng::stat_dtype(dt));
    eng::attention_forward(out, lse, q, k, v);
    const double tol = dt == DType::f32 ? 2e-5 : 1e-12;
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t a = 0; a < c.A; ++a) {
        const int64_t g = a / (c.A / c.G);
        for (int64_t i = 0; i < c.S; ++i) {
          // Full S x S row with an explicit -inf mask above the diagonal.
          std::vector<double> s(size_t(c.S));
          double mx = -INFINITY;
          for (int64_t j = 0; j < c.S; ++j) {
            double d = 0;
            for (int64_t x = 0; x < c.D; ++x)
              d += q.get(((b * c.S + i) * c.A + a) * c.D + x) * k.get(((b * c.S + j) * c.G + g) * c.D + x);
            s[size_t(j)] = j > i ? -INFINITY : d / std::sqrt(double(c.D));
            mx = std::max(mx, s[size_t(j)]);
          }
          double z = 0;
          for (double& e : s) z += (e = std::exp(e - mx));
          EXPECT_NEAR(lse.get((b * c.A + a) * c.S + i), mx + std::log(z), tol * 10);
          for (int64_t x = 0; x < c.D; ++x) {
            double o = 0;
            for (int64_t j = 0; j < c.S; ++j) o += s[size_t(j)] / z * v.get(((b * c.S + j) * c.G + g) * c.D + x);
            EXPECT_NEAR(out.get(((b * c.S + i) * c.A + a) * c.D + x), o, tol)
                << eng::dtype_name(dt) << " b" << b << " a" << a << " i" << i << " x" << x;
          }
        }
      }
  }
}

TEST_P(AttentionCase, FiniteDifferenceQKV) {
  const auto c = GetParam();
  Buf q = random_buf({c.B, c.S, c.A, c.D}, DType::f64, 4, -2, 2), k = random_buf({c.B, c.S, c.G, c.D}, DType::f64, 5, -2, 2);
  Buf v = random_buf({c.B, c.S, c.G, c.D}, DType::f64, 6);
  Buf cw = random_buf({c.B, c.S, c.A, c.D}, DType::f64, 7);
  Buf out({c.B, c.S, c.A, c.D}, DType::f64), lse({c.B, c.A, c.S}, DType::f64);
  auto loss = [&] {
    eng::attention_forward(out, lse, q, k, v);
    return dot(out, cw);
  };
  loss();
  Buf dq = filled({c.B, c.S, c.A, c.D}, DType::f64, 1e3), dk = filled({c.B, c.S, c.G, c.D}, DType::f64, 1e3);
  Buf dv = filled({c.B, c.S, c.G, c.D}, DType::f64, 1e3);
  eng::attention_backward(dq, dk, dv, cw, q, k, v, out, lse);
  expect_grad("attention dq", q, dq.values(), loss);
  expect_grad("attention dk", k, dk.values(), loss);
  expect_grad("attention dv", v, dv.values(), loss);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionCase,
                         ::testing::Values(AttnCase{"MHA_B1_S4_A2_G2_D3", 1, 4, 2, 2, 3},
                                           AttnCase{"GQA_B2_S5_A4_G2_D4", 2, 5, 4, 2, 4},
                                           AttnCase{"MQA_B1_S6_A3_G1_D2", 1, 6, 3, 1, 2},
                                           AttnCase{"S1_B2_A2_G1_D5", 2, 1, 2, 1, 5}),
                         attn_name);

using AttentionErrors = ThrowingHandler;

TEST_F(AttentionErrors, RejectsBadGroupsAndStats) {
  Buf q({1, 4, 3, 2}, DType::f32), k({1, 4, 2, 2}, DType::f32), v({1, 4, 2, 2}, DType::f32);
  Buf out({1, 4, 3, 2}, DType::f32), lse({1, 3, 4}, DType::f32);
  MONTA_EXPECT_ERROR(eng::attention_forward(out, lse, q, k, v), "attention_forward");  // 2 does not divide 3
  Buf q4({1, 4, 4, 2}, DType::f32), out4({1, 4, 4, 2}, DType::f32), lse64({1, 4, 4}, DType::f64);
  MONTA_EXPECT_ERROR(eng::attention_forward(out4, lse64, q4, k, v), "f64[1,4,4]@cpu");
  Buf lse_short({1, 4, 3}, DType::f32);
  MONTA_EXPECT_ERROR(eng::attention_forward(out4, lse_short, q4, k, v), "lse");
}

}  // namespace
}  // namespace monta::enginetest
