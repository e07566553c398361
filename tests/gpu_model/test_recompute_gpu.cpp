// Activation recompute on the GPU: every mode gives the losses and gradients of recompute = none bit for bit (the
// CUDA kernels are deterministic), and the GPU memory a trainer adds is model/footprint's prediction within 10%
// for every mode (what --dry-run and the planner print).
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/memory.h"
#include "engine/rng.h"
#include "model/footprint.h"
#include "model/trainer.h"

using namespace monta;

namespace {

std::vector<char> bytes_on_host(const engine::Tensor& t) {
  std::vector<char> h(t.bytes());
  engine::copy(engine::Tensor(h.data(), {int64_t(h.size())}, engine::DType::u8),
               engine::make_view(t.data, {int64_t(t.bytes())}, engine::DType::u8, t.device));
  return h;
}

void make_batch(const model::Config& c, uint64_t seed, std::vector<int32_t>& in, std::vector<int32_t>& tg) {
  engine::Philox rng{seed, 2, 0};
  in.resize(size_t(c.train.global_batch * c.model.seq_len));
  tg.resize(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    in[i] = int32_t(rng.below(uint64_t(c.model.vocab)));
    tg[i] = int32_t(rng.below(uint64_t(c.model.vocab)));
  }
}

}  // namespace

TEST(GpuRecompute, EveryModeEqualsNoneBitForBit) {
  if (!engine::cuda_available()) GTEST_SKIP() << "no CUDA device visible";
  engine::cuda_set_device(0);
  model::Config c;
  c.model.vocab = 256;
  c.model.hidden = 128;
  c.model.layers = 3;
  c.model.heads = 4;
  c.model.kv_heads = 2;
  c.model.ffn = 256;
  c.model.experts = 4;
  c.model.top_k = 2;
  c.model.seq_len = 64;
  c.model.capacity_factor = 1.0;
  c.train.micro_batch = 2;
  c.train.global_batch = 4;
  c.train.warmup_steps = 0;
  c.train.lr = 1e-3;
  std::vector<std::unique_ptr<model::Trainer>> t;
  for (const char* mode : {"none", "selective", "full"}) {
    c.train.recompute = mode;
    t.push_back(std::make_unique<model::Trainer>(c, model::ParallelContext{}, engine::Device::cuda));
  }
  std::vector<int32_t> in, tg;
  for (int step = 0; step < 4; ++step) {
    make_batch(c, 40 + uint64_t(step), in, tg);
    std::vector<model::StepMetrics> m;
    for (auto& tr : t) m.push_back(step == 0 ? tr->compute_gradients(in, tg) : tr->step(in, tg));
    for (size_t i = 1; i < t.size(); ++i) {
      EXPECT_EQ(m[i].loss, m[0].loss) << "mode " << i << " step " << step;
      EXPECT_EQ(m[i].loss_total, m[0].loss_total) << "mode " << i << " step " << step;
      EXPECT_EQ(m[i].grad_norm, m[0].grad_norm) << "mode " << i << " step " << step;
      if (step > 0) continue;
      for (auto& p : t[i]->params().all())
        EXPECT_TRUE(bytes_on_host(p.grad) == bytes_on_host(t[0]->params().get(p.name).grad))
            << "mode " << i << " gradient " << p.name;
    }
  }
}

// A model of a few GiB, so the fixed costs the footprint leaves out (cuBLAS/cuDNN workspaces, a few MiB each) stay
// well under the 10% bound.
TEST(GpuMemory, TrainerAddsThePredictedBytesWithinTenPercent) {
  if (!engine::cuda_available()) GTEST_SKIP() << "no CUDA device visible";
  engine::cuda_set_device(0);
  model::Config c;
  c.model.vocab = 8192;
  c.model.hidden = 1024;
  c.model.layers = 4;
  c.model.heads = 8;
  c.model.kv_heads = 2;
  c.model.ffn = 4096;
  c.model.experts = 4;
  c.model.top_k = 2;
  c.model.seq_len = 2048;
  c.train.micro_batch = 2;
  c.train.global_batch = 2;
  std::vector<int32_t> in, tg;
  for (const char* mode : {"none", "selective", "full"}) {
    SCOPED_TRACE(mode);
    c.train.recompute = mode;
    const double before = double(engine::cuda_memory_in_use());
    double grown = 0;
    {
      model::Trainer t(c, model::ParallelContext{}, engine::Device::cuda);
      make_batch(c, 7, in, tg);
      t.step(in, tg);  // the first step creates what lazily exists (workspaces of other streams)
      grown = double(engine::cuda_memory_in_use()) - before;
    }
    const model::RankFootprint f = model::rank_footprint(c, 1, 1, true, 1, engine::Device::cuda);
    std::printf("recompute %-9s: predicted %.3f GiB, measured %.3f GiB (%+.1f%%)\n", mode, f.total() / (1 << 30),
                grown / (1 << 30), 100.0 * (grown / f.total() - 1.0));
    EXPECT_NEAR(grown, f.total(), 0.10 * f.total());
  }
}
