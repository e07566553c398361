// AdamW (decoupled weight decay, Loshchilov & Hutter) on fp32 master weights; the gradient is multiplied
// by grad_scale first (global-norm clipping, gradient averaging) and an optional low-precision copy of the
// updated weights is written for the next forward.
#pragma once
#include <span>

#include "engine/tensor.h"

namespace monta::engine {
struct AdamWArgs {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;         // 1-based, for bias correction
  double grad_scale = 1.0;  // applied to grad before the update
};
// param, m, v, grad: same shape, f32 (or f64 on the CPU); param_lowp: empty, or the same shape in bf16.
void adamw_step(Tensor param, Tensor m, Tensor v, Tensor param_lowp, const Tensor& grad, const AdamWArgs& a,
                Stream s = nullptr);
// One tensor of a fused step: the adamw_step operands and its own weight decay (a.weight_decay is ignored).
struct AdamWEntry {
  Tensor param, m, v, param_lowp, grad;
  double weight_decay = 0;
};
// The fused optimizer step: every entry updated exactly as adamw_step would (same bits), in a few kernel launches
// on the GPU (tensors packed many to a launch) instead of one per tensor. All entries on one device.
void adamw_step_many(std::span<const AdamWEntry> entries, const AdamWArgs& a, Stream s = nullptr);
namespace cpu {
void adamw_step(Tensor param, Tensor m, Tensor v, Tensor param_lowp, const Tensor& grad, const AdamWArgs& a, Stream s);
void adamw_step_many(std::span<const AdamWEntry> entries, const AdamWArgs& a, Stream s);
}
namespace cuda {
void adamw_step(Tensor param, Tensor m, Tensor v, Tensor param_lowp, const Tensor& grad, const AdamWArgs& a, Stream s);
void adamw_step_many(std::span<const AdamWEntry> entries, const AdamWArgs& a, Stream s);
}
}  // namespace monta::engine
