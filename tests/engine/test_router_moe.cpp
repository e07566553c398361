// MoE router and token permutation on the CPU: top-k + capacity assignment on a hand-made example with
// drops (and with a balancing bias), the renormalised weights, the aux losses' values, finite-difference gradients
// through logits -> softmax -> top-k weights -> combine (+ load-balance and z-loss), and dispatch/combine gradients
// w.r.t. x, ebuf and weight.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/ops/moe_permute.h"
#include "engine/ops/router.h"
#include "tests/engine/test_util.h"

namespace monta::enginetest {
namespace {

namespace eng = monta::engine;

Buf from_rows(const std::vector<std::vector<double>>& rows, DType dt) {
  Buf b({int64_t(rows.size()), int64_t(rows[0].size())}, dt);
  int64_t i = 0;
  for (const auto& r : rows)
    for (double v : r) b.set(i++, v);
  return b;
}

std::vector<double> ints(std::initializer_list<int> v) { return std::vector<double>(v.begin(), v.end()); }

TEST(Router, TopkCapacityHandExampleWithDrops) {
  // Top-2 of 3 experts, capacity 2. Token 3 ties experts 0 and 1: the lower id wins.
  Buf probs = from_rows({{0.5, 0.3, 0.2}, {0.6, 0.1, 0.3}, {0.7, 0.2, 0.1}, {0.2, 0.2, 0.6}}, DType::f32);
  Buf idx({4, 2}, DType::i32), slot({4, 2}, DType::i32), counts({3}, DType::i32);
  eng::router_topk_assign(idx, slot, counts, probs, 2);
  EXPECT_EQ(idx.values(), ints({0, 1, 0, 2, 0, 1, 2, 0}));
  // 1st choices first: e0 gets t0, t1 and drops t2; e2 gets t3. Then 2nd choices: e1 t0, e2 t1, e1 t2, e0 drops t3.
  EXPECT_EQ(slot.values(), ints({0, 0, 1, 1, -1, 1, 0, -1}));
  EXPECT_EQ(counts.values(), ints({4, 2, 2}));
  // Same on f64 and with room for all: no drops, same order.
  Buf p64 = from_rows({{0.5, 0.3, 0.2}, {0.6, 0.1, 0.3}, {0.7, 0.2, 0.1}, {0.2, 0.2, 0.6}}, DType::f64);
  eng::router_topk_assign(idx, slot, counts, p64, 8);
  EXPECT_EQ(slot.values(), ints({0, 0, 1, 1, 2, 1, 0, 3}));
  // Capacity 0 drops everything but still counts.
  eng::router_topk_assign(idx, slot, counts, p64, 0);
  EXPECT_EQ(slot.values(), ints({-1, -1, -1, -1, -1, -1, -1, -1}));
  EXPECT_EQ(counts.values(), ints({4, 2, 2}));
}

// The balancing bias moves the choice (not the weights); a zero bias chooses as the plain op does.
TEST(Router, BiasedTopkHandExample) {
  Buf probs = from_rows({{0.5, 0.3, 0.2}, {0.6, 0.1, 0.3}, {0.7, 0.2, 0.1}, {0.2, 0.2, 0.6}}, DType::f32);
  Buf bias({3}, DType::f32);
  for (int e = 0; e < 3; ++e) bias.set(e, std::vector<double>{-0.4, 0.0, 0.15}[size_t(e)]);
  Buf idx({4, 2}, DType::i32), slot({4, 2}, DType::i32), counts({3}, DType::i32);
  eng::router_topk_assign_biased(idx, slot, counts, probs, bias, 8);
  // Scores (0.1, 0.3, 0.35), (0.2, 0.1, 0.45), (0.3, 0.2, 0.25), (-0.2, 0.2, 0.75).
  EXPECT_EQ(idx.values(), ints({2, 1, 2, 0, 0, 2, 2, 1}));
  EXPECT_EQ(slot.values(), ints({0, 0, 1, 1, 0, 3, 2, 1}));
  EXPECT_EQ(counts.values(), ints({2, 2, 4}));
  Buf zero({3}, DType::f32), idx0({4, 2}, DType::i32), slot0({4, 2}, DType::i32), counts0({3}, DType::i32);
  eng::router_topk_assign_biased(idx, slot, counts, probs, zero, 2);
  eng::router_topk_assign(idx0, slot0, counts0, probs, 2);
  EXPECT_EQ(idx.values(), idx0.values());
  EXPECT_EQ(slot.values(), slot0.values());
  EXPECT_EQ(counts.values(), counts0.values());
}

// Renormalised weights: the chosen probabilities over their sum; the plain weights are the probabilities.
TEST(Router, NormalisedTopkWeightValues) {
  Buf probs = from_rows({{0.5, 0.3, 0.2}, {0.1, 0.6, 0.3}}, DType::f64);
  Buf idx({2, 2}, DType::i32), slot({2, 2}, DType::i32), counts({3}, DType::i32), w({2, 2}, DType::f64);
  eng::router_topk_assign(idx, slot, counts, probs, 4);
  eng::topk_weights_norm_forward(w, probs, idx);
  EXPECT_EQ(idx.values(), ints({0, 1, 1, 2}));
  const std::vector<double> want = {0.5 / 0.8, 0.3 / 0.8, 0.6 / 0.9, 0.3 / 0.9};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(w.get(i), want[size_t(i)], 1e-15) << i;
}

TEST(Router, TopkWeightsAndAuxLossValues) {
  Buf probs = from_rows({{0.5, 0.3, 0.2}, {0.1, 0.6, 0.3}}, DType::f64);
  Buf idx({2, 1}, DType::i32), slot({2, 1}, DType::i32), counts({3}, DType::i32), w({2, 1}, DType::f64);
  eng::router_topk_assign(idx, slot, counts, probs, 4);
  eng::topk_weights_forward(w, probs, idx);
  EXPECT_EQ(w.values(), std::vector<double>({0.5, 0.6}));
  Buf loss({1}, DType::f64);
  eng::load_balance_loss_forward(loss, probs, counts, 1);
  // f = (1/2, 1/2, 0), P = (0.3, 0.45, 0.25): E · Σ f·P = 3 · 0.375.
  EXPECT_NEAR(loss.get(0), 3 * (0.5 * 0.3 + 0.5 * 0.45), 1e-15);
  Buf logits = from_rows({{0.0, 0.0}, {1.0, 2.0}}, DType::f64), lse({2}, DType::f64);
  eng::router_z_loss_forward(loss, lse, logits);
  const double l0 = std::log(2.0), l1 = 2.0 + std::log(1.0 + std::exp(-1.0));
  EXPECT_NEAR(lse.get(0), l0, 1e-15);
  EXPECT_NEAR(lse.get(1), l1, 1e-15);
  EXPECT_NEAR(loss.get(0), (l0 * l0 + l1 * l1) / 2, 1e-15);
}

TEST(RouterGrad, FiniteDifferenceSoftmax) {
  Buf logits = random_buf({4, 5}, DType::f64, 1, -2, 2), c = random_buf({4, 5}, DType::f64, 2);
  Buf probs({4, 5}, DType::f64);
  auto loss = [&] {
    eng::softmax_forward(probs, logits);
    return dot(probs, c);
  };
  loss();
  Buf dl = filled({4, 5}, DType::f64, 1e3);
  eng::softmax_backward(dl, c, probs);
  expect_grad("softmax dlogits", logits, dl.values(), loss);
}

// Logits whose softmax values are far apart in every row: no perturbation of 1e-6 changes the top-k.
Buf separated_logits(int64_t N, int64_t E, uint32_t seed) {
  Buf b({N, E}, DType::f64);
  std::mt19937 g(seed);
  std::vector<int> perm(static_cast<size_t>(E));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t e = 0; e < E; ++e) perm[size_t(e)] = int(e);
    std::shuffle(perm.begin(), perm.end(), g);
    auto noise = random_values(E, seed + uint32_t(n), -0.1, 0.1);
    for (int64_t e = 0; e < E; ++e) b.set(n * E + e, 1.5 * perm[size_t(e)] + noise[size_t(e)]);
  }
  return b;
}

TEST(RouterGrad, FiniteDifferenceComposite_LogitsSoftmaxTopkCombinePlusAuxLosses) {
  const int64_t N = 6, E = 4, K = 2, C = 3, H = 3;
  const float alpha = 0.75f, beta = 0.5f;
  Buf logits = separated_logits(N, E, 3), ebuf = random_buf({E, C, H}, DType::f64, 4), c = random_buf({N, H}, DType::f64, 5);
  Buf probs({N, E}, DType::f64), idx({N, K}, DType::i32), slot({N, K}, DType::i32), counts({E}, DType::i32);
  Buf w({N, K}, DType::f64), y({N, H}, DType::f64), lb({1}, DType::f64), z({1}, DType::f64), lse({N}, DType::f64);
  auto loss = [&] {
    eng::softmax_forward(probs, logits);
    eng::router_topk_assign(idx, slot, counts, probs, C);
    eng::topk_weights_forward(w, probs, idx);
    eng::moe_combine_forward(y, ebuf, w, idx, slot);
    eng::load_balance_loss_forward(lb, probs, counts, K);
    eng::router_z_loss_forward(z, lse, logits);
    return dot(y, c) + alpha * lb.get(0) + beta * z.get(0);
  };
  loss();
  const auto idx0 = idx.values(), slot0 = slot.values();
  int dropped = 0;
  for (double s : slot0) dropped += s < 0;
  ASSERT_GT(dropped, 0) << "the case should exercise dropped choices";

  Buf debuf({E, C, H}, DType::f64), dw({N, K}, DType::f64), dprobs({N, E}, DType::f64), dlogits({N, E}, DType::f64);
  eng::moe_combine_backward(debuf, dw, c, ebuf, w, idx, slot);
  eng::topk_weights_backward(dprobs, dw, idx);
  eng::load_balance_loss_backward(dprobs, counts, K, alpha);
  eng::softmax_backward(dlogits, dprobs, probs);
  eng::router_z_loss_backward(dlogits, lse, probs, beta);
  expect_grad("router composite dlogits", logits, dlogits.values(), [&] {
    const double l = loss();
    EXPECT_EQ(idx.values(), idx0);  // the perturbation never changes the selection
    return l;
  });
  expect_grad("router composite debuf", ebuf, debuf.values(), loss);
}

TEST(RouterGrad, FiniteDifferenceAuxLossesAlone) {
  const int64_t N = 5, E = 3;
  Buf logits = separated_logits(N, E, 9), probs({N, E}, DType::f64), lse({N}, DType::f64), l({1}, DType::f64);
  Buf idx({N, 1}, DType::i32), slot({N, 1}, DType::i32), counts({E}, DType::i32);
  auto lb_loss = [&] {
    eng::softmax_forward(probs, logits);
    eng::router_topk_assign(idx, slot, counts, probs, 2);
    eng::load_balance_loss_forward(l, probs, counts, 1);
    return l.get(0);
  };
  lb_loss();
  Buf dprobs = random_buf({N, E}, DType::f64, 10), dlogits({N, E}, DType::f64);
  const auto start = dprobs.values();
  eng::load_balance_loss_backward(dprobs, counts, 1, 1.0f);  // accumulates onto `start`
  Buf delta({N, E}, DType::f64);
  delta.assign(minus(dprobs.values(), start));
  eng::softmax_backward(dlogits, delta, probs);
  expect_grad("load-balance dlogits", logits, dlogits.values(), lb_loss);

  auto z_loss = [&] {
    eng::router_z_loss_forward(l, lse, logits);
    return l.get(0);
  };
  z_loss();
  eng::softmax_forward(probs, logits);
  Buf dz = random_buf({N, E}, DType::f64, 11);
  const auto z0 = dz.values();
  eng::router_z_loss_backward(dz, lse, probs, 1.0f);
  expect_grad("z-loss dlogits", logits, minus(dz.values(), z0), z_loss);
}

struct Routing {
  Buf idx, slot, counts;
};

Routing make_routing(int64_t N, int64_t E, int64_t K, int64_t C, uint32_t seed) {
  Routing r{Buf({N, K}, DType::i32), Buf({N, K}, DType::i32), Buf({E}, DType::i32)};
  Buf probs = random_buf({N, E}, DType::f32, seed, 0, 1);
  eng::router_topk_assign(r.idx, r.slot, r.counts, probs, C);
  return r;
}

TEST(MoePermute, DispatchPlacesTokensAndZerosTheRest) {
  const int64_t N = 4, H = 2;
  Buf x = from_rows({{1, 2}, {3, 4}, {5, 6}, {7, 8}}, DType::f32);
  Buf probs = from_rows({{0.5, 0.3, 0.2}, {0.6, 0.1, 0.3}, {0.7, 0.2, 0.1}, {0.2, 0.2, 0.6}}, DType::f32);
  Buf idx({N, 2}, DType::i32), slot({N, 2}, DType::i32), counts({3}, DType::i32);
  eng::router_topk_assign(idx, slot, counts, probs, 2);
  Buf buf = filled({3, 2, H}, DType::f32, -5.0);
  eng::moe_dispatch_forward(buf, x, idx, slot);
  // e0: t0, t1; e1: t0, t2; e2: t3, t1.
  EXPECT_EQ(buf.values(), std::vector<double>({1, 2, 3, 4, 1, 2, 5, 6, 7, 8, 3, 4}));
  // K = 1, no drops, weight 1: combine(dispatch(x)) == x.
  Buf idx1({N, 1}, DType::i32), slot1({N, 1}, DType::i32), w1 = filled({N, 1}, DType::f32, 1.0);
  eng::router_topk_assign(idx1, slot1, counts, probs, 4);
  Buf buf1({3, 4, H}, DType::f32), y = filled({N, H}, DType::f32, 9.0);
  eng::moe_dispatch_forward(buf1, x, idx1, slot1);
  eng::moe_combine_forward(y, buf1, w1, idx1, slot1);
  EXPECT_EQ(y.values(), x.values());
  // With a residual: y = residual + the same rows (small integers: exact).
  Buf res = from_rows({{10, 20}, {30, 40}, {50, 60}, {70, 80}}, DType::f32);
  eng::moe_combine_forward(y, buf1, w1, idx1, slot1, res);
  EXPECT_EQ(y.values(), std::vector<double>({11, 22, 33, 44, 55, 66, 77, 88}));
}

TEST(MoePermuteGrad, FiniteDifferenceDispatchX) {
  const int64_t N = 5, E = 3, K = 2, C = 3, H = 4;
  Routing r = make_routing(N, E, K, C, 21);
  Buf x = random_buf({N, H}, DType::f64, 22), c = random_buf({E, C, H}, DType::f64, 23), buf({E, C, H}, DType::f64);
  auto loss = [&] {
    eng::moe_dispatch_forward(buf, x, r.idx, r.slot);
    return dot(buf, c);
  };
  Buf dx = filled({N, H}, DType::f64, 1e3);
  eng::moe_dispatch_backward(dx, c, r.idx, r.slot);
  expect_grad("moe_dispatch dx", x, dx.values(), loss);
}

TEST(MoePermuteGrad, FiniteDifferenceCombineEbufAndWeight) {
  const int64_t N = 5, E = 3, K = 2, C = 3, H = 4;
  Routing r = make_routing(N, E, K, C, 31);
  int dropped = 0;
  for (double s : r.slot.values()) dropped += s < 0;
  ASSERT_GT(dropped, 0);
  Buf ebuf = random_buf({E, C, H}, DType::f64, 32), w = random_buf({N, K}, DType::f64, 33);
  Buf c = random_buf({N, H}, DType::f64, 34), y({N, H}, DType::f64);
  auto loss = [&] {
    eng::moe_combine_forward(y, ebuf, w, r.idx, r.slot);
    return dot(y, c);
  };
  Buf debuf = filled({E, C, H}, DType::f64, 1e3), dw = filled({N, K}, DType::f64, 1e3);
  eng::moe_combine_backward(debuf, dw, c, ebuf, w, r.idx, r.slot);
  expect_grad("moe_combine debuf", ebuf, debuf.values(), loss);
  expect_grad("moe_combine dweight", w, dw.values(), loss);
}

using RouterErrors = ThrowingHandler;

TEST_F(RouterErrors, RejectBadRoutingAndDtypes) {
  Buf probs({4, 3}, DType::f32), idx({4, 4}, DType::i32), slot({4, 4}, DType::i32), counts({3}, DType::i32);
  MONTA_EXPECT_ERROR(eng::router_topk_assign(idx, slot, counts, probs, 2), "router_topk_assign");  // K > E
  Buf idxf({4, 2}, DType::f32), slot2({4, 2}, DType::i32);
  MONTA_EXPECT_ERROR(eng::router_topk_assign(idxf, slot2, counts, probs, 2), "f32[4,2]@cpu");
  // The balancing bias must have one value per expert and the probabilities' dtype.
  Buf short_bias({2}, DType::f32), f64_bias({3}, DType::f64), idx2({4, 2}, DType::i32);
  MONTA_EXPECT_ERROR(eng::router_topk_assign_biased(idx2, slot2, counts, probs, short_bias, 2), "bias");
  MONTA_EXPECT_ERROR(eng::router_topk_assign_biased(idx2, slot2, counts, probs, f64_bias, 2), "bias");
  Buf x({4, 2}, DType::f32), buf({3, 2, 2}, DType::f32), e2({4, 2}, DType::i32), s2({4, 2}, DType::i32);
  e2.set(0, 3);  // expert 3 of 3
  MONTA_EXPECT_ERROR(eng::moe_dispatch_forward(buf, x, e2, s2), "moe_dispatch_forward");
  e2.set(0, 0);
  s2.set(1, 2);  // slot 2 of capacity 2
  MONTA_EXPECT_ERROR(eng::moe_dispatch_forward(buf, x, e2, s2), "outside buffer");
  Buf loss64({1}, DType::f64);
  MONTA_EXPECT_ERROR(eng::load_balance_loss_forward(loss64, probs, counts, 2), "load_balance_loss_forward");
}

}  // namespace
}  // namespace monta::enginetest
