// CPU weight initialisation (engine/ops/init.h): the elements split over the host's cores, each computed by the
// same arithmetic as the CUDA kernel (compiled without FMA contraction, engine/CMakeLists.txt).
#include <algorithm>
#include <thread>
#include <vector>

#include "engine/cpu/check_args.h"
#include "engine/ops/init.h"
#include "engine/rng_math.h"

namespace monta::engine::cpu {

template <class T>
static void init_range(T* out, const Tensor& t, const InitNormalArgs& a, int64_t begin, int64_t end) {
  const int nd = t.ndim;
  for (int64_t i = begin; i < end; ++i) {
    // Local flat index -> local multi-index -> logical flat index.
    int64_t rem = i, flat = 0, mul = 1;
    for (int d = nd - 1; d >= 0; --d) {
      const int64_t idx = rem % t.shape[size_t(d)];
      rem /= t.shape[size_t(d)];
      flat += (idx + a.offset[size_t(d)]) * mul;
      mul *= a.full[size_t(d)];
    }
    out[i] = a.std == 0 ? T(1) : T(a.std * rngmath::normal(a.seed, a.stream, uint64_t(flat)));
  }
}

void init_normal(Tensor out, const InitNormalArgs& a, Stream) {
  MONTA_CHECK(out.device == Device::cpu && (out.dtype == DType::f32 || out.dtype == DType::f64),
              "init_normal: out must be a CPU f32 or f64 tensor, got " + out.str());
  const int64_t n = out.numel();
  const int64_t threads = std::clamp<int64_t>(n / (1 << 16), 1, std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (int64_t k = 0; k < threads; ++k) {
    const int64_t b = n * k / threads, e = n * (k + 1) / threads;
    auto work = [&, b, e] {
      if (out.dtype == DType::f32)
        init_range(static_cast<float*>(out.data), out, a, b, e);
      else
        init_range(static_cast<double*>(out.data), out, a, b, e);
    };
    if (k + 1 == threads)
      work();
    else
      pool.emplace_back(work);
  }
  for (auto& t : pool) t.join();
}

}  // namespace monta::engine::cpu
