// Training on the built-in Markov corpus: the loss falls from ~log(vocab) to within a stated margin of the
// corpus's entropy floor (the best achievable loss), on the CPU path, single process.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <vector>

#include "data/loader.h"
#include "data/synthetic.h"
#include "model/trainer.h"
#include "model_test_util.h"

using namespace monta;

TEST(Training, TinyModelLearnsMarkovCorpusTowardItsFloor) {
  model::Config c = testing_model::tiny_test_config();
  c.train.steps = 120;
  const auto dir = std::filesystem::temp_directory_path() / "monta_test_training";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "markov.h5").string();
  auto info = data::write_markov_corpus(path, 11, c.model.vocab, 1 << 17);
  data::TokenLoader loader(path, c.model.seq_len, c.train.global_batch, 0, 1, 5);
  model::ParallelContext par;
  model::Trainer trainer(c, par, engine::Device::cpu);
  std::vector<int32_t> in(size_t(c.train.global_batch * c.model.seq_len)), tg(in.size());
  double first = 0, last = 0;
  for (int64_t s = 0; s < c.train.steps; ++s) {
    loader.next_batch(in, tg);
    auto m = trainer.step(in, tg);
    ASSERT_TRUE(std::isfinite(m.loss));
    if (s == 0) first = m.loss;
    last = s >= c.train.steps - 10 ? last + m.loss / 10.0 : last;  // mean of the last 10 steps
  }
  std::printf("loss: first %.4f, last-10 mean %.4f, floor %.4f, log(vocab) %.4f\n", first, last, info.entropy_floor_nats,
              std::log(double(c.model.vocab)));
  EXPECT_NEAR(first, std::log(double(c.model.vocab)), 0.3);
  EXPECT_LT(last, info.entropy_floor_nats + 0.35);
  EXPECT_GT(last, info.entropy_floor_nats - 0.1);  // below the floor would mean a leak of the targets
  std::filesystem::remove_all(dir);
}

// The printed objective: loss_total = CE + aux_coef x Σ_layers aux + z_coef x Σ_layers z, while aux_loss and z_loss are
// logged per layer. With 3 layers the router terms enter loss_total 3 times: a trainer that scaled them by 1/layers
// (the mean) or printed something else would fail here.
TEST(Training, LossTotalIsCrossEntropyPlusRouterLossesSummedOverLayers) {
  model::Config c;
  c.model.layers = 3;
  c.model.aux_loss_coef = 0.5;
  c.model.z_loss_coef = 0.25;
  c.train.micro_batch = 2;
  c.train.global_batch = 4;
  const auto dir = std::filesystem::temp_directory_path() / "monta_test_loss_total";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "markov.h5").string();
  data::write_markov_corpus(path, 3, c.model.vocab, 1 << 14);
  data::TokenLoader loader(path, c.model.seq_len, c.train.global_batch, 0, 1, 5);
  model::ParallelContext par;
  model::Trainer trainer(c, par, engine::Device::cpu);
  std::vector<int32_t> in(size_t(c.train.global_batch * c.model.seq_len)), tg(in.size());
  loader.next_batch(in, tg);
  auto m = trainer.step(in, tg);
  const double want = m.loss + 3 * (0.5 * m.aux_loss + 0.25 * m.z_loss);
  EXPECT_NEAR(m.loss_total, want, 1e-9 * want);
  EXPECT_GT(m.loss_total - m.loss, 3 * 0.5 * m.aux_loss * 0.99);  // the aux term is there, times the layer count
  std::filesystem::remove_all(dir);
}
