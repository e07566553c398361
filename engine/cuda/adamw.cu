// CUDA AdamW: one fused pass per tensor reads grad, param, m, v and writes param, m, v and (optionally)
// the bf16 copy of the updated param that the next forward uses. Same update order as PyTorch's AdamW.
// adamw_step_many packs many tensors into each launch (the trainer's whole-model step). The moments are f32 or
// bf16 (widened on load, rounded to nearest even on store), as in engine/cpu/adamw.cpp, which gives the same bits.
#include <climits>
#include <cmath>

#include "engine/cuda/common.cuh"
#include "engine/ops/adamw.h"

namespace monta::engine::cuda {

struct AdamWConst {
  float lr, beta1, beta2, eps, decay_mul, step_size, inv_sqrt_bc2, grad_scale;
};

// Moments in storage: f32 as is, bf16 widened on load and rounded to nearest even on store.
static __device__ __forceinline__ float load_moment(const float* p, int64_t i) { return p[i]; }
static __device__ __forceinline__ float load_moment(const bf16* p, int64_t i) { return __bfloat162float(p[i]); }
static __device__ __forceinline__ void store_moment(float* p, int64_t i, float x) { p[i] = x; }
static __device__ __forceinline__ void store_moment(bf16* p, int64_t i, float x) { p[i] = __float2bfloat16_rn(x); }

// One element's update; both kernels call it, so the fused step gives the per-tensor step's bits. Written with
// round-to-nearest intrinsics, which the compiler never contracts into FMAs: otherwise it may fuse differently
// in the two kernels (seen: last-bit differences in decayed tensors), and the CPU (built without contraction)
// would differ. The update uses this step's unrounded moments.
template <class M>
static __device__ __forceinline__ void adamw_element(float* __restrict__ param, M* __restrict__ m,
                                                     M* __restrict__ v, bf16* __restrict__ lowp,
                                                     const float* __restrict__ grad, const AdamWConst& c,
                                                     float decay_mul, int64_t i) {
  const float g = __fmul_rn(grad[i], c.grad_scale);
  const float mi = __fadd_rn(__fmul_rn(c.beta1, load_moment(m, i)), __fmul_rn(1.f - c.beta1, g));
  const float vi = __fadd_rn(__fmul_rn(c.beta2, load_moment(v, i)), __fmul_rn(__fmul_rn(1.f - c.beta2, g), g));
  float p = __fmul_rn(param[i], decay_mul);  // decoupled weight decay: p *= 1 - lr·wd
  p = __fsub_rn(p, __fdiv_rn(__fmul_rn(c.step_size, mi), __fadd_rn(__fmul_rn(sqrtf(vi), c.inv_sqrt_bc2), c.eps)));
  store_moment(m, i, mi);
  store_moment(v, i, vi);
  param[i] = p;
  if (lowp) lowp[i] = __float2bfloat16_rn(p);
}

template <class M>
static __global__ void adamw_kernel(float* __restrict__ param, M* __restrict__ m, M* __restrict__ v,
                                    bf16* __restrict__ lowp, const float* __restrict__ grad, AdamWConst c,
                                    int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    adamw_element(param, m, v, lowp, grad, c, c.decay_mul, i);
}

// The fused step: up to kTensorsPerLaunch tensors per launch, passed by value in the kernel's parameters (about
// 3 KB); tensor t owns blocks [first_block[t], first_block[t+1]), each of kElemsPerBlock elements.
constexpr int kTensorsPerLaunch = 40;
constexpr int kAdamWThreads = 256;
constexpr int64_t kElemsPerBlock = int64_t(kAdamWThreads) * 8;
struct AdamWTable {
  float* param[kTensorsPerLaunch];
  void* m[kTensorsPerLaunch];  // M* of the launch's moment type (one per launch)
  void* v[kTensorsPerLaunch];
  bf16* lowp[kTensorsPerLaunch];
  const float* grad[kTensorsPerLaunch];
  int64_t n[kTensorsPerLaunch];
  float decay_mul[kTensorsPerLaunch];
  int32_t first_block[kTensorsPerLaunch + 1];
  int32_t count;
};

template <class M>
static __global__ void adamw_many_kernel(const __grid_constant__ AdamWTable tab, AdamWConst c) {
  const int32_t b = int32_t(blockIdx.x);
  int t = 0;
  while (t + 1 < tab.count && tab.first_block[t + 1] <= b) ++t;
  const int64_t begin = int64_t(b - tab.first_block[t]) * kElemsPerBlock;
  const int64_t end = begin + kElemsPerBlock < tab.n[t] ? begin + kElemsPerBlock : tab.n[t];
  for (int64_t i = begin + threadIdx.x; i < end; i += kAdamWThreads)
    adamw_element(tab.param[t], static_cast<M*>(tab.m[t]), static_cast<M*>(tab.v[t]), tab.lowp[t], tab.grad[t], c,
                  tab.decay_mul[t], i);
}

static AdamWConst constants(const AdamWArgs& a) {
  MONTA_CHECK(a.step >= 1, "adamw_step: step is 1-based");
  double bc1 = 1.0 - std::pow(a.beta1, double(a.step));
  double bc2 = 1.0 - std::pow(a.beta2, double(a.step));
  return AdamWConst{float(a.lr),
                    float(a.beta1),
                    float(a.beta2),
                    float(a.eps),
                    float(1.0 - a.lr * a.weight_decay),
                    float(a.lr / bc1),
                    float(1.0 / std::sqrt(bc2)),
                    float(a.grad_scale)};
}

static void check_operands(const Tensor& param, const Tensor& m, const Tensor& v, const Tensor& param_lowp,
                           const Tensor& grad) {
  const char* op = "adamw_step";
  need_dtype(param, DType::f32, op, "param");
  need_dtype(m, m.dtype == DType::bf16 ? DType::bf16 : DType::f32, op, "m");
  need_dtype(v, m.dtype, op, "v");
  need_dtype(grad, DType::f32, op, "grad");
  if (!param_lowp.empty()) need_dtype(param_lowp, DType::bf16, op, "param_lowp");
}

void adamw_step_many(std::span<const AdamWEntry> entries, const AdamWArgs& a, Stream s) {
  const AdamWConst c = constants(a);
  AdamWTable tab{};
  int64_t blocks = 0;
  DType moments = DType::f32;  // of the entries in tab
  auto launch = [&] {
    if (tab.count == 0) return;
    tab.first_block[tab.count] = int32_t(blocks);
    if (blocks > 0 && moments == DType::bf16)
      adamw_many_kernel<bf16><<<unsigned(blocks), kAdamWThreads, 0, stream_of(s)>>>(tab, c);
    else if (blocks > 0)
      adamw_many_kernel<float><<<unsigned(blocks), kAdamWThreads, 0, stream_of(s)>>>(tab, c);
    MONTA_LAUNCH_CHECK();
    tab = AdamWTable{};
    blocks = 0;
  };
  for (const AdamWEntry& e : entries) {
    check_operands(e.param, e.m, e.v, e.param_lowp, e.grad);
    const int64_t n = e.param.numel(), nb = (n + kElemsPerBlock - 1) / kElemsPerBlock;
    if (tab.count == kTensorsPerLaunch || blocks + nb > int64_t(INT32_MAX) / 2 || (tab.count && e.m.dtype != moments))
      launch();
    moments = e.m.dtype;
    const int i = tab.count++;
    tab.param[i] = e.param.as<float>();
    tab.m[i] = e.m.data;
    tab.v[i] = e.v.data;
    tab.lowp[i] = e.param_lowp.empty() ? nullptr : e.param_lowp.as<bf16>();
    tab.grad[i] = e.grad.as<float>();
    tab.n[i] = n;
    tab.decay_mul[i] = float(1.0 - a.lr * e.weight_decay);
    tab.first_block[i] = int32_t(blocks);
    blocks += nb;
  }
  launch();
}

void adamw_step(Tensor param, Tensor m, Tensor v, Tensor param_lowp, const Tensor& grad, const AdamWArgs& a,
                Stream s) {
  check_operands(param, m, v, param_lowp, grad);
  const int64_t n = param.numel();
  const AdamWConst c = constants(a);
  if (n == 0) return;
  bf16* lowp = param_lowp.empty() ? nullptr : param_lowp.as<bf16>();
  if (m.dtype == DType::bf16)
    adamw_kernel<<<grid_1d(n, 256, 132 * 16), 256, 0, stream_of(s)>>>(param.as<float>(), m.as<bf16>(), v.as<bf16>(),
                                                                       lowp, grad.as<float>(), c, n);
  else
    adamw_kernel<<<grid_1d(n, 256, 132 * 16), 256, 0, stream_of(s)>>>(param.as<float>(), m.as<float>(), v.as<float>(),
                                                                       lowp, grad.as<float>(), c, n);
  MONTA_LAUNCH_CHECK();
}

}  // namespace monta::engine::cuda
