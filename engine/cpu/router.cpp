// CPU MoE router pieces: softmax over experts, top-k (optionally on bias-shifted scores) with GShard capacity
// assignment (choice-major slot order, deterministic drops), the gather of chosen probabilities (raw or renormalised),
// the Switch load-balancing loss and the router z-loss, each with its backward.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/cpu/check_args.h"
#include "engine/ops/router.h"

namespace monta::engine::cpu {
namespace {

void need_float(const char* op, const char* name, const Tensor& t) {
  MONTA_CHECK(t.dtype == DType::f32 || t.dtype == DType::f64,
              std::string(op) + ": " + name + " must be f32 or f64, got " + t.str());
  need(op, name, t, t.dtype);
}

template <class T> void softmax_fwd(Tensor probs, const Tensor& logits) {
  const int64_t N = logits.dim(0), E = logits.dim(1);
  for (int64_t n = 0; n < N; ++n) {
    const T* l = logits.as<T>() + n * E;
    T* p = probs.as<T>() + n * E;
    const T mx = *std::max_element(l, l + E);
    T s = 0;
    for (int64_t e = 0; e < E; ++e) s += (p[e] = std::exp(l[e] - mx));
    for (int64_t e = 0; e < E; ++e) p[e] /= s;
  }
}

// dlogits = p ∘ (dp − Σ dp·p)
template <class T> void softmax_bwd(Tensor dlogits, const Tensor& dprobs, const Tensor& probs) {
  const int64_t N = probs.dim(0), E = probs.dim(1);
  for (int64_t n = 0; n < N; ++n) {
    const T* p = probs.as<T>() + n * E;
    const T* dp = dprobs.as<T>() + n * E;
    T dot = 0;
    for (int64_t e = 0; e < E; ++e) dot += dp[e] * p[e];
    T* dl = dlogits.as<T>() + n * E;
    for (int64_t e = 0; e < E; ++e) dl[e] = p[e] * (dp[e] - dot);
  }
}

// The top-k on score[e] = probs[e] (+ bias[e] when bias is not null), summed in T (f32, or f64 for f64 probs): the
// CUDA kernel adds in f32 too, so both backends pick the same experts.
template <class T> void topk(Tensor expert_idx, const Tensor& probs, const Tensor& bias) {
  const int64_t N = probs.dim(0), E = probs.dim(1), K = expert_idx.dim(1);
  std::vector<int32_t> order(static_cast<size_t>(E));
  std::vector<T> score(static_cast<size_t>(E));
  const T* b = bias.empty() ? nullptr : bias.as<T>();
  for (int64_t n = 0; n < N; ++n) {
    const T* p = probs.as<T>() + n * E;
    for (int64_t e = 0; e < E; ++e) {
      order[size_t(e)] = int32_t(e);
      score[size_t(e)] = b ? p[e] + b[e] : p[e];
    }
    const T* sc = score.data();
    // Descending score, ties to the lower expert id.
    std::partial_sort(order.begin(), order.begin() + K, order.end(),
                      [sc](int32_t a, int32_t c) { return sc[a] > sc[c] || (sc[a] == sc[c] && a < c); });
    std::copy(order.begin(), order.begin() + K, expert_idx.as<int32_t>() + n * K);
  }
}

template <class T> void gather_fwd(Tensor weight, const Tensor& probs, const Tensor& expert_idx) {
  const int64_t N = probs.dim(0), E = probs.dim(1), K = expert_idx.dim(1);
  const int32_t* idx = expert_idx.as<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) weight.as<T>()[n * K + k] = probs.as<T>()[n * E + idx[n * K + k]];
}

template <class T> void gather_bwd(Tensor dprobs, const Tensor& dweight, const Tensor& expert_idx) {
  const int64_t N = dprobs.dim(0), E = dprobs.dim(1), K = expert_idx.dim(1);
  const int32_t* idx = expert_idx.as<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) dprobs.as<T>()[n * E + idx[n * K + k]] += dweight.as<T>()[n * K + k];
}

// w_k = p_k / S, S = Σ_j p_j over the chosen experts.
template <class T> void norm_fwd(Tensor weight, const Tensor& probs, const Tensor& expert_idx) {
  const int64_t N = probs.dim(0), E = probs.dim(1), K = expert_idx.dim(1);
  const int32_t* idx = expert_idx.as<int32_t>();
  for (int64_t n = 0; n < N; ++n) {
    const T* p = probs.as<T>() + n * E;
    T sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += p[idx[n * K + k]];
    for (int64_t k = 0; k < K; ++k) weight.as<T>()[n * K + k] = p[idx[n * K + k]] / sum;
  }
}

// ∂w_k/∂p_i = (δ_ki − w_k) / S for chosen i, so dp_i += (dw_i − Σ_k dw_k · w_k) / S.
template <class T> void norm_bwd(Tensor dprobs, const Tensor& dweight, const Tensor& probs, const Tensor& expert_idx) {
  const int64_t N = probs.dim(0), E = probs.dim(1), K = expert_idx.dim(1);
  const int32_t* idx = expert_idx.as<int32_t>();
  for (int64_t n = 0; n < N; ++n) {
    const T* p = probs.as<T>() + n * E;
    const T* dw = dweight.as<T>() + n * K;
    T sum = 0, dot = 0;
    for (int64_t k = 0; k < K; ++k) sum += p[idx[n * K + k]];
    for (int64_t k = 0; k < K; ++k) dot += dw[k] * (p[idx[n * K + k]] / sum);
    for (int64_t k = 0; k < K; ++k) dprobs.as<T>()[n * E + idx[n * K + k]] += (dw[k] - dot) / sum;
  }
}

template <class T> void lb_fwd(Tensor loss, const Tensor& probs, const Tensor& counts, int64_t top_k) {
  const int64_t N = probs.dim(0), E = probs.dim(1);
  std::vector<double> P(size_t(E), 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t e = 0; e < E; ++e) P[size_t(e)] += double(probs.as<T>()[n * E + e]);
  double total = 0;
  for (int64_t e = 0; e < E; ++e)
    total += double(counts.as<int32_t>()[e]) / double(N * top_k) * P[size_t(e)] / double(N);
  loss.as<T>()[0] = T(double(E) * total);
}

template <class T> void lb_bwd(Tensor dprobs, const Tensor& counts, int64_t top_k, double dloss) {
  const int64_t N = dprobs.dim(0), E = dprobs.dim(1);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t e = 0; e < E; ++e)
      dprobs.as<T>()[n * E + e] +=
          T(dloss * double(E) * double(counts.as<int32_t>()[e]) / double(N * top_k) / double(N));
}

template <class T> void z_fwd(Tensor loss, Tensor lse, const Tensor& logits) {
  const int64_t N = logits.dim(0), E = logits.dim(1);
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    const T* l = logits.as<T>() + n * E;
    const double mx = double(*std::max_element(l, l + E));
    double s = 0;
    for (int64_t e = 0; e < E; ++e) s += std::exp(double(l[e]) - mx);
    const double z = mx + std::log(s);
    lse.as<T>()[n] = T(z);
    total += z * z;
  }
  loss.as<T>()[0] = T(total / double(N));
}

template <class T> void z_bwd(Tensor dlogits, const Tensor& lse, const Tensor& probs, double dloss) {
  const int64_t N = probs.dim(0), E = probs.dim(1);
  for (int64_t n = 0; n < N; ++n) {
    const double c = dloss * 2.0 * double(lse.as<T>()[n]) / double(N);
    for (int64_t e = 0; e < E; ++e) dlogits.as<T>()[n * E + e] += T(c * double(probs.as<T>()[n * E + e]));
  }
}

// Values the host can see here (the contract checked the shapes): every expert id in [0, E).
void need_expert_idx(const char* op, const Tensor& expert_idx, int64_t E) {
  need(op, "expert_idx", expert_idx, DType::i32);
  const int32_t* idx = expert_idx.as<int32_t>();
  for (int64_t i = 0; i < expert_idx.numel(); ++i)
    MONTA_CHECK(idx[i] >= 0 && idx[i] < E, std::string(op) + ": expert id " + std::to_string(idx[i]) +
                                               " out of range [0, " + std::to_string(E) + ")");
}

void need_stat(const char* op, const char* name, const Tensor& t, const Tensor& ref) {
  need(op, name, t, stat_dtype(ref.dtype));
}

#define MONTA_CPU_FLOAT_DISPATCH(t, fn, ...) \
  do {                                       \
    if ((t).dtype == DType::f32)             \
      fn<float>(__VA_ARGS__);                \
    else                                     \
      fn<double>(__VA_ARGS__);               \
  } while (0)

void topk_assign(const char* op, Tensor expert_idx, Tensor slot, Tensor counts, const Tensor& probs, const Tensor& bias,
                 int64_t capacity) {
  need_float(op, "probs", probs);
  const int64_t N = probs.dim(0), E = probs.dim(1);
  need(op, "expert_idx", expert_idx, DType::i32);
  const int64_t K = expert_idx.dim(1);
  need(op, "slot", slot, DType::i32);
  need(op, "counts", counts, DType::i32);
  if (!bias.empty()) need(op, "bias", bias, probs.dtype);
  MONTA_CPU_FLOAT_DISPATCH(probs, topk, expert_idx, probs, bias);
  // GShard order: every token's 1st choice (token order), then every 2nd choice, ...
  int32_t* cnt = counts.as<int32_t>();
  std::fill(cnt, cnt + E, 0);
  const int32_t* idx = expert_idx.as<int32_t>();
  int32_t* sl = slot.as<int32_t>();
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t n = 0; n < N; ++n) {
      const int32_t e = idx[n * K + k];
      const int32_t c = cnt[e]++;
      sl[n * K + k] = c < capacity ? c : -1;
    }
  }
}

}  // namespace

void softmax_forward(Tensor probs, const Tensor& logits, Stream) {
  const char* op = "softmax_forward";
  need_float(op, "logits", logits);
  need(op, "probs", probs, logits.dtype);
  MONTA_CPU_FLOAT_DISPATCH(logits, softmax_fwd, probs, logits);
}

void softmax_backward(Tensor dlogits, const Tensor& dprobs, const Tensor& probs, Stream) {
  const char* op = "softmax_backward";
  need_float(op, "probs", probs);
  need(op, "dprobs", dprobs, probs.dtype);
  need(op, "dlogits", dlogits, probs.dtype);
  MONTA_CPU_FLOAT_DISPATCH(probs, softmax_bwd, dlogits, dprobs, probs);
}

void router_topk_assign(Tensor expert_idx, Tensor slot, Tensor counts, const Tensor& probs, int64_t capacity,
                        Stream) {
  topk_assign("router_topk_assign", expert_idx, slot, counts, probs, Tensor(), capacity);
}

void router_topk_assign_biased(Tensor expert_idx, Tensor slot, Tensor counts, const Tensor& probs, const Tensor& bias,
                               int64_t capacity, Stream) {
  topk_assign("router_topk_assign_biased", expert_idx, slot, counts, probs, bias, capacity);
}

void topk_weights_forward(Tensor weight, const Tensor& probs, const Tensor& expert_idx, Stream) {
  const char* op = "topk_weights_forward";
  need_float(op, "probs", probs);
  need_expert_idx(op, expert_idx, probs.dim(1));
  need(op, "weight", weight, probs.dtype);
  MONTA_CPU_FLOAT_DISPATCH(probs, gather_fwd, weight, probs, expert_idx);
}

void topk_weights_backward(Tensor dprobs, const Tensor& dweight, const Tensor& expert_idx, Stream) {
  const char* op = "topk_weights_backward";
  need_float(op, "dprobs", dprobs);
  need_expert_idx(op, expert_idx, dprobs.dim(1));
  need(op, "dweight", dweight, dprobs.dtype);
  MONTA_CPU_FLOAT_DISPATCH(dprobs, gather_bwd, dprobs, dweight, expert_idx);
}

void topk_weights_norm_forward(Tensor weight, const Tensor& probs, const Tensor& expert_idx, Stream) {
  const char* op = "topk_weights_norm_forward";
  need_float(op, "probs", probs);
  need_expert_idx(op, expert_idx, probs.dim(1));
  need(op, "weight", weight, probs.dtype);
  MONTA_CPU_FLOAT_DISPATCH(probs, norm_fwd, weight, probs, expert_idx);
}

void topk_weights_norm_backward(Tensor dprobs, const Tensor& dweight, const Tensor& probs, const Tensor& expert_idx,
                                Stream) {
  const char* op = "topk_weights_norm_backward";
  need_float(op, "probs", probs);
  need_expert_idx(op, expert_idx, probs.dim(1));
  need(op, "dprobs", dprobs, probs.dtype);
  need(op, "dweight", dweight, probs.dtype);
  MONTA_CPU_FLOAT_DISPATCH(probs, norm_bwd, dprobs, dweight, probs, expert_idx);
}

void load_balance_loss_forward(Tensor loss, const Tensor& probs, const Tensor& counts, int64_t top_k, Stream) {
  const char* op = "load_balance_loss_forward";
  need_float(op, "probs", probs);
  need(op, "counts", counts, DType::i32);
  need_stat(op, "loss", loss, probs);
  MONTA_CPU_FLOAT_DISPATCH(probs, lb_fwd, loss, probs, counts, top_k);
}

void load_balance_loss_backward(Tensor dprobs, const Tensor& counts, int64_t top_k, float dloss, Stream) {
  const char* op = "load_balance_loss_backward";
  need_float(op, "dprobs", dprobs);
  need(op, "counts", counts, DType::i32);
  MONTA_CPU_FLOAT_DISPATCH(dprobs, lb_bwd, dprobs, counts, top_k, double(dloss));
}

void router_z_loss_forward(Tensor loss, Tensor lse, const Tensor& logits, Stream) {
  const char* op = "router_z_loss_forward";
  need_float(op, "logits", logits);
  need_stat(op, "loss", loss, logits);
  need_stat(op, "lse", lse, logits);
  MONTA_CPU_FLOAT_DISPATCH(logits, z_fwd, loss, lse, logits);
}

void router_z_loss_backward(Tensor dlogits, const Tensor& lse, const Tensor& probs, float dloss, Stream) {
  const char* op = "router_z_loss_backward";
  need_float(op, "probs", probs);
  need(op, "dlogits", dlogits, probs.dtype);
  need_stat(op, "lse", lse, probs);
  MONTA_CPU_FLOAT_DISPATCH(probs, z_bwd, dlogits, lse, probs, double(dloss));
}

}  // namespace monta::engine::cpu
