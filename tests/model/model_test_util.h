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
