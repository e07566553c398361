// CPU token permutation between token order (N, H) and the expert dispatch buffer (E, C, H): dispatch
// copies each kept (token, choice) into its slot, combine gathers expert outputs back weighted by the
// router; backward of each is the transposed gather/scatter. Dropped choices (slot -1) move nothing.
#include <algorithm>
#include <cstdint>
#include <string>

#include "engine/check.h"
#include "engine/cpu/check_args.h"
#include "engine/ops/moe_permute.h"

namespace monta::engine::cpu {
namespace {

struct Route {
  int64_t N, K, E, C, H;
};


// tok (N, H) and buf (E, C, H) share a float dtype; expert_idx and slot (N, K) i32 and in range (the shapes are the
// contract's, engine/ops/dispatch.cpp).
Route check_route(const char* op, const Tensor& tok, const Tensor& buf, const Tensor& expert_idx, const Tensor& slot) {
  MONTA_CHECK(tok.dtype == DType::f32 || tok.dtype == DType::f64,
              std::string(op) + ": activations must be f32 or f64, got " + tok.str());
  need(op, "tokens", tok, tok.dtype);
  need(op, "buffer", buf, tok.dtype);
  need(op, "expert_idx", expert_idx, DType::i32);
  need(op, "slot", slot, DType::i32);
  Route r{tok.dim(0), expert_idx.dim(1), buf.dim(0), buf.dim(1), tok.dim(1)};
  const int32_t *idx = expert_idx.as<int32_t>(), *sl = slot.as<int32_t>();
  for (int64_t i = 0; i < r.N * r.K; ++i)
    MONTA_CHECK(idx[i] >= 0 && idx[i] < r.E && sl[i] >= -1 && sl[i] < r.C,
                std::string(op) + ": (expert, slot) = (" + std::to_string(idx[i]) + ", " + std::to_string(sl[i]) +
                    ") outside buffer " + buf.str());
  return r;
}

template <class T> T* buf_row(const Tensor& buf, const Route& r, int64_t e, int64_t c) {
  return buf.as<T>() + (e * r.C + c) * r.H;
}

template <class T> void dispatch_fwd(Tensor buf, const Tensor& x, const Tensor& expert_idx, const Tensor& slot, Route r) {
  std::fill(buf.as<T>(), buf.as<T>() + buf.numel(), T(0));
  for (int64_t n = 0; n < r.N; ++n)
    for (int64_t k = 0; k < r.K; ++k) {
      const int32_t c = slot.as<int32_t>()[n * r.K + k];
      if (c < 0) continue;
      const T* src = x.as<T>() + n * r.H;
      std::copy(src, src + r.H, buf_row<T>(buf, r, expert_idx.as<int32_t>()[n * r.K + k], c));
    }
}

template <class T> void dispatch_bwd(Tensor dx, const Tensor& dbuf, const Tensor& expert_idx, const Tensor& slot, Route r) {
  std::fill(dx.as<T>(), dx.as<T>() + dx.numel(), T(0));
  for (int64_t n = 0; n < r.N; ++n)
    for (int64_t k = 0; k < r.K; ++k) {
      const int32_t c = slot.as<int32_t>()[n * r.K + k];
      if (c < 0) continue;
      const T* src = buf_row<T>(dbuf, r, expert_idx.as<int32_t>()[n * r.K + k], c);
      T* d = dx.as<T>() + n * r.H;
      for (int64_t h = 0; h < r.H; ++h) d[h] += src[h];
    }
}

template <class T> void combine_fwd(Tensor y, const Tensor& ebuf, const Tensor& weight, const Tensor& expert_idx,
                                    const Tensor& slot, const Tensor& residual, Route r) {
  if (residual.empty())
    std::fill(y.as<T>(), y.as<T>() + y.numel(), T(0));
  else if (residual.data != y.data)
    std::copy_n(residual.as<T>(), y.numel(), y.as<T>());
  for (int64_t n = 0; n < r.N; ++n)
    for (int64_t k = 0; k < r.K; ++k) {
      const int32_t c = slot.as<int32_t>()[n * r.K + k];
      if (c < 0) continue;
      const T w = weight.as<T>()[n * r.K + k];
      const T* src = buf_row<T>(ebuf, r, expert_idx.as<int32_t>()[n * r.K + k], c);
      T* d = y.as<T>() + n * r.H;
      for (int64_t h = 0; h < r.H; ++h) d[h] += w * src[h];
    }
}

template <class T> void combine_bwd(Tensor debuf, Tensor dweight, const Tensor& dy, const Tensor& ebuf,
                                    const Tensor& weight, const Tensor& expert_idx, const Tensor& slot, Route r) {
  std::fill(debuf.as<T>(), debuf.as<T>() + debuf.numel(), T(0));
  for (int64_t n = 0; n < r.N; ++n)
    for (int64_t k = 0; k < r.K; ++k) {
      const int64_t i = n * r.K + k;
      const int32_t c = slot.as<int32_t>()[i];
      if (c < 0) {
        dweight.as<T>()[i] = T(0);
        continue;
      }
      const int32_t e = expert_idx.as<int32_t>()[i];
      const T w = weight.as<T>()[i];
      const T* g = dy.as<T>() + n * r.H;
      const T* src = buf_row<T>(ebuf, r, e, c);
      T* d = buf_row<T>(debuf, r, e, c);
      T dot = 0;
      for (int64_t h = 0; h < r.H; ++h) {
        d[h] += w * g[h];
        dot += g[h] * src[h];
      }
      dweight.as<T>()[i] = dot;
    }
}

}  // namespace

void moe_dispatch_forward(Tensor buf, const Tensor& x, const Tensor& expert_idx, const Tensor& slot, Stream) {
  Route r = check_route("moe_dispatch_forward", x, buf, expert_idx, slot);
  if (x.dtype == DType::f32)
    dispatch_fwd<float>(buf, x, expert_idx, slot, r);
  else
    dispatch_fwd<double>(buf, x, expert_idx, slot, r);
}

void moe_dispatch_backward(Tensor dx, const Tensor& dbuf, const Tensor& expert_idx, const Tensor& slot, Stream) {
  Route r = check_route("moe_dispatch_backward", dx, dbuf, expert_idx, slot);
  if (dx.dtype == DType::f32)
    dispatch_bwd<float>(dx, dbuf, expert_idx, slot, r);
  else
    dispatch_bwd<double>(dx, dbuf, expert_idx, slot, r);
}

void moe_combine_forward(Tensor y, const Tensor& ebuf, const Tensor& weight, const Tensor& expert_idx,
                         const Tensor& slot, const Tensor& residual, Stream) {
  const char* op = "moe_combine_forward";
  Route r = check_route(op, y, ebuf, expert_idx, slot);
  need(op, "weight", weight, y.dtype);
  if (!residual.empty()) need(op, "residual", residual, y.dtype);
  if (y.dtype == DType::f32)
    combine_fwd<float>(y, ebuf, weight, expert_idx, slot, residual, r);
  else
    combine_fwd<double>(y, ebuf, weight, expert_idx, slot, residual, r);
}

void moe_combine_backward(Tensor debuf, Tensor dweight, const Tensor& dy, const Tensor& ebuf, const Tensor& weight,
                          const Tensor& expert_idx, const Tensor& slot, Stream) {
  const char* op = "moe_combine_backward";
  Route r = check_route(op, dy, ebuf, expert_idx, slot);
  need(op, "debuf", debuf, dy.dtype);
  need(op, "weight", weight, dy.dtype);
  need(op, "dweight", dweight, dy.dtype);
  if (dy.dtype == DType::f32)
    combine_bwd<float>(debuf, dweight, dy, ebuf, weight, expert_idx, slot, r);
  else
    combine_bwd<double>(debuf, dweight, dy, ebuf, weight, expert_idx, slot, r);
}

}  // namespace monta::engine::cpu
