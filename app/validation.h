// Validation wiring shared by `train` and `eval`: the data spec of a config, the held-out batches of the resolved
// sources, one call that evaluates on them, and the run_info.json that scripts/plot_run.py reads.
#pragma once
#include <memory>
#include <string>

#include "data/sources.h"
#include "model/config.h"
#include "model/parallel.h"
#include "model/trainer.h"

namespace monta::app {

data::DataSpec data_spec(const model::Config& c);

struct Validation {
  std::unique_ptr<data::HeldOutBatches> heldout;  // null: validation off (no held-out data, or eval_steps 0)
  int64_t interval = 0;
  // After step `step` of a run of `last` steps: every `interval` steps and after the last one.
  bool due(int64_t step, int64_t last) const {
    return heldout && (step == last || (interval > 0 && step % interval == 0));
  }
  model::EvalResult run(model::Trainer& t) const;  // rewinds first: the same batches every time
  // When due after m.step: runs and sets m.val_loss and m.val_ppl.
  void after_step(model::Trainer& t, int64_t last, model::StepMetrics& m) const;
};
Validation make_validation(const data::DataSources& src, const model::Config& c, const model::ParallelContext& par);

// <run_dir>/run_info.json: tokens per step, model FLOPs per token, the peak and world size MFU is measured against,
// the entropy floor (null when unknown) and the data sources.
void write_run_info(const std::string& run_dir, const data::DataSources& src, const model::Config& c, int world);

}  // namespace monta::app
