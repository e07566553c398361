// CUDA AdamW: one fused pass per tensor reads grad, param, m, v and writes param, m, v and (optionally)
// the bf16 copy of the updated param that the next forward uses. Same update order as PyTorch's AdamW.
#include <cmath>

#include "engine/cuda/common.cuh"
#include "engine/ops/adamw.h"

namespace monta::engine::cuda {

struct AdamWConst {
  float lr, beta1, beta2, eps, decay_mul, step_size, inv_sqrt_bc2, grad_scale;
};

static __global__ void adamw_kernel(float* __restrict__ param, float* __restrict__ m, float* __restrict__ v,
                                    bf16* __restrict__ lowp, const float* __restrict__ grad, AdamWConst c,
                                    int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float g = grad[i] * c.grad_scale;
    float mi = c.beta1 * m[i] + (1.f - c.beta1) * g;
    float vi = c.beta2 * v[i] + (1.f - c.beta2) * g * g;
    float p = param[i] * c.decay_mul;  // decoupled weight decay: p *= 1 - lr·wd
    p -= c.step_size * mi / (sqrtf(vi) * c.inv_sqrt_bc2 + c.eps);
    m[i] = mi;
    v[i] = vi;
    param[i] = p;
    if (lowp) lowp[i] = __float2bfloat16_rn(p);
  }
}

void adamw_step(Tensor param, Tensor m, Tensor v, Tensor param_lowp, const Tensor& grad, const AdamWArgs& a,
                Stream s) {
  const char* op = "adamw_step";
  need_dtype(param, DType::f32, op, "param");
  need_dtype(m, DType::f32, op, "m");
  need_dtype(v, DType::f32, op, "v");
  need_dtype(grad, DType::f32, op, "grad");
  int64_t n = param.numel();
  need_numel(m, n, op, "m");
  need_numel(v, n, op, "v");
  need_numel(grad, n, op, "grad");
  if (!param_lowp.empty()) {
    need_dtype(param_lowp, DType::bf16, op, "param_lowp");
    need_numel(param_lowp, n, op, "param_lowp");
  }
  MONTA_CHECK(a.step >= 1, "adamw_step: step is 1-based");
  double bc1 = 1.0 - std::pow(a.beta1, double(a.step));
  double bc2 = 1.0 - std::pow(a.beta2, double(a.step));
  AdamWConst c{float(a.lr),
               float(a.beta1),
               float(a.beta2),
               float(a.eps),
               float(1.0 - a.lr * a.weight_decay),
               float(a.lr / bc1),
               float(1.0 / std::sqrt(bc2)),
               float(a.grad_scale)};
  adamw_kernel<<<grid_1d(n, 256, 132 * 16), 256, 0, stream_of(s)>>>(
      param.as<float>(), m.as<float>(), v.as<float>(), param_lowp.empty() ? nullptr : param_lowp.as<bf16>(),
      grad.as<float>(), c, n);
  MONTA_LAUNCH_CHECK();
}

}  // namespace monta::engine::cuda
