// FP8 GEMMs (model.fp8 = experts | all, model.fp8_wgrad, docs/fp8.md) on the CPU path, which emulates E4M3 exactly: the
// objective and every parameter's gradient against the plain (f32) model's from the same weights and batch within the
// quantisation bound, the cached weight codes against quantising at every use, and a short training run that tracks
// the plain run's losses.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <filesystem>
#include <vector>

#include "data/loader.h"
#include "data/synthetic.h"
#include "engine/memory.h"
#include "engine/rng.h"
#include "model/footprint.h"
#include "model/model.h"
#include "model/trainer.h"
#include "model_test_util.h"

using namespace monta;
using namespace monta::model;
using engine::DType;
using engine::Device;

namespace {

ModelConfig fp8_test_config(const std::string& fp8, bool wgrad = true) {
  ModelConfig m = testing_model::fp8_test_base(64, 24, 0.05);
  m.fp8 = fp8;
  m.fp8_wgrad = wgrad;
  return m;
}

struct Fp8Run {
  ModelConfig cfg;
  ParallelContext par;
  ParamStore params;
  Shapes s;
  Model model;
  explicit Fp8Run(const std::string& fp8, bool wgrad = true, uint64_t seed = 7)
      : cfg(fp8_test_config(fp8, wgrad)), params(cfg, par, Device::cpu, DType::f32, DType::f32),
        s(Shapes::make(cfg, 2, 1, 1, 1, true)), model(cfg, s, par, params, DType::f32) {
    params.init(seed);
  }
  MicroResult step(const std::vector<int32_t>& tokens, const std::vector<int32_t>& targets) {
    params.zero_grads();
    return model.forward_backward(tokens.data(), targets.data(), 1.0 / double(s.N), 0.5);
  }
};

void test_batch(int64_t N, int64_t vocab, std::vector<int32_t>& tokens, std::vector<int32_t>& targets) {
  engine::Philox rng{99, 1, 0};
  for (int64_t i = 0; i < N; ++i) {
    tokens.push_back(int32_t(rng.below(uint64_t(vocab))));
    targets.push_back(int32_t(rng.below(uint64_t(vocab))));
  }
}

bool same_bits(const engine::Tensor& a, const engine::Tensor& b) {
  return a.numel() == b.numel() && std::memcmp(a.data, b.data, a.bytes()) == 0;
}

// Whether parameter `name` is a weight of an FP8 GEMM under model.fp8 = mode.
bool fp8_weight(const std::string& name, const std::string& mode) {
  const std::string w = name.substr(name.rfind('.') + 1);
  if (w == "w_gate" || w == "w_up" || w == "w_down") return true;
  return mode == "all" && (w == "wq" || w == "wk" || w == "wv" || w == "wo");
}

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
// about 0.036 RMS); through the three quantised GEMMs of an expert and the layers below, every gradient must stay
// within 0.15 relative (Frobenius) of the plain one (measured 0.089), and with `all`, whose four attention projections
// add their quantisation to every input of the MoE block, within 0.2 (measured 0.140, the layer-0 router: its
// gradient takes the changes of both its input and its output gradient); the FP8 GEMMs' weight gradients must differ
// from the plain ones (FP8 ran). Each mode with FP8 and with unquantised (f32 here) wgrad.
struct Fp8GradCase {
  const char* mode;
  bool wgrad;
};
class Fp8ModelGrad : public testing::TestWithParam<Fp8GradCase> {};

TEST_P(Fp8ModelGrad, GradientsWithinTheQuantisationBoundOfThePlainModel) {
  const Fp8GradCase k = GetParam();
  Fp8Run plain("none"), fp8(k.mode, k.wgrad);
  std::vector<int32_t> tokens, targets;
  test_batch(plain.s.N, plain.cfg.vocab, tokens, targets);
  // The router sees the plain model's logits in both (on_router_logits), so both route alike: with `all` the quantised
  // attention moves the router's input, and tokens near a tie would flip expert (unpinned: 26 of 192 slots here), a
  // discrete change of which tokens each expert sees that no quantisation bound covers.
  std::vector<std::vector<float>> logits(size_t(plain.cfg.layers));
  plain.model.on_router_logits = [&](int l, engine::Tensor t) {
    logits[size_t(l)].assign(t.as<float>(), t.as<float>() + t.numel());
  };
  fp8.model.on_router_logits = [&](int l, engine::Tensor t) {
    std::copy(logits[size_t(l)].begin(), logits[size_t(l)].end(), t.as<float>());
  };
  const auto rp = plain.step(tokens, targets);
  const auto rf = fp8.step(tokens, targets);
  int64_t moved = 0;  // (token, choice) pairs routed to another expert slot than in the plain model
  for (int64_t i = 0; i < plain.model.slots().numel(); ++i)
    moved += plain.model.slots().as<int32_t>()[i] != fp8.model.slots().as<int32_t>()[i];
  std::printf("CE sum: plain %.6f, fp8 %.6f; %ld of %ld routed slots differ\n", rp.ce_sum, rf.ce_sum, long(moved),
              long(plain.model.slots().numel()));
  EXPECT_EQ(moved, 0);
  EXPECT_NEAR(rf.ce_sum / rp.ce_sum, 1.0, 0.01);
  EXPECT_NE(rf.ce_sum, rp.ce_sum);
  auto& pp = plain.params.all();
  auto& fp = fp8.params.all();
  ASSERT_EQ(pp.size(), fp.size());
  double worst = 0;
  for (size_t i = 0; i < pp.size(); ++i) {
    double norm = 0;
    const double rel = rel_diff(fp[i].grad, pp[i].grad, &norm);
    std::printf("%-24s grad rel diff %.4f (|g| %.3g)\n", pp[i].name.c_str(), rel, norm);
    if (norm == 0) continue;
    worst = std::max(worst, rel);
    EXPECT_LT(rel, std::string(k.mode) == "all" ? 0.2 : 0.15) << pp[i].name;
    if (fp8_weight(pp[i].name, k.mode)) EXPECT_GT(rel, 1e-4) << pp[i].name << ": FP8 did not run";
  }
  std::printf("fp8 %s, wgrad %s: largest relative gradient gap to the plain model %.4f\n", k.mode,
              k.wgrad ? "fp8" : "f32", worst);
}

INSTANTIATE_TEST_SUITE_P(Modes, Fp8ModelGrad,
                         testing::Values(Fp8GradCase{"experts", true}, Fp8GradCase{"experts", false},
                                         Fp8GradCase{"all", true}, Fp8GradCase{"all", false}),
                         [](const testing::TestParamInfo<Fp8GradCase>& i) {
                           return std::string(i.param.mode) + (i.param.wgrad ? "_fp8wgrad" : "_bf16wgrad");
                         });

// model.fp8_wgrad only changes the FP8 GEMMs' weight gradients: everything the backward passes down (dgrad) and every
// other gradient is the same bit for bit, while those weight gradients differ (the unquantised operands were used).
// And `all` quantises more than `experts`: its loss differs.
TEST(Fp8Model, WgradSettingChangesOnlyTheFp8WeightGradients) {
  for (const char* mode : {"experts", "all"}) {
    Fp8Run a(mode, true), b(mode, false);
    std::vector<int32_t> tokens, targets;
    test_batch(a.s.N, a.cfg.vocab, tokens, targets);
    const auto ra = a.step(tokens, targets);
    const auto rb = b.step(tokens, targets);
    EXPECT_EQ(ra.ce_sum, rb.ce_sum) << mode;
    for (size_t i = 0; i < a.params.all().size(); ++i) {
      const Param& pa = a.params.all()[i];
      const Param& pb = b.params.all()[i];
      if (fp8_weight(pa.name, mode))
        EXPECT_FALSE(same_bits(pa.grad, pb.grad)) << mode << " " << pa.name << ": model.fp8_wgrad changed nothing";
      else
        EXPECT_TRUE(same_bits(pa.grad, pb.grad)) << mode << " " << pa.name;
    }
  }
  Fp8Run experts("experts"), all("all");
  std::vector<int32_t> tokens, targets;
  test_batch(experts.s.N, experts.cfg.vocab, tokens, targets);
  EXPECT_NE(experts.step(tokens, targets).ce_sum, all.step(tokens, targets).ce_sum) << "all quantised no projection";
}

// The weights' FP8 codes are made once per weight version (model/model.cpp fp8_codes): equal bit for bit to quantising
// at every use, and renewed by every writer of weights. Here the writers are re-initialisation (refresh_compute, what a
// checkpoint load ends in) and the trainer's optimizer step: a cache that missed either would run the next forward on
// the old weights' codes, and its loss and gradients would differ from the reference's.
TEST(Fp8Model, CachedWeightCodesEqualQuantisingAtEveryUse) {
  for (const char* mode : {"experts", "all"}) {
    Fp8Run cached(mode), every(mode), fresh(mode, true, 8);
    every.model.fp8_quantize_every_use = true;
    std::vector<int32_t> tokens, targets;
    test_batch(cached.s.N, cached.cfg.vocab, tokens, targets);
    const auto r0 = cached.step(tokens, targets);
    EXPECT_EQ(r0.ce_sum, every.step(tokens, targets).ce_sum) << mode;
    for (size_t i = 0; i < cached.params.all().size(); ++i)
      EXPECT_TRUE(same_bits(cached.params.all()[i].grad, every.params.all()[i].grad)) << cached.params.all()[i].name;
    cached.params.init(8);  // new weights through the normal path: the codes must follow
    const auto r1 = cached.step(tokens, targets);
    EXPECT_NE(r1.ce_sum, r0.ce_sum);
    EXPECT_EQ(r1.ce_sum, fresh.step(tokens, targets).ce_sum) << mode << ": stale FP8 weight codes after init";
    for (size_t i = 0; i < cached.params.all().size(); ++i)
      EXPECT_TRUE(same_bits(cached.params.all()[i].grad, fresh.params.all()[i].grad)) << cached.params.all()[i].name;
    // The cache's arena is what the memory model counts.
    Config c;
    c.model = cached.cfg;
    c.train.micro_batch = 2;
    const RankFootprint f = rank_footprint(c, 1, 1, true, 1, Device::cpu);
    EXPECT_EQ(f.fp8_weights, double(cached.model.fp8_weights().bytes()));
    EXPECT_GT(f.fp8_weights, 0.0);
  }
  // Optimizer steps: a trainer with cached codes and one quantising at every use take the same steps bit for bit.
  Config c;
  c.model = fp8_test_config("all");
  c.train.micro_batch = 2;
  c.train.global_batch = 4;  // two micro-batches a step: the codes are reused within the step
  c.train.warmup_steps = 0;
  c.train.lr = 1e-2;
  ParallelContext par;
  Trainer cached(c, par, Device::cpu), every(c, par, Device::cpu);
  every.model().fp8_quantize_every_use = true;
  std::vector<int32_t> tokens, targets;
  test_batch(c.train.global_batch * c.model.seq_len, c.model.vocab, tokens, targets);
  double first = 0;
  for (int step = 0; step < 3; ++step) {
    const double a = cached.step(tokens, targets).loss, b = every.step(tokens, targets).loss;
    EXPECT_EQ(a, b) << "step " << step << ": stale FP8 weight codes after the optimizer step";
    if (step == 0) first = a;
    if (step > 0) EXPECT_NE(a, first) << "the weights did not change";
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
