// CUDA SwiGLU gate, elementwise: out = silu(gate)·up, and its gradients.
#include "engine/cuda/common.cuh"
#include "engine/ops/swiglu.h"

namespace monta::engine::cuda {

template <class T>
static __device__ __forceinline__ float swiglu_fwd_elem(float g, float u) {
  float sg = 1.f / (1.f + expf(-g));
  return g * sg * u;
}
static __device__ __forceinline__ void swiglu_bwd_elem(float d, float g, float u, float& dg, float& du) {
  float sg = 1.f / (1.f + expf(-g));
  dg = d * u * sg * (1.f + g * (1.f - sg));
  du = d * g * sg;
}

// Grid-stride over 16-byte vectors when VEC (all pointers 16-byte aligned); the last n % V elements,
// and everything when !VEC, go element by element. Same f32 math per element either way.
template <class T, bool VEC>
static __global__ void swiglu_forward_kernel(T* __restrict__ out, const T* __restrict__ gate, const T* __restrict__ up,
                                             int64_t n) {
  constexpr int V = Vec16<T>::n;
  int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if constexpr (VEC) {
    int64_t nv = n / V;
    for (int64_t v = tid; v < nv; v += stride) {
      float g[V], u[V], o[V];
      load16(gate + v * V, g);
      load16(up + v * V, u);
#pragma unroll
      for (int j = 0; j < V; ++j) o[j] = swiglu_fwd_elem<T>(g[j], u[j]);
      store16(out + v * V, o);
    }
    done = nv * V;
  }
  for (int64_t i = done + tid; i < n; i += stride) out[i] = from_f<T>(swiglu_fwd_elem<T>(to_f(gate[i]), to_f(up[i])));
}

template <class T, bool VEC>
static __global__ void swiglu_backward_kernel(T* __restrict__ dgate, T* __restrict__ dup, const T* __restrict__ dout,
                                              const T* __restrict__ gate, const T* __restrict__ up, int64_t n) {
  constexpr int V = Vec16<T>::n;
  int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, stride = int64_t(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if constexpr (VEC) {
    int64_t nv = n / V;
    for (int64_t v = tid; v < nv; v += stride) {
      float g[V], u[V], d[V], dg[V], du[V];
      load16(gate + v * V, g);
      load16(up + v * V, u);
      load16(dout + v * V, d);
#pragma unroll
      for (int j = 0; j < V; ++j) swiglu_bwd_elem(d[j], g[j], u[j], dg[j], du[j]);
      store16(dgate + v * V, dg);
      store16(dup + v * V, du);
    }
    done = nv * V;
  }
  for (int64_t i = done + tid; i < n; i += stride) {
    float dg, du;
    swiglu_bwd_elem(to_f(dout[i]), to_f(gate[i]), to_f(up[i]), dg, du);
    dgate[i] = from_f<T>(dg);
    dup[i] = from_f<T>(du);
  }
}

// Vector path: one 16-byte vector per thread per iteration; grid capped so each thread does a few.
template <class T>
static unsigned swiglu_grid(int64_t n, bool vec) {
  int64_t units = vec ? (n + Vec16<T>::n - 1) / Vec16<T>::n : n;
  return grid_1d(units, 256, 132 * 64);
}

void swiglu_forward(Tensor out, const Tensor& gate, const Tensor& up, Stream s) {
  const char* op = "swiglu_forward";
  need_float(out, op, "out");
  need_float(gate, op, "gate");
  need_float(up, op, "up");
  MONTA_CHECK(out.dtype == gate.dtype && up.dtype == gate.dtype, "swiglu_forward: dtypes must match");
  int64_t n = out.numel();
  if (n == 0) return;
  bool vec = aligned16(out.data) && aligned16(gate.data) && aligned16(up.data);
  MONTA_FLOAT_TYPES(out.dtype, T, {
    unsigned g = swiglu_grid<T>(n, vec);
    if (vec)
      swiglu_forward_kernel<T, true><<<g, 256, 0, stream_of(s)>>>(out.as<T>(), gate.as<T>(), up.as<T>(), n);
    else
      swiglu_forward_kernel<T, false><<<g, 256, 0, stream_of(s)>>>(out.as<T>(), gate.as<T>(), up.as<T>(), n);
  });
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
  if (n == 0) return;
  bool vec = aligned16(dgate.data) && aligned16(dup.data) && aligned16(dout.data) && aligned16(gate.data) &&
             aligned16(up.data);
  MONTA_FLOAT_TYPES(gate.dtype, T, {
    unsigned g = swiglu_grid<T>(n, vec);
    if (vec)
      swiglu_backward_kernel<T, true><<<g, 256, 0, stream_of(s)>>>(dgate.as<T>(), dup.as<T>(), dout.as<T>(),
                                                                  gate.as<T>(), up.as<T>(), n);
    else
      swiglu_backward_kernel<T, false><<<g, 256, 0, stream_of(s)>>>(dgate.as<T>(), dup.as<T>(), dout.as<T>(),
                                                                   gate.as<T>(), up.as<T>(), n);
  });
  MONTA_LAUNCH_CHECK();
}

}  // namespace monta::engine::cuda
