// Validation wiring (see validation.h); the evaluation itself is model::Trainer::evaluate, the data
// data::resolve_data_sources and data::HeldOutBatches.
#include "app/validation.h"

#include <filesystem>
#include <fstream>

#include "engine/log.h"

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
  v.heldout = std::make_unique<data::HeldOutBatches>(src, c.model.seq_len, c.train.global_batch, par.dp_rank, par.dp,
                                                     c.train.seed, c.train.eval_steps);
  return v;
}

void write_run_info(const std::string& run_dir, const data::DataSources& src, const model::Config& c) {
  auto quoted = [](const std::string& s) {
    std::string q = "\"";
    for (char ch : s) q += (ch == '"' || ch == '\\') ? std::string("\\") + ch : std::string(1, ch);
    return q + "\"";
  };
  std::ofstream(std::filesystem::path(run_dir) / "run_info.json")
      << strf("{\"tokens_per_step\": %ld, \"entropy_floor\": %s, \"train_path\": %s, \"valid_path\": %s, "
              "\"eval_interval\": %ld, \"eval_steps\": %ld}\n",
              long(c.train.global_batch * c.model.seq_len),
              std::isnan(src.entropy_floor) ? "null" : strf("%.17g", src.entropy_floor).c_str(),
              quoted(src.train_path).c_str(), quoted(src.valid_path).c_str(), long(c.train.eval_interval),
              long(c.train.eval_steps));
}

}  // namespace monta::app
