// Whole-model gradient check: every parameter's analytic gradient (sampled elements) against central
// finite differences of the printed objective (loss_total: CE + coef x router losses summed over layers), in double,
// on a tiny config with token dropping; again with renormalised top-k weights and a skewed balancing bias; and with
// dropless routing under a skewed router.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/memory.h"
#include "engine/rng.h"
#include "model/model.h"
#include "model_test_util.h"

using namespace monta;
using namespace monta::model;
using engine::DType;
using engine::Device;

namespace {

using monta::testing_model::GradFixture;


// Four sampled elements of every parameter (but `skip`) against central differences of the objective; returns how
// many were checked.
int check_sampled_gradients(GradFixture& f, const std::string& skip = "") {
  engine::Philox pick{5, 2, 0};
  int checked = 0;
  for (auto& p : f.params.all()) {
    if (p.name == skip) continue;
    double* w = p.master.as<double>();
    const double* g = p.grad.as<double>();
    const int64_t n = p.master.numel();
    for (int trial = 0; trial < 4; ++trial) {
      const int64_t i = int64_t(pick.below(uint64_t(n)));
      const double eps = 1e-5, keep = w[i];
      w[i] = keep + eps;
      double lp = f.loss();
      w[i] = keep - eps;
      double lm = f.loss();
      w[i] = keep;
      double fd = (lp - lm) / (2 * eps);
      double tol = 1e-6 + 1e-4 * std::abs(fd);
      EXPECT_NEAR(g[i], fd, tol) << p.name << "[" << i << "]";
      ++checked;
    }
  }
  return checked;
}

}  // namespace

TEST(ModelGrad, EveryParameterMatchesFiniteDifferences) {
  GradFixture f(testing_model::grad_test_config());
  f.params.zero_grads();
  auto r = f.model.forward_backward(f.tokens.data(), f.targets.data(), f.ce_scale, f.aux_scale);
  EXPECT_GT(r.dropped, 0) << "config should drop some tokens";
  EXPECT_EQ(check_sampled_gradients(f), int(f.params.all().size()) * 4);
}

// model.router_norm_topk and model.router_bias_update: the renormalised combine weights differentiated exactly, with
// a skewed balancing bias steering the choice. The bias takes no gradient (it is updated by the trainer, not by
// AdamW) and is left out of the differences: a step of it can only flip a choice, a jump and not a slope.
TEST(ModelGrad, RenormalisedWeightsWithBalancingBiasMatchFiniteDifferences) {
  ModelConfig cfg = testing_model::grad_test_config();
  cfg.router_norm_topk = true;
  cfg.router_bias_update = 0.01;
  GradFixture f(cfg);
  Param& bias = f.params.get("router_bias");
  ASSERT_EQ(bias.full, (std::vector<int64_t>{cfg.layers, cfg.experts}));
  for (int64_t i = 0; i < bias.master.numel(); ++i) EXPECT_EQ(bias.master.as<double>()[i], 0.0) << "initialised to 0";
  const double before = f.loss();
  const Tensor slots = f.model.slots();
  const std::vector<int32_t> slots0(slots.as<int32_t>(), slots.as<int32_t>() + slots.numel());
  const double skew[] = {0.2, 0.0, -0.1, 0.05, -0.05, 0.15, 0.0, -0.2};  // (L, E) = (2, 4)
  for (int64_t i = 0; i < bias.master.numel(); ++i) bias.master.as<double>()[i] = skew[i];
  const double after = f.loss();
  EXPECT_NE(std::vector<int32_t>(slots.as<int32_t>(), slots.as<int32_t>() + slots.numel()), slots0)
      << "the bias should move some choices";
  EXPECT_NE(after, before);
  f.params.zero_grads();
  auto r = f.model.forward_backward(f.tokens.data(), f.targets.data(), f.ce_scale, f.aux_scale);
  EXPECT_GT(r.dropped, 0) << "config should drop some tokens";
  f.params.settle_grads();
  for (int64_t i = 0; i < bias.grad.numel(); ++i) EXPECT_EQ(bias.grad.as<double>()[i], 0.0) << "router_bias grad";
  EXPECT_EQ(check_sampled_gradients(f, "router_bias"), int(f.params.all().size() - 1) * 4);
}


// Dropless routing (capacity_factor 0) under a router skewed towards expert 0 in layer 0 (its logit raised by 2 for
// every token; layer 1 is left alone): nothing is dropped, each layer runs at its own step capacity (layer 0 above
// the balanced N·K/E, layer 1 below the worst case N, so the buffers are used in part), and every parameter's
// gradient matches finite differences.
TEST(ModelGrad, DroplessSkewedRouterMatchesFiniteDifferences) {
  ModelConfig m = testing_model::grad_test_config();
  m.capacity_factor = 0;
  GradFixture f(m);
  f.model.on_router_logits = [](int l, Tensor logits) {
    if (l != 0) return;
    for (int64_t n = 0; n < logits.dim(0); ++n) logits.as<double>()[n * logits.dim(1)] += 2.0;
  };
  f.params.zero_grads();
  auto r = f.model.forward_backward(f.tokens.data(), f.targets.data(), f.ce_scale, f.aux_scale);
  EXPECT_EQ(r.dropped, 0);
  const int64_t N = f.s.N, balanced = N * m.top_k / m.experts;
  EXPECT_EQ(f.s.C, N) << "dropless buffers are sized for every token to one expert";
  EXPECT_GT(f.model.capacity(0), balanced) << "the skewed layer's largest load";
  EXPECT_LT(f.model.capacity(1), N) << "the other layer runs below the worst case";
  const Tensor slots = f.model.slots();
  for (int64_t l = 0; l < m.layers; ++l)
    for (int64_t i = 0; i < N * m.top_k; ++i) {
      const int32_t slot = slots.as<int32_t>()[l * N * m.top_k + i];
      ASSERT_TRUE(slot >= 0 && slot < f.model.capacity(int(l))) << "layer " << l << " choice " << i << " slot " << slot;
    }
  EXPECT_EQ(check_sampled_gradients(f), int(f.params.all().size()) * 4);
}

TEST(ModelGrad, GradientsAccumulateAcrossMicroBatches) {
  GradFixture f(testing_model::grad_test_config());
  f.params.zero_grads();
  f.model.forward_backward(f.tokens.data(), f.targets.data(), f.ce_scale, f.aux_scale);
  std::vector<double> once(size_t(f.params.get("lm_head").grad.numel()));
  std::copy_n(f.params.get("lm_head").grad.as<double>(), once.size(), once.begin());
  f.model.forward_backward(f.tokens.data(), f.targets.data(), f.ce_scale, f.aux_scale);
  const double* twice = f.params.get("lm_head").grad.as<double>();
  for (size_t i = 0; i < once.size(); ++i) ASSERT_NEAR(twice[i], 2 * once[i], 1e-12 + 1e-12 * std::abs(once[i]));
}

// Lazy zeroing: after zero_grads() every gradient of the backward is written over whatever its memory held (NaN
// here), giving the same bits as a backward onto filled zeros.
TEST(ModelGrad, FirstMicroBatchOverwritesStaleGradients) {
  GradFixture f(testing_model::grad_test_config());
  for (auto& p : f.params.all()) engine::fill_zero(p.grad);
  f.model.forward_backward(f.tokens.data(), f.targets.data(), f.ce_scale, f.aux_scale);  // accumulates onto zeros
  std::vector<std::vector<double>> want;
  for (auto& p : f.params.all()) want.emplace_back(p.grad.as<double>(), p.grad.as<double>() + p.grad.numel());
  for (auto& p : f.params.all()) std::fill_n(p.grad.as<double>(), p.grad.numel(), std::nan(""));
  f.params.zero_grads();
  f.model.forward_backward(f.tokens.data(), f.targets.data(), f.ce_scale, f.aux_scale);
  f.params.settle_grads();
  size_t i = 0;
  for (auto& p : f.params.all()) {
    const std::vector<double> got(p.grad.as<double>(), p.grad.as<double>() + p.grad.numel());
    EXPECT_EQ(got, want[i++]) << p.name;
  }
}

TEST(ModelInit, ValuesDependOnNameAndIndexOnly) {
  ModelConfig cfg = testing_model::grad_test_config();
  ParallelContext one, tp2;
  tp2.tp = 2;
  tp2.tp_rank = 1;
  ParamStore a(cfg, one, Device::cpu, DType::f64, DType::f64), b(cfg, tp2, Device::cpu, DType::f64, DType::f64);
  a.init(3);
  b.init(3);
  // Rank 1 of tp 2 holds rows [A·D/2, A·D) of wq: they must equal the same rows of the unsharded tensor.
  const auto& full = a.get("layers.0.wq");
  const auto& half = b.get("layers.0.wq");
  ASSERT_EQ(half.offset[0], full.full[0] / 2);
  const int64_t row = full.full[1];
  for (int64_t i = 0; i < half.master.numel(); ++i)
    ASSERT_EQ(half.master.as<double>()[i], full.master.as<double>()[half.offset[0] * row + i]);
  // wo is row-parallel: column slice.
  const auto& wo_full = a.get("layers.1.wo");
  const auto& wo_half = b.get("layers.1.wo");
  const int64_t cols = wo_full.full[1], hc = wo_half.local[1];
  for (int64_t r = 0; r < wo_half.local[0]; ++r)
    for (int64_t c = 0; c < hc; ++c)
      ASSERT_EQ(wo_half.master.as<double>()[r * hc + c], wo_full.master.as<double>()[r * cols + hc + c]);
}

// Dropped choices are counted from the expert counts and the capacity (no copy of the slots): the count must equal
// the slots marked -1 by the capacity assignment, over every layer.
TEST(ModelGrad, DroppedCountEqualsDroppedSlots) {
  GradFixture f(testing_model::grad_test_config());
  auto r = f.model.forward(f.tokens.data(), f.targets.data());
  const Tensor slots = f.model.slots();
  int64_t want = 0;
  for (int64_t i = 0; i < slots.numel(); ++i) want += slots.as<int32_t>()[i] < 0;
  EXPECT_GT(want, 0);
  EXPECT_EQ(r.dropped, want);
}
