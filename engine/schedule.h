// Learning-rate schedule: linear warmup to lr, then cosine decay to min_lr at decay_steps (Megatron's
// default shape); constant min_lr afterwards. Pure function of the step, so resume needs only the step.
#pragma once
#include <cstdint>

namespace monta::engine {
struct LrSchedule {
  double lr = 3e-4, min_lr = 3e-5;
  int64_t warmup_steps = 0, decay_steps = 0;  // decay_steps 0: no decay
};
// step is 1-based (the update about to be applied).
double lr_at(int64_t step, const LrSchedule& s);
}  // namespace monta::engine
