// Dropless routing's expert GEMMs over the filled rows only (model/dropless.h, stage B): the rule that makes filled
// runs into GEMM calls, and the model's per-call path against the all-rows path (every row of the step's capacity,
// padding included) bit for bit, with an expert that gets no token and over two accumulated micro-batches.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "engine/check.h"
#include "engine/memory.h"
#include "engine/op_timing.h"
#include "engine/rng.h"
#include "model/dropless.h"
#include "model/model.h"
#include "model_test_util.h"

using namespace monta;
using namespace monta::model;
using comm::ExpertRun;

namespace {

bool same_runs(const std::vector<ExpertRun>& got, const std::vector<ExpertRun>& want) {
  if (got.size() != want.size()) return false;
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i].j != want[i].j || got[i].row != want[i].row || got[i].count != want[i].count) return false;
  return true;
}

}  // namespace

// Rounded to 16 rows past each run's start, capped by the next run of the same expert and by the part's end; runs of
// one expert that then touch are one call; empty runs give no call.
TEST(DroplessGemmRuns, RoundCapAndMerge) {
  // 2 local experts, 2 peers of c = 32 rows each (R = 64).
  const std::vector<ExpertRun> runs{{0, 0, 5}, {0, 32, 32}, {1, 32, 20}};
  EXPECT_TRUE(same_runs(dropless_gemm_runs(runs, 64), {{0, 0, 16}, {0, 32, 32}, {1, 32, 32}}));
  // A full first peer block touches the next run: merged.
  EXPECT_TRUE(same_runs(dropless_gemm_runs(std::vector<ExpertRun>{{0, 0, 32}, {0, 32, 3}}, 64), {{0, 0, 48}}));
  // Rounding stops at the next run of the same expert (c = 8 here), and the calls then touch: merged.
  EXPECT_TRUE(same_runs(dropless_gemm_runs(std::vector<ExpertRun>{{0, 0, 3}, {0, 8, 2}}, 16), {{0, 0, 16}}));
  // ... and at the part's end.
  EXPECT_TRUE(same_runs(dropless_gemm_runs(std::vector<ExpertRun>{{0, 0, 5}, {1, 8, 9}}, 24), {{0, 0, 16}, {1, 8, 16}}));
  EXPECT_TRUE(dropless_gemm_runs(std::vector<ExpertRun>{}, 64).empty());
  EXPECT_TRUE(same_runs(dropless_gemm_runs(std::vector<ExpertRun>{{0, 0, 5}}, 64, 1), {{0, 0, 5}}));
  // Out of order or outside the part: refused.
  engine::install_throwing_handler();
  EXPECT_THROW(dropless_gemm_runs(std::vector<ExpertRun>{{0, 8, 2}, {0, 0, 2}}, 16), engine::Error);
  EXPECT_THROW(dropless_gemm_runs(std::vector<ExpertRun>{{0, 10, 8}}, 16), engine::Error);
  EXPECT_TRUE(dropless_runs_cover_all(std::vector<ExpertRun>{{0, 0, 64}, {1, 0, 64}}, 2, 64));
  EXPECT_FALSE(dropless_runs_cover_all(std::vector<ExpertRun>{{0, 0, 64}}, 2, 64));
  EXPECT_FALSE(dropless_runs_cover_all(std::vector<ExpertRun>{{0, 0, 64}, {1, 0, 48}}, 2, 64));
}

namespace {

model::ModelConfig dropless_config() {
  model::ModelConfig m = testing_model::grad_test_config();
  m.seq_len = 32;  // N = 64 tokens: step capacities in multiples of 8, loads that are not
  m.capacity_factor = 0;
  m.min_capacity = model::ModelConfig().min_capacity;
  m.z_loss_coef = model::ModelConfig().z_loss_coef;
  return m;
}

// The expert GEMM calls of one forward_backward, counted with op timing (bf16: the forward GEMMs; FP8: every GEMM).
int expert_gemm_calls(model::Model& model, const std::vector<int32_t>& tok, const std::vector<int32_t>& tgt,
                      double ce_scale, double aux_scale) {
  engine::set_op_timing(true);
  model.forward_backward(tok.data(), tgt.data(), ce_scale, aux_scale);
  engine::set_op_timing(false);
  int calls = 0;
  for (const engine::OpTime& t : engine::take_op_times())
    if (t.name.rfind("expert_linear_forward", 0) == 0 || t.name.rfind("fp8_gemm", 0) == 0) calls += t.calls;
  return calls;
}

}  // namespace

// The per-call path (filled rows, rounded up to 16 within the step capacity, or exactly the filled rows) equals the
// all-rows path bit for bit in one process: rows are independent in the forward and the dgrad, and each expert's one run starts at row 0 like its
// all-rows GEMM, so its weight gradient sums the same products in the same order, plus exact zeros. Layer 0 is skewed
// to expert 0 and expert 3 gets no token (in the second micro-batch only, or in both): its weight gradient is the
// first micro-batch's (the second adds nothing) or exactly zero, although NaN filled the gradients before the step.
// With model.fp8 = experts too: the activations' 1x128 tiles lie along rows or along tokens starting at row 0 in both
// paths, the padding rows are zeros (no tile's maximum changes), and an expert slice's weight codes are the slice of
// the cached codes, so the per-call path is again bit for bit the all-rows one.
class DroplessFilledRows : public ::testing::TestWithParam<std::tuple<bool, int64_t, std::string>> {};

TEST_P(DroplessFilledRows, EqualAllRowsBitForBit) {
  const auto [starve_both, quantum, fp8] = GetParam();
  model::ModelConfig m = dropless_config();
  m.fp8 = fp8;
  testing_model::GradFixture runs(m), all(m);
  runs.model.dropless_row_quantum = quantum;
  all.model.dropless_filled_rows = false;
  int micro = 0;
  const auto router = [&](int l, engine::Tensor logits) {
    if (l != 0) return;
    for (int64_t n = 0; n < logits.dim(0); ++n) {
      double* row = logits.as<double>() + n * logits.dim(1);
      row[0] += 2.0;
      if (starve_both || micro == 1) row[3] = -50.0;
    }
  };
  runs.model.on_router_logits = router;
  all.model.on_router_logits = router;
  std::vector<int32_t> tok2(runs.tokens.rbegin(), runs.tokens.rend()), tgt2(runs.targets.rbegin(), runs.targets.rend());
  for (auto* f : {&runs, &all}) {
    for (auto& p : f->params.all()) std::fill_n(p.grad.as<double>(), p.grad.numel(), std::nan(""));
    f->params.zero_grads();
  }
  std::vector<int> calls(2);
  for (micro = 0; micro < 2; ++micro) {
    const std::vector<int32_t>& tok = micro == 0 ? runs.tokens : tok2;
    const std::vector<int32_t>& tgt = micro == 0 ? runs.targets : tgt2;
    calls[0] = expert_gemm_calls(runs.model, tok, tgt, runs.ce_scale, runs.aux_scale);
    calls[1] = expert_gemm_calls(all.model, tok, tgt, all.ce_scale, all.aux_scale);
    EXPECT_GT(calls[0], calls[1]) << "micro-batch " << micro << ": the per-call path ran";
    EXPECT_EQ(runs.model.capacity(0), all.model.capacity(0));
    EXPECT_LT(runs.model.capacity(1), runs.s.N) << "layer 1 runs below the worst case";
    const engine::Tensor c = runs.model.counts();
    if (starve_both || micro == 1)
      EXPECT_EQ(c.as<int32_t>()[3], 0) << "expert 3 of layer 0 gets no token";
    else
      EXPECT_GT(c.as<int32_t>()[3], 0) << "expert 3 of layer 0 gets tokens";
    EXPECT_GT(c.as<int32_t>()[0], runs.s.N * m.top_k / m.experts) << "layer 0 is skewed";
    for (int64_t i = 0; i < runs.model.logits().numel(); ++i)
      ASSERT_EQ(runs.model.logits().as<double>()[i], all.model.logits().as<double>()[i]) << "logit " << i;
  }
  runs.params.settle_grads();
  all.params.settle_grads();
  for (auto& p : runs.params.all()) {
    const engine::Tensor q = all.params.get(p.name).grad;
    for (int64_t i = 0; i < p.grad.numel(); ++i)
      ASSERT_EQ(p.grad.as<double>()[i], q.as<double>()[i]) << p.name << " element " << i;
  }
  // Expert 3 of layer 0: zero after two starved micro-batches, else the first micro-batch's (non-zero) gradient.
  for (const char* name : {"w_gate", "w_up", "w_down"}) {
    const engine::Tensor g = runs.params.get(std::string("layers.0.") + name).grad.rows(3, 1);
    double sum_abs = 0;
    for (int64_t i = 0; i < g.numel(); ++i) sum_abs += std::abs(g.as<double>()[i]);
    if (starve_both)
      EXPECT_EQ(sum_abs, 0.0) << name;
    else
      EXPECT_GT(sum_abs, 0.0) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Starved, DroplessFilledRows,
                         ::testing::Combine(::testing::Values(false, true), ::testing::Values(int64_t(16), int64_t(1)),
                                            ::testing::Values(std::string("none"), std::string("experts"))),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) ? "ExpertStarvedInBoth" : "ExpertStarvedInSecond") +
                                  "_RowsRoundedTo" + std::to_string(std::get<1>(info.param)) + "_fp8_" +
                                  std::get<2>(info.param);
                         });
