// `monta train`: parse → bootstrap comm → validate → build groups, data, model → resume → loop.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "app/commands.h"
#include "app/options.h"
#include "model/parallel_setup.h"
#include "app/validation.h"
#include "comm/runtime.h"
#include "comm/watchdog.h"
#include "data/loader.h"
#include "data/sources.h"
#include "engine/check.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "engine/parse.h"
#include "engine/timing.h"
#include "model/checkpoint.h"
#include "model/footprint.h"
#include "model/run_dir.h"
#include "model/trainer.h"

namespace fs = std::filesystem;

namespace monta::app {

using engine::log_info;
using engine::strf;

namespace {

void print_sizes(const model::Config& c, int world, engine::Device device) {
  auto sz = model::model_size(c.model);
  const bool big = sz.total >= 1000000000;
  const double u = big ? 1e9 : 1e6;
  const char* un = big ? "B" : "M";
  log_info(strf("model: %.3f %s parameters (%.3f %s in experts, %.3f %s embeddings), %.3f %s active per token",
                double(sz.total) / u, un, double(sz.expert) / u, un, double(sz.embedding) / u, un,
                double(sz.active_per_token) / u, un));
  const int tp = c.parallel.tp, ep = c.parallel.ep;
  const model::RankFootprint f = model::rank_footprint(c, tp, ep, c.parallel.expert_tp, std::max(1, world / tp), device);
  const double gib = double(1 << 30);
  log_info(strf("per rank (tp %d, ep %d%s%s, %s): %.3f %s parameters; %.3f GiB %s%s, %.3f GiB "
                "activations (micro-batch %ld)%s%s: %.3f GiB in all",
                tp, ep, c.parallel.expert_tp ? ", experts TP-split" : "",
                c.parallel.sequence_parallel ? ", sequence parallel" : "", engine::device_name(device),
                double(f.params) / u, un, f.state() / gib, f.offload ? "grads" : "weights+grads+AdamW",
                f.compute_copy > 0 ? " (+ compute copy)" : "", f.activations / gib, c.train.micro_batch,
                f.exchange > 0 ? strf(", %.3f GiB exchange staging", f.exchange / gib).c_str() : "",
                f.fp8_weights > 0 ? strf(", %.3f GiB FP8 weight codes", f.fp8_weights / gib).c_str() : "", f.total() / gib));
  log_info(strf("optimizer state: fp32 master %.3f GiB, AdamW moments (%s) %.3f GiB%s", f.weights / gib,
                c.train.optimizer_state.c_str(), f.adam / gib,
                f.offload ? strf("; offloaded: %.3f GiB host memory per rank (master, moments, gradient and upload "
                                 "copies%s)", f.host_bytes / gib, device == engine::Device::cuda ? ", pinned" : "").c_str()
                          : ""));
  if (f.checkpoint_host > 0)
    log_info(strf("checkpoint snapshot: %.3f GiB %shost memory per rank (%s; held from start-up %s)",
                  f.checkpoint_host / gib, device == engine::Device::cuda ? "pinned " : "",
                  c.checkpoint.async ? "checkpoint.async" : "a synchronous save from the GPU stages through it",
                  c.checkpoint.interval > 0 ? "as checkpoint.interval > 0" : "only once checkpoint.interval > 0"));
  else
    log_info("checkpoint snapshot: none (a synchronous save on the CPU writes from the parameters)");
}

// Slurm sends SIGUSR1 (with --signal) before the time limit and SIGTERM at it: finish the step, save, and
// (on SIGTERM) exit cleanly. Flags only; the loop acts on them between steps, agreed on by all ranks.
std::atomic<int> g_signal_flags{0};
void on_signal(int sig) { g_signal_flags.fetch_or(sig == SIGTERM ? 2 : 1); }

// Losses and norms with all 17 digits (a resumed run's lines compare equal as text to an uninterrupted run's; the
// emitter's default); a non-finite value (a skipped step) is null, as JSON has no NaN.
std::string metrics_json(const model::StepMetrics& m) {
  engine::JsonRecord j;
  j.add("step", int64_t(m.step)).add("loss", m.loss).add("loss_total", m.loss_total).add("aux_loss", m.aux_loss);
  j.add("z_loss", m.z_loss).add("grad_norm", m.grad_norm).add("lr", m.lr, "%.6e").add("step_ms", m.step_ms, "%.3f");
  j.add("tokens_per_s", m.tokens_per_s, "%.1f").add("tflops_per_gpu", m.tflops_per_gpu, "%.3f").add("mfu", m.mfu, "%.5f");
  j.add("dropped", int64_t(m.dropped)).add("load_max", m.load_max).add("load_min", m.load_min);
  j.add("skipped", m.skipped).add("exchange_host_ms", m.exchange_host_ms, "%.3f");
  j.add("exchange_host_gbps", m.exchange_host_gbps, "%.3f").add("host_syncs", int64_t(m.host_syncs));
  j.add("exchange_ep_ms", m.exchange_ep_ms, "%.3f").add("exchange_tp_ms", m.exchange_tp_ms, "%.3f");
  if (!std::isnan(m.val_loss)) j.add("val_loss", m.val_loss).add("val_ppl", m.val_ppl);
  return j.line();
}

// Fault-injection hooks for tests/resume (environment variables, off unless set; see docs/checkpoints.md).
//   MONTA_TEST_STALL_RANK=r   rank r sleeps forever at the start of step 2 (the watchdog test)
//   MONTA_TEST_NAN_STEPS=a,b  steps a, b, ... see a NaN weight (final_norm), restored after the skipped step
//   MONTA_TEST_SLOW_SAVE_MS   (model/checkpoint.cpp) the writer sleeps before the shard's data (no manifest yet)
struct TestHooks {
  int stall_rank = -1;
  std::vector<int64_t> nan_steps;
  static TestHooks from_env() {
    TestHooks h;
    if (const char* v = std::getenv("MONTA_TEST_STALL_RANK"); v && *v)
      h.stall_rank = engine::parse_int(v, "MONTA_TEST_STALL_RANK");
    if (const char* v = std::getenv("MONTA_TEST_NAN_STEPS"); v && *v) {
      std::stringstream ss(v);
      std::string item;
      while (std::getline(ss, item, ',')) h.nan_steps.push_back(engine::parse_int64(item, "MONTA_TEST_NAN_STEPS"));
    }
    return h;
  }
  bool nan_at(int64_t step) const { return std::find(nan_steps.begin(), nan_steps.end(), step) != nan_steps.end(); }
};

// Swaps final_norm for a NaN copy (and back): every token's logits become NaN, so the step is skipped on all
// ranks and nothing but the skip counter changes.
void poison_final_norm(model::ParamStore& params, std::vector<float>& saved, bool on) {
  auto& p = params.get("final_norm");
  auto host = [&](std::vector<float>& v) { return engine::make_view(v.data(), p.local, engine::DType::f32, engine::Device::cpu); };
  if (on) {
    saved.resize(size_t(p.master.numel()));
    engine::read_to_host(host(saved), p.master, "test hook: final_norm");
    std::vector<float> bad(saved.size(), NAN);
    engine::copy(p.master, host(bad));
  } else {
    engine::copy(p.master, host(saved));
  }
  params.refresh_compute();
}

// One training run, built in the order start-up goes: groups and exchange, the trainer, the checkpoint to resume from
// (found, then loaded with its checksums checked as it is read), the run directory and data, the loader's position;
// then the loop. Each phase is one method. Nothing is written to the run directory before the checkpoint is loaded,
// so a refused resume (a corrupt file found while loading included) changes nothing.
class TrainJob {
 public:
  TrainJob(const model::Config& c, engine::Device device) : c_(c), device_(device), run_dir_(c.train.run_dir) {}

  void start() {
    ps_ = [&] {
      const engine::StartupPhase phase("communicators and process groups");
      return model::setup_parallel(c_, device_);  // validates the config against the world size, selects the GPU
    }();
    world_ = ps_.ctx.world ? ps_.ctx.world->size() : 1;
    rank_ = ps_.ctx.world ? ps_.ctx.world->rank() : 0;
    // The context and communicators, before any arena (none without a GPU).
    if (device_ == engine::Device::cuda) gpu_bytes_at_start_ = engine::cuda_memory_in_use();
    log_info("monta train: resolved config\n" + config_table(c_));
    print_sizes(c_, world_, device_);
    {
      const engine::StartupPhase phase("MoE exchange set-up (" + c_.comm.exchange + ")");
      model::attach_exchange(ps_, c_, device_, device_ == engine::Device::cuda ? engine::DType::bf16 : engine::DType::f32);
    }
    log_info(ps_.layout_table);
    print_placement();
    trainer_ = std::make_unique<model::Trainer>(c_, ps_.ctx, device_);
    for (const auto* a : trainer_->params().arenas())
      log_info(strf("arena %-16s %10.2f MiB (%s%s)", a->name().c_str(), double(a->bytes()) / (1 << 20),
                    engine::device_name(a->device()), a->pinned() ? ", pinned" : ""));
    log_info(strf("arena %-16s %10.2f MiB (%s)", "activations", double(trainer_->model().activations().bytes()) / (1 << 20),
                  engine::device_name(device_)));
    if (trainer_->model().fp8_weights().bytes() > 0)
      log_info(strf("arena %-16s %10.2f MiB (%s)", "fp8_weights", double(trainer_->model().fp8_weights().bytes()) / (1 << 20),
                    engine::device_name(device_)));
    find_resume();
    if (!resume_.empty()) load_resume();
    open_run_dir_and_data();
    if (!std::isnan(sources_.entropy_floor))
      log_info(strf("data entropy floor: %.4f nats/token (the best achievable loss)", sources_.entropy_floor));
    if (!resume_.empty()) loader_->set_state({resume_meta_.loader_seed, resume_meta_.loader_epoch, resume_meta_.loader_sample});
    saver_ = std::make_unique<model::CkptSaver>(c_.checkpoint.async,
                                                model::CkptWriteOptions{c_.checkpoint.writers, c_.checkpoint.direct});
    if (c_.checkpoint.async && c_.checkpoint.interval > 0) saver_->reserve(trainer_->params());
  }

  void loop() {
    comm::Watchdog watchdog(rank_, world_, c_.train.step_timeout_s, (run_dir_ / ".progress").string());
    watchdog_ = &watchdog;
    if (rank_ == 0) metrics_.open((run_dir_ / "metrics.jsonl").string());
    const int64_t first_step = trainer_->steps_done() + 1;
    while (trainer_->steps_done() < c_.train.steps) {
      // ---- one step: batch, forward/backward/update, validation when due, metrics line ----
      watchdog.arm(strf("step %ld", trainer_->steps_done() + 1));
      const model::StepMetrics m = step();
      if (m.step == first_step) {
        log_info(strf("start-up: first step done %.1f s after launch (the step itself %.1f s)",
                      engine::seconds_since_launch(), m.step_ms / 1000.0));
        if (device_ == engine::Device::cuda) log_memory_after_first_step();
      }
      if (rank_ == 0) metrics_.write_line(metrics_json(m));
      if (m.step % c_.train.log_interval == 0 || m.step == c_.train.steps || m.skipped || !std::isnan(m.val_loss))
        log_info(step_line(m));
      // ---- between steps: signals (agreed by all ranks, so they save together) and interval saves ----
      const int64_t flags = agreed_signals();
      watchdog.disarm();
      if (flags || (c_.checkpoint.interval > 0 && trainer_->steps_done() % c_.checkpoint.interval == 0)) save();
      // A signal means the job may end soon (Slurm's warning, or SIGTERM): its checkpoint is completed at once.
      if (flags) finish_save(flags & 2 ? "SIGTERM" : "SIGUSR1");
      if (flags & 2) {
        log_info(strf("SIGTERM: saved at step %ld, exiting", trainer_->steps_done()));
        break;
      }
    }
    // With checkpointing on, the final state is always on disk, also when no step ran (resumed at train.steps):
    // that is how a checkpoint is re-saved in another layout.
    if (c_.checkpoint.interval > 0 && last_saved_ != trainer_->steps_done()) save();
    finish_save("the end of training");
    watchdog_ = nullptr;
    if (!std::isnan(sources_.entropy_floor))
      log_info(strf("done: %ld steps; data entropy floor %.4f nats/token", trainer_->steps_done(),
                    sources_.entropy_floor));
  }

 private:
  // MONTA_TEST_PLACEMENT=DIR (tests/slurm): every rank writes its rank and the local rank that picks its GPU, with
  // the launcher variables it came from, to DIR/placement.<rank>, so a test can hold them against what srun and
  // mpirun set. A file per rank: four ranks' lines forwarded through one launcher's stdout may interleave.
  void print_placement() const {
    const char* dir = std::getenv("MONTA_TEST_PLACEMENT");
    if (!dir || !*dir) return;
    auto env = [](const char* name) { const char* e = std::getenv(name); return std::string(e && *e ? e : "-"); };
    const std::string line = strf("placement: rank %d of %d, local rank %d on %s (OMPI_COMM_WORLD_LOCAL_RANK %s, "
                                  "SLURM_PROCID %s, SLURM_LOCALID %s)\n",
                                  rank_, world_, ps_.local_rank, comm::runtime_host().c_str(),
                                  env("OMPI_COMM_WORLD_LOCAL_RANK").c_str(), env("SLURM_PROCID").c_str(),
                                  env("SLURM_LOCALID").c_str());
    const std::string path = strf("%s/placement.%d", dir, rank_);
    std::FILE* f = std::fopen(path.c_str(), "w");
    MONTA_USER_CHECK(f, "MONTA_TEST_PLACEMENT: cannot write " + path);
    std::fputs(line.c_str(), f);
    MONTA_USER_CHECK(std::fclose(f) == 0, "MONTA_TEST_PLACEMENT: cannot write " + path);
  }

  // "auto" takes the newest complete checkpoint of this run directory (none at all: start fresh; what is refused:
  // model/checkpoint.h). Checked before anything is written (manifest, sizes, model; the checksums as it is loaded),
  // so a refusal leaves the run directory as it was. `below`: auto skips that step and newer (a load refused them).
  void find_resume(int64_t below = INT64_MAX) {
    signature_ = model::model_signature(c_.model);
    std::optional<engine::StartupPhase> phase;
    if (!c_.checkpoint.resume.empty()) phase.emplace("checkpoint to resume from (found and checked: manifest, sizes)");
    resume_ = model::ckpt_resolve_resume(run_dir_.string(), c_.checkpoint.resume, c_.checkpoint.overwrite, signature_,
                                         &resume_meta_, /*checksums=*/false, below);
    if (resume_.empty()) return;
    MONTA_USER_CHECK(resume_meta_.loader_seed == c_.train.seed,
                     strf("checkpoint %s was written with train.seed %lu but the config has %lu", resume_.c_str(),
                          (unsigned long)resume_meta_.loader_seed, (unsigned long)c_.train.seed));
    std::error_code ec1, ec2;
    if (fs::weakly_canonical(fs::path(resume_).parent_path(), ec1) == fs::weakly_canonical(run_dir_ / "checkpoints", ec2))
      last_saved_ = resume_meta_.step;  // already on disk here: do not write it again
  }

  // Locks the run directory, makes the built-in data, opens and checks the data; only then writes config.ini.
  void open_run_dir_and_data() {
    if (rank_ == 0) lock_.emplace(run_dir_.string());  // one launch per run directory, checked writable
    if (rank_ == 0) {
      const engine::StartupPhase phase("built-in corpus (generated once per run directory)");
      data::write_builtin_corpus(data_spec(c_));
    }
    if (ps_.ctx.world) ps_.ctx.world->barrier();
    sources_ = data::resolve_data_sources(data_spec(c_));
    loader_ = std::make_unique<data::TokenLoader>(sources_.train_path, c_.model.seq_len, c_.train.global_batch,
                                                  ps_.ctx.dp_rank, ps_.ctx.dp, c_.train.seed,
                                                  data::TokenLoader::kDefaultResidentBytes, sources_.train);
    validation_ = make_validation(sources_, c_, ps_.ctx);
    log_info(sources_.valid_note);
    MONTA_USER_CHECK(loader_->info().vocab_size <= c_.model.vocab,
                     strf("data file %s has vocab_size %ld but model.vocab is %ld", sources_.train_path.c_str(),
                          loader_->info().vocab_size, c_.model.vocab));
    if (rank_ == 0) model::write_file_checked((run_dir_ / "config.ini").string(), config_ini(c_));  // all validated
    if (rank_ == 0) write_run_info(run_dir_.string(), sources_, c_, world_);
  }

  // Loads resume_, each byte read once with its checksum checked (model::ckpt_load_verified). A corrupt file is the
  // same one-line error as before the load for an explicit directory; "auto" warns and falls back to the next older
  // usable checkpoint, as it does for one broken in any other way.
  void load_resume() {
    const engine::StartupPhase phase("loading checkpoint " + resume_ + " (checksums checked as it is read)");
    for (;;) {
      const engine::HostTimer timer;
      auto problem = model::ckpt_load_verified(resume_, trainer_->params(), signature_, ps_.ctx.world, &resume_meta_);
      const double load_ms = timer.ms();
      if (!problem) {
        log_info(strf("resumed from %s at step %ld (saved by %d ranks: tp %d, ep %d) in %.1f ms", resume_.c_str(),
                      resume_meta_.step, resume_meta_.world, resume_meta_.tp, resume_meta_.ep, load_ms));
        break;
      }
      if (c_.checkpoint.resume != "auto") engine::fail_user(*problem);
      engine::log_warn("skipping checkpoint " + resume_ + ": " + *problem);
      last_saved_ = -1;
      find_resume(resume_meta_.step);
      if (resume_.empty()) {  // checkpoint.overwrite with none usable: a fresh start, weights initialised again
        trainer_.reset();
        trainer_ = std::make_unique<model::Trainer>(c_, ps_.ctx, device_);
        return;
      }
    }
    trainer_->set_steps_done(resume_meta_.step);
    trainer_->set_consecutive_skips(resume_meta_.consecutive_skips);
    if (resume_meta_.step >= c_.train.steps)
      log_info(strf("nothing to train: the checkpoint is already at step %ld and train.steps is %ld (raise "
                    "train.steps to continue)",
                    resume_meta_.step, c_.train.steps));
  }

  model::StepMetrics step() {
    const int64_t next = trainer_->steps_done() + 1;
    if (rank_ == hooks_.stall_rank && next == 2) {
      std::fprintf(stderr, "monta: test hook: rank %d stalls at step 2\n", rank_);
      std::fflush(stderr);
      for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
    }
    const int64_t local = c_.train.global_batch / ps_.ctx.dp * c_.model.seq_len;
    inputs_.resize(static_cast<size_t>(local));
    targets_.resize(static_cast<size_t>(local));
    loader_->next_batch(inputs_, targets_);
    std::vector<float> saved_norm;
    if (hooks_.nan_at(next)) poison_final_norm(trainer_->params(), saved_norm, true);
    model::StepMetrics m = trainer_->step(inputs_, targets_);
    if (hooks_.nan_at(next)) poison_final_norm(trainer_->params(), saved_norm, false);
    validation_.after_step(*trainer_, c_.train.steps, m);  // val_loss and val_ppl when due
    return m;
  }

  static std::string step_line(const model::StepMetrics& m) {
    const std::string dev_exch = m.exchange_ep_ms + m.exchange_tp_ms > 0
                                     ? strf(" | exch(dev) ep %.2f tp %.2f ms", m.exchange_ep_ms, m.exchange_tp_ms)
                                     : std::string();
    return strf("step %5ld | loss %.4f | aux %.4f | gnorm %7.4f | lr %.3e | %8.1f ms | %9.0f tok/s | MFU %5.1f%% | "
                "drop %4ld | exch(host) %.2f ms %.2f GB/s%s%s%s",
                m.step, m.loss, m.aux_loss, m.grad_norm, m.lr, m.step_ms, m.tokens_per_s, 100.0 * m.mfu, m.dropped,
                m.exchange_host_ms, m.exchange_host_gbps, dev_exch.c_str(), m.skipped ? " | SKIPPED" : "",
                std::isnan(m.val_loss) ? "" : strf(" | val_loss %.4f ppl %.3f", m.val_loss, m.val_ppl).c_str());
  }

  int64_t agreed_signals() {
    int64_t flags = g_signal_flags.exchange(0);
    if (ps_.ctx.world && world_ > 1) {
      engine::Tensor f(&flags, {1}, engine::DType::i64);
      ps_.ctx.world->all_reduce(f, comm::ReduceOp::max);
    }
    return flags;
  }

  void save() {
    watchdog_->arm(strf("checkpoint save at step %ld", trainer_->steps_done()));
    model::CkptMeta meta;
    meta.step = trainer_->steps_done();
    meta.consecutive_skips = trainer_->consecutive_skips();
    auto ls = loader_->state();
    meta.loader_seed = ls.seed;
    meta.loader_epoch = ls.epoch;
    meta.loader_sample = ls.sample;
    meta.signature = signature_;
    saver_->save(run_dir_.string(), trainer_->params(), ps_.ctx, meta, config_ini(c_), c_.checkpoint.keep);  // logs
    watchdog_->disarm();
    last_saved_ = meta.step;
  }

  // GPU memory the run added since start-up began (arenas, workspaces, exchange buffers) against model/footprint's
  // prediction: the measured side of the memory model (docs/memory.md).
  void log_memory_after_first_step() const {
    const model::RankFootprint f = model::rank_footprint(c_, c_.parallel.tp, c_.parallel.ep, c_.parallel.expert_tp,
                                                         std::max(1, world_ / c_.parallel.tp), device_);
    const double gib = double(1 << 30), grown = double(engine::cuda_memory_in_use() - gpu_bytes_at_start_);
    log_info(strf("memory: %.3f GiB of GPU memory added by the run after step 1, predicted %.3f GiB (%+.1f%%); "
                  "%.3f GiB in use on the GPU in all",
                  grown / gib, f.total() / gib, 100.0 * (grown / f.total() - 1.0),
                  double(engine::cuda_memory_in_use()) / gib));
  }

  // Collective: the save in flight is complete on disk (renamed into place) after it.
  void finish_save(const char* waiter) {
    watchdog_->arm("checkpoint write");
    saver_->finalize(waiter);
    watchdog_->disarm();
  }

  const model::Config c_;
  const engine::Device device_;
  const fs::path run_dir_;
  const TestHooks hooks_ = TestHooks::from_env();
  model::ParallelSetup ps_;
  int world_ = 1, rank_ = 0;
  size_t gpu_bytes_at_start_ = 0;
  std::string signature_, resume_;
  model::CkptMeta resume_meta_;
  int64_t last_saved_ = -1;
  std::optional<model::RunDirLock> lock_;
  data::DataSources sources_;
  std::unique_ptr<data::TokenLoader> loader_;
  Validation validation_;
  std::unique_ptr<model::Trainer> trainer_;
  std::unique_ptr<model::CkptSaver> saver_;  // after trainer_: destroyed first, waiting for its writer
  model::AppendFile metrics_;
  comm::Watchdog* watchdog_ = nullptr;
  std::vector<int32_t> inputs_, targets_;
};

}  // namespace

int cmd_train(int argc, char** argv) {
  comm::runtime_init(&argc, &argv);
  // Installed first, so a signal during start-up is honoured after the first step rather than killing the job.
  std::signal(SIGTERM, on_signal);
  std::signal(SIGUSR1, on_signal);
  ParsedConfig pc = parse_train_options(argc, argv);
  if (pc.help) {
    comm::runtime_finalize();
    return 0;
  }
  const model::Config& c = pc.config;
  if (pc.dry_run) {  // sizes for the smallest world the layout allows (tp · ep), whatever this launch's size
    model::validate(c, 0);
    log_info("monta train --dry-run: resolved config\n" + config_table(c));
    print_sizes(c, c.parallel.tp * c.parallel.ep, c.train.device == "cpu" ? engine::Device::cpu : engine::Device::cuda);
    comm::runtime_finalize();
    return 0;
  }
  {
    TrainJob job(c, model::pick_device(c.train.device));
    job.start();
    job.loop();
  }
  comm::runtime_finalize();
  return 0;
}

}  // namespace monta::app
