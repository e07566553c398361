// Auxiliary-loss-free load balancing (model.router_bias_update) on the tiny config (configs/tiny.ini's model and
// batch): from a deliberately skewed start (every layer's balancing bias favouring expert 0, so it takes every token's
// first choice) the bias update brings the expert loads back toward uniform within a few dozen steps, with and
// without the auxiliary loss; the same start with the bias held fixed (no update) stays skewed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "data/loader.h"
#include "data/synthetic.h"
#include "model/trainer.h"

using namespace monta;

namespace {

model::Config tiny_ini_config() {  // configs/tiny.ini's [model] and batch
  model::Config c;
  c.model.vocab = 256;
  c.model.hidden = 128;
  c.model.layers = 2;
  c.model.heads = 4;
  c.model.kv_heads = 2;
  c.model.ffn = 128;
  c.model.experts = 4;
  c.model.top_k = 2;
  c.model.seq_len = 64;
  c.model.capacity_factor = 1.25;
  c.model.min_capacity = 4;
  c.model.aux_loss_coef = 0.01;
  c.model.z_loss_coef = 0.001;
  c.train.micro_batch = 4;
  c.train.global_batch = 16;
  c.train.lr = 3e-3;
  c.train.min_lr = 3e-4;
  c.train.warmup_steps = 15;
  c.train.weight_decay = 0.1;
  c.train.steps = 500;
  return c;
}

constexpr double kSkew = 0.3;  // added to expert 0's score in every layer; router probabilities start near 1/4

// Writes the skewed bias into the master weights and the compute copy.
void skew_bias(model::Trainer& t) {
  model::Param& p = t.params().get("router_bias");
  std::vector<float> b(size_t(p.numel()), 0.f);
  for (int64_t l = 0; l < p.full[0]; ++l) b[size_t(l * p.full[1])] = float(kSkew);
  t.params().state_write(p, 0, engine::Tensor(b.data(), {p.numel()}, engine::DType::f32));
  t.params().refresh_compute();
}

// load_max of every step: `update` false holds the bias at its skewed start (re-written before every step).
std::vector<double> train_skewed(model::Config c, bool update, int steps, const std::string& corpus) {
  c.model.router_bias_update = 0.01;
  data::TokenLoader loader(corpus, c.model.seq_len, c.train.global_batch, 0, 1, 5);
  model::Trainer trainer(c, model::ParallelContext{}, engine::Device::cpu);
  std::vector<int32_t> in(size_t(c.train.global_batch * c.model.seq_len)), tg(in.size());
  std::vector<double> load_max;
  skew_bias(trainer);
  for (int s = 0; s < steps; ++s) {
    if (!update) skew_bias(trainer);
    loader.next_batch(in, tg);
    const model::StepMetrics m = trainer.step(in, tg);
    EXPECT_TRUE(std::isfinite(m.loss));
    EXPECT_GE(m.load_max, 1.0);
    EXPECT_LE(m.load_min, 1.0);
    load_max.push_back(m.load_max);
  }
  return load_max;
}

double mean_of_last(const std::vector<double>& v, size_t n) {
  double s = 0;
  for (size_t i = v.size() - n; i < v.size(); ++i) s += v[i];
  return s / double(n);
}

}  // namespace

TEST(RouterBalance, BiasUpdateMovesSkewedLoadsTowardUniform) {
  const auto dir = std::filesystem::temp_directory_path() / "monta_test_router_balance";
  std::filesystem::create_directories(dir);
  const std::string corpus = (dir / "markov.h5").string();
  data::write_markov_corpus(corpus, 11, 256, 1 << 16);
  const int steps = 30;
  model::Config c = tiny_ini_config();
  const std::vector<double> frozen = train_skewed(c, false, steps, corpus);
  const std::vector<double> updated = train_skewed(c, true, steps, corpus);
  c.model.aux_loss_coef = 0;
  const std::vector<double> no_aux = train_skewed(c, true, steps, corpus);
  std::printf("load max/mean: step 1 %.3f; last 10 steps: bias held %.3f, updated %.3f, updated without aux %.3f\n",
              updated[0], mean_of_last(frozen, 10), mean_of_last(updated, 10), mean_of_last(no_aux, 10));
  // The skew puts every token's first choice on expert 0: its load is N against a mean of N·K/E (E/K = 2).
  EXPECT_GT(updated[0], 1.9);
  EXPECT_GT(*std::min_element(frozen.begin(), frozen.end()), 1.8) << "without the update the loads stay skewed";
  EXPECT_LT(mean_of_last(updated, 10), 1.3) << "the bias update should balance the loads";
  EXPECT_LT(mean_of_last(no_aux, 10), 1.3) << "the bias update should balance the loads without the aux loss too";
  std::filesystem::remove_all(dir);
}
