// Checkpoints: save → continue equals uninterrupted training bit for bit; corrupt, incomplete, missing and
// foreign checkpoints give their errors; `resume auto` skips broken ones; export writes full tensors; an
// asynchronous save writes the snapshot taken at save(), whatever training does before it is finalized.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "data/loader.h"
#include "data/synthetic.h"
#include "engine/check.h"
#include "model/checkpoint.h"
#include "model/trainer.h"

using namespace monta;
namespace fs = std::filesystem;

namespace {

model::Config small_config() {
  model::Config c;
  c.model.vocab = 64;
  c.model.hidden = 32;
  c.model.ffn = 64;
  c.model.seq_len = 16;
  c.train.micro_batch = 2;
  c.train.global_batch = 4;
  c.train.warmup_steps = 2;
  c.train.steps = 6;
  return c;
}

struct CkptRun {
  model::Config c = small_config();
  fs::path dir;
  std::string data;
  explicit CkptRun(const std::string& name) {
    dir = fs::temp_directory_path() / ("monta_ckpt_" + name);
    fs::remove_all(dir);
    fs::create_directories(dir);
    data = (dir / "markov.h5").string();
    data::write_markov_corpus(data, 3, c.model.vocab, 1 << 14);
  }
  ~CkptRun() { fs::remove_all(dir); }
  model::CkptMeta meta(model::Trainer& t, const data::TokenLoader& l) const {
    model::CkptMeta m;
    m.step = t.steps_done();
    auto s = l.state();
    m.loader_seed = s.seed;
    m.loader_epoch = s.epoch;
    m.loader_sample = s.sample;
    m.signature = model::model_signature(c.model);
    return m;
  }
};

std::vector<float> weights(model::Trainer& t) {
  std::vector<float> w;
  for (auto& p : t.params().all()) {
    const float* d = p.master.as<float>();
    w.insert(w.end(), d, d + p.master.numel());
  }
  return w;
}

double run_steps(model::Trainer& t, data::TokenLoader& l, int n, std::vector<double>* losses) {
  std::vector<int32_t> in(16 * 4), tg(16 * 4);
  double last = 0;
  for (int i = 0; i < n; ++i) {
    l.next_batch(in, tg);
    last = t.step(in, tg).loss;
    if (losses) losses->push_back(last);
  }
  return last;
}

}  // namespace

// Save → continue = uninterrupted, with checkpoint.async false and true.
class CheckpointModes : public ::testing::TestWithParam<bool> {};

TEST_P(CheckpointModes, ResumeIsBitExact) {
  CkptRun r(GetParam() ? "exact_async" : "exact_sync");
  model::ParallelContext par;
  std::vector<double> straight, resumed;
  model::Trainer a(r.c, par, engine::Device::cpu);
  data::TokenLoader la(r.data, r.c.model.seq_len, r.c.train.global_batch, 0, 1, 9);
  run_steps(a, la, 6, &straight);

  model::Trainer b(r.c, par, engine::Device::cpu);
  data::TokenLoader lb(r.data, r.c.model.seq_len, r.c.train.global_batch, 0, 1, 9);
  run_steps(b, lb, 3, &resumed);
  model::CkptSaver saver(GetParam());
  saver.save(r.dir.string(), b.params(), par, r.meta(b, lb), "[model]\n", 2);
  EXPECT_EQ(saver.in_flight(), GetParam());  // a synchronous save is complete when save() returns
  saver.finalize();
  const std::string dir = (r.dir / "checkpoints" / "step_00000003").string();
  ASSERT_TRUE(fs::exists(fs::path(dir) / "COMPLETE"));

  model::Trainer c(r.c, par, engine::Device::cpu);  // fresh process state
  data::TokenLoader lc(r.data, r.c.model.seq_len, r.c.train.global_batch, 0, 1, 9);
  ASSERT_EQ(model::ckpt_find_latest(r.dir.string()), dir);
  auto m = model::ckpt_load(dir, c.params(), model::model_signature(r.c.model));
  c.set_steps_done(m.step);
  lc.set_state(data::LoaderState{m.loader_seed, m.loader_epoch, m.loader_sample});
  run_steps(c, lc, 3, &resumed);
  ASSERT_EQ(straight.size(), resumed.size());
  for (size_t i = 0; i < straight.size(); ++i) EXPECT_EQ(straight[i], resumed[i]) << "step " << i + 1;
  EXPECT_EQ(weights(a), weights(c));
}

INSTANTIATE_TEST_SUITE_P(Checkpoint, CheckpointModes, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "async" : "sync"; });

// An asynchronous save returns after the snapshot; the writer (held back 300 ms by the test hook) writes that
// snapshot while training changes the parameters; the directory gets its final name only at finalize, and the next
// save waits for the one in flight.
TEST(Checkpoint, AsyncSaveWritesTheSnapshot) {
  CkptRun r("async_snapshot");
  model::ParallelContext par;
  model::Trainer t(r.c, par, engine::Device::cpu);
  data::TokenLoader l(r.data, r.c.model.seq_len, r.c.train.global_batch, 0, 1, 9);
  run_steps(t, l, 2, nullptr);
  const std::vector<float> at_save = weights(t);
  ::setenv("MONTA_TEST_SLOW_SAVE_MS", "300", 1);
  model::CkptSaver saver(true);
  saver.save(r.dir.string(), t.params(), par, r.meta(t, l), "", 2);
  EXPECT_TRUE(saver.in_flight());
  run_steps(t, l, 2, nullptr);  // changes every weight while the writer waits
  ASSERT_NE(weights(t), at_save);
  EXPECT_FALSE(fs::exists(r.dir / "checkpoints" / "step_00000002"));
  EXPECT_TRUE(fs::exists(r.dir / "checkpoints" / "step_00000002.tmp"));
  const std::vector<float> at_second = weights(t);
  saver.save(r.dir.string(), t.params(), par, r.meta(t, l), "", 2);  // finalizes step 2 first
  EXPECT_TRUE(fs::exists(r.dir / "checkpoints" / "step_00000002" / "COMPLETE"));
  const std::string second = saver.finalize();
  ::unsetenv("MONTA_TEST_SLOW_SAVE_MS");
  EXPECT_FALSE(saver.in_flight());
  EXPECT_EQ(saver.finalize(), "");  // nothing in flight
  EXPECT_EQ(model::ckpt_find_latest(r.dir.string()), second);
  const std::string sig = model::model_signature(r.c.model);
  for (auto [dir, want] : {std::pair{(r.dir / "checkpoints" / "step_00000002").string(), &at_save},
                           std::pair{second, &at_second}}) {
    model::Trainer fresh(r.c, par, engine::Device::cpu);
    model::ckpt_load(dir, fresh.params(), sig);
    EXPECT_EQ(weights(fresh), *want) << dir;
  }
}

TEST(Checkpoint, BrokenCheckpointsAreSkippedOrRejected) {
  engine::install_throwing_handler();
  CkptRun r("broken");
  model::ParallelContext par;
  model::Trainer t(r.c, par, engine::Device::cpu);
  data::TokenLoader l(r.data, r.c.model.seq_len, r.c.train.global_batch, 0, 1, 9);
  run_steps(t, l, 1, nullptr);
  std::string good = model::ckpt_save(r.dir.string(), t.params(), par, r.meta(t, l), "", 5);
  run_steps(t, l, 1, nullptr);
  std::string bad = model::ckpt_save(r.dir.string(), t.params(), par, r.meta(t, l), "", 5);
  // Corrupt the newest: flip bytes in the middle of its shard.
  {
    fs::path f = fs::path(bad) / "rank_00000.h5";
    std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(std::streamoff(fs::file_size(f) / 2));
    io.write("\xde\xad\xbe\xef", 4);
  }
  EXPECT_EQ(model::ckpt_find_latest(r.dir.string()), good);
  const std::string sig = model::model_signature(r.c.model);
  try {
    model::ckpt_load(bad, t.params(), sig);
    FAIL();
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("fails its checksum"), std::string::npos) << e.what();
  }
  // Incomplete (no marker): skipped, and rejected when named.
  fs::remove(fs::path(bad) / "COMPLETE");
  EXPECT_EQ(model::ckpt_find_latest(r.dir.string()), good);
  EXPECT_THROW(model::ckpt_load(bad, t.params(), sig), engine::Error);
  // Missing shard.
  fs::path missing = r.dir / "copy";
  fs::copy(good, missing);
  fs::remove(missing / "rank_00000.h5");
  try {
    model::ckpt_load(missing.string(), t.params(), sig);
    FAIL();
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
  // Another model.
  try {
    model::ckpt_load(good, t.params(), "vocab=1");
    FAIL();
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("another model"), std::string::npos) << e.what();
  }
  // Unwritable run directory.
  EXPECT_THROW(model::ckpt_save("/proc/monta_no_such_dir", t.params(), par, r.meta(t, l), "", 2), engine::Error);
}

// checkpoint.writers: a rank's datasets are spread over several files written by parallel threads, each listed in the
// manifest; such a checkpoint loads exactly (with its checksums checked as it is read, or before), a re-save with
// another writer count holds the same tensors (equal exports), and a missing or corrupt file of the set is refused.
TEST(Checkpoint, SeveralFilesPerRank) {
  engine::install_throwing_handler();
  CkptRun r("writers");
  model::ParallelContext par;
  model::Trainer t(r.c, par, engine::Device::cpu);
  data::TokenLoader l(r.data, r.c.model.seq_len, r.c.train.global_batch, 0, 1, 9);
  run_steps(t, l, 2, nullptr);
  const std::vector<float> saved = weights(t);
  const std::string sig = model::model_signature(r.c.model);
  const fs::path a = r.dir / "a", b = r.dir / "b";
  {
    model::CkptSaver saver(true, model::CkptWriteOptions{3, true});
    saver.save(a.string(), t.params(), par, r.meta(t, l), "", 2);
    saver.finalize();
  }
  const fs::path dir_a = a / "checkpoints" / "step_00000002";
  std::vector<int64_t> sizes;
  for (const char* f : {"rank_00000.h5", "rank_00000.1.h5", "rank_00000.2.h5"}) {
    ASSERT_TRUE(fs::exists(dir_a / f)) << f;
    sizes.push_back(int64_t(fs::file_size(dir_a / f)));
  }
  // Balanced by bytes: the largest file is less than twice the smallest.
  EXPECT_LT(*std::max_element(sizes.begin(), sizes.end()), 2 * *std::min_element(sizes.begin(), sizes.end()));
  EXPECT_EQ(model::ckpt_read_meta(dir_a.string()).writers, 3);

  model::Trainer fresh(r.c, par, engine::Device::cpu);
  ASSERT_FALSE(model::ckpt_load_verified(dir_a.string(), fresh.params(), sig, nullptr));
  EXPECT_EQ(weights(fresh), saved);
  model::Trainer before(r.c, par, engine::Device::cpu);
  model::ckpt_load(dir_a.string(), before.params(), sig, model::CkptVerify::before);
  EXPECT_EQ(weights(before), saved);

  model::CkptSaver one(false, model::CkptWriteOptions{1, false});  // re-saved as one file, through the page cache
  one.save(b.string(), fresh.params(), par, r.meta(t, l), "", 2);
  const fs::path dir_b = b / "checkpoints" / "step_00000002";
  EXPECT_FALSE(fs::exists(dir_b / "rank_00000.1.h5"));
  {  // A manifest from before checkpoint.writers (no writers line, no manifest checksum) still means one file a rank.
    std::ifstream in(dir_b / "manifest.txt");
    std::string line, kept;
    int dropped = 0;
    while (std::getline(in, line)) {
      const bool old = line.rfind("writers = ", 0) == 0 || line.rfind("manifest_checksum = ", 0) == 0;
      dropped += old;
      if (!old) kept += line + "\n";
    }
    ASSERT_EQ(dropped, 2);
    std::ofstream(dir_b / "manifest.txt", std::ios::trunc) << kept;
    model::Trainer legacy(r.c, par, engine::Device::cpu);
    ASSERT_FALSE(model::ckpt_load_verified(dir_b.string(), legacy.params(), sig, nullptr));
    EXPECT_EQ(weights(legacy), saved);
  }
  model::ckpt_export(dir_a.string(), (r.dir / "a.h5").string());
  model::ckpt_export(dir_b.string(), (r.dir / "b.h5").string());
  std::ifstream ea(r.dir / "a.h5", std::ios::binary), eb(r.dir / "b.h5", std::ios::binary);
  const std::string xa((std::istreambuf_iterator<char>(ea)), {}), xb((std::istreambuf_iterator<char>(eb)), {});
  EXPECT_FALSE(xa.empty());
  EXPECT_EQ(xa, xb);

  // One byte of the third file changed: the verified load names that file (the parameters are partial after it).
  {
    const fs::path f = dir_a / "rank_00000.2.h5";
    std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(std::streamoff(fs::file_size(f) / 2));
    io.write("\xde\xad\xbe\xef", 4);
  }
  auto verdict = model::ckpt_load_verified(dir_a.string(), fresh.params(), sig, nullptr);
  ASSERT_TRUE(verdict);
  EXPECT_NE(verdict->find("rank_00000.2.h5 fails its checksum"), std::string::npos) << *verdict;
  EXPECT_NE(model::ckpt_problem(dir_a.string(), sig).value_or("").find("rank_00000.2.h5 fails its checksum"),
            std::string::npos);
  fs::remove(dir_a / "rank_00000.2.h5");
  EXPECT_NE(model::ckpt_problem(dir_a.string(), sig).value_or("").find("rank_00000.2.h5 is missing"), std::string::npos);
}

TEST(Checkpoint, ExportWritesFullTensors) {
  CkptRun r("export");
  model::ParallelContext par;
  model::Trainer t(r.c, par, engine::Device::cpu);
  data::TokenLoader l(r.data, r.c.model.seq_len, r.c.train.global_batch, 0, 1, 9);
  run_steps(t, l, 1, nullptr);
  std::string dir = model::ckpt_save(r.dir.string(), t.params(), par, r.meta(t, l), "", 2);
  std::string out = (r.dir / "export.h5").string();
  model::ckpt_export(dir, out);
  hid_t f = H5Fopen(out.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  const auto& p = t.params().get("layers.1.w_down");
  std::vector<float> got(size_t(p.master.numel()));
  hid_t ds = H5Dopen2(f, "layers.1.w_down", H5P_DEFAULT);
  ASSERT_GE(ds, 0);
  ASSERT_GE(H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, got.data()), 0);
  H5Dclose(ds);
  H5Fclose(f);
  EXPECT_EQ(0, std::memcmp(got.data(), p.master.data, got.size() * sizeof(float)));
}

TEST(Checkpoint, RotationKeepsNewest) {
  CkptRun r("rotate");
  model::ParallelContext par;
  model::Trainer t(r.c, par, engine::Device::cpu);
  data::TokenLoader l(r.data, r.c.model.seq_len, r.c.train.global_batch, 0, 1, 9);
  for (int i = 0; i < 4; ++i) {
    run_steps(t, l, 1, nullptr);
    model::ckpt_save(r.dir.string(), t.params(), par, r.meta(t, l), "", 2);
  }
  int n = 0;
  for (auto& e : fs::directory_iterator(r.dir / "checkpoints")) n += e.is_directory();
  EXPECT_EQ(n, 2);
  EXPECT_EQ(model::ckpt_read_meta(model::ckpt_find_latest(r.dir.string())).step, 4);
}

// Checking a checkpoint returns a verdict and never ends the process (resume auto falls back on it); the manifest
// is covered by its own checksum; resolving what to resume refuses to lose checkpoints.
TEST(Checkpoint, VerdictsAndResumeResolution) {
  engine::install_throwing_handler();
  CkptRun r("verdict");
  model::ParallelContext par;
  model::Trainer t(r.c, par, engine::Device::cpu);
  data::TokenLoader l(r.data, r.c.model.seq_len, r.c.train.global_batch, 0, 1, 9);
  const std::string sig = model::model_signature(r.c.model), run = r.dir.string();
  EXPECT_EQ(model::ckpt_resolve_resume(run, "", false), "");      // no checkpoints: a fresh start
  EXPECT_EQ(model::ckpt_resolve_resume(run, "auto", false), "");  // the same for auto
  run_steps(t, l, 1, nullptr);
  std::string good = model::ckpt_save(run, t.params(), par, r.meta(t, l), "", 5);
  run_steps(t, l, 1, nullptr);
  std::string bad = model::ckpt_save(run, t.params(), par, r.meta(t, l), "", 5);
  EXPECT_FALSE(model::ckpt_problem(good, sig));
  EXPECT_TRUE(model::ckpt_problem(good, "vocab=1"));
  // A fresh start over checkpoints is refused, naming the newest; overwrite allows it.
  try {
    model::ckpt_resolve_resume(run, "", false);
    FAIL();
  } catch (const engine::Error& e) {
    EXPECT_TRUE(e.user);
    EXPECT_NE(std::string(e.what()).find("holds checkpoints (newest " + bad + ")"), std::string::npos) << e.what();
  }
  EXPECT_EQ(model::ckpt_resolve_resume(run, "", true), "");
  // A hand-edited manifest fails its checksum: a verdict, and auto falls back.
  const fs::path man = fs::path(bad) / "manifest.txt";
  std::string text;
  {
    std::ifstream in(man);
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  std::string edited = text;
  edited.replace(edited.find("step = 2"), 8, "step = 9");
  std::ofstream(man) << edited;
  auto verdict = model::ckpt_problem(bad, sig);
  ASSERT_TRUE(verdict);
  EXPECT_NE(verdict->find("fails its checksum"), std::string::npos) << *verdict;
  EXPECT_EQ(model::ckpt_resolve_resume(run, "auto", false), good);
  // A deleted manifest: the same.
  fs::remove(man);
  ASSERT_TRUE(model::ckpt_problem(bad, sig));
  EXPECT_EQ(model::ckpt_resolve_resume(run, "auto", false), good);
  EXPECT_THROW(model::ckpt_resolve_resume(run, bad, false), engine::Error);
  // Every checkpoint broken: auto refuses instead of starting over them.
  fs::remove(fs::path(good) / "manifest.txt");
  EXPECT_THROW(model::ckpt_resolve_resume(run, "auto", false), engine::Error);
  EXPECT_EQ(model::ckpt_resolve_resume(run, "auto", true), "");
  // A directory named like a step that no int64 holds is not a checkpoint, not a crash.
  fs::create_directories(r.dir / "checkpoints" / "step_123456789012345678901");
  EXPECT_EQ(model::ckpt_find_latest(run), "");
}
