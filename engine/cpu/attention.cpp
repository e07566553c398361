// CPU causal grouped-query attention (scale 1/sqrt(D); query head a reads KV head a / (A / G)). Forward
// saves the row log-sum-exp; backward recomputes each probability from it, as flash attention does, so
// the S x S matrix is never stored: one row of scores lives at a time.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/cpu/check_args.h"
#include "engine/ops/attention.h"

namespace monta::engine::cpu {
namespace {

struct Dims {
  int64_t B, S, A, G, D;
};

// Dtypes and devices; the shapes are the contract's (engine/ops/dispatch.cpp).
Dims check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor& v) {
  MONTA_CHECK(q.dtype == DType::f32 || q.dtype == DType::f64, std::string(op) + ": q must be f32 or f64, got " + q.str());
  need(op, "q", q, q.dtype);
  need(op, "k", k, q.dtype);
  need(op, "v", v, q.dtype);
  return {q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3)};
}

void check_saved(const char* op, const Tensor& q, const Tensor& out, const Tensor& lse) {
  need(op, "out", out, q.dtype);
  need(op, "lse", lse, stat_dtype(q.dtype));
}

template <class T> T dot(const T* a, const T* b, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <class T> void fwd(Tensor out, Tensor lse, const Tensor& q, const Tensor& k, const Tensor& v, Dims d) {
  const int64_t group = d.A / d.G;
  const T scale = T(1) / std::sqrt(T(d.D));
  std::vector<T> p(size_t(d.S));
  std::vector<T> acc(size_t(d.D));
  for (int64_t b = 0; b < d.B; ++b) {
    for (int64_t a = 0; a < d.A; ++a) {
      const int64_t g = a / group;
      for (int64_t i = 0; i < d.S; ++i) {
        const T* qi = q.as<T>() + ((b * d.S + i) * d.A + a) * d.D;
        T mx = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j <= i; ++j) {
          p[size_t(j)] = scale * dot(qi, k.as<T>() + ((b * d.S + j) * d.G + g) * d.D, d.D);
          mx = std::max(mx, p[size_t(j)]);
        }
        T l = 0;
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t j = 0; j <= i; ++j) {
          const T e = std::exp(p[size_t(j)] - mx);
          l += e;
          const T* vj = v.as<T>() + ((b * d.S + j) * d.G + g) * d.D;
          for (int64_t x = 0; x < d.D; ++x) acc[size_t(x)] += e * vj[x];
        }
        T* oi = out.as<T>() + ((b * d.S + i) * d.A + a) * d.D;
        for (int64_t x = 0; x < d.D; ++x) oi[x] = acc[size_t(x)] / l;
        lse.as<T>()[(b * d.A + a) * d.S + i] = mx + std::log(l);
      }
    }
  }
}

// P = exp(scale·QKᵀ − lse); dV = Pᵀ·dO; dP = dO·Vᵀ; dS = P∘(dP − rowsum(dO∘O)); dQ = scale·dS·K; dK = scale·dSᵀ·Q.
template <class T> void bwd(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                            const Tensor& v, const Tensor& out, const Tensor& lse, Dims d) {
  const int64_t group = d.A / d.G;
  const T scale = T(1) / std::sqrt(T(d.D));
  std::fill(dk.as<T>(), dk.as<T>() + dk.numel(), T(0));
  std::fill(dv.as<T>(), dv.as<T>() + dv.numel(), T(0));
  std::vector<T> dqi(size_t(d.D));
  for (int64_t b = 0; b < d.B; ++b) {
    for (int64_t a = 0; a < d.A; ++a) {
      const int64_t g = a / group;
      for (int64_t i = 0; i < d.S; ++i) {
        const int64_t row = ((b * d.S + i) * d.A + a) * d.D;
        const T* qi = q.as<T>() + row;
        const T* doi = dout.as<T>() + row;
        const T di = dot(doi, out.as<T>() + row, d.D);
        const T l = lse.as<T>()[(b * d.A + a) * d.S + i];
        std::fill(dqi.begin(), dqi.end(), T(0));
        for (int64_t j = 0; j <= i; ++j) {
          const int64_t kv = ((b * d.S + j) * d.G + g) * d.D;
          const T* kj = k.as<T>() + kv;
          const T* vj = v.as<T>() + kv;
          const T p = std::exp(scale * dot(qi, kj, d.D) - l);
          const T ds = p * (dot(doi, vj, d.D) - di) * scale;
          T* dkj = dk.as<T>() + kv;
          T* dvj = dv.as<T>() + kv;
          for (int64_t x = 0; x < d.D; ++x) {
            dqi[size_t(x)] += ds * kj[x];
            dkj[x] += ds * qi[x];
            dvj[x] += p * doi[x];
          }
        }
        std::copy(dqi.begin(), dqi.end(), dq.as<T>() + row);
      }
    }
  }
}

}  // namespace

void attention_forward(Tensor out, Tensor lse, const Tensor& q, const Tensor& k, const Tensor& v, Stream) {
  const char* op = "attention_forward";
  Dims d = check_qkv(op, q, k, v);
  check_saved(op, q, out, lse);
  if (q.dtype == DType::f32)
    fwd<float>(out, lse, q, k, v, d);
  else
    fwd<double>(out, lse, q, k, v, d);
}

void attention_backward(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& lse, Stream) {
  const char* op = "attention_backward";
  Dims d = check_qkv(op, q, k, v);
  check_saved(op, q, out, lse);
  need(op, "dout", dout, q.dtype);
  need(op, "dq", dq, q.dtype);
  need(op, "dk", dk, q.dtype);
  need(op, "dv", dv, q.dtype);
  if (q.dtype == DType::f32)
    bwd<float>(dq, dk, dv, dout, q, k, v, out, lse, d);
  else
    bwd<double>(dq, dk, dv, dout, q, k, v, out, lse, d);
}

}  // namespace monta::engine::cpu
