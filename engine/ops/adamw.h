// AdamW (decoupled weight decay, Loshchilov & Hutter) on fp32 master weights; the gradient is multiplied
// by grad_scale first (global-norm clipping, gradient averaging) and an optional low-precision copy of the
// updated weights is written for the next forward. The moments are f32 or bf16.
#pragma once
#include <span>

#include "engine/ops/declare.h"

namespace monta::engine {
struct AdamWArgs {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;         // 1-based, for bias correction
  double grad_scale = 1.0;  // applied to grad before the update
};
// One tensor of a fused step: the adamw_step operands and its own weight decay (a.weight_decay is ignored).
struct AdamWEntry {
  Tensor param, m, v, param_lowp, grad;
  double weight_decay = 0;
};
// The device of a fused step: its first entry's (all entries on one device); an empty step runs nowhere (CPU no-op).
inline const Tensor& adamw_first_param(std::span<const AdamWEntry> entries) {
  static const Tensor none;
  return entries.empty() ? none : entries[0].param;
}
}  // namespace monta::engine

// adamw_step: param, m, v, grad: same shape, f32 (or f64 on the CPU); param_lowp: empty, or the same shape in bf16.
// With an f32 param, m and v may both be bf16 (train.optimizer_state = bf16): read widened, the step computed in f32,
// stored rounded to nearest even; the CPU and CUDA backends give the same bits (finite values; a NaN stays a NaN).
// adamw_step_many: the fused optimizer step: every entry updated exactly as adamw_step would (same bits), in a few
// kernel launches on the GPU (tensors packed many to a launch) instead of one per tensor.
#define MONTA_OPS_ADAMW(X)                                                                                          \
  X(adamw_step, param,                                                                                              \
    (Tensor param, Tensor m, Tensor v, Tensor param_lowp, const Tensor& grad, const AdamWArgs& a),                  \
    (param, m, v, param_lowp, grad, a))                                                                             \
  X(adamw_step_many, adamw_first_param(entries), (std::span<const AdamWEntry> entries, const AdamWArgs& a),         \
    (entries, a))

namespace monta::engine {
MONTA_DECLARE_OPS(MONTA_OPS_ADAMW)
}  // namespace monta::engine
