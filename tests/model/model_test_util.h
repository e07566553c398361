// Shared by the single-process model tests: the tiny model they train (hidden 32, seq 32, batch 8; a few ms a step on
// one core).
#pragma once
#include <cstdint>
#include <vector>

#include "engine/rng.h"
#include "model/config.h"
#include "model/model.h"
#include "model/params.h"

namespace monta::testing_model {

inline model::Config tiny_test_config() {
  model::Config c;  // the defaults are the tiny config's model
  c.model.vocab = 64;
  c.model.hidden = 32;
  c.model.heads = 4;
  c.model.kv_heads = 2;
  c.model.ffn = 64;
  c.model.seq_len = 32;
  c.train.micro_batch = 4;
  c.train.global_batch = 8;
  c.train.lr = 1e-2;
  c.train.min_lr = 1e-3;
  c.train.warmup_steps = 10;
  return c;
}


// The small model of the gradient checks (f64 on the CPU, every element perturbed): two layers, four experts, top-2, a
// capacity factor under 1 so the dropped path is covered; the dropless tests start from it too.
inline model::ModelConfig grad_test_config() {
  model::ModelConfig m;
  m.vocab = 32;
  m.hidden = 16;
  m.layers = 2;
  m.heads = 4;
  m.kv_heads = 2;
  m.ffn = 24;
  m.experts = 4;
  m.top_k = 2;
  m.seq_len = 8;
  m.capacity_factor = 0.75;  // forces drops, so the dropped path is covered
  m.min_capacity = 1;
  m.init_std = 0.3;          // larger weights: less flat loss, well-separated router probabilities
  m.aux_loss_coef = 0.1;
  m.z_loss_coef = 0.01;
  return m;
}

// The FP8 tests' model: hidden 160 and FFN 136, two 1x128 tiles along each with the second ragged, 4 experts top-2
// over 2 layers at capacity 1.0; the vocabulary, sequence and init scale are each test's.
inline model::ModelConfig fp8_test_base(int64_t vocab, int64_t seq_len, double init_std) {
  model::ModelConfig m;
  m.vocab = vocab;
  m.hidden = 160;
  m.layers = 2;
  m.heads = 4;
  m.kv_heads = 2;
  m.ffn = 136;
  m.experts = 4;
  m.top_k = 2;
  m.seq_len = seq_len;
  m.capacity_factor = 1.0;
  m.min_capacity = 1;
  m.init_std = init_std;
  return m;
}

// A one-process model in f64 on the CPU with fixed tokens and targets, for gradient checks against finite
// differences: loss() is exactly the objective the trainer prints as loss_total (model::training_objective), not a
// copy of its formula (with several layers a gradient of coef x mean-over-layers would differ by the layer count).
struct GradFixture {
  model::ModelConfig cfg;
  model::ParallelContext par;
  model::ParamStore params{cfg, par, engine::Device::cpu, engine::DType::f64, engine::DType::f64};
  model::Shapes s = model::Shapes::make(cfg, 2, 1, 1, 1, true);
  model::Model model{cfg, s, par, params, engine::DType::f64};
  std::vector<int32_t> tokens, targets;
  double ce_scale = 0, aux_scale = 0.5;
  explicit GradFixture(const model::ModelConfig& c) : cfg(c) {
    params.init(7);
    engine::Philox rng{99, 1, 0};
    for (int64_t i = 0; i < s.N; ++i) {
      tokens.push_back(int32_t(rng.below(uint64_t(cfg.vocab))));
      targets.push_back(int32_t(rng.below(uint64_t(cfg.vocab))));
    }
    ce_scale = 1.0 / double(s.N);
  }
  double loss() {
    auto r = model.forward(tokens.data(), targets.data());
    return model::training_objective(cfg, r.ce_sum, r.aux_sum, r.z_sum, ce_scale, aux_scale);
  }
};

}  // namespace monta::testing_model
