// Activation recomputation changes memory and time only: with train.recompute = selective or full the losses, every
// parameter gradient and five AdamW steps equal recompute = none bit for bit (the CPU ops are deterministic), and the
// activation arena shrinks to what model/footprint predicts. The multi-rank layouts are checked in tests/model_mpi.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/rng.h"
#include "model/footprint.h"
#include "model/trainer.h"

using namespace monta;

namespace {

model::Config recompute_config(const std::string& mode) {
  model::Config c;
  c.model.vocab = 48;
  c.model.hidden = 32;
  c.model.layers = 3;
  c.model.heads = 4;
  c.model.kv_heads = 2;
  c.model.ffn = 48;
  c.model.experts = 4;
  c.model.top_k = 2;
  c.model.seq_len = 16;
  c.model.capacity_factor = 1.0;  // some choices are dropped, so the recomputed routing must drop the same ones
  c.model.aux_loss_coef = 0.1;
  c.model.z_loss_coef = 0.01;
  c.model.init_std = 0.2;
  c.train.micro_batch = 2;
  c.train.global_batch = 4;  // two micro-batches: the second accumulates into the first one's gradients
  c.train.warmup_steps = 0;
  c.train.lr = 1e-2;
  c.train.recompute = mode;
  return c;
}

void make_batch(const model::Config& c, uint64_t seed, std::vector<int32_t>& in, std::vector<int32_t>& tg) {
  engine::Philox rng{seed, 3, 0};
  in.resize(size_t(c.train.global_batch * c.model.seq_len));
  tg.resize(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    in[i] = int32_t(rng.below(uint64_t(c.model.vocab)));
    tg[i] = int32_t(rng.below(uint64_t(c.model.vocab)));
  }
}

// The first parameter whose gradient differs from the reference in any bit, or "".
std::string first_different_gradient(model::ParamStore& a, model::ParamStore& b) {
  for (auto& p : a.all()) {
    const auto& q = b.get(p.name);
    if (p.grad.bytes() != q.grad.bytes() || std::memcmp(p.grad.data, q.grad.data, p.grad.bytes()) != 0) return p.name;
  }
  return "";
}

}  // namespace

class Recompute : public ::testing::TestWithParam<std::string> {};

TEST_P(Recompute, EqualsNoRecomputeBitForBit) {
  const model::Config ref_cfg = recompute_config("none"), cfg = recompute_config(GetParam());
  model::Trainer ref(ref_cfg, model::ParallelContext{}, engine::Device::cpu);
  model::Trainer mine(cfg, model::ParallelContext{}, engine::Device::cpu);
  std::vector<int32_t> in, tg;
  make_batch(cfg, 1, in, tg);
  const model::StepMetrics a = mine.compute_gradients(in, tg), b = ref.compute_gradients(in, tg);
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(a.loss_total, b.loss_total);
  EXPECT_EQ(a.aux_loss, b.aux_loss);
  EXPECT_EQ(a.z_loss, b.z_loss);
  EXPECT_EQ(a.dropped, b.dropped);
  EXPECT_GT(b.dropped, 0) << "the config should drop some choices";
  EXPECT_EQ(first_different_gradient(mine.params(), ref.params()), "");
  for (int step = 0; step < 5; ++step) {
    make_batch(cfg, 10 + uint64_t(step), in, tg);
    const model::StepMetrics x = mine.step(in, tg), y = ref.step(in, tg);
    EXPECT_EQ(x.loss, y.loss) << "step " << step + 1;
    EXPECT_EQ(x.grad_norm, y.grad_norm) << "step " << step + 1;
  }
  for (auto& p : mine.params().all())
    EXPECT_EQ(std::memcmp(p.master.data, ref.params().get(p.name).master.data, p.master.bytes()), 0) << p.name;
}

INSTANTIATE_TEST_SUITE_P(Modes, Recompute, ::testing::Values("selective", "full"),
                         [](const auto& info) { return info.param; });

// Dropless routing under a skewed router (layer 0's expert 0 favoured): the recomputed forward finds the same step
// capacity and routing, so every mode still equals recompute = none bit for bit, with nothing dropped.
class DroplessRecompute : public ::testing::TestWithParam<std::string> {};

TEST_P(DroplessRecompute, EqualsNoRecomputeBitForBit) {
  model::Config ref_cfg = recompute_config("none"), cfg = recompute_config(GetParam());
  ref_cfg.model.capacity_factor = cfg.model.capacity_factor = 0;
  model::Trainer ref(ref_cfg, model::ParallelContext{}, engine::Device::cpu);
  model::Trainer mine(cfg, model::ParallelContext{}, engine::Device::cpu);
  const auto skew = [](int l, engine::Tensor logits) {
    if (l != 0) return;
    for (int64_t n = 0; n < logits.dim(0); ++n) logits.as<float>()[n * logits.dim(1)] += 2.0f;
  };
  ref.model().on_router_logits = skew;
  mine.model().on_router_logits = skew;
  std::vector<int32_t> in, tg;
  for (int step = 0; step < 3; ++step) {
    make_batch(cfg, 20 + uint64_t(step), in, tg);
    const model::StepMetrics x = mine.step(in, tg), y = ref.step(in, tg);
    EXPECT_EQ(x.dropped, 0);
    EXPECT_EQ(x.loss, y.loss) << "step " << step + 1;
    EXPECT_EQ(x.grad_norm, y.grad_norm) << "step " << step + 1;
    EXPECT_EQ(mine.model().capacity(0), ref.model().capacity(0));
    EXPECT_GT(mine.model().capacity(0), mine.model().shapes().N * 2 / 4) << "layer 0 is skewed";
  }
  for (auto& p : mine.params().all())
    EXPECT_EQ(std::memcmp(p.master.data, ref.params().get(p.name).master.data, p.master.bytes()), 0) << p.name;
}

INSTANTIATE_TEST_SUITE_P(Modes, DroplessRecompute, ::testing::Values("selective", "full"),
                         [](const auto& info) { return info.param; });

// The arena each mode allocates is what rank_footprint predicts (the planner and --dry-run read it), and each mode
// keeps strictly less than the one before it.
TEST(RecomputeMemory, ArenaMatchesFootprintAndShrinksWithEachMode) {
  double previous = 0;
  for (const char* mode : {"none", "selective", "full"}) {
    SCOPED_TRACE(mode);
    const model::Config c = recompute_config(mode);
    model::Trainer t(c, model::ParallelContext{}, engine::Device::cpu);
    const model::RankFootprint f = model::rank_footprint(c, 1, 1, true, 1, engine::Device::cpu);
    EXPECT_EQ(f.activations, double(t.model().activations().bytes()));
    if (previous > 0) EXPECT_LT(f.activations, previous);
    previous = f.activations;
  }
}
