// CUDA SwiGLU gate, elementwise: out = silu(gate)·up, and its gradients.
#include "engine/cuda/common.cuh"
#include "engine/ops/swiglu.h"

namespace monta::engine::cuda {

template <class T>
static __global__ void swiglu_forward_kernel(T* __restrict__ out, const T* __restrict__ gate, const T* __restrict__ up,
                                             int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float g = to_f(gate[i]);
    float sg = 1.f / (1.f + expf(-g));
    out[i] = from_f<T>(g * sg * to_f(up[i]));
  }
}

template <class T>
static __global__ void swiglu_backward_kernel(T* __restrict__ dgate, T* __restrict__ dup, const T* __restrict__ dout,
                                              const T* __restrict__ gate, const T* __restrict__ up, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float g = to_f(gate[i]), u = to_f(up[i]), d = to_f(dout[i]);
    float sg = 1.f / (1.f + expf(-g));
    dgate[i] = from_f<T>(d * u * sg * (1.f + g * (1.f - sg)));
    dup[i] = from_f<T>(d * g * sg);
  }
}

void swiglu_forward(Tensor out, const Tensor& gate, const Tensor& up, Stream s) {
  const char* op = "swiglu_forward";
  need_float(out, op, "out");
  need_float(gate, op, "gate");
  need_float(up, op, "up");
  MONTA_CHECK(out.dtype == gate.dtype && up.dtype == gate.dtype, "swiglu_forward: dtypes must match");
  int64_t n = out.numel();
  need_numel(gate, n, op, "gate");
  need_numel(up, n, op, "up");
  if (n == 0) return;
  MONTA_FLOAT_TYPES(out.dtype, T, swiglu_forward_kernel<T><<<grid_1d(n, 256), 256, 0, stream_of(s)>>>(
                                      out.as<T>(), gate.as<T>(), up.as<T>(), n));
  MONTA_LAUNCH_CHECK();
}

void swiglu_backward(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up, Stream s) {
  const char* op = "swiglu_backward";
  need_float(dgate, op, "dgate");
  need_float(dup, op, "dup");
  need_float(dout, op, "dout");
  need_float(gate, op, "gate");
  need_float(up, op, "up");
  MONTA_CHECK(dgate.dtype == gate.dtype && dup.dtype == gate.dtype && dout.dtype == gate.dtype &&
                  up.dtype == gate.dtype,
              "swiglu_backward: dtypes must match");
  int64_t n = gate.numel();
  need_numel(dgate, n, op, "dgate");
  need_numel(dup, n, op, "dup");
  need_numel(dout, n, op, "dout");
  need_numel(up, n, op, "up");
  if (n == 0) return;
  MONTA_FLOAT_TYPES(gate.dtype, T, swiglu_backward_kernel<T><<<grid_1d(n, 256), 256, 0, stream_of(s)>>>(
                                       dgate.as<T>(), dup.as<T>(), dout.as<T>(), gate.as<T>(), up.as<T>(), n));
  MONTA_LAUNCH_CHECK();
}

}  // namespace monta::engine::cuda
