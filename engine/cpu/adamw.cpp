// CPU AdamW on f32 (or f64) master weights, in the same order as the CUDA kernel and PyTorch: scale the
// gradient, update the moments, decay the weight by (1 − lr·wd), step by the bias-corrected ratio, then
// write the optional bf16 copy that the next forward reads. Compiled without FMA contraction
// (engine/CMakeLists.txt) so f32 results, bf16 moments included, equal the CUDA kernel's bit for bit. This is also
// the host optimizer of train.optimizer_offload: the fused step splits its elements over the host's cores and
// the element loop vectorises (AVX2: IEEE sqrt and division, bf16 rounding in integer lanes).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "engine/check.h"
#include "engine/cpu/check_args.h"
#include "engine/ops/adamw.h"
#include "engine/settings.h"

namespace monta::engine::cpu {
namespace {

// Moments in storage: f32/f64 as they are, bf16 widened on load and rounded to nearest even on store (the CUDA
// kernel's __float2bfloat16_rn). The update uses the unrounded moments of this step, as the CUDA kernel does.
template <class T> inline T load(const T* p, int64_t i) { return p[i]; }
inline float load(const bf16_t* p, int64_t i) { return bf16_to_float(p[i]); }
template <class T> inline void store(T* p, int64_t i, T x) { p[i] = x; }
inline void store(bf16_t* p, int64_t i, float x) { p[i] = float_to_bf16(x); }

template <class T> struct Consts {
  T b1, b2, eps, gs, decay, step_size, inv_sqrt_bc2;
};

template <class T> Consts<T> consts(const AdamWArgs& a, double weight_decay) {
  return {T(a.beta1),
          T(a.beta2),
          T(a.eps),
          T(a.grad_scale),
          T(1.0 - a.lr * weight_decay),
          T(a.lr / (1.0 - std::pow(a.beta1, double(a.step)))),
          T(1.0 / std::sqrt(1.0 - std::pow(a.beta2, double(a.step))))};
}

// Elements [begin, end) of one tensor.
template <class T, class M>
void update(T* __restrict__ p, M* __restrict__ mm, M* __restrict__ vv, bf16_t* __restrict__ lowp,
            const T* __restrict__ g, const Consts<T>& c, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const T gi = g[i] * c.gs;
    const T mi = c.b1 * load(mm, i) + (T(1) - c.b1) * gi;
    const T vi = c.b2 * load(vv, i) + (T(1) - c.b2) * gi * gi;
    store(mm, i, mi);
    store(vv, i, vi);
    p[i] = p[i] * c.decay - c.step_size * mi / (std::sqrt(vi) * c.inv_sqrt_bc2 + c.eps);
  }
  if (lowp)
    for (int64_t i = begin; i < end; ++i) lowp[i] = float_to_bf16(float(p[i]));
}

void update_range(const AdamWEntry& e, const AdamWArgs& a, int64_t begin, int64_t end) {
  bf16_t* lowp = e.param_lowp.empty() ? nullptr : e.param_lowp.as<bf16_t>();
  if (e.param.dtype == DType::f64) {
    update(e.param.as<double>(), e.m.as<double>(), e.v.as<double>(), lowp, e.grad.as<double>(),
           consts<double>(a, e.weight_decay), begin, end);
  } else if (e.m.dtype == DType::bf16) {
    update(e.param.as<float>(), e.m.as<bf16_t>(), e.v.as<bf16_t>(), lowp, e.grad.as<float>(),
           consts<float>(a, e.weight_decay), begin, end);
  } else {
    update(e.param.as<float>(), e.m.as<float>(), e.v.as<float>(), lowp, e.grad.as<float>(),
           consts<float>(a, e.weight_decay), begin, end);
  }
}

void check_operands(const AdamWEntry& e, const AdamWArgs& a) {
  const char* op = "adamw_step";
  MONTA_CHECK(e.param.dtype == DType::f32 || e.param.dtype == DType::f64,
              std::string(op) + ": param must be f32 or f64, got " + e.param.str());
  need(op, "param", e.param, e.param.dtype);
  const DType moments = e.param.dtype == DType::f32 && e.m.dtype == DType::bf16 ? DType::bf16 : e.param.dtype;
  need(op, "m", e.m, moments);
  need(op, "v", e.v, moments);
  need(op, "grad", e.grad, e.param.dtype);
  if (!e.param_lowp.empty()) need(op, "param_lowp", e.param_lowp, DType::bf16);
  MONTA_CHECK(a.step >= 1, std::string(op) + ": step is 1-based, got " + std::to_string(a.step));
}

}  // namespace

void adamw_step(Tensor param, Tensor m, Tensor v, Tensor param_lowp, const Tensor& grad, const AdamWArgs& a, Stream s) {
  const AdamWEntry e{param, m, v, param_lowp, grad, a.weight_decay};
  cpu::adamw_step_many(std::span<const AdamWEntry>(&e, 1), a, s);
}

// Every entry's elements as one index space cut into equal contiguous pieces, one per thread (pieces below 64 K
// elements are not worth a thread); each element is computed exactly as adamw_step would, so the thread count
// never changes a bit.
void adamw_step_many(std::span<const AdamWEntry> entries, const AdamWArgs& a, Stream) {
  int64_t total = 0;
  for (const AdamWEntry& e : entries) {
    check_operands(e, a);
    total += e.param.numel();
  }
  const int64_t cores = settings().host_threads > 0 ? settings().host_threads
                                                     : int64_t(std::max(1u, std::thread::hardware_concurrency()));
  const int64_t threads = std::clamp<int64_t>(total / (1 << 16), 1, cores);
  auto work = [&](int64_t lo, int64_t hi) {  // global element range [lo, hi)
    int64_t base = 0;
    for (const AdamWEntry& e : entries) {
      const int64_t n = e.param.numel();
      const int64_t b = std::max<int64_t>(lo - base, 0), en = std::min<int64_t>(hi - base, n);
      if (b < en) update_range(e, a, b, en);
      base += n;
      if (base >= hi) break;
    }
  };
  std::vector<std::thread> pool;
  for (int64_t k = 0; k + 1 < threads; ++k) pool.emplace_back(work, total * k / threads, total * (k + 1) / threads);
  work(total * (threads - 1) / threads, total);
  for (auto& t : pool) t.join();
}

}  // namespace monta::engine::cpu
