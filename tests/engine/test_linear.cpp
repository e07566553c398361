// Linear and expert-linear on the CPU: the blocked GEMM against a naive triple loop (odd sizes, sizes
// past the cache blocks, accumulate on/off, f32 and f64), finite-difference gradients, and shape errors.
#include <gtest/gtest.h>

#include <string>

#include "engine/ops/linear.h"
#include "tests/engine/test_util.h"

namespace monta::enginetest {
namespace {

namespace eng = monta::engine;
using eng::Write;

// ref (M, O) = base + x (M, I) · w (O, I)ᵀ in double.
std::vector<double> naive_linear(const Buf& x, const Buf& w, const std::vector<double>& base) {
  const int64_t M = x.t.dim(0), I = x.t.dim(1), O = w.t.dim(0);
  std::vector<double> r(base);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t o = 0; o < O; ++o) {
      double s = 0;
      for (int64_t i = 0; i < I; ++i) s += x.get(m * I + i) * w.get(o * I + i);
      r[size_t(m * O + o)] += s;
    }
  return r;
}

struct GemmCase {
  int64_t M, I, O;
  bool accumulate;
  DType dtype;
};

std::string gemm_label(const GemmCase& c) {
  return "M" + std::to_string(c.M) + "_I" + std::to_string(c.I) + "_O" + std::to_string(c.O) +
         (c.accumulate ? "_acc_" : "_set_") + eng::dtype_name(c.dtype);
}

std::string gemm_name(const ::testing::TestParamInfo<GemmCase>& p) { return gemm_label(p.param); }
void PrintTo(const GemmCase& c, std::ostream* os) { *os << gemm_label(c); }

class LinearVsNaive : public ::testing::TestWithParam<GemmCase> {};

TEST_P(LinearVsNaive, ForwardAndBothGradients) {
  const auto c = GetParam();
  const double tol = c.dtype == DType::f32 ? 2e-5 : 1e-12;
  Buf x = random_buf({c.M, c.I}, c.dtype, 1), w = random_buf({c.O, c.I}, c.dtype, 2);
  Buf out = random_buf({c.M, c.O}, c.dtype, 3);
  const std::vector<double> base = c.accumulate ? out.values() : std::vector<double>(size_t(c.M * c.O), 0.0);
  eng::linear_forward(out, x, w, c.accumulate ? Write::accumulate : Write::overwrite);
  const double scale = double(c.I);  // sums of I products of values in [-1, 1]
  EXPECT_LE(max_abs_diff(out.values(), naive_linear(x, w, base)), tol * scale);

  // dx = dout · w (as a naive linear with w transposed); dw += doutᵀ · x.
  Buf dout = random_buf({c.M, c.O}, c.dtype, 4);
  Buf wt({c.I, c.O}, c.dtype), doutT({c.O, c.M}, c.dtype), xT({c.I, c.M}, c.dtype);
  for (int64_t o = 0; o < c.O; ++o)
    for (int64_t i = 0; i < c.I; ++i) wt.set(i * c.O + o, w.get(o * c.I + i));
  for (int64_t m = 0; m < c.M; ++m) {
    for (int64_t o = 0; o < c.O; ++o) doutT.set(o * c.M + m, dout.get(m * c.O + o));
    for (int64_t i = 0; i < c.I; ++i) xT.set(i * c.M + m, x.get(m * c.I + i));
  }
  Buf dx = random_buf({c.M, c.I}, c.dtype, 5), dw = random_buf({c.O, c.I}, c.dtype, 6);
  const std::vector<double> dx0 = c.accumulate ? dx.values() : std::vector<double>(size_t(c.M * c.I), 0.0);
  const std::vector<double> dw0 = dw.values();
  eng::linear_backward(dx, dw, dout, x, w, c.accumulate ? Write::accumulate : Write::overwrite);
  EXPECT_LE(max_abs_diff(dx.values(), naive_linear(dout, wt, dx0)), tol * double(c.O));
  EXPECT_LE(max_abs_diff(dw.values(), naive_linear(doutT, xT, dw0)), tol * double(c.M));
}

INSTANTIATE_TEST_SUITE_P(
    Sizes, LinearVsNaive,
    ::testing::Values(GemmCase{37, 29, 53, false, DType::f32}, GemmCase{37, 29, 53, true, DType::f32},
                      GemmCase{37, 29, 53, false, DType::f64}, GemmCase{37, 29, 53, true, DType::f64},
                      GemmCase{1, 1, 1, false, DType::f32}, GemmCase{5, 300, 7, true, DType::f32},
                      GemmCase{130, 270, 41, false, DType::f32}, GemmCase{97, 33, 2100, true, DType::f64},
                      GemmCase{64, 64, 64, false, DType::f64}),
    gemm_name);

TEST(LinearGrad, FiniteDifferenceXAndW) {
  const int64_t M = 4, I = 5, O = 3;
  Buf x = random_buf({M, I}, DType::f64, 11), w = random_buf({O, I}, DType::f64, 12);
  Buf c = random_buf({M, O}, DType::f64, 13), out({M, O}, DType::f64);
  auto loss = [&] {
    eng::linear_forward(out, x, w);
    return dot(out, c);
  };
  Buf dx = filled({M, I}, DType::f64, 1e3);  // overwritten
  Buf dw = random_buf({O, I}, DType::f64, 14);  // accumulates onto this
  const auto dw0 = dw.values();
  eng::linear_backward(dx, dw, c, x, w, Write::overwrite);
  expect_grad("linear dx", x, dx.values(), loss);
  expect_grad("linear dw", w, minus(dw.values(), dw0), loss);
}

TEST(LinearGrad, SkipsEmptyGradients) {
  Buf x = random_buf({3, 4}, DType::f64, 1), w = random_buf({2, 4}, DType::f64, 2), dout = random_buf({3, 2}, DType::f64, 3);
  Buf dx({3, 4}, DType::f64), dw({2, 4}, DType::f64);
  eng::linear_backward(dx, Tensor(), dout, x, w, Write::overwrite);
  eng::linear_backward(Tensor(), dw, dout, x, w, Write::overwrite);
  Buf dx2({3, 4}, DType::f64), dw2({2, 4}, DType::f64);
  eng::linear_backward(dx2, dw2, dout, x, w, Write::overwrite);
  EXPECT_EQ(dx.values(), dx2.values());
  EXPECT_EQ(dw.values(), dw2.values());
}

TEST(ExpertLinear, MatchesPerExpertLinear) {
  const int64_t E = 3, C = 5, I = 7, O = 6;
  Buf x = random_buf({E, C, I}, DType::f32, 21), w = random_buf({E, O, I}, DType::f32, 22), out({E, C, O}, DType::f32);
  eng::expert_linear_forward(out, x, w);
  for (int64_t e = 0; e < E; ++e) {
    Buf xe({C, I}, DType::f32), we({O, I}, DType::f32);
    for (int64_t i = 0; i < C * I; ++i) xe.set(i, x.get(e * C * I + i));
    for (int64_t i = 0; i < O * I; ++i) we.set(i, w.get(e * O * I + i));
    auto ref = naive_linear(xe, we, std::vector<double>(size_t(C * O), 0.0));
    for (int64_t i = 0; i < C * O; ++i) EXPECT_NEAR(out.get(e * C * O + i), ref[size_t(i)], 1e-5) << "expert " << e;
  }
}

TEST(ExpertLinearGrad, FiniteDifferenceXAndW) {
  const int64_t E = 2, C = 3, I = 4, O = 5;
  Buf x = random_buf({E, C, I}, DType::f64, 31), w = random_buf({E, O, I}, DType::f64, 32);
  Buf c = random_buf({E, C, O}, DType::f64, 33), out({E, C, O}, DType::f64);
  auto loss = [&] {
    eng::expert_linear_forward(out, x, w);
    return dot(out, c);
  };
  Buf dx = filled({E, C, I}, DType::f64, -7.0);
  Buf dw = random_buf({E, O, I}, DType::f64, 34);
  const auto dw0 = dw.values();
  eng::expert_linear_backward(dx, dw, c, x, w);
  expect_grad("expert_linear dx", x, dx.values(), loss);
  expect_grad("expert_linear dw", w, minus(dw.values(), dw0), loss);
  // dx_write accumulate: dx += the same gradient (here on top of -7 everywhere); dw skipped.
  Buf dxa = filled({E, C, I}, DType::f64, -7.0);
  eng::expert_linear_backward(dxa, Tensor(), c, x, w, Write::accumulate);
  const auto want = dx.values(), got = dxa.values();
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i] - 7.0, 1e-12) << i;
}

// out = residual + x · wᵀ in one GEMM (the residual as its C operand), out distinct from or aliasing the residual.
TEST(Linear, ForwardAddsResidual) {
  const int64_t M = 9, I = 7, O = 5;
  Buf x = random_buf({M, I}, DType::f64, 51), w = random_buf({O, I}, DType::f64, 52);
  Buf res = random_buf({M, O}, DType::f64, 53), out = filled({M, O}, DType::f64, std::nan(""));
  const auto want = naive_linear(x, w, res.values());
  eng::linear_forward_residual(out, x, w, res);
  EXPECT_LE(max_abs_diff(out.values(), want), 1e-12);
  eng::linear_forward_residual(res, x, w, res);
  EXPECT_LE(max_abs_diff(res.values(), want), 1e-12);
}

// dw_write overwrite (the step's first write of a lazily zeroed gradient): dw is overwritten, whatever it held,
// with exactly what accumulating onto zeros gives.
TEST(LinearGrad, FirstWriteOverwritesWeightGradient) {
  const int64_t E = 2, C = 6, I = 5, O = 4;
  Buf x = random_buf({E, C, I}, DType::f64, 41), w = random_buf({E, O, I}, DType::f64, 42);
  Buf dout = random_buf({E, C, O}, DType::f64, 43);
  Buf zero = filled({E, O, I}, DType::f64, 0.0), stale = filled({E, O, I}, DType::f64, std::nan(""));
  eng::expert_linear_backward(Tensor(), zero, dout, x, w, Write::overwrite, Write::accumulate);
  eng::expert_linear_backward(Tensor(), stale, dout, x, w, Write::overwrite, Write::overwrite);
  EXPECT_EQ(stale.values(), zero.values());
  Tensor x2 = x.t.view({E * C, I}), w2 = w.t.rows(0, 1).view({O, I}), dout2 = dout.t.view({E * C, O});
  Buf zero2 = filled({O, I}, DType::f64, 0.0), stale2 = filled({O, I}, DType::f64, 1e30);
  eng::linear_backward(Tensor(), zero2, dout2, x2, w2, Write::overwrite, Write::accumulate);
  eng::linear_backward(Tensor(), stale2, dout2, x2, w2, Write::overwrite, Write::overwrite);
  EXPECT_EQ(stale2.values(), zero2.values());
}

using LinearErrors = ThrowingHandler;

TEST_F(LinearErrors, ShapeAndDtypeMismatch) {
  Buf x({4, 5}, DType::f32), w({3, 6}, DType::f32), out({4, 3}, DType::f32), wd({3, 5}, DType::f64);
  MONTA_EXPECT_ERROR(eng::linear_forward(out, x, w), "linear_forward");
  MONTA_EXPECT_ERROR(eng::linear_forward(out, x, w), "f32[3,6]@cpu");
  MONTA_EXPECT_ERROR(eng::linear_forward(out, x, wd), "f64[3,5]@cpu");
  Buf xi({4, 5}, DType::i32), wi({3, 5}, DType::i32), oi({4, 3}, DType::i32);
  EXPECT_THROW(eng::linear_forward(oi, xi, wi), engine::Error);
  Buf dout({4, 3}, DType::f32), dxbad({4, 4}, DType::f32);
  MONTA_EXPECT_ERROR(eng::linear_backward(dxbad, Tensor(), dout, x, wd.t.view({3, 5}), Write::overwrite),
                     "linear_backward");
  Buf ex({2, 3, 4}, DType::f32), ew({3, 5, 4}, DType::f32), eo({2, 3, 5}, DType::f32);
  MONTA_EXPECT_ERROR(eng::expert_linear_forward(eo, ex, ew), "expert_linear_forward");
}

}  // namespace
}  // namespace monta::enginetest
