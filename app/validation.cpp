// Validation wiring (see validation.h); the evaluation itself is model::Trainer::evaluate, the data
// data::resolve_data_sources and data::HeldOutBatches.
#include "app/validation.h"

#include <filesystem>
#include <fstream>

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

std::string json_string(const std::string& s) {
  std::string q = "\"";
  for (char ch : s) q += (ch == '"' || ch == '\\') ? std::string("\\") + ch : std::string(1, ch);
  return q + "\"";
}

void write_run_info(const std::string& run_dir, const data::DataSources& src, const model::Config& c, int world) {
  model::write_file_checked((std::filesystem::path(run_dir) / "run_info.json").string(),
      strf("{\"tokens_per_step\": %ld, \"train_flops_per_token\": %.6g, \"peak_tflops\": %g, \"world\": %d, "
              "\"entropy_floor\": %s, \"train_path\": %s, \"valid_path\": %s, \"eval_interval\": %ld, "
              "\"eval_steps\": %ld}\n",
              long(c.train.global_batch * c.model.seq_len), model::train_flops_per_token(c.model), c.train.peak_tflops,
              world,
              std::isnan(src.entropy_floor) ? "null" : strf("%.17g", src.entropy_floor).c_str(),
              json_string(src.train_path).c_str(), json_string(src.valid_path).c_str(), long(c.train.eval_interval),
              long(c.train.eval_steps)));
}

}  // namespace monta::app
