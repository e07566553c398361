// Activation recompute on the GPU: every mode gives the losses and gradients of recompute = none bit for bit (at
// this size every CUDA kernel, cuDNN's attention backward included, is deterministic; docs/memory.md), and the GPU memory a trainer adds is model/footprint's prediction within 10%
// for every mode (what --dry-run and the planner print).
#include <memory>
#include <string>
#include <vector>

#include "gpu_model_util.h"
#include "model/footprint.h"

using namespace monta;
using namespace monta::testing_gpu;

TEST(GpuRecompute, EveryModeEqualsNoneBitForBit) {
  if (!engine::cuda_available()) GTEST_SKIP() << "no CUDA device visible";
  engine::cuda_set_device(0);
  model::Config c = gpu_config();
  c.model.layers = 3;
  c.model.top_k = 2;  // routing with drops: the recomputed router must choose and drop as the first forward did
  std::vector<std::unique_ptr<model::Trainer>> t;
  for (const char* mode : {"none", "selective", "full"}) {
    c.train.recompute = mode;
    t.push_back(std::make_unique<model::Trainer>(c, model::ParallelContext{}, engine::Device::cuda));
  }
  std::vector<int32_t> in, tg;
  engine::Philox rng{40, 2, 0};
  for (int step = 0; step < 4; ++step) {
    random_batch(c, rng, in, tg);
    std::vector<model::StepMetrics> m;
    for (auto& tr : t) m.push_back(step == 0 ? tr->compute_gradients(in, tg) : tr->step(in, tg));
    for (size_t i = 1; i < t.size(); ++i) {
      EXPECT_EQ(m[i].loss, m[0].loss) << "mode " << i << " step " << step;
      EXPECT_EQ(m[i].loss_total, m[0].loss_total) << "mode " << i << " step " << step;
      EXPECT_EQ(m[i].grad_norm, m[0].grad_norm) << "mode " << i << " step " << step;
      if (step > 0) continue;
      for (auto& p : t[i]->params().all())
        EXPECT_TRUE(bytes_of(p.grad) == bytes_of(t[0]->params().get(p.name).grad))
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
  engine::Philox rng{7, 2, 0};
  for (const char* mode : {"none", "selective", "full"}) {
    SCOPED_TRACE(mode);
    c.train.recompute = mode;
    const double before = double(engine::cuda_memory_in_use());
    double grown = 0;
    {
      model::Trainer t(c, model::ParallelContext{}, engine::Device::cuda);
      random_batch(c, rng, in, tg);
      t.step(in, tg);  // the first step creates what lazily exists (workspaces of other streams)
      grown = double(engine::cuda_memory_in_use()) - before;
    }
    const model::RankFootprint f = model::rank_footprint(c, 1, 1, true, 1, engine::Device::cuda);
    std::printf("recompute %-9s: predicted %.3f GiB, measured %.3f GiB (%+.1f%%)\n", mode, f.total() / (1 << 30),
                grown / (1 << 30), 100.0 * (grown / f.total() - 1.0));
    EXPECT_NEAR(grown, f.total(), 0.10 * f.total());
  }
}
