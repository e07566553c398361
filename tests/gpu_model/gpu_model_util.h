// Shared pieces of the whole-model GPU tests: the tiny config, tokens, host copies of device tensors, and the
// GPU-against-CPU check that the bf16 and the FP8 model tests run with their own bounds.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "engine/memory.h"
#include "engine/rng.h"
#include "model/trainer.h"

namespace monta::testing_gpu {

inline model::Config gpu_config() {
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
  c.model.capacity_factor = 1.0;  // C = 64 (a multiple of 16, as the CUDA FP8 GEMM wants)
  c.train.micro_batch = 2;
  c.train.global_batch = 4;
  c.train.warmup_steps = 0;
  c.train.lr = 1e-3;
  return c;
}

// A global batch of uniform tokens and targets below the config's vocabulary.
inline void random_batch(const model::Config& c, engine::Philox& rng, std::vector<int32_t>& in, std::vector<int32_t>& tg) {
  in.resize(size_t(c.train.global_batch * c.model.seq_len));
  tg.resize(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    in[i] = int32_t(rng.below(uint64_t(c.model.vocab)));
    tg[i] = int32_t(rng.below(uint64_t(c.model.vocab)));
  }
}

inline std::vector<float> to_host(const engine::Tensor& t) {
  std::vector<float> h(static_cast<size_t>(t.numel()));
  engine::copy(engine::Tensor(h.data(), {t.numel()}, engine::DType::f32), t.view({t.numel()}));
  return h;
}

inline std::vector<uint8_t> bytes_of(const engine::Tensor& t) {
  std::vector<uint8_t> h(t.bytes());
  engine::copy(engine::Tensor(h.data(), {int64_t(h.size())}, engine::DType::u8),
               engine::make_view(t.data, {int64_t(t.bytes())}, engine::DType::u8, t.device));
  return h;
}

// The config on the GPU against the CPU from the same weights and tokens: the loss within loss_rel, every parameter
// gradient within grad_rel (relative Frobenius), then three AdamW steps' losses within step_rel.
// setup, when given, runs on both models first (a router hook, say).
inline void expect_gpu_matches_cpu(const model::Config& c, double loss_rel, double grad_rel, double step_rel,
                                   const std::function<void(model::Model&)>& setup = nullptr) {
  std::vector<int32_t> in, tg;
  engine::Philox rng{5, 1, 0};
  random_batch(c, rng, in, tg);
  model::Trainer cpu(c, model::ParallelContext{}, engine::Device::cpu);
  model::Trainer gpu(c, model::ParallelContext{}, engine::Device::cuda);
  if (setup) {
    setup(cpu.model());
    setup(gpu.model());
  }
  auto a = cpu.compute_gradients(in, tg);
  auto b = gpu.compute_gradients(in, tg);
  EXPECT_NEAR(b.loss, a.loss, loss_rel * a.loss);
  EXPECT_NEAR(b.aux_loss, a.aux_loss, 2 * loss_rel * a.aux_loss);
  for (auto& p : cpu.params().all()) {
    auto ref = to_host(p.grad), got = to_host(gpu.params().get(p.name).grad);
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      num += (got[i] - ref[i]) * (got[i] - ref[i]);
      den += ref[i] * ref[i];
    }
    EXPECT_LT(std::sqrt(num / (den + 1e-30)), grad_rel) << p.name;
  }
  for (int s = 0; s < 3; ++s) {
    auto x = cpu.step(in, tg);
    auto y = gpu.step(in, tg);
    EXPECT_NEAR(y.loss, x.loss, step_rel * x.loss) << "step " << s + 1;
  }
}

}  // namespace monta::testing_gpu
