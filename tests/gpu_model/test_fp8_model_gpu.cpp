// The FP8 expert path of the whole tiny model on the GPU (cuBLASLt block-scaled E4M3 GEMMs, bf16 activations) against
// the CPU's exact E4M3 emulation on the same weights and tokens: loss, every parameter gradient, and a few steps.
// The two quantise slightly different inputs (bf16-rounded on the GPU, f32 on the CPU), so some codes differ by one
// step; the bounds are twice those of the bf16 model test (test_model_gpu.cpp).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "engine/memory.h"
#include "engine/rng.h"
#include "model/trainer.h"

using namespace monta;

namespace {

model::Config fp8_gpu_config() {
  model::Config c;
  c.model.vocab = 256;
  c.model.hidden = 128;
  c.model.layers = 2;
  c.model.heads = 4;
  c.model.kv_heads = 2;
  c.model.ffn = 256;
  c.model.experts = 4;
  c.model.top_k = 4;  // every token to every expert: no routing flips between the two runs (as test_model_gpu.cpp)
  c.model.seq_len = 64;
  c.model.capacity_factor = 1.0;  // C = 128: the CUDA FP8 GEMM wants multiples of 16
  c.model.fp8 = "experts";
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

TEST(GpuFp8Model, LossAndGradientsMatchCpuEmulation) {
  if (!engine::cuda_available()) GTEST_SKIP() << "no CUDA device visible";
  engine::cuda_set_device(0);
  model::Config c = fp8_gpu_config();
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
  EXPECT_NEAR(b.loss, a.loss, 2e-2 * a.loss);
  for (auto& p : cpu.params().all()) {
    auto ref = to_host(p.grad), got = to_host(gpu.params().get(p.name).grad);
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      num += (got[i] - ref[i]) * (got[i] - ref[i]);
      den += ref[i] * ref[i];
    }
    EXPECT_LT(std::sqrt(num / (den + 1e-30)), 1e-1) << p.name;
  }
  for (int s = 0; s < 3; ++s) {
    auto x = cpu.step(in, tg);
    auto y = gpu.step(in, tg);
    EXPECT_NEAR(y.loss, x.loss, 4e-2 * x.loss) << "step " << s + 1;
  }
}
