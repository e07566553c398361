// CUDA token permutation between token order (N, H) and the expert buffer (E, C, H). Every kept
// (token, choice) owns a distinct slot, so scatters never collide; gathers sum a token's K choices in
// choice order. No atomics anywhere: results are bit-identical run to run.
#include "engine/cuda/common.cuh"
#include "engine/ops/moe_permute.h"

#include <algorithm>

namespace monta::engine::cuda {

// buf[e, slot] = x[n] for kept (n, k); buf was zeroed first.
template <class T>
static __global__ void dispatch_forward_kernel(T* __restrict__ buf, const T* __restrict__ x,
                                               const int32_t* __restrict__ idx, const int32_t* __restrict__ slot,
                                               int64_t N, int K, int64_t C, int64_t H) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * K * H;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t nk = i / H, h = i - nk * H;
    int32_t sl = slot[nk];
    if (sl < 0) continue;
    buf[(int64_t(idx[nk]) * C + sl) * H + h] = x[(nk / K) * H + h];
  }
}

// dx[n] = Σ_k dbuf[e_k, slot_k] over kept choices.
template <class T>
static __global__ void dispatch_backward_kernel(T* __restrict__ dx, const T* __restrict__ dbuf,
                                                const int32_t* __restrict__ idx, const int32_t* __restrict__ slot,
                                                int64_t N, int K, int64_t C, int64_t H) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * H; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n = i / H, h = i - n * H;
    float acc = 0.f;
    for (int k = 0; k < K; ++k) {
      int32_t sl = slot[n * K + k];
      if (sl >= 0) acc += to_f(dbuf[(int64_t(idx[n * K + k]) * C + sl) * H + h]);
    }
    dx[i] = from_f<T>(acc);
  }
}

// y[n] = res[n] + Σ_k w[n, k] · ebuf[e_k, slot_k] over kept choices (res may be null: 0).
template <class T>
static __global__ void combine_forward_kernel(T* __restrict__ y, const T* __restrict__ ebuf, const void* w, bool w_bf,
                                              const int32_t* __restrict__ idx, const int32_t* __restrict__ slot,
                                              const T* res, int64_t N, int K, int64_t C, int64_t H) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * H; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n = i / H, h = i - n * H;
    float acc = res ? to_f(res[i]) : 0.f;
    for (int k = 0; k < K; ++k) {
      int32_t sl = slot[n * K + k];
      if (sl >= 0) acc += ld(w, n * K + k, w_bf) * to_f(ebuf[(int64_t(idx[n * K + k]) * C + sl) * H + h]);
    }
    y[i] = from_f<T>(acc);
  }
}

// debuf[e_k, slot_k] = w[n, k] · dy[n] for kept choices; debuf was zeroed first.
template <class T>
static __global__ void combine_backward_debuf_kernel(T* __restrict__ debuf, const T* __restrict__ dy, const void* w,
                                                     bool w_bf, const int32_t* __restrict__ idx,
                                                     const int32_t* __restrict__ slot, int64_t N, int K, int64_t C,
                                                     int64_t H) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * K * H;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t nk = i / H, h = i - nk * H;
    int32_t sl = slot[nk];
    if (sl < 0) continue;
    debuf[(int64_t(idx[nk]) * C + sl) * H + h] = from_f<T>(ld(w, nk, w_bf) * to_f(dy[(nk / K) * H + h]));
  }
}

// ---- 16-byte vector paths (buffers 16-byte aligned, H % V == 0): same per-element f32 math and the same
// k order as the kernels above, so the bits match them. ----

// One block per kept (n, k) row, grid-stride over rows: buf[e, slot] = x[n]. The buffer was zeroed first.
template <class T>
static __global__ void scatter_rows_vec_kernel(T* __restrict__ buf, const T* __restrict__ src,
                                               const int32_t* __restrict__ idx, const int32_t* __restrict__ slot,
                                               int64_t NK, int K, int64_t C, int64_t H) {
  constexpr int V = Vec16<T>::n;
  for (int64_t nk = blockIdx.x; nk < NK; nk += gridDim.x) {
    int32_t sl = slot[nk];
    if (sl < 0) continue;
    T* dr = buf + (int64_t(idx[nk]) * C + sl) * H;
    const T* sr = src + (nk / K) * H;
    for (int64_t h = threadIdx.x * int64_t(V); h < H; h += int64_t(blockDim.x) * V)
      *reinterpret_cast<uint4*>(dr + h) = *reinterpret_cast<const uint4*>(sr + h);
  }
}

// The combine backward in one pass over the kept rows (block per (n, k) row, grid-stride): debuf[e, slot] =
// w[n,k]·dy[n] and dweight[n,k] = Σ_h dy[n,h]·ebuf[e, slot, h] (block sum in a fixed order: the same bits every
// run, though not those of the scalar dweight kernel, which sums in another order). Dropped rows get dweight 0.
template <class T>
static __global__ void combine_backward_vec_kernel(T* __restrict__ debuf, void* dweight, bool dw_bf,
                                                   const T* __restrict__ dy, const T* __restrict__ ebuf, const void* w,
                                                   bool w_bf, const int32_t* __restrict__ idx,
                                                   const int32_t* __restrict__ slot, int64_t NK, int K, int64_t C,
                                                   int64_t H) {
  constexpr int V = Vec16<T>::n;
  __shared__ float red[32];
  for (int64_t nk = blockIdx.x; nk < NK; nk += gridDim.x) {
    const int32_t sl = slot[nk];
    float acc = 0.f;
    if (sl >= 0) {
      const int64_t row = (int64_t(idx[nk]) * C + sl) * H;
      const T* sr = dy + (nk / K) * H;
      const float wk = ld(w, nk, w_bf);
      for (int64_t h = threadIdx.x * int64_t(V); h < H; h += int64_t(blockDim.x) * V) {
        float v[V], e[V];
        load16(sr + h, v);
        if (dweight) {
          load16(ebuf + row + h, e);
#pragma unroll
          for (int j = 0; j < V; ++j) acc += v[j] * e[j];
        }
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = wk * v[j];
        store16(debuf + row + h, v);
      }
    }
    if (dweight) {
      acc = block_sum(acc, red);
      if (threadIdx.x == 0) st(dweight, nk, dw_bf, acc);
    }
  }
}

// Grid-stride over N·H/V vectors of the token-order output: out[n] = res[n] + Σ_k (w[n,k]·) buf[e_k, slot_k] in k
// order (res may be null: 0).
template <class T, bool WEIGHTED>
static __global__ void gather_rows_vec_kernel(T* __restrict__ out, const T* __restrict__ buf, const void* w, bool w_bf,
                                              const int32_t* __restrict__ idx, const int32_t* __restrict__ slot,
                                              const T* res, int64_t N, int K, int64_t C, int64_t H) {
  constexpr int V = Vec16<T>::n;
  int64_t hv = H / V, total = N * hv;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t n = i / hv, h = (i - n * hv) * V;
    float acc[V];
    if (res) {
      load16(res + n * H + h, acc);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) acc[j] = 0.f;
    }
    for (int k = 0; k < K; ++k) {
      int32_t sl = slot[n * K + k];
      if (sl < 0) continue;
      float v[V];
      load16(buf + (int64_t(idx[n * K + k]) * C + sl) * H + h, v);
      if constexpr (WEIGHTED) {
        float wk = ld(w, n * K + k, w_bf);
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] += wk * v[j];
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] += v[j];
      }
    }
    store16(out + n * H + h, acc);
  }
}

// One block per (n, k): dweight[n, k] = dy[n] · ebuf[e_k, slot_k] (0 when dropped).
template <class T>
static __global__ void combine_backward_dweight_kernel(void* dweight, bool dw_bf, const T* __restrict__ dy,
                                                       const T* __restrict__ ebuf, const int32_t* __restrict__ idx,
                                                       const int32_t* __restrict__ slot, int K, int64_t C,
                                                       int64_t H) {
  __shared__ float red[32];
  int64_t nk = blockIdx.x;
  int32_t sl = slot[nk];
  float acc = 0.f;
  if (sl >= 0) {
    const T* er = ebuf + (int64_t(idx[nk]) * C + sl) * H;
    const T* dr = dy + (nk / K) * H;
    for (int64_t h = threadIdx.x; h < H; h += blockDim.x) acc += to_f(dr[h]) * to_f(er[h]);
  }
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) st(dweight, nk, dw_bf, acc);
}

struct PermuteDims {
  int64_t N, K, E, C, H;
};

static PermuteDims permute_dims(const char* op, const Tensor& tokens, const Tensor& buf, const Tensor& expert_idx,
                                const Tensor& slot) {
  need_float(tokens, op, "token-order tensor");
  need_float(buf, op, "expert buffer");
  need_dtype(expert_idx, DType::i32, op, "expert_idx");
  need_dtype(slot, DType::i32, op, "slot");
  MONTA_CHECK(tokens.dtype == buf.dtype, std::string(op) + ": token and buffer tensors must share a dtype");
  return {expert_idx.dim(0), expert_idx.dim(1), buf.dim(0), buf.dim(1), buf.dim(2)};
}

void moe_dispatch_forward(Tensor buf, const Tensor& x, const Tensor& expert_idx, const Tensor& slot, Stream s) {
  PermuteDims d = permute_dims("moe_dispatch_forward", x, buf, expert_idx, slot);
  cudaStream_t st = stream_of(s);
  CUDA_CHECK(cudaMemsetAsync(buf.data, 0, buf.bytes(), st));
  if (d.N * d.K * d.H == 0) return;
  bool vec = aligned16(buf.data) && aligned16(x.data);
  MONTA_FLOAT_TYPES(x.dtype, T, {
    if (vec && d.H % Vec16<T>::n == 0)
      scatter_rows_vec_kernel<T><<<unsigned(std::min<int64_t>(d.N * d.K, 1 << 20)), 256, 0, st>>>(
          buf.as<T>(), x.as<T>(), expert_idx.as<int32_t>(), slot.as<int32_t>(), d.N * d.K, int(d.K), d.C, d.H);
    else
      dispatch_forward_kernel<T><<<grid_1d(d.N * d.K * d.H, 256), 256, 0, st>>>(
          buf.as<T>(), x.as<T>(), expert_idx.as<int32_t>(), slot.as<int32_t>(), d.N, int(d.K), d.C, d.H);
  });
  MONTA_LAUNCH_CHECK();
}

void moe_dispatch_backward(Tensor dx, const Tensor& dbuf, const Tensor& expert_idx, const Tensor& slot, Stream s) {
  PermuteDims d = permute_dims("moe_dispatch_backward", dx, dbuf, expert_idx, slot);
  if (d.N * d.H == 0) return;
  bool vec = aligned16(dx.data) && aligned16(dbuf.data);
  MONTA_FLOAT_TYPES(dx.dtype, T, {
    if (vec && d.H % Vec16<T>::n == 0)
      gather_rows_vec_kernel<T, false><<<grid_1d(d.N * d.H / Vec16<T>::n, 256, 132 * 64), 256, 0, stream_of(s)>>>(
          dx.as<T>(), dbuf.as<T>(), nullptr, false, expert_idx.as<int32_t>(), slot.as<int32_t>(), nullptr, d.N,
          int(d.K), d.C, d.H);
    else
      dispatch_backward_kernel<T><<<grid_1d(d.N * d.H, 256), 256, 0, stream_of(s)>>>(
          dx.as<T>(), dbuf.as<T>(), expert_idx.as<int32_t>(), slot.as<int32_t>(), d.N, int(d.K), d.C, d.H);
  });
  MONTA_LAUNCH_CHECK();
}

void moe_combine_forward(Tensor y, const Tensor& ebuf, const Tensor& weight, const Tensor& expert_idx,
                         const Tensor& slot, const Tensor& residual, Stream s) {
  const char* op = "moe_combine_forward";
  PermuteDims d = permute_dims(op, y, ebuf, expert_idx, slot);
  need_float(weight, op, "weight");
  if (!residual.empty())
    MONTA_CHECK(residual.device == Device::cuda && residual.dtype == y.dtype,
                std::string(op) + ": residual " + residual.str() + " must be a CUDA tensor of y's dtype " + y.str());
  if (d.N * d.H == 0) return;
  bool vec = aligned16(y.data) && aligned16(ebuf.data) && (residual.empty() || aligned16(residual.data));
  MONTA_FLOAT_TYPES(y.dtype, T, {
    const T* res = residual.empty() ? nullptr : residual.as<T>();
    if (vec && d.H % Vec16<T>::n == 0)
      gather_rows_vec_kernel<T, true><<<grid_1d(d.N * d.H / Vec16<T>::n, 256, 132 * 64), 256, 0, stream_of(s)>>>(
          y.as<T>(), ebuf.as<T>(), weight.data, is_bf16(weight), expert_idx.as<int32_t>(), slot.as<int32_t>(), res,
          d.N, int(d.K), d.C, d.H);
    else
      combine_forward_kernel<T><<<grid_1d(d.N * d.H, 256), 256, 0, stream_of(s)>>>(
          y.as<T>(), ebuf.as<T>(), weight.data, is_bf16(weight), expert_idx.as<int32_t>(), slot.as<int32_t>(), res,
          d.N, int(d.K), d.C, d.H);
  });
  MONTA_LAUNCH_CHECK();
}

void moe_combine_backward(Tensor debuf, Tensor dweight, const Tensor& dy, const Tensor& ebuf, const Tensor& weight,
                          const Tensor& expert_idx, const Tensor& slot, Stream s) {
  const char* op = "moe_combine_backward";
  PermuteDims d = permute_dims(op, dy, ebuf, expert_idx, slot);
  need_float(debuf, op, "debuf");
  MONTA_CHECK(debuf.dtype == ebuf.dtype, "moe_combine_backward: debuf must share ebuf's dtype");
  need_float(weight, op, "weight");
  cudaStream_t st = stream_of(s);
  CUDA_CHECK(cudaMemsetAsync(debuf.data, 0, debuf.bytes(), st));
  const bool want_dw = !dweight.empty() && d.N * d.K > 0;
  if (want_dw) {
    need_float(dweight, op, "dweight");
  }
  if (d.N * d.K * d.H == 0) {
    if (want_dw) CUDA_CHECK(cudaMemsetAsync(dweight.data, 0, dweight.bytes(), st));
    return;
  }
  const bool vec = aligned16(debuf.data) && aligned16(dy.data) && aligned16(ebuf.data);
  MONTA_FLOAT_TYPES(dy.dtype, T, {
    if (vec && d.H % Vec16<T>::n == 0) {
      combine_backward_vec_kernel<T><<<unsigned(std::min<int64_t>(d.N * d.K, 1 << 20)), 256, 0, st>>>(
          debuf.as<T>(), want_dw ? dweight.data : nullptr, want_dw && is_bf16(dweight), dy.as<T>(), ebuf.as<T>(),
          weight.data, is_bf16(weight), expert_idx.as<int32_t>(), slot.as<int32_t>(), d.N * d.K, int(d.K), d.C, d.H);
      MONTA_LAUNCH_CHECK();
    } else {
      combine_backward_debuf_kernel<T><<<grid_1d(d.N * d.K * d.H, 256), 256, 0, st>>>(
          debuf.as<T>(), dy.as<T>(), weight.data, is_bf16(weight), expert_idx.as<int32_t>(), slot.as<int32_t>(), d.N,
          int(d.K), d.C, d.H);
      MONTA_LAUNCH_CHECK();
      if (want_dw) {
        combine_backward_dweight_kernel<T><<<unsigned(d.N * d.K), 128, 0, st>>>(
            dweight.data, is_bf16(dweight), dy.as<T>(), ebuf.as<T>(), expert_idx.as<int32_t>(), slot.as<int32_t>(),
            int(d.K), d.C, d.H);
        MONTA_LAUNCH_CHECK();
      }
    }
  });
}

}  // namespace monta::engine::cuda
