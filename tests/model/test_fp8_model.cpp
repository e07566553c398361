// FP8 experts (model.fp8 = experts, docs/fp8.md) on the CPU path, which emulates E4M3 exactly: the objective and every
// parameter's gradient against the plain (f32) model's from the same weights and batch within the quantisation bound,
// and a short training run that tracks the plain run's losses.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <vector>

#include "data/loader.h"
#include "data/synthetic.h"
#include "engine/memory.h"
#include "engine/rng.h"
#include "model/model.h"
#include "model/trainer.h"

using namespace monta;
using namespace monta::model;
using engine::DType;
using engine::Device;

namespace {

ModelConfig fp8_test_config(const char* fp8) {
  ModelConfig m;
  m.vocab = 64;
  m.hidden = 160;  // two 128-tiles along H, the second ragged; ffn likewise
  m.layers = 2;
  m.heads = 4;
  m.kv_heads = 2;
  m.ffn = 136;
  m.experts = 4;
  m.top_k = 2;
  m.seq_len = 24;
  m.capacity_factor = 1.0;
  m.min_capacity = 1;
  m.init_std = 0.05;
  m.fp8 = fp8;
  return m;
}

struct Fp8Run {
  ModelConfig cfg;
  ParallelContext par;
  ParamStore params;
  Shapes s;
  Model model;
  explicit Fp8Run(const char* fp8)
      : cfg(fp8_test_config(fp8)), params(cfg, par, Device::cpu, DType::f32, DType::f32),
        s(Shapes::make(cfg, 2, 1, 1, 1, true)), model(cfg, s, par, params, DType::f32) {
    params.init(7);
  }
};

double rel_diff(const engine::Tensor& a, const engine::Tensor& b, double* norm) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = a.as<float>()[i], y = b.as<float>()[i];
    num += (x - y) * (x - y);
    den += y * y;
  }
  *norm = std::sqrt(den);
  return std::sqrt(num / den);
}

}  // namespace

// Straight-through rule: the backward treats quantisation as the identity, so the fp8 model's gradient is the plain
// gradient evaluated through quantised operands. E4M3 keeps 4 significant bits (relative error <= 2^-4 per operand,
// about 0.036 RMS); through the three quantised GEMMs of an expert and the layers below, every gradient must stay within
// 0.15 relative (Frobenius) of the plain one, and the expert weights' gradients must differ from it (FP8 ran).
TEST(Fp8Model, GradientsWithinTheQuantisationBoundOfThePlainModel) {
  Fp8Run plain("none"), fp8("experts");
  std::vector<int32_t> tokens, targets;
  engine::Philox rng{99, 1, 0};
  for (int64_t i = 0; i < plain.s.N; ++i) {
    tokens.push_back(int32_t(rng.below(uint64_t(plain.cfg.vocab))));
    targets.push_back(int32_t(rng.below(uint64_t(plain.cfg.vocab))));
  }
  const double ce_scale = 1.0 / double(plain.s.N);
  plain.params.zero_grads();
  fp8.params.zero_grads();
  const auto rp = plain.model.forward_backward(tokens.data(), targets.data(), ce_scale, 0.5);
  const auto rf = fp8.model.forward_backward(tokens.data(), targets.data(), ce_scale, 0.5);
  std::printf("CE sum: plain %.6f, fp8 %.6f\n", rp.ce_sum, rf.ce_sum);
  EXPECT_NEAR(rf.ce_sum / rp.ce_sum, 1.0, 0.01);
  EXPECT_NE(rf.ce_sum, rp.ce_sum);
  auto& pp = plain.params.all();
  auto& fp = fp8.params.all();
  ASSERT_EQ(pp.size(), fp.size());
  for (size_t i = 0; i < pp.size(); ++i) {
    double norm = 0;
    const double rel = rel_diff(fp[i].grad, pp[i].grad, &norm);
    std::printf("%-24s grad rel diff %.4f (|g| %.3g)\n", pp[i].name.c_str(), rel, norm);
    if (norm == 0) continue;
    EXPECT_LT(rel, 0.15) << pp[i].name;
    if (pp[i].name.find("w_") != std::string::npos) EXPECT_GT(rel, 1e-4) << pp[i].name << ": FP8 did not run";
  }
}

// 40 steps on the built-in Markov corpus from the same init and batches: the fp8 run's mean loss over the last 10
// steps stays within 2% of the plain run's, and both learn.
TEST(Fp8Model, TrainingTracksThePlainRun) {
  const auto dir = std::filesystem::temp_directory_path() / "monta_test_fp8_training";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "markov.h5").string();
  Config c;
  c.model = fp8_test_config("none");
  c.model.hidden = 128;
  c.model.ffn = 128;
  c.train.steps = 40;
  c.train.micro_batch = 4;
  c.train.global_batch = 8;
  c.train.lr = 1e-2;
  c.train.min_lr = 1e-3;
  c.train.warmup_steps = 5;
  data::write_markov_corpus(path, 11, c.model.vocab, 1 << 16);
  auto run = [&](const char* fp8) {
    c.model.fp8 = fp8;
    data::TokenLoader loader(path, c.model.seq_len, c.train.global_batch, 0, 1, 5);
    ParallelContext par;
    Trainer trainer(c, par, Device::cpu);
    std::vector<int32_t> in(size_t(c.train.global_batch * c.model.seq_len)), tg(in.size());
    std::vector<double> losses;
    for (int64_t s = 0; s < c.train.steps; ++s) {
      loader.next_batch(in, tg);
      losses.push_back(trainer.step(in, tg).loss);
    }
    return losses;
  };
  const std::vector<double> plain = run("none"), fp8 = run("experts");
  double lp = 0, lf = 0;
  for (size_t i = plain.size() - 10; i < plain.size(); ++i) {
    lp += plain[i] / 10;
    lf += fp8[i] / 10;
  }
  std::printf("loss: first %.4f / %.4f, last-10 mean plain %.4f, fp8 %.4f\n", plain[0], fp8[0], lp, lf);
  for (double l : fp8) ASSERT_TRUE(std::isfinite(l));
  EXPECT_NEAR(lf / lp, 1.0, 0.02);
  EXPECT_LT(lp, plain[0] - 0.5);  // it learned
  EXPECT_LT(lf, fp8[0] - 0.5);
  std::filesystem::remove_all(dir);
}
