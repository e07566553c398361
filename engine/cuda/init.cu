// CUDA weight initialisation (engine/ops/init.h): one thread per element, the arithmetic of engine/rng_math.h
// compiled with --fmad=false (engine/CMakeLists.txt), so the bits equal the CPU's.
#include "engine/cuda/common.cuh"
#include "engine/ops/init.h"
#include "engine/rng_math.h"

namespace monta::engine::cuda {

struct InitShape {
  int nd;
  int64_t local[4], full[4], offset[4];
};

static __global__ void init_normal_kernel(float* out, InitShape sh, uint64_t seed, uint64_t stream, double std_,
                                          int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t rem = i, flat = 0, mul = 1;
    for (int d = sh.nd - 1; d >= 0; --d) {
      const int64_t idx = rem % sh.local[d];
      rem /= sh.local[d];
      flat += (idx + sh.offset[d]) * mul;
      mul *= sh.full[d];
    }
    out[i] = std_ == 0 ? 1.0f : float(std_ * rngmath::normal(seed, stream, uint64_t(flat)));
  }
}

void init_normal(Tensor out, const InitNormalArgs& a, Stream s) {
  need_cuda(out, "init_normal", "out");
  MONTA_CHECK(out.dtype == DType::f32, "init_normal: out must be f32 on CUDA, got " + out.str());
  InitShape sh{out.ndim, {}, {}, {}};
  for (int d = 0; d < out.ndim; ++d) {
    sh.local[d] = out.shape[size_t(d)];
    sh.full[d] = a.full[size_t(d)];
    sh.offset[d] = a.offset[size_t(d)];
  }
  const int64_t n = out.numel();
  init_normal_kernel<<<grid_1d(n, 256, 132 * 32), 256, 0, stream_of(s)>>>(static_cast<float*>(out.data), sh, a.seed,
                                                                           a.stream, a.std, n);
  MONTA_LAUNCH_CHECK();
}

}  // namespace monta::engine::cuda
