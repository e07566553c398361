// Whole-model check of the CUDA path: loss and every parameter gradient of the tiny model in bf16 on the GPU
// against the fp32 CPU run on the same weights and tokens, then a few AdamW steps track the CPU losses; and the
// optimizer offloaded to the host equals the device optimizer bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
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

namespace {

std::vector<uint8_t> bytes_of(const engine::Tensor& t) {
  std::vector<uint8_t> h(t.bytes());
  engine::copy(engine::Tensor(h.data(), {int64_t(h.size())}, engine::DType::u8), engine::make_view(t.data, {int64_t(t.bytes())}, engine::DType::u8, t.device));
  return h;
}

}  // namespace

// train.optimizer_offload on the GPU: master weights and moments in pinned host memory, AdamW on host threads, the
// bf16 weights uploaded. Bound: none, bit for bit. The gradients are the same (same kernels, same compute weights),
// the host AdamW computes the CUDA kernel's bits (no FMA on either side, bf16 moments and the bf16 copy rounded to
// nearest even on both; tests/gpu GpuAdamW.Bf16MomentsEqualCpuBitForBit), so losses, norms, state and compute
// weights must agree exactly over five steps, with fp32 and with bf16 moments.
TEST(GpuModel, OptimizerOffloadEqualsDeviceOptimizer) {
  if (!engine::cuda_available()) GTEST_SKIP() << "no CUDA device visible";
  engine::cuda_set_device(0);
  for (const char* moments : {"fp32", "bf16"}) {
    SCOPED_TRACE(moments);
    model::Config c = gpu_config();
    c.train.optimizer_state = moments;
    model::Config co = c;
    co.train.optimizer_offload = true;
    model::Trainer dev(c, model::ParallelContext{}, engine::Device::cuda), off(co, model::ParallelContext{}, engine::Device::cuda);
    ASSERT_EQ(off.params().get("embed").master.device, engine::Device::cpu);
    std::vector<int32_t> in(size_t(c.train.global_batch * c.model.seq_len)), tg(in.size());
    engine::Philox rng{9, 1, 0};
    for (int s = 0; s < 5; ++s) {
      for (size_t i = 0; i < in.size(); ++i) {
        in[i] = int32_t(rng.below(256));
        tg[i] = int32_t(rng.below(256));
      }
      const auto a = dev.step(in, tg), b = off.step(in, tg);
      EXPECT_EQ(a.loss, b.loss) << "step " << s + 1;
      EXPECT_EQ(a.grad_norm, b.grad_norm) << "step " << s + 1;
    }
    for (const auto& p : dev.params().all()) {
      const auto& q = off.params().get(p.name);
      EXPECT_EQ(bytes_of(p.master), bytes_of(q.master)) << p.name << " master";
      EXPECT_EQ(bytes_of(p.m), bytes_of(q.m)) << p.name << " m";
      EXPECT_EQ(bytes_of(p.v), bytes_of(q.v)) << p.name << " v";
      EXPECT_EQ(bytes_of(p.compute), bytes_of(q.compute)) << p.name << " compute";
    }
  }
}
