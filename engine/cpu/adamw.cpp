// CPU AdamW on f32 (or f64) master weights, in the same order as the CUDA kernel and PyTorch: scale the
// gradient, update the moments, decay the weight by (1 − lr·wd), step by the bias-corrected ratio, then
// write the optional bf16 copy that the next forward reads.
#include <cmath>
#include <cstdint>
#include <string>

#include "engine/check.h"
#include "engine/cpu/check_args.h"
#include "engine/ops/adamw.h"

namespace monta::engine::cpu {
namespace {

template <class T> void step(Tensor param, Tensor m, Tensor v, Tensor lowp, const Tensor& grad, const AdamWArgs& a) {
  const int64_t n = param.numel();
  const T b1 = T(a.beta1), b2 = T(a.beta2), eps = T(a.eps), gs = T(a.grad_scale);
  const T decay = T(1.0 - a.lr * a.weight_decay);
  const T step_size = T(a.lr / (1.0 - std::pow(a.beta1, double(a.step))));
  const T inv_sqrt_bc2 = T(1.0 / std::sqrt(1.0 - std::pow(a.beta2, double(a.step))));
  T *p = param.as<T>(), *mm = m.as<T>(), *vv = v.as<T>();
  const T* g = grad.as<T>();
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g[i] * gs;
    const T mi = b1 * mm[i] + (T(1) - b1) * gi;
    const T vi = b2 * vv[i] + (T(1) - b2) * gi * gi;
    mm[i] = mi;
    vv[i] = vi;
    p[i] = p[i] * decay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
  }
  if (!lowp.empty())
    for (int64_t i = 0; i < n; ++i) lowp.as<bf16_t>()[i] = float_to_bf16(float(p[i]));
}

}  // namespace

void adamw_step(Tensor param, Tensor m, Tensor v, Tensor param_lowp, const Tensor& grad, const AdamWArgs& a, Stream) {
  const char* op = "adamw_step";
  MONTA_CHECK(param.dtype == DType::f32 || param.dtype == DType::f64,
              std::string(op) + ": param must be f32 or f64, got " + param.str());
  need(op, "param", param, param.dtype);
  need(op, "m", m, param.dtype);
  need(op, "v", v, param.dtype);
  need(op, "grad", grad, param.dtype);
  if (!param_lowp.empty()) need(op, "param_lowp", param_lowp, DType::bf16);
  MONTA_CHECK(a.step >= 1, std::string(op) + ": step is 1-based, got " + std::to_string(a.step));
  if (param.dtype == DType::f32)
    step<float>(param, m, v, param_lowp, grad, a);
  else
    step<double>(param, m, v, param_lowp, grad, a);
}

// The reference: entry by entry, each with its own decay.
void adamw_step_many(std::span<const AdamWEntry> entries, const AdamWArgs& a, Stream s) {
  AdamWArgs each = a;
  for (const AdamWEntry& e : entries) {
    each.weight_decay = e.weight_decay;
    cpu::adamw_step(e.param, e.m, e.v, e.param_lowp, e.grad, each, s);
  }
}

}  // namespace monta::engine::cpu
