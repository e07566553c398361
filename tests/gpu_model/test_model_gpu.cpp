// Whole-model check of the CUDA path: loss and every parameter gradient of the tiny model in bf16 on the GPU
// against the fp32 CPU run on the same weights and tokens, then a few AdamW steps track the CPU losses.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/memory.h"
#include "engine/rng.h"
#include "model/trainer.h"

using namespace monta;

namespace {

model::Config gpu_config() {
  model::Config c;
  c.model.vocab = 256;
  c.model.hidden = 128;
  c.model.layers = 2;
  c.model.heads = 4;
  c.model.kv_heads = 2;
  c.model.ffn = 256;
  c.model.experts = 4;
  // Every token goes to every expert and nothing is dropped: with near-uniform router probabilities at init,
  // bf16 rounding would otherwise flip top-k choices and the two runs would route different tokens.
  c.model.top_k = 4;
  c.model.seq_len = 64;
  c.model.capacity_factor = 1.0;
  c.train.micro_batch = 2;
  c.train.global_batch = 4;
  c.train.warmup_steps = 0;
  c.train.lr = 1e-3;
  return c;
}

std::vector<float> to_host(const engine::Tensor& t) {
  std::vector<float> h(static_cast<size_t>(t.numel()));
  engine::copy(engine::Tensor(h.data(), {t.numel()}, engine::DType::f32), t.view({t.numel()}));
  return h;
}

}  // namespace

TEST(GpuModel, LossAndGradientsMatchCpu) {
  if (!engine::cuda_available()) GTEST_SKIP() << "no CUDA device visible";
  engine::cuda_set_device(0);
  model::Config c = gpu_config();
  std::vector<int32_t> in(size_t(c.train.global_batch * c.model.seq_len)), tg(in.size());
  engine::Philox rng{5, 1, 0};
  for (size_t i = 0; i < in.size(); ++i) {
    in[i] = int32_t(rng.below(256));
    tg[i] = int32_t(rng.below(256));
  }
  model::Trainer cpu(c, model::ParallelContext{}, engine::Device::cpu);
  model::Trainer gpu(c, model::ParallelContext{}, engine::Device::cuda);
  auto a = cpu.compute_gradients(in, tg);
  auto b = gpu.compute_gradients(in, tg);
  EXPECT_NEAR(b.loss, a.loss, 1e-2 * a.loss);
  EXPECT_NEAR(b.aux_loss, a.aux_loss, 2e-2 * a.aux_loss);
  for (auto& p : cpu.params().all()) {
    auto ref = to_host(p.grad), got = to_host(gpu.params().get(p.name).grad);
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      num += (got[i] - ref[i]) * (got[i] - ref[i]);
      den += ref[i] * ref[i];
    }
    EXPECT_LT(std::sqrt(num / (den + 1e-30)), 5e-2) << p.name;
  }
  for (int s = 0; s < 3; ++s) {
    auto x = cpu.step(in, tg);
    auto y = gpu.step(in, tg);
    EXPECT_NEAR(y.loss, x.loss, 2e-2 * x.loss) << "step " << s + 1;
  }
}
