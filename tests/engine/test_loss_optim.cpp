// Cross-entropy (whole vocabulary and split over two vocab shards), AdamW against the hand formula, and
// the elementwise glue (cast rounding, accumulate across dtypes, reductions) on the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "engine/ops/adamw.h"
#include "engine/settings.h"
#include "engine/ops/cross_entropy.h"
#include "engine/ops/elementwise.h"
#include "tests/engine/test_util.h"

namespace monta::enginetest {
namespace {

namespace eng = monta::engine;

struct CeOut {
  Buf losses, lse;
};

// The three forward steps on one shard with an externally reduced rowmax / sumexp / target logit.
CeOut ce_forward(const Buf& logits, const Buf& targets) {
  const int64_t N = logits.t.dim(0);
  Buf rowmax({N}, DType::f64), sumexp({N}, DType::f64), tl({N}, DType::f64);
  CeOut o{Buf({N}, DType::f64), Buf({N}, DType::f64)};
  eng::logits_rowmax(rowmax, logits);
  eng::cross_entropy_partial(sumexp, tl, logits, rowmax, targets, 0);
  eng::cross_entropy_finish(o.losses, o.lse, sumexp, rowmax, tl, targets);
  return o;
}

Buf from_list_f32(const std::vector<float>& v) {
  Buf b({int64_t(v.size())}, DType::f32);
  for (size_t i = 0; i < v.size(); ++i) b.t.as<float>()[i] = v[i];
  return b;
}

Buf targets_buf(const std::vector<int>& v) {
  Buf b({int64_t(v.size())}, DType::i32);
  for (size_t i = 0; i < v.size(); ++i) b.set(int64_t(i), v[i]);
  return b;
}

TEST(CrossEntropy, ForwardMatchesFormulaAndIgnoresMinusOne) {
  const int64_t N = 3, V = 4;
  Buf logits = random_buf({N, V}, DType::f64, 1, -3, 3);
  Buf t = targets_buf({2, -1, 0});
  CeOut o = ce_forward(logits, t);
  for (int64_t n = 0; n < N; ++n) {
    double z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(logits.get(n * V + v));
    EXPECT_NEAR(o.lse.get(n), std::log(z), 1e-13);
  }
  EXPECT_NEAR(o.losses.get(0), o.lse.get(0) - logits.get(2), 1e-13);
  EXPECT_EQ(o.losses.get(1), 0.0);
  EXPECT_NEAR(o.losses.get(2), o.lse.get(2) - logits.get(8), 1e-13);
}

TEST(CrossEntropyGrad, FiniteDifferenceLogits) {
  const int64_t N = 4, V = 5;
  const float scale = 0.25f;
  Buf logits = random_buf({N, V}, DType::f64, 2, -3, 3);
  Buf t = targets_buf({4, 0, -1, 2});
  auto loss = [&] {
    CeOut o = ce_forward(logits, t);
    double s = 0;
    for (int64_t n = 0; n < N; ++n) s += scale * o.losses.get(n);
    return s;
  };
  CeOut o = ce_forward(logits, t);
  Buf dl = filled({N, V}, DType::f64, 1e3);
  eng::cross_entropy_backward(dl, logits, t, o.lse, 0, scale);
  for (int64_t v = 0; v < V; ++v) EXPECT_EQ(dl.get(2 * V + v), 0.0) << "ignored row";
  expect_grad("cross_entropy dlogits", logits, dl.values(), loss);
}

TEST(CrossEntropy, TwoVocabShardsEqualUnsharded) {
  const int64_t N = 5, V = 7, V0 = 3, V1 = V - V0;
  Buf logits = random_buf({N, V}, DType::f64, 3, -4, 4);
  Buf t = targets_buf({1, 5, -1, 6, 0});  // targets in both shards, one ignored
  CeOut whole = ce_forward(logits, t);
  Buf dwhole({N, V}, DType::f64);
  eng::cross_entropy_backward(dwhole, logits, t, whole.lse, 0, 0.5f);

  Buf s0({N, V0}, DType::f64), s1({N, V1}, DType::f64);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t v = 0; v < V; ++v) (v < V0 ? s0 : s1).set(n * (v < V0 ? V0 : V1) + (v < V0 ? v : v - V0), logits.get(n * V + v));
  Buf m0({N}, DType::f64), m1({N}, DType::f64), rowmax({N}, DType::f64);
  eng::logits_rowmax(m0, s0);
  eng::logits_rowmax(m1, s1);
  for (int64_t n = 0; n < N; ++n) rowmax.set(n, std::max(m0.get(n), m1.get(n)));  // the all-reduce(max)
  Buf se0({N}, DType::f64), se1({N}, DType::f64), tl0({N}, DType::f64), tl1({N}, DType::f64);
  eng::cross_entropy_partial(se0, tl0, s0, rowmax, t, 0);
  eng::cross_entropy_partial(se1, tl1, s1, rowmax, t, V0);
  eng::accumulate(se0, se1);  // the all-reduce(sum)
  eng::accumulate(tl0, tl1);
  Buf losses({N}, DType::f64), lse({N}, DType::f64);
  eng::cross_entropy_finish(losses, lse, se0, rowmax, tl0, t);
  EXPECT_LE(max_abs_diff(losses.values(), whole.losses.values()), 1e-13);
  EXPECT_LE(max_abs_diff(lse.values(), whole.lse.values()), 1e-13);

  Buf d0({N, V0}, DType::f64), d1({N, V1}, DType::f64);
  eng::cross_entropy_backward(d0, s0, t, lse, 0, 0.5f);
  eng::cross_entropy_backward(d1, s1, t, lse, V0, 0.5f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t v = 0; v < V; ++v) {
      const double d = v < V0 ? d0.get(n * V0 + v) : d1.get(n * V1 + v - V0);
      EXPECT_NEAR(d, dwhole.get(n * V + v), 1e-14) << n << "," << v;
    }
}

template <class T> void adamw_against_hand(DType dt, double tol) {
  const int64_t n = 7;
  Buf p = random_buf({n}, dt, 4), m = random_buf({n}, dt, 5, 0, 0.1), v = random_buf({n}, dt, 6, 0, 0.01);
  Buf g = random_buf({n}, dt, 7), lowp({n}, DType::bf16);
  const auto p0 = p.values(), m0 = m.values(), v0 = v.values(), g0 = g.values();
  eng::AdamWArgs a;
  a.lr = 1e-2;
  a.beta1 = 0.9;
  a.beta2 = 0.95;
  a.eps = 1e-8;
  a.weight_decay = 0.1;
  a.step = 3;
  a.grad_scale = 0.5;
  eng::adamw_step(p, m, v, lowp, g, a);
  for (int64_t i = 0; i < n; ++i) {
    const double gi = g0[size_t(i)] * a.grad_scale;
    const double mi = a.beta1 * m0[size_t(i)] + (1 - a.beta1) * gi;
    const double vi = a.beta2 * v0[size_t(i)] + (1 - a.beta2) * gi * gi;
    const double mhat = mi / (1 - std::pow(a.beta1, 3)), vhat = vi / (1 - std::pow(a.beta2, 3));
    const double pi = p0[size_t(i)] - a.lr * a.weight_decay * p0[size_t(i)] - a.lr * mhat / (std::sqrt(vhat) + a.eps);
    EXPECT_NEAR(m.get(i), mi, tol);
    EXPECT_NEAR(v.get(i), vi, tol);
    EXPECT_NEAR(p.get(i), pi, tol) << "element " << i;
    EXPECT_EQ(lowp.get(i), double(eng::bf16_to_float(eng::float_to_bf16(float(p.get(i))))));
  }
}

TEST(AdamW, OneStepMatchesHandFormulaF32) { adamw_against_hand<float>(DType::f32, 1e-6); }
TEST(AdamW, OneStepMatchesHandFormulaF64) { adamw_against_hand<double>(DType::f64, 1e-14); }

// The fused step is the per-tensor step entry by entry, each with its own weight decay (a.weight_decay unused).
TEST(AdamW, FusedStepAppliesEachEntrysDecay) {
  Buf p1 = random_buf({5}, DType::f32, 41), p2 = random_buf({3}, DType::f32, 42);
  Buf q1 = random_buf({5}, DType::f32, 41), q2 = random_buf({3}, DType::f32, 42);
  Buf g1 = random_buf({5}, DType::f32, 43), g2 = random_buf({3}, DType::f32, 44);
  Buf m1({5}, DType::f32), v1({5}, DType::f32), m2({3}, DType::f32), v2({3}, DType::f32);
  Buf n1({5}, DType::f32), w1({5}, DType::f32), n2({3}, DType::f32), w2({3}, DType::f32);
  eng::AdamWArgs a;
  a.lr = 0.01;
  a.weight_decay = 123.0;  // must be ignored
  a.step = 3;
  const std::vector<eng::AdamWEntry> es = {{p1, m1, v1, Tensor(), g1, 0.5}, {p2, m2, v2, Tensor(), g2, 0.0}};
  eng::adamw_step_many(es, a);
  eng::AdamWArgs one = a;
  one.weight_decay = 0.5;
  eng::adamw_step(q1, n1, w1, Tensor(), g1, one);
  one.weight_decay = 0.0;
  eng::adamw_step(q2, n2, w2, Tensor(), g2, one);
  EXPECT_EQ(p1.values(), q1.values());
  EXPECT_EQ(p2.values(), q2.values());
  EXPECT_EQ(m1.values(), n1.values());
  EXPECT_EQ(v2.values(), w2.values());
}

// bf16 moments (train.optimizer_state = bf16): the step is the f32 step on the widened moments, each moment stored
// rounded to nearest even, the weight updated with the unrounded moments (what the CUDA kernel computes, bit for bit).
TEST(AdamW, Bf16MomentsAreTheF32StepRoundedToNearestEven) {
  const int64_t n = 1000;
  Buf p = random_buf({n}, DType::f32, 4), g = random_buf({n}, DType::f32, 7);
  Buf m32 = random_buf({n}, DType::f32, 5, 0, 0.1), v32 = random_buf({n}, DType::f32, 6, 0, 0.01);
  Buf m({n}, DType::bf16), v({n}, DType::bf16), q({n}, DType::f32);
  eng::cast(m, m32);
  eng::cast(v, v32);
  eng::cast(m32, m);  // the f32 reference starts from the same (bf16-representable) moments
  eng::cast(v32, v);
  eng::copy(q, p);
  eng::AdamWArgs a;
  a.lr = 1e-2;
  a.weight_decay = 0.1;
  a.step = 3;
  a.grad_scale = 0.5;
  eng::adamw_step(q, m32, v32, Tensor(), g, a);
  eng::adamw_step(p, m, v, Tensor(), g, a);
  int64_t rounded = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float mf = m32.t.as<float>()[i], vf = v32.t.as<float>()[i];
    ASSERT_EQ(m.t.as<eng::bf16_t>()[i].bits, eng::float_to_bf16(mf).bits) << i;
    ASSERT_EQ(v.t.as<eng::bf16_t>()[i].bits, eng::float_to_bf16(vf).bits) << i;
    ASSERT_EQ(p.t.as<float>()[i], q.t.as<float>()[i]) << i;
    rounded += eng::bf16_to_float(m.t.as<eng::bf16_t>()[i]) != mf;
  }
  EXPECT_GT(rounded, n / 2);  // the moments were in fact rounded
}

// The host step splits its elements over threads (the optimizer offload's host AdamW): any thread count gives the
// same bits, across entry boundaries and with bf16 moments and a low-precision copy.
TEST(AdamW, HostThreadCountChangesNoBit) {
  const std::vector<int64_t> sizes = {70001, 3, 200003, 65536};
  std::vector<std::vector<Buf>> sets;
  for (int copy = 0; copy < 2; ++copy) {
    std::vector<Buf> s;
    for (size_t t = 0; t < sizes.size(); ++t) {
      const int64_t n = sizes[t];
      s.push_back(random_buf({n}, DType::f32, 10 + t));
      Buf m = random_buf({n}, DType::f32, 20 + t, 0, 0.1), v = random_buf({n}, DType::f32, 30 + t, 0, 0.01);
      s.emplace_back(std::vector<int64_t>{n}, DType::bf16);
      eng::cast(s.back(), m);
      s.emplace_back(std::vector<int64_t>{n}, DType::bf16);
      eng::cast(s.back(), v);
      s.push_back(random_buf({n}, DType::f32, 40 + t));
      s.emplace_back(std::vector<int64_t>{n}, DType::bf16);
    }
    sets.push_back(std::move(s));
  }
  eng::AdamWArgs a;
  a.lr = 1e-2;
  a.step = 5;
  for (int copy = 0; copy < 2; ++copy) {
    std::vector<eng::AdamWEntry> es;
    auto& s = sets[size_t(copy)];
    for (size_t t = 0; t < sizes.size(); ++t)
      es.push_back({s[5 * t], s[5 * t + 1], s[5 * t + 2], s[5 * t + 4], s[5 * t + 3], t % 2 ? 0.1 : 0.0});
    eng::settings().host_threads = copy == 0 ? 1 : 5;
    eng::adamw_step_many(es, a);
  }
  eng::settings().host_threads = 0;
  for (size_t i = 0; i < sets[0].size(); ++i)
    ASSERT_EQ(std::memcmp(sets[0][i].t.data, sets[1][i].t.data, sets[0][i].t.bytes()), 0) << "tensor " << i;
}

TEST(AdamW, EmptyLowpIsSkippedAndZeroGradOnlyDecays) {
  Buf p = filled({4}, DType::f32, 2.0), m({4}, DType::f32), v({4}, DType::f32), g({4}, DType::f32);
  eng::AdamWArgs a;
  a.lr = 0.1;
  a.weight_decay = 0.5;
  eng::adamw_step(p, m, v, Tensor(), g, a);
  for (int64_t i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(float(p.get(i)), 2.0f * (1 - 0.05f));
}

TEST(Elementwise, CastRoundsToNearestEvenBf16) {
  // 1 + 2^-8 is exactly half-way between bf16 neighbours 1 and 1 + 2^-7: rounds to the even one (1).
  // 1 + 3·2^-8 is half-way between 1 + 2^-7 and 1 + 2^-6: rounds to the even 1 + 2^-6.
  Buf f = from_list_f32({1.0f + 1.0f / 256, 1.0f + 3.0f / 256, 1.0f + 1.0f / 512 + 1.0f / 256, -2.5f, 65504.0f, 0.1f});
  Buf b({6}, DType::bf16), back({6}, DType::f32);
  eng::cast(b, f);
  eng::cast(back, b);
  const std::vector<double> want = {1.0, 1.0 + 1.0 / 64, 1.0 + 1.0 / 128, -2.5, 65536.0, 0.10009765625};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(back.get(int64_t(i)), want[i]) << "element " << i;
  Buf d({6}, DType::f64);
  eng::cast(d, f);
  EXPECT_EQ(d.values(), f.values());
}

TEST(Elementwise, AccumulateAcrossDtypesAddScale) {
  Buf dst = filled({3}, DType::f32, 1.0), src({3}, DType::bf16);
  src.assign({0.5, -2.0, 1.0 + 1.0 / 128});
  eng::accumulate(dst, src);
  EXPECT_EQ(dst.values(), std::vector<double>({1.5, -1.0, 2.0 + 1.0 / 128}));
  Buf a = random_buf({5}, DType::f64, 8), b = random_buf({5}, DType::f64, 9), out({5}, DType::f64);
  eng::add(out, a, b);
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(out.get(i), a.get(i) + b.get(i));
  eng::scale(out, -0.5);
  for (int64_t i = 0; i < 5; ++i) EXPECT_EQ(out.get(i), -0.5 * (a.get(i) + b.get(i)));
  Buf af = filled({4}, DType::f32, 1.25), bf = filled({4}, DType::f32, 2.0);
  eng::accumulate(af, bf);
  EXPECT_EQ(af.values(), std::vector<double>(4, 3.25));
}

TEST(Elementwise, SumSquaresAccumulatesAndSumScales) {
  Buf x({4}, DType::f32);
  x.assign({1, -2, 3, 0.5});
  Buf ss = filled({1}, DType::f32, 10.0);
  eng::sum_squares(ss, x);
  EXPECT_EQ(ss.get(0), 10.0 + 1 + 4 + 9 + 0.25);
  Buf s = filled({1}, DType::f32, 99.0);
  eng::sum(s, x, 2.0);
  EXPECT_EQ(s.get(0), 2.0 * 2.5);
  Buf xd = random_buf({1000}, DType::f64, 10), sd({1}, DType::f64);
  eng::sum_squares(sd, xd);
  double ref = 0;
  for (double v : xd.values()) ref += v * v;
  EXPECT_NEAR(sd.get(0), ref, 1e-12);
  Buf xb({2}, DType::bf16), sb({1}, DType::f32);
  xb.assign({1.5, 2.0});
  eng::sum_squares(sb, xb);
  EXPECT_EQ(sb.get(0), 6.25);
}

using OptimErrors = ThrowingHandler;

TEST_F(OptimErrors, RejectMismatches) {
  Buf p({4}, DType::f32), m({4}, DType::f32), v({3}, DType::f32), g({4}, DType::f32);
  MONTA_EXPECT_ERROR(eng::adamw_step(p, m, v, Tensor(), g, eng::AdamWArgs{}), "adamw_step");
  Buf v4({4}, DType::f32), lowp({4}, DType::f32);
  MONTA_EXPECT_ERROR(eng::adamw_step(p, m, v4, lowp, g, eng::AdamWArgs{}), "param_lowp");
  eng::AdamWArgs a0;
  a0.step = 0;
  MONTA_EXPECT_ERROR(eng::adamw_step(p, m, v4, Tensor(), g, a0), "1-based");
  Buf s64({1}, DType::f64);
  MONTA_EXPECT_ERROR(eng::sum_squares(s64, p), "sum_squares");
  Buf i32({4}, DType::i32);
  MONTA_EXPECT_ERROR(eng::cast(p, i32), "i32[4]@cpu");
  Buf logits({2, 3}, DType::f32), rowmax({2}, DType::f32), tf({2}, DType::f32), se({2}, DType::f32), tl({2}, DType::f32);
  MONTA_EXPECT_ERROR(eng::cross_entropy_partial(se, tl, logits, rowmax, tf, 0), "cross_entropy_partial");
}

}  // namespace
}  // namespace monta::enginetest
