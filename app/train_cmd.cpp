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
#include "app/parallel_setup.h"
#include "app/validation.h"
#include "comm/runtime.h"
#include "comm/watchdog.h"
#include "data/loader.h"
#include "data/sources.h"
#include "engine/check.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "engine/parse.h"
#include "model/checkpoint.h"
#include "model/run_dir.h"
#include "model/trainer.h"

namespace fs = std::filesystem;

namespace monta::app {

using engine::log_info;
using engine::strf;

namespace {

engine::Device pick_device(const std::string& want) {
  if (want == "cpu") return engine::Device::cpu;
  bool gpu = engine::cuda_available();
  MONTA_USER_CHECK(gpu || want != "cuda", "train.device = cuda but no CUDA device is visible (or this build has no CUDA "
                                          "backend); use --train.device cpu or auto");
  return gpu ? engine::Device::cuda : engine::Device::cpu;
}

void print_sizes(const model::Config& c, int world) {
  auto sz = model::model_size(c.model);
  const bool big = sz.total >= 1000000000;
  const double u = big ? 1e9 : 1e6;
  const char* un = big ? "B" : "M";
  log_info(strf("model: %.3f %s parameters (%.3f %s in experts, %.3f %s embeddings), %.3f %s active per token",
                double(sz.total) / u, un, double(sz.expert) / u, un, double(sz.embedding) / u, un,
                double(sz.active_per_token) / u, un));
  const int tp = c.parallel.tp, ep = c.parallel.ep;
  // Per-rank parameter count of this layout: non-expert params split over TP, experts over EP (and TP).
  double expert_local = double(sz.expert) / ep / (c.parallel.expert_tp ? tp : 1);
  double dense_local = double(sz.total - sz.expert) / tp;
  double params = expert_local + dense_local;
  // fp32 master + fp32 grad + 2 fp32 moments (+ bf16 compute copy on the GPU): 18 bytes per parameter.
  double state_gib = params * 18.0 / double(1 << 30);
  model::Shapes s = model::Shapes::make(c.model, c.train.micro_batch, tp, ep, std::max(1, world / tp), c.parallel.expert_tp);
  double el = 2.0;  // bf16 activations
  double per_layer = el * (double(s.N) * double(s.H) * 5 + double(s.N) * double(s.A_l + 2 * s.G_l) * double(s.D) * 2 +
                           double(s.E) * double(s.C) * double(s.H) * 2 + 3.0 * double(s.E_l * s.EC * s.F_l) +
                           2.0 * double(s.E_l * s.EC * s.H));
  double act_gib = per_layer * double(c.model.layers) / double(1 << 30);
  log_info(strf("per rank (tp %d, ep %d%s): %.3f %s parameters, %.3f GiB weights+grads+AdamW, ~%.3f GiB saved "
                "activations (micro-batch %ld, capacity %ld)",
                tp, ep, c.parallel.expert_tp ? ", experts TP-split" : "", params / u, un, state_gib, act_gib,
                c.train.micro_batch, s.C));
  log_info(strf("checkpoint snapshot: %.3f GiB host memory per rank (checkpoint.async%s)", params * 12.0 / double(1 << 30),
                c.checkpoint.async ? "" : " is false: none on the CPU; a save from the GPU still stages through it"));
}

// Slurm sends SIGUSR1 (with --signal) before the time limit and SIGTERM at it: finish the step, save, and
// (on SIGTERM) exit cleanly. Flags only; the loop acts on them between steps, agreed on by all ranks.
std::atomic<int> g_signal_flags{0};
void on_signal(int sig) { g_signal_flags.fetch_or(sig == SIGTERM ? 2 : 1); }

// Losses and norms with all 17 digits (a resumed run's lines compare equal as text to an uninterrupted run's);
// a non-finite value (a skipped step) is null, as JSON has no NaN.
std::string exact(double v) { return std::isfinite(v) ? strf("%.17g", v) : std::string("null"); }

std::string metrics_json(const model::StepMetrics& m) {
  return strf("{\"step\": %ld, \"loss\": %s, \"loss_total\": %s, \"aux_loss\": %s, \"z_loss\": %s, \"grad_norm\": %s, \"lr\": %.6e, "
              "\"step_ms\": %.3f, \"tokens_per_s\": %.1f, \"tflops_per_gpu\": %.3f, \"mfu\": %.5f, \"dropped\": %ld, "
              "\"skipped\": %s, \"exchange_host_ms\": %.3f, \"exchange_host_gbps\": %.3f, \"host_syncs\": %ld",
              m.step, exact(m.loss).c_str(), exact(m.loss_total).c_str(), exact(m.aux_loss).c_str(), exact(m.z_loss).c_str(),
              exact(m.grad_norm).c_str(), m.lr, m.step_ms, m.tokens_per_s, m.tflops_per_gpu, m.mfu, m.dropped,
              m.skipped ? "true" : "false", m.exchange_host_ms, m.exchange_host_gbps, m.host_syncs) +
         (std::isnan(m.val_loss) ? "" : strf(", \"val_loss\": %s, \"val_ppl\": %s", exact(m.val_loss).c_str(),
                                            exact(m.val_ppl).c_str())) + "}";
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
    engine::copy(host(saved), p.master);
    std::vector<float> bad(saved.size(), NAN);
    engine::copy(p.master, host(bad));
  } else {
    engine::copy(p.master, host(saved));
  }
  params.refresh_compute();
}

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
  model::Config& c = pc.config;
  if (pc.dry_run) {  // sizes for the smallest world the layout allows (tp · ep), whatever this launch's size
    model::validate(c, 0);
    log_info("monta train --dry-run: resolved config\n" + config_table(c));
    print_sizes(c, c.parallel.tp * c.parallel.ep);
    comm::runtime_finalize();
    return 0;
  }
  const engine::Device device = pick_device(c.train.device);
  ParallelSetup ps = [&] {
    const engine::StartupPhase phase("communicators and process groups");
    return setup_parallel(c, device);  // validates the config against the world size, selects the GPU
  }();
  const int world = ps.ctx.world ? ps.ctx.world->size() : 1;
  const int rank = ps.ctx.world ? ps.ctx.world->rank() : 0;
  log_info("monta train: resolved config\n" + config_table(c));
  print_sizes(c, world);
  {
    const engine::StartupPhase phase("MoE exchange set-up (" + c.comm.exchange + ")");
    attach_exchange(ps, c, device, device == engine::Device::cuda ? engine::DType::bf16 : engine::DType::f32);
  }
  log_info(ps.layout_table);

  // Resume: "auto" takes the newest complete checkpoint of this run directory (none at all: start fresh; what is
  // refused: model/checkpoint.h). Checked before anything is written, so a refusal leaves the run directory as it was.
  const fs::path run_dir = c.train.run_dir;
  const std::string signature = model::model_signature(c.model);
  model::CkptMeta resume_meta;
  const std::string resume = [&] {
    std::optional<engine::StartupPhase> phase;
    if (!c.checkpoint.resume.empty()) phase.emplace("checkpoint to resume from (found and checked: sizes, checksums)");
    return model::ckpt_resolve_resume(run_dir.string(), c.checkpoint.resume, c.checkpoint.overwrite, signature,
                                      &resume_meta);
  }();
  if (!resume.empty()) {
    MONTA_USER_CHECK(resume_meta.loader_seed == c.train.seed,
                     strf("checkpoint %s was written with train.seed %lu but the config has %lu", resume.c_str(),
                          (unsigned long)resume_meta.loader_seed, (unsigned long)c.train.seed));
  }

  // Run directory, resolved config, built-in data.
  std::optional<model::RunDirLock> run_dir_lock;  // rank 0: one launch per run directory, checked writable
  if (rank == 0) run_dir_lock.emplace(run_dir.string());
  if (rank == 0) {
    const engine::StartupPhase phase("built-in corpus (generated once per run directory)");
    data::write_builtin_corpus(data_spec(c));
  }
  if (ps.ctx.world) ps.ctx.world->barrier();
  const data::DataSources sources = data::resolve_data_sources(data_spec(c));
  const std::string& data_path = sources.train_path;
  const double floor = sources.entropy_floor;
  data::TokenLoader loader(data_path, c.model.seq_len, c.train.global_batch, ps.ctx.dp_rank, ps.ctx.dp, c.train.seed,
                           data::TokenLoader::kDefaultResidentBytes, sources.train);
  const Validation validation = make_validation(sources, c, ps.ctx);
  log_info(sources.valid_note);
  MONTA_USER_CHECK(loader.info().vocab_size <= c.model.vocab,
                   strf("data file %s has vocab_size %ld but model.vocab is %ld", data_path.c_str(),
                        loader.info().vocab_size, c.model.vocab));
  if (rank == 0) model::write_file_checked((run_dir / "config.ini").string(), config_ini(c));  // all validated now
  if (rank == 0) write_run_info(run_dir.string(), sources, c, world);

  model::Trainer trainer(c, ps.ctx, device);
  for (const auto* a : trainer.params().arenas())
    log_info(strf("arena %-16s %10.2f MiB (%s)", a->name().c_str(), double(a->bytes()) / (1 << 20), engine::device_name(device)));
  log_info(strf("arena %-16s %10.2f MiB (%s)", "activations", double(trainer.model().activations().bytes()) / (1 << 20),
                engine::device_name(device)));
  if (!std::isnan(floor)) log_info(strf("data entropy floor: %.4f nats/token (the best achievable loss)", floor));

  if (!resume.empty()) {
    const engine::StartupPhase phase("loading checkpoint " + resume);
    auto t0 = std::chrono::steady_clock::now();
    auto meta = model::ckpt_load(resume, trainer.params(), signature, /*check=*/false);
    const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    trainer.set_steps_done(meta.step);
    trainer.set_consecutive_skips(meta.consecutive_skips);
    loader.set_state({meta.loader_seed, meta.loader_epoch, meta.loader_sample});
    log_info(strf("resumed from %s at step %ld (saved by %d ranks: tp %d, ep %d) in %.1f ms", resume.c_str(), meta.step,
                  meta.world, meta.tp, meta.ep, load_ms));
    if (meta.step >= c.train.steps)
      log_info(strf("nothing to train: the checkpoint is already at step %ld and train.steps is %ld (raise train.steps to "
                    "continue)",
                    meta.step, c.train.steps));
  }
  comm::Watchdog watchdog(rank, world, c.train.step_timeout_s, (run_dir / ".progress").string());
  int64_t last_saved = -1;
  std::error_code ec1, ec2;
  if (!resume.empty() &&
      fs::weakly_canonical(fs::path(resume).parent_path(), ec1) == fs::weakly_canonical(run_dir / "checkpoints", ec2))
    last_saved = resume_meta.step;  // already on disk here: do not write it again
  model::CkptSaver saver(c.checkpoint.async);
  if (c.checkpoint.async && c.checkpoint.interval > 0) saver.reserve(trainer.params());
  auto save = [&] {
    watchdog.arm(strf("checkpoint save at step %ld", trainer.steps_done()));
    model::CkptMeta meta;
    meta.step = trainer.steps_done();
    meta.consecutive_skips = trainer.consecutive_skips();
    auto ls = loader.state();
    meta.loader_seed = ls.seed;
    meta.loader_epoch = ls.epoch;
    meta.loader_sample = ls.sample;
    meta.signature = signature;
    saver.save(run_dir.string(), trainer.params(), ps.ctx, meta, config_ini(c), c.checkpoint.keep);  // logs itself
    watchdog.disarm();
    last_saved = meta.step;
  };
  auto finish_save = [&](const char* waiter) {  // collective: the save in flight is complete on disk after it
    watchdog.arm("checkpoint write");
    saver.finalize(waiter);
    watchdog.disarm();
  };
  const TestHooks hooks = TestHooks::from_env();

  model::AppendFile metrics;
  if (rank == 0) metrics.open((run_dir / "metrics.jsonl").string());
  const int64_t local = c.train.global_batch / ps.ctx.dp * c.model.seq_len;
  std::vector<int32_t> inputs(static_cast<size_t>(local)), targets(static_cast<size_t>(local));
  const int64_t first_step = trainer.steps_done() + 1;
  while (trainer.steps_done() < c.train.steps) {
    const int64_t next = trainer.steps_done() + 1;
    watchdog.arm(strf("step %ld", next));
    if (rank == hooks.stall_rank && next == 2) {
      std::fprintf(stderr, "monta: test hook: rank %d stalls at step 2\n", rank);
      std::fflush(stderr);
      for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
    }
    loader.next_batch(inputs, targets);
    std::vector<float> saved_norm;
    if (hooks.nan_at(next)) poison_final_norm(trainer.params(), saved_norm, true);
    auto m = trainer.step(inputs, targets);
    if (next == first_step)
      log_info(strf("start-up: first step done %.1f s after launch (the step itself %.1f s)", engine::seconds_since_launch(),
                    m.step_ms / 1000.0));
    if (hooks.nan_at(next)) poison_final_norm(trainer.params(), saved_norm, false);
    validation.after_step(trainer, c.train.steps, m);  // val_loss and val_ppl when due
    if (rank == 0) metrics.write_line(metrics_json(m));
    if (m.step % c.train.log_interval == 0 || m.step == c.train.steps || m.skipped || !std::isnan(m.val_loss))
      log_info(strf("step %5ld | loss %.4f | aux %.4f | gnorm %7.4f | lr %.3e | %8.1f ms | %9.0f tok/s | MFU %5.1f%% | "
                    "drop %4ld | exch(host) %.2f ms %.2f GB/s%s%s",
                    m.step, m.loss, m.aux_loss, m.grad_norm, m.lr, m.step_ms, m.tokens_per_s, 100.0 * m.mfu, m.dropped,
                    m.exchange_host_ms, m.exchange_host_gbps, m.skipped ? " | SKIPPED" : "",
                    std::isnan(m.val_loss) ? "" : strf(" | val_loss %.4f ppl %.3f", m.val_loss, m.val_ppl).c_str()));
    // All ranks agree on signals so they save (a collective) together.
    int64_t flags = g_signal_flags.exchange(0);
    if (ps.ctx.world && world > 1) {
      engine::Tensor f(&flags, {1}, engine::DType::i64);
      ps.ctx.world->all_reduce(f, comm::ReduceOp::max);
    }
    watchdog.disarm();
    const bool interval = c.checkpoint.interval > 0 && trainer.steps_done() % c.checkpoint.interval == 0;
    if (flags || interval) save();
    if (flags & 2) {
      finish_save("SIGTERM");
      log_info(strf("SIGTERM: saved at step %ld, exiting", trainer.steps_done()));
      break;
    }
  }
  // With checkpointing on, the final state is always on disk, also when no step ran (resumed at train.steps):
  // that is how a checkpoint is re-saved in another layout.
  if (c.checkpoint.interval > 0 && last_saved != trainer.steps_done()) save();
  finish_save("the end of training");
  if (!std::isnan(floor)) log_info(strf("done: %ld steps; data entropy floor %.4f nats/token", trainer.steps_done(), floor));
  comm::runtime_finalize();
  return 0;
}

}  // namespace monta::app
