// `monta train`: parse → bootstrap comm → validate → build groups, data, model → resume → loop.
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include "app/commands.h"
#include "app/options.h"
#include "app/parallel_setup.h"
#include "comm/runtime.h"
#include "data/loader.h"
#include "data/synthetic.h"
#include "engine/check.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "model/checkpoint.h"
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
}

// Slurm sends SIGUSR1 (with --signal) before the time limit and SIGTERM at it: finish the step, save, and
// (on SIGTERM) exit cleanly. Flags only; the loop acts on them between steps, agreed on by all ranks.
std::atomic<int> g_signal_flags{0};
void on_signal(int sig) { g_signal_flags.fetch_or(sig == SIGTERM ? 2 : 1); }

std::string metrics_json(const model::StepMetrics& m) {
  return strf("{\"step\": %ld, \"loss\": %.6f, \"aux_loss\": %.6f, \"z_loss\": %.6f, \"grad_norm\": %.6f, \"lr\": %.6e, "
              "\"step_ms\": %.3f, \"tokens_per_s\": %.1f, \"dropped\": %ld, \"skipped\": %s, \"exchange_ms\": %.3f, "
              "\"exchange_gbps\": %.3f}",
              m.step, m.loss, m.aux_loss, m.z_loss, m.grad_norm, m.lr, m.step_ms, m.tokens_per_s, m.dropped,
              m.skipped ? "true" : "false", m.exchange_ms, m.exchange_gbps);
}

}  // namespace

int cmd_train(int argc, char** argv) {
  comm::runtime_init(&argc, &argv);
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
  ParallelSetup ps = setup_parallel(c);  // validates the config against the world size first
  const int world = ps.ctx.world ? ps.ctx.world->size() : 1;
  const int rank = ps.ctx.world ? ps.ctx.world->rank() : 0;
  log_info("monta train: resolved config\n" + config_table(c));
  print_sizes(c, world);
  const engine::Device device = pick_device(c.train.device);
  if (device == engine::Device::cuda) engine::cuda_set_device(ps.local_rank % engine::cuda_device_count());
  MONTA_USER_CHECK(device == engine::Device::cpu || world == 1,
                   "several ranks on GPUs need the NCCL communicator, which this build does not have yet; use "
                   "--train.device cpu for multi-rank runs");
  attach_exchange(ps, c, device, device == engine::Device::cuda ? engine::DType::bf16 : engine::DType::f32);
  log_info(ps.layout_table);

  // Run directory, resolved config, built-in data.
  const fs::path run_dir = c.train.run_dir;
  std::string data_path = c.data.path;
  double floor = NAN;
  if (rank == 0) {
    std::error_code ec;
    fs::create_directories(run_dir, ec);
    MONTA_USER_CHECK(!ec, "cannot create run directory '" + run_dir.string() + "': " + ec.message());
    std::ofstream(run_dir / "config.ini") << config_ini(c);
  }
  if (data_path == "builtin:markov") {
    data_path = (run_dir / strf("markov_v%ld_s%lu.h5", c.model.vocab, (unsigned long)c.train.seed)).string();
    if (rank == 0 && !fs::exists(data_path)) {
      auto info = data::write_markov_corpus(data_path, c.train.seed, c.model.vocab, c.data.builtin_tokens);
      log_info(strf("built-in corpus: %ld tokens of a random Markov chain over %ld ids -> %s", info.num_tokens,
                    info.vocab_size, data_path.c_str()));
    }
  }
  if (ps.ctx.world) ps.ctx.world->barrier();
  floor = data::read_entropy_floor(data_path);
  data::TokenLoader loader(data_path, c.model.seq_len, c.train.global_batch, ps.ctx.dp_rank, ps.ctx.dp, c.train.seed);
  MONTA_USER_CHECK(loader.info().vocab_size <= c.model.vocab,
                   strf("data file %s has vocab_size %ld but model.vocab is %ld", data_path.c_str(),
                        loader.info().vocab_size, c.model.vocab));

  model::Trainer trainer(c, ps.ctx, device);
  for (const auto* a : trainer.params().arenas())
    log_info(strf("arena %-16s %10.2f MiB (%s)", a->name().c_str(), double(a->bytes()) / (1 << 20), engine::device_name(device)));
  log_info(strf("arena %-16s %10.2f MiB (%s)", "activations", double(trainer.model().activations().bytes()) / (1 << 20),
                engine::device_name(device)));
  if (!std::isnan(floor)) log_info(strf("data entropy floor: %.4f nats/token (the best achievable loss)", floor));

  // Resume: "auto" takes the newest complete checkpoint of this run directory (none: start fresh).
  const std::string signature = model::model_signature(c.model);
  std::string resume = c.checkpoint.resume;
  if (resume == "auto") resume = model::ckpt_find_latest(run_dir.string());
  if (!resume.empty()) {
    auto meta = model::ckpt_load(resume, trainer.params(), signature);
    MONTA_USER_CHECK(meta.loader_seed == c.train.seed,
                     strf("checkpoint %s was written with train.seed %lu but the config has %lu", resume.c_str(),
                          (unsigned long)meta.loader_seed, (unsigned long)c.train.seed));
    trainer.set_steps_done(meta.step);
    trainer.set_consecutive_skips(meta.consecutive_skips);
    loader.set_state({meta.loader_seed, meta.loader_epoch, meta.loader_sample});
    log_info(strf("resumed from %s at step %ld (saved by %d ranks: tp %d, ep %d)", resume.c_str(), meta.step, meta.world,
                  meta.tp, meta.ep));
  }
  auto save = [&] {
    model::CkptMeta meta;
    meta.step = trainer.steps_done();
    meta.consecutive_skips = trainer.consecutive_skips();
    auto ls = loader.state();
    meta.loader_seed = ls.seed;
    meta.loader_epoch = ls.epoch;
    meta.loader_sample = ls.sample;
    meta.signature = signature;
    auto t0 = std::chrono::steady_clock::now();
    std::string dir = model::ckpt_save(run_dir.string(), trainer.params(), ps.ctx, meta, config_ini(c), c.checkpoint.keep);
    log_info(strf("saved checkpoint %s in %.1f ms", dir.c_str(),
                  std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count()));
  };
  std::signal(SIGTERM, on_signal);
  std::signal(SIGUSR1, on_signal);

  std::ofstream metrics;
  if (rank == 0) metrics.open(run_dir / "metrics.jsonl", std::ios::app);
  const int64_t local = c.train.global_batch / ps.ctx.dp * c.model.seq_len;
  std::vector<int32_t> inputs(static_cast<size_t>(local)), targets(static_cast<size_t>(local));
  while (trainer.steps_done() < c.train.steps) {
    loader.next_batch(inputs, targets);
    auto m = trainer.step(inputs, targets);
    if (rank == 0) {
      metrics << metrics_json(m) << "\n";
      metrics.flush();
    }
    if (m.step % c.train.log_interval == 0 || m.step == c.train.steps)
      log_info(strf("step %5ld | loss %.4f | aux %.4f | gnorm %7.4f | lr %.3e | %8.1f ms | %9.0f tok/s | drop %4ld | "
                    "exch %.2f ms %.2f GB/s%s",
                    m.step, m.loss, m.aux_loss, m.grad_norm, m.lr, m.step_ms, m.tokens_per_s, m.dropped, m.exchange_ms,
                    m.exchange_gbps, m.skipped ? " | SKIPPED" : ""));
    // All ranks agree on signals so they save (a collective) together.
    int64_t flags = g_signal_flags.exchange(0);
    if (ps.ctx.world && world > 1) {
      engine::Tensor f(&flags, {1}, engine::DType::i64);
      ps.ctx.world->all_reduce(f, comm::ReduceOp::max);
    }
    const bool last = trainer.steps_done() == c.train.steps;
    const bool interval = c.checkpoint.interval > 0 && trainer.steps_done() % c.checkpoint.interval == 0;
    if (flags || interval || (last && c.checkpoint.interval > 0)) save();
    if (flags & 2) {
      log_info(strf("SIGTERM: saved at step %ld, exiting", trainer.steps_done()));
      break;
    }
  }
  if (!std::isnan(floor)) log_info(strf("done: %ld steps; data entropy floor %.4f nats/token", trainer.steps_done(), floor));
  comm::runtime_finalize();
  return 0;
}

}  // namespace monta::app
