// The optimizer's memory options change memory, not training: bf16 AdamW moments keep the loss curve of fp32
// moments within a stated tolerance; host offload equals no offload bit for bit; checkpoints hold fp32 state
// either way and resume across every setting.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include "data/loader.h"
#include "data/synthetic.h"
#include "engine/ops/adamw.h"
#include "model/checkpoint.h"
#include "model/footprint.h"
#include "model/trainer.h"
#include "model_test_util.h"

using namespace monta;
using engine::Tensor;

namespace {

model::Config tiny() { return testing_model::tiny_test_config(); }

struct Corpus {
  std::filesystem::path dir;
  std::string path;
  explicit Corpus(const char* name) : dir(std::filesystem::temp_directory_path() / name) {
    std::filesystem::create_directories(dir);
    path = (dir / "markov.h5").string();
    data::write_markov_corpus(path, 11, 64, 1 << 17);
  }
  ~Corpus() { std::filesystem::remove_all(dir); }
};

std::vector<double> losses(const model::Config& c, const std::string& corpus, int64_t steps) {
  data::TokenLoader loader(corpus, c.model.seq_len, c.train.global_batch, 0, 1, 5);
  model::Trainer trainer(c, model::ParallelContext{}, engine::Device::cpu);
  std::vector<int32_t> in(size_t(c.train.global_batch * c.model.seq_len)), tg(in.size());
  std::vector<double> out;
  for (int64_t s = 0; s < steps; ++s) {
    loader.next_batch(in, tg);
    out.push_back(trainer.step(in, tg).loss);
  }
  return out;
}

}  // namespace

// bf16 moments over 300 steps of the tiny model: the mean loss of every window of 25 steps stays within 0.02 nats
// of fp32 moments' (measured: 0.009 at most, in steps 51-75 while the loss falls fastest), the last window within
// 0.01 (measured: < 0.001); and the curves do differ (the setting is in effect).
TEST(Optimizer, Bf16MomentsTrackFp32MomentsOver300Steps) {
  Corpus corpus("monta_test_bf16_moments");
  model::Config c = tiny();
  c.train.steps = 300;
  const std::vector<double> f32 = losses(c, corpus.path, c.train.steps);
  c.train.optimizer_state = "bf16";
  const std::vector<double> b16 = losses(c, corpus.path, c.train.steps);
  double worst = 0, last = 0;
  bool differ = false;
  for (size_t w = 0; w < f32.size(); w += 25) {
    double a = 0, b = 0;
    for (size_t i = w; i < w + 25; ++i) {
      a += f32[i] / 25;
      b += b16[i] / 25;
      differ = differ || f32[i] != b16[i];
    }
    worst = std::max(worst, std::abs(a - b));
    last = std::abs(a - b);
    std::printf("steps %3zu-%3zu: fp32 moments %.4f, bf16 moments %.4f\n", w + 1, w + 25, a, b);
  }
  EXPECT_TRUE(differ) << "bf16 moments gave exactly the fp32 curve: the setting did nothing";
  EXPECT_LT(worst, 0.02) << "largest window-mean difference";
  EXPECT_LT(last, 0.01) << "last window's difference";
}

// The footprint (what --dry-run and the planner print) halves the moments' bytes, and is what the store allocates.
TEST(Optimizer, Bf16MomentsHalveTheAdamBytesInTheFootprint) {
  model::Config c = tiny();
  const model::RankFootprint f32 = model::rank_footprint(c, 1, 1, true, 1, engine::Device::cpu);
  c.train.optimizer_state = "bf16";
  const model::RankFootprint b16 = model::rank_footprint(c, 1, 1, true, 1, engine::Device::cpu);
  EXPECT_NEAR(b16.adam, f32.adam / 2, f32.adam * 0.02);  // the arena's 256-byte padding aside
  model::Trainer t(c, model::ParallelContext{}, engine::Device::cpu);
  size_t state = 0;
  for (const auto* a : t.params().arenas()) state += a->bytes();
  EXPECT_EQ(b16.state(), double(state));
}

// Checkpoints hold fp32 moments whatever train.optimizer_state: saved with bf16 moments, loaded into fp32 ones, the
// moments are the bf16 values widened (exact); saved with fp32, loaded into bf16, they are rounded to nearest even;
// and a second save from the bf16 store writes the same file contents as the first.
TEST(Optimizer, CheckpointsResumeAcrossMomentPrecision) {
  Corpus corpus("monta_test_bf16_ckpt");
  model::Config c = tiny();
  c.train.optimizer_state = "bf16";
  data::TokenLoader loader(corpus.path, c.model.seq_len, c.train.global_batch, 0, 1, 5);
  model::Trainer bf(c, model::ParallelContext{}, engine::Device::cpu);
  std::vector<int32_t> in(size_t(c.train.global_batch * c.model.seq_len)), tg(in.size());
  for (int s = 0; s < 3; ++s) {
    loader.next_batch(in, tg);
    bf.step(in, tg);
  }
  const std::string run = (corpus.dir / "run").string();
  model::CkptMeta meta;
  meta.step = 3;
  meta.signature = model::model_signature(c.model);
  const std::string dir = model::ckpt_save(run, bf.params(), model::ParallelContext{}, meta, "", 3);
  model::Config c32 = c;
  c32.train.optimizer_state = "fp32";
  model::Trainer f(c32, model::ParallelContext{}, engine::Device::cpu);
  model::ckpt_load(dir, f.params(), meta.signature);
  for (const auto& p : bf.params().all()) {
    const auto& q = f.params().get(p.name);
    for (int64_t i = 0; i < p.m.numel(); ++i) {
      ASSERT_EQ(q.m.as<float>()[i], engine::bf16_to_float(p.m.as<engine::bf16_t>()[i])) << p.name << " m " << i;
      ASSERT_EQ(q.v.as<float>()[i], engine::bf16_to_float(p.v.as<engine::bf16_t>()[i])) << p.name << " v " << i;
      ASSERT_EQ(q.master.as<float>()[i], p.master.as<float>()[i]) << p.name << " master " << i;
    }
  }
  // fp32 -> bf16: perturb the fp32 moments off the bf16 grid, save, load into the bf16 store: rounded to nearest.
  for (auto& p : f.params().all())
    for (int64_t i = 0; i < p.m.numel(); ++i) p.m.as<float>()[i] *= 1.0f + 1.0f / 1024;
  meta.step = 4;
  const std::string dir32 = model::ckpt_save(run, f.params(), model::ParallelContext{}, meta, "", 3);
  model::ckpt_load(dir32, bf.params(), meta.signature);
  int64_t changed = 0;
  for (const auto& p : bf.params().all()) {
    const auto& q = f.params().get(p.name);
    for (int64_t i = 0; i < p.m.numel(); ++i) {
      ASSERT_EQ(p.m.as<engine::bf16_t>()[i].bits, engine::float_to_bf16(q.m.as<float>()[i]).bits) << p.name << " " << i;
      changed += engine::bf16_to_float(p.m.as<engine::bf16_t>()[i]) != q.m.as<float>()[i];
    }
  }
  EXPECT_GT(changed, 0) << "the perturbed moments all fell on the bf16 grid: the rounding was not exercised";
}

namespace {

// Every byte of the optimizer state and compute weights of two stores, compared.
void expect_same_state(const model::ParamStore& a, const model::ParamStore& b, const std::string& what) {
  for (const auto& p : a.all()) {
    const auto& q = b.get(p.name);
    for (int g = 0; g < model::ParamStore::kStateGroups; ++g) {
      const Tensor x = a.state(p, g), y = b.state(q, g);
      ASSERT_EQ(x.dtype, y.dtype);
      ASSERT_EQ(std::memcmp(x.data, y.data, x.bytes()), 0) << what << ": " << p.name << " state group " << g;
    }
    ASSERT_EQ(std::memcmp(p.compute.data, q.compute.data, p.compute.bytes()), 0) << what << ": " << p.name << " compute";
  }
}

}  // namespace

// Offload on the CPU runs the offload path (host gradient copy, chunked host AdamW, upload of the weights to the
// compute copy) with host "copies": it must equal offload off bit for bit (losses, gradient norms, every state and
// compute byte), with fp32 and with bf16 moments.
TEST(Optimizer, OffloadEqualsNoOffloadBitForBit) {
  Corpus corpus("monta_test_offload");
  for (const char* moments : {"fp32", "bf16"}) {
    SCOPED_TRACE(moments);
    model::Config c = tiny();
    c.train.optimizer_state = moments;
    model::Config co = c;
    co.train.optimizer_offload = true;
    data::TokenLoader loader(corpus.path, c.model.seq_len, c.train.global_batch, 0, 1, 5);
    model::Trainer off(c, model::ParallelContext{}, engine::Device::cpu), on(co, model::ParallelContext{}, engine::Device::cpu);
    ASSERT_TRUE(on.params().offload());
    ASSERT_NE(on.params().get("embed").compute.data, on.params().get("embed").master.data);
    std::vector<int32_t> in(size_t(c.train.global_batch * c.model.seq_len)), tg(in.size());
    for (int s = 0; s < 8; ++s) {
      loader.next_batch(in, tg);
      const auto a = off.step(in, tg), b = on.step(in, tg);
      ASSERT_EQ(a.loss, b.loss) << "step " << s + 1;
      ASSERT_EQ(a.grad_norm, b.grad_norm) << "step " << s + 1;
    }
    expect_same_state(off.params(), on.params(), "after 8 steps");
  }
}

// The footprint with offload: the state leaves the device figure for host_bytes, and the two are what the store
// allocates on each side.
TEST(Optimizer, OffloadFootprintIsWhatTheStoreAllocates) {
  model::Config c = tiny();
  const model::RankFootprint off = model::rank_footprint(c, 1, 1, true, 1, engine::Device::cpu);
  c.train.optimizer_offload = true;
  const model::RankFootprint on = model::rank_footprint(c, 1, 1, true, 1, engine::Device::cpu);
  model::Trainer t(c, model::ParallelContext{}, engine::Device::cpu);
  size_t host = 0, all = 0;
  for (const auto* a : t.params().arenas()) {
    all += a->bytes();
    if (a->name() == "params" || a->name() == "adam_m" || a->name() == "adam_v" || a->name() == "grads_host" ||
        a->name() == "params_upload")
      host += a->bytes();
  }
  EXPECT_EQ(on.host_bytes, double(host));
  EXPECT_EQ(on.state() + on.host_bytes, double(all));
  EXPECT_EQ(off.host_bytes, 0.0);
  EXPECT_LT(on.state(), off.state());
  // On a GPU the device keeps only the gradients and the bf16 compute copy: 6 of the 16 bytes per parameter.
  const model::RankFootprint gpu = model::rank_footprint(c, 1, 1, true, 1, engine::Device::cuda);
  EXPECT_NEAR(gpu.state(), 6.0 * double(gpu.params), 0.05 * 6.0 * double(gpu.params));
  // The host: master 4, moments 8, gradient copy 4, upload copy 2 bytes per parameter.
  EXPECT_NEAR(gpu.host_bytes, 18.0 * double(gpu.params), 0.05 * 18.0 * double(gpu.params));
}

// Checkpoints do not record the offload: saved with it on, loaded with it off (and back), every state byte is
// the same and the next steps agree bit for bit.
TEST(Optimizer, CheckpointsResumeAcrossOffload) {
  Corpus corpus("monta_test_offload_ckpt");
  model::Config c = tiny();
  model::Config co = c;
  co.train.optimizer_offload = true;
  data::TokenLoader loader(corpus.path, c.model.seq_len, c.train.global_batch, 0, 1, 5);
  model::Trainer on(co, model::ParallelContext{}, engine::Device::cpu);
  std::vector<int32_t> in(size_t(c.train.global_batch * c.model.seq_len)), tg(in.size());
  for (int s = 0; s < 3; ++s) {
    loader.next_batch(in, tg);
    on.step(in, tg);
  }
  const std::string run = (corpus.dir / "run").string();
  model::CkptMeta meta;
  meta.step = 3;
  meta.signature = model::model_signature(c.model);
  const std::string dir = model::ckpt_save(run, on.params(), model::ParallelContext{}, meta, "", 3);
  model::Trainer off(c, model::ParallelContext{}, engine::Device::cpu), back(co, model::ParallelContext{}, engine::Device::cpu);
  model::ckpt_load(dir, off.params(), meta.signature);
  model::ckpt_load(dir, back.params(), meta.signature);
  expect_same_state(on.params(), off.params(), "offload -> no offload");
  expect_same_state(on.params(), back.params(), "offload -> offload");
  off.set_steps_done(3);
  back.set_steps_done(3);
  for (int s = 0; s < 2; ++s) {
    loader.next_batch(in, tg);
    const auto a = off.step(in, tg), b = back.step(in, tg), r = on.step(in, tg);
    EXPECT_EQ(a.loss, r.loss);
    EXPECT_EQ(b.loss, r.loss);
  }
}
