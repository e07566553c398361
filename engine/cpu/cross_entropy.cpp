// CPU cross-entropy over one vocabulary shard, in the three steps a vocab-parallel LM head needs (row max,
// partial sum of exponentials and target logit, finish), plus its backward. Target -1 (any negative) is
// ignored: zero loss and zero gradient row.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "engine/check.h"
#include "engine/cpu/check_args.h"
#include "engine/ops/cross_entropy.h"

namespace monta::engine::cpu {
namespace {


void need_logits(const char* op, const Tensor& logits) {
  MONTA_CHECK(logits.dtype == DType::f32 || logits.dtype == DType::f64,
              std::string(op) + ": logits must be f32 or f64, got " + logits.str());
  need(op, "logits", logits, logits.dtype);
}

template <class T> void rowmax_impl(Tensor rowmax, const Tensor& logits) {
  const int64_t N = logits.dim(0), V = logits.dim(1);
  for (int64_t n = 0; n < N; ++n) {
    const T* l = logits.as<T>() + n * V;
    rowmax.as<T>()[n] = *std::max_element(l, l + V);
  }
}

template <class T> void partial_impl(Tensor sumexp, Tensor target_logit, const Tensor& logits, const Tensor& rowmax,
                                     const Tensor& targets, int64_t vocab_begin) {
  const int64_t N = logits.dim(0), V = logits.dim(1);
  for (int64_t n = 0; n < N; ++n) {
    const T* l = logits.as<T>() + n * V;
    const T mx = rowmax.as<T>()[n];
    T s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(l[v] - mx);
    sumexp.as<T>()[n] = s;
    const int64_t t = targets.as<int32_t>()[n];
    const int64_t local = t - vocab_begin;
    target_logit.as<T>()[n] = (t >= 0 && local >= 0 && local < V) ? l[local] : T(0);
  }
}

template <class T> void finish_impl(Tensor losses, Tensor lse, const Tensor& sumexp, const Tensor& rowmax,
                                    const Tensor& target_logit, const Tensor& targets) {
  const int64_t N = losses.numel();
  for (int64_t n = 0; n < N; ++n) {
    const T z = rowmax.as<T>()[n] + std::log(sumexp.as<T>()[n]);
    lse.as<T>()[n] = z;
    losses.as<T>()[n] = targets.as<int32_t>()[n] < 0 ? T(0) : z - target_logit.as<T>()[n];
  }
}

template <class T> void backward_impl(Tensor dlogits, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                                      int64_t vocab_begin, T scale) {
  const int64_t N = logits.dim(0), V = logits.dim(1);
  for (int64_t n = 0; n < N; ++n) {
    const T* l = logits.as<T>() + n * V;
    T* d = dlogits.as<T>() + n * V;
    const int64_t t = targets.as<int32_t>()[n];
    if (t < 0) {
      std::fill(d, d + V, T(0));
      continue;
    }
    const T z = lse.as<T>()[n];
    for (int64_t v = 0; v < V; ++v) d[v] = scale * std::exp(l[v] - z);
    const int64_t local = t - vocab_begin;
    if (local >= 0 && local < V) d[local] -= scale;
  }
}

}  // namespace

void logits_rowmax(Tensor rowmax, const Tensor& logits, Stream) {
  const char* op = "logits_rowmax";
  need_logits(op, logits);
  need(op, "rowmax", rowmax, stat_dtype(logits.dtype));
  if (logits.dtype == DType::f32)
    rowmax_impl<float>(rowmax, logits);
  else
    rowmax_impl<double>(rowmax, logits);
}

void cross_entropy_partial(Tensor sumexp, Tensor target_logit, const Tensor& logits, const Tensor& rowmax,
                           const Tensor& targets, int64_t vocab_begin, Stream) {
  const char* op = "cross_entropy_partial";
  need_logits(op, logits);
  const DType st = stat_dtype(logits.dtype);
  need(op, "sumexp", sumexp, st);
  need(op, "target_logit", target_logit, st);
  need(op, "rowmax", rowmax, st);
  need(op, "targets", targets, DType::i32);
  if (logits.dtype == DType::f32)
    partial_impl<float>(sumexp, target_logit, logits, rowmax, targets, vocab_begin);
  else
    partial_impl<double>(sumexp, target_logit, logits, rowmax, targets, vocab_begin);
}

void cross_entropy_finish(Tensor losses, Tensor lse, const Tensor& sumexp, const Tensor& rowmax,
                          const Tensor& target_logit, const Tensor& targets, Stream) {
  const char* op = "cross_entropy_finish";
  MONTA_CHECK(losses.dtype == DType::f32 || losses.dtype == DType::f64,
              std::string(op) + ": losses must be f32 or f64, got " + losses.str());
  need(op, "losses", losses, losses.dtype);
  need(op, "lse", lse, losses.dtype);
  need(op, "sumexp", sumexp, losses.dtype);
  need(op, "rowmax", rowmax, losses.dtype);
  need(op, "target_logit", target_logit, losses.dtype);
  need(op, "targets", targets, DType::i32);
  if (losses.dtype == DType::f32)
    finish_impl<float>(losses, lse, sumexp, rowmax, target_logit, targets);
  else
    finish_impl<double>(losses, lse, sumexp, rowmax, target_logit, targets);
}

void cross_entropy_backward(Tensor dlogits, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int64_t vocab_begin, float scale, Stream) {
  const char* op = "cross_entropy_backward";
  need_logits(op, logits);
  need(op, "dlogits", dlogits, logits.dtype);
  need(op, "targets", targets, DType::i32);
  need(op, "lse", lse, stat_dtype(logits.dtype));
  if (logits.dtype == DType::f32)
    backward_impl<float>(dlogits, logits, targets, lse, vocab_begin, scale);
  else
    backward_impl<double>(dlogits, logits, targets, lse, vocab_begin, double(scale));
}

}  // namespace monta::engine::cpu
