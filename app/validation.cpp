// Validation wiring (see validation.h); the evaluation itself is model::Trainer::evaluate, the data
// data::resolve_data_sources and data::HeldOutBatches.
#include "app/validation.h"

#include <filesystem>
#include <fstream>

#include "engine/json.h"
#include "engine/log.h"
#include "model/run_dir.h"
#include "model/trainer.h"

namespace monta::app {

using engine::strf;

data::DataSpec data_spec(const model::Config& c) {
  data::DataSpec s;
  s.path = c.data.path;
  s.valid_path = c.data.valid_path;
  s.valid_fraction = c.data.valid_fraction;
  s.run_dir = c.train.run_dir;
  s.seed = c.train.seed;
  s.vocab = c.model.vocab;
  s.builtin_tokens = c.data.builtin_tokens;
  return s;
}

model::EvalResult Validation::run(model::Trainer& t) const {
  heldout->rewind();
  return t.evaluate([this](std::span<int32_t> in, std::span<int32_t> tg) { heldout->next_batch(in, tg); },
                    heldout->batches());
}

void Validation::after_step(model::Trainer& t, int64_t last, model::StepMetrics& m) const {
  if (!due(m.step, last)) return;
  const model::EvalResult r = run(t);
  m.val_loss = r.loss;
  m.val_ppl = r.ppl;
}

Validation make_validation(const data::DataSources& src, const model::Config& c, const model::ParallelContext& par) {
  Validation v;
  v.interval = c.train.eval_interval;
  if (src.valid_path.empty() || c.train.eval_steps == 0) return v;
  const int64_t S = c.model.seq_len, B = c.train.global_batch, steps = c.train.eval_steps;
  if (src.valid_implicit && !data::HeldOutBatches::fits(src, S, B, steps)) {  // a default must not stop a run
    engine::log_warn(strf("the built-in held-out file %s is shorter than train.eval_steps x train.global_batch = %ld "
                          "samples of %ld tokens; validation is off (raise data.builtin_tokens or lower "
                          "train.eval_steps)",
                          src.valid_path.c_str(), long(steps * B), long(S)));
    return v;
  }
  v.heldout = std::make_unique<data::HeldOutBatches>(src, S, B, par.dp_rank, par.dp, c.train.seed, steps);
  return v;
}

void write_run_info(const std::string& run_dir, const data::DataSources& src, const model::Config& c, int world) {
  engine::JsonRecord j;
  j.add("tokens_per_step", int64_t(c.train.global_batch * c.model.seq_len));
  j.add("train_flops_per_token", model::train_flops_per_token(c.model), "%.6g").add("peak_tflops", c.train.peak_tflops, "%g");
  j.add("world", world).add("entropy_floor", src.entropy_floor).add("train_path", src.train_path);
  j.add("valid_path", src.valid_path).add("eval_interval", int64_t(c.train.eval_interval));
  j.add("eval_steps", int64_t(c.train.eval_steps));
  model::write_file_checked((std::filesystem::path(run_dir) / "run_info.json").string(), j.line() + "\n");
}

}  // namespace monta::app
