// CUDA causal GQA attention, flash-attention style, written for correctness first (CUDA cores, f32 math):
//  - forward: a block owns 64 query rows of one (b, head); 4 threads per row, each holding a quarter of
//    the head dim of q and of the output accumulator; K/V tiles of 32 rows are staged in shared memory as
//    f32; online softmax in the log2 domain; writes out and lse = log Σ exp(s) (natural log).
//  - backward, deterministic and without atomics, in two kernels that recompute P from lse:
//    dq: a block owns 32 query rows of one (b, head) and walks the KV tiles up to the diagonal;
//    dk/dv: a block owns 32 KV rows of one (b, KV head) and walks every query head of its group and
//    every query tile from the diagonal on, so the A/G heads sharing a KV head add in a fixed order.
//    D_i = dO_i · O_i is recomputed where it is needed (no scratch buffer).
// bf16 with head dim 64 or 128 goes to cuDNN's fused flash attention instead (attention_cudnn.cu) unless
// engine::settings().attention says handwritten (MONTA_ATTENTION=flash); these kernels remain the f32 path and the
// fallback.
// Head dims 32, 64, 96, 128 (templates; a thread owns D / (4·threads-per-row) float4 chunks, so every
// register array is indexed by compile-time constants).
#include "engine/cuda/attention_cudnn.h"
#include "engine/cuda/common.cuh"
#include "engine/ops/attention.h"

namespace monta::engine::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <class T>
__device__ __forceinline__ float4 load4(const T* p) {
  return make_float4(to_f(p[0]), to_f(p[1]), to_f(p[2]), to_f(p[3]));
}
template <class T>
__device__ __forceinline__ void store4(T* p, float4 v) {
  p[0] = from_f<T>(v.x);
  p[1] = from_f<T>(v.y);
  p[2] = from_f<T>(v.z);
  p[3] = from_f<T>(v.w);
}
__device__ __forceinline__ float dot4(float4 a, float4 b) { return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w; }
__device__ __forceinline__ void axpy4(float4& y, float a, float4 x) {
  y.x += a * x.x;
  y.y += a * x.y;
  y.z += a * x.z;
  y.w += a * x.w;
}
// Sum over the TPR consecutive lanes that share one row.
template <int TPR>
__device__ __forceinline__ float row_sum(float v) {
#pragma unroll
  for (int o = 1; o < TPR; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Stages keys and values j0 .. j0+BC-1 of KV head g (batch b) in shared memory as f32, zeros past S; the whole block
// cooperates. The tile loop of the forward and of the dq backward.
template <class T, int D, int BC>
__device__ __forceinline__ void load_kv_tile(float4 (&ks)[BC][D / 4], float4 (&vs)[BC][D / 4], const T* k, const T* v,
                                             int b, int g, int j0, int S, int G) {
  constexpr int D4 = D / 4;
  for (int idx = threadIdx.x; idx < BC * D4; idx += blockDim.x) {
    const int jj = idx / D4, c4 = idx - jj * D4, j = j0 + jj;
    float4 kk = make_float4(0.f, 0.f, 0.f, 0.f), vv = kk;
    if (j < S) {
      const int64_t off = ((int64_t(b) * S + j) * G + g) * D + 4 * c4;
      kk = load4(k + off);
      vv = load4(v + off);
    }
    ks[jj][c4] = kk;
    vs[jj][c4] = vv;
  }
}

// ---------------------------------------------------------------------------------------------------------
template <class T, int D>
static __global__ void __launch_bounds__(256) attn_forward_kernel(T* __restrict__ out, float* __restrict__ lse,
                                                                  const T* __restrict__ q, const T* __restrict__ k,
                                                                  const T* __restrict__ v, int S, int A, int G,
                                                                  float scale_log2) {
  constexpr int TPR = 4, BR = 64, BC = 32, NT = D / (4 * TPR), D4 = D / 4;
  __shared__ float4 ks[BC][D4];
  __shared__ float4 vs[BC][D4];
  const int b = blockIdx.z, a = blockIdx.y, g = a / (A / G);
  const int row = threadIdx.x / TPR, r = threadIdx.x % TPR;
  const int i = blockIdx.x * BR + row;
  const bool valid = i < S;

  float4 qr[NT], o[NT];
  const T* qp = q + ((int64_t(b) * S + (valid ? i : 0)) * A + a) * D;
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    float4 x = valid ? load4(qp + 4 * (r + TPR * t)) : make_float4(0.f, 0.f, 0.f, 0.f);
    qr[t] = make_float4(x.x * scale_log2, x.y * scale_log2, x.z * scale_log2, x.w * scale_log2);
    o[t] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float m = -INFINITY, l = 0.f;
  const int kv_end = min(S, (int(blockIdx.x) + 1) * BR);
  for (int j0 = 0; j0 < kv_end; j0 += BC) {
    __syncthreads();
    load_kv_tile<T, D, BC>(ks, vs, k, v, b, g, j0, S, G);
    __syncthreads();
    float sc[BC];
    float mt = m;
#pragma unroll
    for (int jj = 0; jj < BC; ++jj) {
      float p = 0.f;
#pragma unroll
      for (int t = 0; t < NT; ++t) p += dot4(qr[t], ks[jj][r + TPR * t]);
      p = row_sum<TPR>(p);
      const int j = j0 + jj;
      if (j > i || j >= S) p = -INFINITY;
      sc[jj] = p;
      mt = fmaxf(mt, p);
    }
    if (mt == -INFINITY) continue;  // nothing visible yet in this tile
    const float alpha = exp2f(m - mt);
    l *= alpha;
#pragma unroll
    for (int t = 0; t < NT; ++t) o[t] = make_float4(o[t].x * alpha, o[t].y * alpha, o[t].z * alpha, o[t].w * alpha);
#pragma unroll
    for (int jj = 0; jj < BC; ++jj) {
      const float p = exp2f(sc[jj] - mt);
      l += p;
#pragma unroll
      for (int t = 0; t < NT; ++t) axpy4(o[t], p, vs[jj][r + TPR * t]);
    }
    m = mt;
  }
  if (!valid) return;
  const float inv = 1.f / l;
  T* op = out + ((int64_t(b) * S + i) * A + a) * D;
#pragma unroll
  for (int t = 0; t < NT; ++t)
    store4(op + 4 * (r + TPR * t), make_float4(o[t].x * inv, o[t].y * inv, o[t].z * inv, o[t].w * inv));
  if (r == 0) lse[(int64_t(b) * A + a) * S + i] = (m + log2f(l)) * kLn2;
}

// ---------------------------------------------------------------------------------------------------------
template <class T, int D>
static __global__ void __launch_bounds__(256) attn_backward_dq_kernel(
    T* __restrict__ dq, const T* __restrict__ dout, const T* __restrict__ q, const T* __restrict__ k,
    const T* __restrict__ v, const T* __restrict__ out, const float* __restrict__ lse, int S, int A, int G,
    float scale) {
  constexpr int TPR = 8, BR = 32, BC = 32, NT = D / (4 * TPR), D4 = D / 4;
  __shared__ float4 ks[BC][D4];
  __shared__ float4 vs[BC][D4];
  const int b = blockIdx.z, a = blockIdx.y, g = a / (A / G);
  const int row = threadIdx.x / TPR, r = threadIdx.x % TPR;
  const int i = blockIdx.x * BR + row;
  const bool valid = i < S;
  const float scale_log2 = scale * kLog2e;

  float4 qr[NT], dor[NT], dqr[NT];
  const int64_t roff = ((int64_t(b) * S + (valid ? i : 0)) * A + a) * D;
  float di = 0.f;
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int d = 4 * (r + TPR * t);
    qr[t] = load4(q + roff + d);
    dor[t] = load4(dout + roff + d);
    di += dot4(dor[t], load4(out + roff + d));
    dqr[t] = make_float4(0.f, 0.f, 0.f, 0.f);
  }
  di = row_sum<TPR>(di);
  const float lse2 = valid ? lse[(int64_t(b) * A + a) * S + i] * kLog2e : 0.f;

  const int kv_end = min(S, (int(blockIdx.x) + 1) * BR);
  for (int j0 = 0; j0 < kv_end; j0 += BC) {
    __syncthreads();
    load_kv_tile<T, D, BC>(ks, vs, k, v, b, g, j0, S, G);
    __syncthreads();
#pragma unroll 4
    for (int jj = 0; jj < BC; ++jj) {
      float s = 0.f, dp = 0.f;
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        s += dot4(qr[t], ks[jj][r + TPR * t]);
        dp += dot4(dor[t], vs[jj][r + TPR * t]);
      }
      s = row_sum<TPR>(s);
      dp = row_sum<TPR>(dp);
      const int j = j0 + jj;
      const float p = (valid && j <= i) ? exp2f(s * scale_log2 - lse2) : 0.f;
      const float ds = p * (dp - di);
#pragma unroll
      for (int t = 0; t < NT; ++t) axpy4(dqr[t], ds, ks[jj][r + TPR * t]);
    }
  }
  if (!valid) return;
#pragma unroll
  for (int t = 0; t < NT; ++t)
    store4(dq + roff + 4 * (r + TPR * t),
           make_float4(dqr[t].x * scale, dqr[t].y * scale, dqr[t].z * scale, dqr[t].w * scale));
}

// ---------------------------------------------------------------------------------------------------------
template <class T, int D>
static __global__ void __launch_bounds__(256) attn_backward_dkdv_kernel(
    T* __restrict__ dk, T* __restrict__ dv, const T* __restrict__ dout, const T* __restrict__ q,
    const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ out, const float* __restrict__ lse, int S,
    int A, int G, float scale) {
  constexpr int TPR = 8, BR = 32, BC = 32, NT = D / (4 * TPR), D4 = D / 4;
  __shared__ float4 qs[BR][D4];
  __shared__ float4 dos[BR][D4];
  __shared__ float lse2s[BR];
  __shared__ float dis[BR];
  const int b = blockIdx.z, g = blockIdx.y, heads_per_kv = A / G;
  const int row = threadIdx.x / TPR, r = threadIdx.x % TPR;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int kv0 = blockIdx.x * BC;
  const int j = kv0 + row;
  const bool valid = j < S;
  const float scale_log2 = scale * kLog2e;

  float4 kr[NT], vr[NT], dkr[NT], dvr[NT];
  const int64_t koff = ((int64_t(b) * S + (valid ? j : 0)) * G + g) * D;
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int d = 4 * (r + TPR * t);
    kr[t] = load4(k + koff + d);
    vr[t] = load4(v + koff + d);
    dkr[t] = make_float4(0.f, 0.f, 0.f, 0.f);
    dvr[t] = dkr[t];
  }

  for (int a = g * heads_per_kv; a < (g + 1) * heads_per_kv; ++a) {
    for (int q0 = kv0; q0 < S; q0 += BR) {  // query tiles at or below the diagonal (BR == BC, aligned)
      __syncthreads();
      // Stage q and dO rows as f32; each warp also forms D_i = dO_i · O_i for its rows.
      for (int rr = warp; rr < BR; rr += nwarps) {
        const int i = q0 + rr;
        float dot = 0.f;
        float* qrow = reinterpret_cast<float*>(qs[rr]);
        float* drow = reinterpret_cast<float*>(dos[rr]);
        if (i < S) {
          const int64_t off = ((int64_t(b) * S + i) * A + a) * D;
          for (int d = lane; d < D; d += 32) {
            float dov = to_f(dout[off + d]);
            qrow[d] = to_f(q[off + d]);
            drow[d] = dov;
            dot += dov * to_f(out[off + d]);
          }
        } else {
          for (int d = lane; d < D; d += 32) qrow[d] = drow[d] = 0.f;
        }
        dot = warp_sum(dot);
        if (lane == 0) {
          dis[rr] = dot;
          lse2s[rr] = i < S ? lse[(int64_t(b) * A + a) * S + i] * kLog2e : 0.f;
        }
      }
      __syncthreads();
#pragma unroll 4
      for (int ii = 0; ii < BR; ++ii) {
        const int i = q0 + ii;
        float s = 0.f, dp = 0.f;
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          s += dot4(kr[t], qs[ii][r + TPR * t]);
          dp += dot4(vr[t], dos[ii][r + TPR * t]);
        }
        s = row_sum<TPR>(s);
        dp = row_sum<TPR>(dp);
        const float p = (valid && i < S && j <= i) ? exp2f(s * scale_log2 - lse2s[ii]) : 0.f;
        const float ds = p * (dp - dis[ii]);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          axpy4(dvr[t], p, dos[ii][r + TPR * t]);
          axpy4(dkr[t], ds, qs[ii][r + TPR * t]);
        }
      }
    }
  }
  if (!valid) return;
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const int d = 4 * (r + TPR * t);
    store4(dk + koff + d, make_float4(dkr[t].x * scale, dkr[t].y * scale, dkr[t].z * scale, dkr[t].w * scale));
    store4(dv + koff + d, dvr[t]);
  }
}

// ---------------------------------------------------------------------------------------------------------
struct AttnDims {
  int B, S, A, G, D;
};

static AttnDims attn_dims(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  need_float(q, op, "q");
  need_float(k, op, "k");
  need_float(v, op, "v");
  MONTA_CHECK(q.dtype == k.dtype && q.dtype == v.dtype,
              std::string(op) + ": q, k and v must share a dtype, got " + q.str() + " " + k.str() + " " + v.str());
  AttnDims d{int(q.dim(0)), int(q.dim(1)), int(q.dim(2)), int(k.dim(2)), int(q.dim(3))};
  MONTA_CHECK(d.D == 32 || d.D == 64 || d.D == 96 || d.D == 128,
              std::string(op) + ": head dim " + std::to_string(d.D) + " not supported (32, 64, 96, 128)");
  return d;
}

#define MONTA_HEAD_DIMS(dval, DC, ...)       \
  do {                                       \
    switch (dval) {                          \
      case 32: { constexpr int DC = 32; __VA_ARGS__; break; }   \
      case 64: { constexpr int DC = 64; __VA_ARGS__; break; }   \
      case 96: { constexpr int DC = 96; __VA_ARGS__; break; }   \
      default: { constexpr int DC = 128; __VA_ARGS__; break; }  \
    }                                        \
  } while (0)

void attention_forward(Tensor out, Tensor lse, const Tensor& q, const Tensor& k, const Tensor& v, Stream s) {
  const char* op = "attention_forward";
  AttnDims d = attn_dims(op, q, k, v);
  need_float(out, op, "out");
  MONTA_CHECK(out.dtype == q.dtype, "attention_forward: out must share q's dtype");
  need_dtype(lse, DType::f32, op, "lse");
  if (int64_t(d.B) * d.S * d.A == 0) return;
  // bf16 with a head dim cuDNN's fused flash attention takes: cuDNN (attention_cudnn.cu), unless
  // settings().attention is handwritten; if cuDNN cannot build a plan, it has warned once and we fall through.
  if (cudnn_attention_wanted(q, k) && cudnn_attention_forward(out, lse, q, k, v, s)) return;
  const float scale_log2 = kLog2e / std::sqrt(float(d.D));
  dim3 grid(unsigned((d.S + 63) / 64), unsigned(d.A), unsigned(d.B));
  MONTA_FLOAT_TYPES(q.dtype, T,
                    MONTA_HEAD_DIMS(d.D, DC,
                                    attn_forward_kernel<T, DC><<<grid, 256, 0, stream_of(s)>>>(
                                        out.as<T>(), lse.as<float>(), q.as<T>(), k.as<T>(), v.as<T>(), d.S, d.A,
                                        d.G, scale_log2)));
  MONTA_LAUNCH_CHECK();
}

void attention_backward(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& lse, Stream s) {
  const char* op = "attention_backward";
  AttnDims d = attn_dims(op, q, k, v);
  need_float(dq, op, "dq");
  need_float(dk, op, "dk");
  need_float(dv, op, "dv");
  need_float(dout, op, "dout");
  need_float(out, op, "out");
  MONTA_CHECK(dq.dtype == q.dtype && dout.dtype == q.dtype && out.dtype == q.dtype && dk.dtype == q.dtype &&
                  dv.dtype == q.dtype,
              "attention_backward: dq, dk, dv, dout and out must share q's dtype");
  need_dtype(lse, DType::f32, op, "lse");
  if (int64_t(d.B) * d.S * d.A == 0) return;
  if (cudnn_attention_wanted(q, k) && cudnn_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, s)) return;
  const float scale = 1.f / std::sqrt(float(d.D));
  cudaStream_t st = stream_of(s);
  dim3 grid_q(unsigned((d.S + 31) / 32), unsigned(d.A), unsigned(d.B));
  dim3 grid_kv(unsigned((d.S + 31) / 32), unsigned(d.G), unsigned(d.B));
  MONTA_FLOAT_TYPES(q.dtype, T, MONTA_HEAD_DIMS(d.D, DC, {
                      attn_backward_dq_kernel<T, DC><<<grid_q, 256, 0, st>>>(
                          dq.as<T>(), dout.as<T>(), q.as<T>(), k.as<T>(), v.as<T>(), out.as<T>(), lse.as<float>(),
                          d.S, d.A, d.G, scale);
                      MONTA_LAUNCH_CHECK();
                      attn_backward_dkdv_kernel<T, DC><<<grid_kv, 256, 0, st>>>(
                          dk.as<T>(), dv.as<T>(), dout.as<T>(), q.as<T>(), k.as<T>(), v.as<T>(), out.as<T>(),
                          lse.as<float>(), d.S, d.A, d.G, scale);
                      MONTA_LAUNCH_CHECK();
                    }));
}

}  // namespace monta::engine::cuda
