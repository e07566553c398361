// Validation, single process on the CPU: the forward-only loss equals the training loss of the same batch and
// changes nothing (a run with evaluations trains bit for bit as one without); on the built-in chain the held-out
// loss falls with the training loss toward the entropy floor; on a tiny training set it turns and rises while the
// training loss keeps falling (overfitting is visible).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "data/sources.h"
#include "data/synthetic.h"
#include "model/trainer.h"
#include "model_test_util.h"

using namespace monta;

namespace {

model::Config small_config() { return testing_model::tiny_test_config(); }

struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& name) : path(std::filesystem::temp_directory_path() / name) {
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

model::EvalResult evaluate(model::Trainer& t, data::HeldOutBatches& h) {
  h.rewind();
  return t.evaluate([&](std::span<int32_t> in, std::span<int32_t> tg) { h.next_batch(in, tg); }, h.batches());
}

struct Curve {
  std::vector<double> train, val;  // train: mean loss of the steps since the previous evaluation
};

// Trains `steps` steps on train_path (whole file), evaluating on `heldout` every `every` steps and at step 0.
Curve train_and_validate(const model::Config& c, const std::string& train_path, data::HeldOutBatches& heldout,
                         int64_t steps, int64_t every) {
  data::TokenLoader loader(train_path, c.model.seq_len, c.train.global_batch, 0, 1, 5);
  model::Trainer trainer(c, model::ParallelContext{}, engine::Device::cpu);
  std::vector<int32_t> in(size_t(c.train.global_batch * c.model.seq_len)), tg(in.size());
  Curve curve;
  curve.val.push_back(evaluate(trainer, heldout).loss);
  double sum = 0;
  for (int64_t s = 1; s <= steps; ++s) {
    loader.next_batch(in, tg);
    sum += trainer.step(in, tg).loss;
    if (s % every) continue;
    curve.train.push_back(sum / double(every));
    curve.val.push_back(evaluate(trainer, heldout).loss);
    sum = 0;
  }
  return curve;
}

void print(const char* what, const Curve& c) {
  std::printf("%s\n  val  ", what);
  for (double v : c.val) std::printf(" %.3f", v);
  std::printf("\n  train      ");
  for (double v : c.train) std::printf(" %.3f", v);
  std::printf("\n");
}

}  // namespace

TEST(Validation, EvaluateIsTheTrainingLossAndChangesNothing) {
  model::Config c = small_config();
  TempDir dir("monta_test_validation_same");
  data::write_markov_corpus(dir.file("m.h5"), 11, c.model.vocab, 1 << 14);
  data::TokenLoader la(dir.file("m.h5"), c.model.seq_len, c.train.global_batch, 0, 1, 5);
  data::TokenLoader lb(dir.file("m.h5"), c.model.seq_len, c.train.global_batch, 0, 1, 5);
  model::Trainer a(c, model::ParallelContext{}, engine::Device::cpu), b(c, model::ParallelContext{}, engine::Device::cpu);
  std::vector<int32_t> in(size_t(c.train.global_batch * c.model.seq_len)), tg(in.size());
  for (int s = 0; s < 4; ++s) {
    la.next_batch(in, tg);
    lb.next_batch(in, tg);
    const double before = a.evaluate(in, tg);
    EXPECT_EQ(before, a.evaluate(in, tg)) << "evaluating twice gives the same loss";
    const model::StepMetrics ma = a.step(in, tg), mb = b.step(in, tg);
    EXPECT_EQ(before, ma.loss) << "forward-only loss = the step's training loss, step " << s + 1;
    EXPECT_EQ(ma.loss, mb.loss) << "a trainer that evaluates trains exactly as one that does not, step " << s + 1;
    EXPECT_EQ(ma.grad_norm, mb.grad_norm);
  }
}

TEST(Validation, HeldOutLossFallsTowardTheFloor) {
  model::Config c = small_config();
  c.train.steps = 120;
  TempDir dir("monta_test_validation_falls");
  data::DataSpec spec;
  spec.path = data::kBuiltinMarkov;
  spec.run_dir = dir.path.string();
  spec.seed = 11;
  spec.vocab = c.model.vocab;
  spec.builtin_tokens = 1 << 17;
  data::write_builtin_corpus(spec);
  const data::DataSources src = data::resolve_data_sources(spec);
  data::HeldOutBatches heldout(src, c.model.seq_len, c.train.global_batch, 0, 1, 5, 8);
  const Curve curve = train_and_validate(c, src.train_path, heldout, c.train.steps, 30);
  print("held-out loss every 30 steps (from step 0), training loss in between:", curve);
  std::printf("  floor %.4f\n", src.entropy_floor);
  EXPECT_NEAR(curve.val.front(), std::log(double(c.model.vocab)), 0.3);
  EXPECT_LT(curve.val.back(), src.entropy_floor + 0.35);
  EXPECT_GT(curve.val.back(), src.entropy_floor - 0.1);
  EXPECT_NEAR(curve.val.back(), curve.train.back(), 0.15) << "no overfitting on a corpus this large";
  for (size_t i = 1; i < curve.val.size(); ++i) EXPECT_LT(curve.val[i], curve.val[i - 1] + 0.02) << "evaluation " << i;
}

TEST(Validation, TinyTrainingSetOverfits) {
  model::Config c = small_config();
  c.train.weight_decay = 0;
  c.train.min_lr = c.train.lr;
  TempDir dir("monta_test_validation_overfit");
  // One global batch of training samples, repeated every step; held out: another walk of the same chain.
  const int64_t train_tokens = c.train.global_batch * c.model.seq_len + 1;
  data::write_markov_corpus(dir.file("train.h5"), 11, c.model.vocab, train_tokens);
  data::write_markov_corpus(dir.file("valid.h5"), 11, c.model.vocab, 1 << 13, 1);
  data::DataSources src;
  src.valid_path = dir.file("valid.h5");
  data::HeldOutBatches heldout(src, c.model.seq_len, c.train.global_batch, 0, 1, 5, 8);
  const Curve curve = train_and_validate(c, dir.file("train.h5"), heldout, 150, 15);
  print("tiny training set: held-out loss every 15 steps (from step 0), training loss in between:", curve);
  const auto best = std::min_element(curve.val.begin(), curve.val.end());
  EXPECT_LT(best - curve.val.begin(), int64_t(curve.val.size()) - 2) << "the held-out loss never turned";
  EXPECT_GT(curve.val.back(), *best + 0.3) << "held-out loss rises after its minimum";
  const size_t k = size_t(best - curve.val.begin());
  const double train_at_best = k > 0 ? curve.train[k - 1] : curve.train.front();
  EXPECT_LT(curve.train.back(), train_at_best - 0.3) << "while the training loss falls";
  EXPECT_LT(curve.train.back(), curve.val.back() - 1.0) << "the gap of a memorised training set";
}
