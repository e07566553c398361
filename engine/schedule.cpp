// Warmup + cosine learning-rate schedule.
#include "engine/schedule.h"

#include <algorithm>
#include <cmath>

namespace monta::engine {
double lr_at(int64_t step, const LrSchedule& s) {
  if (s.warmup_steps > 0 && step <= s.warmup_steps) return s.lr * double(step) / double(s.warmup_steps);
  if (s.decay_steps <= s.warmup_steps) return s.lr;
  double t = double(step - s.warmup_steps) / double(s.decay_steps - s.warmup_steps);
  t = std::clamp(t, 0.0, 1.0);
  return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1.0 + std::cos(3.141592653589793 * t));
}
}  // namespace monta::engine
