// The op-case table (engine/op_cases.h): one function per case, one line per case in op_cases(). FLOPs count the
// multiply-adds as two; bytes count each tensor read or written once (f32 parameter gradients read and written).
#include "engine/op_cases.h"

#include <algorithm>
#include <cmath>

#include "engine/check.h"
#include "engine/log.h"
#include "engine/ops/attention.h"
#include "engine/ops/cross_entropy.h"
#include "engine/ops/embedding.h"
#include "engine/ops/linear.h"
#include "engine/ops/moe_permute.h"
#include "engine/ops/rmsnorm.h"
#include "engine/ops/rope.h"
#include "engine/ops/router.h"
#include "engine/ops/swiglu.h"

namespace monta::engine {

OpDims op_dims_gradcheck() { return OpDims{}; }
OpDims op_dims_parity() { return OpDims{1, 100, 256, 4, 2, 64, 384, 4, 1, 30, 512}; }
OpDims op_dims_2x70b(int64_t S) { return OpDims{1, S, 8192, 64, 8, 128, 28672, 2, 1, S / 2, 32000}; }

OpPrecision op_precision_double() { return {DType::f64, DType::f64, DType::f64}; }
OpPrecision op_precision_for(DType act) { return {act, DType::f32, DType::f32}; }

namespace {

constexpr auto kIn = OpArgKind::input, kParam = OpArgKind::param, kOut = OpArgKind::output,
               kSaved = OpArgKind::saved, kIndex = OpArgKind::index;

// Token n goes to expert (n·7 + k) mod E at the next free slot of that expert, or is dropped (slot -1) when the C
// slots are taken: a few drops at the test widths, none at 2x70B's capacity factor 1.
OpFn route_tokens(const OpDims& d) {
  return [d](const Arena& t) {
    std::vector<int32_t> expert(size_t(d.N() * d.K)), slot(expert.size());
    std::vector<int64_t> used(size_t(d.E), 0);
    for (int64_t i = 0; i < d.N() * d.K; ++i) {
      const int64_t e = (i * 7 + i / d.N()) % d.E;
      expert[size_t(i)] = int32_t(e);
      slot[size_t(i)] = used[size_t(e)] < d.C ? int32_t(used[size_t(e)]++) : -1;
    }
    write_indices(t.get("expert_idx"), [&](int64_t i) { return expert[size_t(i)]; });
    write_indices(t.get("slot"), [&](int64_t i) { return slot[size_t(i)]; });
  };
}

OpCase rmsnorm(const OpDims& d, double el) {
  const int64_t N = d.N(), H = d.H;
  return {"rmsnorm", strf("N%ld H%ld", N, H),
          {{"x", {N, H}, kIn}, {"weight", {H}, kParam}, {"out", {N, H}, kOut}, {"rstd", {N}, kSaved}},
          {},
          [](const Arena& t) { rmsnorm_forward(t.get("out"), t.get("rstd"), t.get("x"), t.get("weight"), 1e-5f); },
          [](const Arena& t) {
            rmsnorm_backward(t.get("dx"), t.get("dweight"), t.get("dout"), t.get("x"), t.get("weight"), t.get("rstd"));
          },
          0, 0, 2.0 * N * H * el, 3.0 * N * H * el};
}

// The query projection (wq): H -> A·D.
OpCase linear(const OpDims& d, double el) {
  const int64_t N = d.N(), H = d.H, O = d.A * d.D;
  return {"linear", strf("%ldx%ldx%ld", N, O, H),
          {{"x", {N, H}, kIn}, {"w", {O, H}, kParam, 0.01}, {"out", {N, O}, kOut}},
          {},
          [](const Arena& t) { linear_forward(t.get("out"), t.get("x"), t.get("w")); },
          [](const Arena& t) { linear_backward(t.get("dx"), t.get("dw"), t.get("dout"), t.get("x"), t.get("w")); },
          2.0 * N * O * H, 4.0 * N * O * H, el * (N * H + O * H + N * O), el * (2 * N * H + O * H + N * O) + 8.0 * O * H};
}

// The experts' gate projection: E GEMMs of (C, H) x (F, H)ᵀ.
OpCase expert_linear(const OpDims& d, double el) {
  const int64_t E = d.E, C = d.C, H = d.H, F = d.F;
  return {"expert_linear", strf("E%ld %ldx%ldx%ld", E, C, F, H),
          {{"x", {E, C, H}, kIn}, {"w", {E, F, H}, kParam, 0.01}, {"out", {E, C, F}, kOut}},
          {},
          [](const Arena& t) { expert_linear_forward(t.get("out"), t.get("x"), t.get("w")); },
          [](const Arena& t) {
            expert_linear_backward(t.get("dx"), t.get("dw"), t.get("dout"), t.get("x"), t.get("w"));
          },
          2.0 * E * C * F * H, 4.0 * E * C * F * H, el * E * (C * H + F * H + C * F),
          el * E * (2 * C * H + F * H + C * F) + 8.0 * E * F * H};
}

OpCase swiglu(const OpDims& d, double el) {
  const int64_t E = d.E, C = d.C, F = d.F;
  return {"swiglu", strf("E%ld C%ld F%ld", E, C, F),
          {{"gate", {E, C, F}, kIn, 4.0}, {"up", {E, C, F}, kIn}, {"out", {E, C, F}, kOut}},
          {},
          [](const Arena& t) { swiglu_forward(t.get("out"), t.get("gate"), t.get("up")); },
          [](const Arena& t) { swiglu_backward(t.get("dgate"), t.get("dup"), t.get("dout"), t.get("gate"), t.get("up")); },
          0, 0, 3.0 * E * C * F * el, 5.0 * E * C * F * el};
}

// RoPE on the queries.
OpCase rope(const OpDims& d, double el) {
  const int64_t B = d.B, S = d.S, A = d.A, D = d.D;
  return {"rope", strf("S%ld A%ld D%ld", S, A, D),
          {{"x", {B, S, A, D}, kIn}, {"out", {B, S, A, D}, kOut}},
          {},
          [](const Arena& t) { rope_forward(t.get("out"), t.get("x"), 10000.f); },
          [](const Arena& t) { rope_backward(t.get("dx"), t.get("dout"), 10000.f); },
          0, 0, 2.0 * B * S * A * D * el, 2.0 * B * S * A * D * el};
}

// Causal GQA attention; FLOPs of the causal half (the bench's convention, model::FlopCount::executed).
OpCase attention(const OpDims& d, double el) {
  const int64_t B = d.B, S = d.S, A = d.A, G = d.G, D = d.D, N = d.N();
  const double fwd = 2.0 * double(B) * double(S) * double(S) * double(A * D);
  return {"attention", strf("S%ld A%ld G%ld D%ld causal", S, A, G, D),
          {{"q", {B, S, A, D}, kIn}, {"k", {B, S, G, D}, kIn}, {"v", {B, S, G, D}, kIn}, {"out", {B, S, A, D}, kOut},
           {"lse", {B, A, S}, kSaved}},
          {},
          [](const Arena& t) { attention_forward(t.get("out"), t.get("lse"), t.get("q"), t.get("k"), t.get("v")); },
          [](const Arena& t) {
            attention_backward(t.get("dq"), t.get("dk"), t.get("dv"), t.get("dout"), t.get("q"), t.get("k"), t.get("v"),
                               t.get("out"), t.get("lse"));
          },
          fwd, 2.5 * fwd, el * (2 * N * A * D + 2 * N * G * D), el * (4 * N * A * D + 4 * N * G * D)};
}

// The embedding of a vocabulary shard [V/2, 3V/2): half the tokens fall outside it.
OpCase embedding(const OpDims& d, double el) {
  const int64_t N = d.N(), H = d.H, V = d.V;
  return {"embedding", strf("N%ld V%ld H%ld", N, V, H),
          {{"tokens", {N}, kIndex}, {"table", {V, H}, kParam}, {"out", {N, H}, kOut}},
          [V](const Arena& t) { write_indices(t.get("tokens"), [V](int64_t n) { return int32_t((n * 7919) % (2 * V)); }); },
          [V](const Arena& t) { embedding_forward(t.get("out"), t.get("tokens"), t.get("table"), V / 2); },
          [V](const Arena& t) { embedding_backward(t.get("dtable"), t.get("dout"), t.get("tokens"), V / 2); },
          0, 0, 2.0 * N * H * el, 2.0 * N * H * el + 8.0 * N * H};
}

OpCase softmax(const OpDims& d, double el) {
  const int64_t N = d.N(), E = d.E;
  return {"softmax", strf("N%ld E%ld", N, E),
          {{"logits", {N, E}, kIn, 3.0}, {"probs", {N, E}, kOut}},
          {},
          [](const Arena& t) { softmax_forward(t.get("probs"), t.get("logits")); },
          [](const Arena& t) { softmax_backward(t.get("dlogits"), t.get("dprobs"), t.get("probs")); },
          0, 0, 2.0 * N * E * el, 3.0 * N * E * el};
}

OpCase topk_weights(const OpDims& d, double el) {
  const int64_t N = d.N(), E = d.E, K = d.K;
  return {"topk_weights", strf("N%ld E%ld K%ld", N, E, K),
          {{"probs", {N, E}, kIn}, {"expert_idx", {N, K}, kIndex}, {"slot", {N, K}, kIndex}, {"weight", {N, K}, kOut}},
          route_tokens(d),
          [](const Arena& t) { topk_weights_forward(t.get("weight"), t.get("probs"), t.get("expert_idx")); },
          [](const Arena& t) { topk_weights_backward(t.get("dprobs"), t.get("dweight"), t.get("expert_idx")); },
          0, 0, el * N * (E + K), el * N * (E + K)};
}

// Renormalised top-k weights (model.router_norm_topk) after the softmax, as the router runs them: renormalisation is
// scale-invariant in probs, so its gradient is checked through the softmax (probs as the op's argument alone would
// be uniform in [-1, 1) and could sum to zero). At least 4 experts and top-2, so the renormalisation is not trivial
// (K = E makes every weight the plain probability); each token's K experts are distinct.
OpCase topk_weights_norm(const OpDims& d, double el) {
  const int64_t N = d.N(), E = std::max<int64_t>(d.E, 4), K = std::max<int64_t>(d.K, 2);
  return {"topk_weights_norm", strf("N%ld E%ld K%ld", N, E, K),
          {{"logits", {N, E}, kIn, 2.0},
           {"probs", {N, E}, kSaved, 1.0, OpDtype::act},
           {"dprobs_work", {N, E}, kSaved, 1.0, OpDtype::act},
           {"expert_idx", {N, K}, kIndex},
           {"weight", {N, K}, kOut}},
          [E, K](const Arena& t) {
            write_indices(t.get("expert_idx"), [E, K](int64_t i) {
              const int64_t n = i / K, k = i % K;
              return int32_t((n * 3 + k * (1 + n % 3)) % E);
            });
          },
          [](const Arena& t) {
            softmax_forward(t.get("probs"), t.get("logits"));
            topk_weights_norm_forward(t.get("weight"), t.get("probs"), t.get("expert_idx"));
          },
          [](const Arena& t) {
            fill_zero(t.get("dprobs_work"));
            topk_weights_norm_backward(t.get("dprobs_work"), t.get("dweight"), t.get("probs"), t.get("expert_idx"));
            softmax_backward(t.get("dlogits"), t.get("dprobs_work"), t.get("probs"));
          },
          0, 0, el * N * (2 * E + K), el * N * (3 * E + 2 * K)};
}

OpCase moe_dispatch(const OpDims& d, double el) {
  const int64_t N = d.N(), H = d.H, E = d.E, C = d.C, K = d.K;
  return {"moe_dispatch", strf("N%ld -> E%ld C%ld H%ld", N, E, C, H),
          {{"x", {N, H}, kIn}, {"expert_idx", {N, K}, kIndex}, {"slot", {N, K}, kIndex}, {"buf", {E, C, H}, kOut}},
          route_tokens(d),
          [](const Arena& t) { moe_dispatch_forward(t.get("buf"), t.get("x"), t.get("expert_idx"), t.get("slot")); },
          [](const Arena& t) { moe_dispatch_backward(t.get("dx"), t.get("dbuf"), t.get("expert_idx"), t.get("slot")); },
          0, 0, 2.0 * N * H * el, 2.0 * N * H * el};
}

OpCase moe_combine(const OpDims& d, double el) {
  const int64_t N = d.N(), H = d.H, E = d.E, C = d.C, K = d.K;
  return {"moe_combine", strf("E%ld C%ld H%ld -> N%ld", E, C, H, N),
          {{"ebuf", {E, C, H}, kIn}, {"weight", {N, K}, kIn}, {"expert_idx", {N, K}, kIndex}, {"slot", {N, K}, kIndex},
           {"y", {N, H}, kOut}},
          route_tokens(d),
          [](const Arena& t) {
            moe_combine_forward(t.get("y"), t.get("ebuf"), t.get("weight"), t.get("expert_idx"), t.get("slot"));
          },
          [](const Arena& t) {
            moe_combine_backward(t.get("debuf"), t.get("dweight"), t.get("dy"), t.get("ebuf"), t.get("weight"),
                                 t.get("expert_idx"), t.get("slot"));
          },
          0, 0, 2.0 * N * H * el, 3.0 * N * H * el};
}

// The LM head's loss over the whole vocabulary: forward in three passes (row max, partial sums, finish); the
// backward is the gradient of scale·Σ losses (scale 1/N, the mean), so losses' cotangent is that constant.
OpCase cross_entropy(const OpDims& d, double el) {
  const int64_t N = d.N(), V = d.V;
  const float scale = 1.0f / float(N);
  OpArg losses{"losses", {N}, kOut, 1.0, OpDtype::stat, double(scale)};
  return {"cross_entropy", strf("N%ld V%ld", N, V),
          {{"logits", {N, V}, kIn, 4.0}, {"targets", {N}, kIndex}, {"rowmax", {N}, kSaved}, {"sumexp", {N}, kSaved},
           {"target_logit", {N}, kSaved}, {"lse", {N}, kSaved}, losses},
          [V](const Arena& t) { write_indices(t.get("targets"), [V](int64_t n) { return int32_t((n * 7919) % V); }); },
          [](const Arena& t) {
            logits_rowmax(t.get("rowmax"), t.get("logits"));
            cross_entropy_partial(t.get("sumexp"), t.get("target_logit"), t.get("logits"), t.get("rowmax"),
                                  t.get("targets"), 0);
            cross_entropy_finish(t.get("losses"), t.get("lse"), t.get("sumexp"), t.get("rowmax"), t.get("target_logit"),
                                 t.get("targets"));
          },
          [scale](const Arena& t) {
            cross_entropy_backward(t.get("dlogits"), t.get("logits"), t.get("targets"), t.get("lse"), 0, scale);
          },
          0, 0, 2.0 * N * V * el, 2.0 * N * V * el};
}

// The router's auxiliary losses: each a scalar whose backward takes its coefficient (dloss) as a constant and adds
// to the router's gradient. Load balancing is linear in probs for the counts of a fixed assignment.
OpCase load_balance_loss(const OpDims& d, double el) {
  const int64_t N = d.N(), E = d.E, K = d.K;
  const float dloss = 0.01f;
  return {"load_balance_loss", strf("N%ld E%ld K%ld", N, E, K),
          {{"probs", {N, E}, kIn}, {"counts", {E}, kIndex}, {"loss", {1}, kOut, 1.0, OpDtype::stat, double(dloss)}},
          [N, E](const Arena& t) { write_indices(t.get("counts"), [N, E](int64_t e) { return int32_t((N + e) / E); }); },
          [K](const Arena& t) { load_balance_loss_forward(t.get("loss"), t.get("probs"), t.get("counts"), K); },
          [K, dloss](const Arena& t) { load_balance_loss_backward(t.get("dprobs"), t.get("counts"), K, dloss); },
          0, 0, el * N * E, el * N * E};
}

// z-loss: mean over tokens of logsumexp(logits)²; the backward reads the softmax the router computed beside it.
OpCase router_z_loss(const OpDims& d, double el) {
  const int64_t N = d.N(), E = d.E;
  const float dloss = 0.001f;
  return {"router_z_loss", strf("N%ld E%ld", N, E),
          {{"logits", {N, E}, kIn, 3.0}, {"probs", {N, E}, kSaved, 1.0, OpDtype::act}, {"lse", {N}, kSaved},
           {"loss", {1}, kOut, 1.0, OpDtype::stat, double(dloss)}},
          {},
          [](const Arena& t) {
            softmax_forward(t.get("probs"), t.get("logits"));
            router_z_loss_forward(t.get("loss"), t.get("lse"), t.get("logits"));
          },
          [dloss](const Arena& t) { router_z_loss_backward(t.get("dlogits"), t.get("lse"), t.get("probs"), dloss); },
          0, 0, 2.0 * el * N * E, 2.0 * el * N * E};
}

// The output projection (wo) with the residual stream as the GEMM's C operand: forward only (its backward is
// linear_backward, and the residual's gradient is the output's).
OpCase linear_residual(const OpDims& d, double el) {
  const int64_t N = d.N(), H = d.H, I = d.A * d.D;
  return {"linear_residual", strf("%ldx%ldx%ld", N, H, I),
          {{"x", {N, I}, kIn}, {"w", {H, I}, kParam, 0.01}, {"residual", {N, H}, kIn}, {"out", {N, H}, kOut}},
          {},
          [](const Arena& t) { linear_forward_residual(t.get("out"), t.get("x"), t.get("w"), t.get("residual")); },
          {},
          2.0 * N * H * I, 0, el * (N * I + H * I + 2 * N * H), 0};
}

}  // namespace

std::vector<OpCase> op_cases(const OpDims& d, double el) {
  MONTA_CHECK(d.A % d.G == 0 && d.H > 0 && d.C > 0 && d.N() > 0, "op_cases: widths do not fit together");
  return {
      rmsnorm(d, el),      linear(d, el),       expert_linear(d, el), swiglu(d, el),
      rope(d, el),         attention(d, el),    embedding(d, el),     softmax(d, el),
      topk_weights(d, el), topk_weights_norm(d, el), moe_dispatch(d, el), moe_combine(d, el),   cross_entropy(d, el),
      load_balance_loss(d, el), router_z_loss(d, el), linear_residual(d, el),
  };
}

namespace {
bool has_grad(const OpArg& a) {
  return a.kind == OpArgKind::input || a.kind == OpArgKind::param || (a.kind == OpArgKind::output && std::isnan(a.cotangent));
}
}  // namespace

Arena op_case_arena(const OpCase& c, Device dev, const OpPrecision& p) {
  std::vector<TensorSpec> specs;
  for (const OpArg& a : c.args) {
    const bool stat = a.dtype == OpDtype::stat || (a.dtype == OpDtype::by_kind && a.kind == OpArgKind::saved);
    const DType t = a.kind == OpArgKind::index ? DType::i32 : stat ? p.saved : p.act;
    specs.push_back({a.name, a.shape, t});
  }
  for (const OpArg& a : c.args)
    if (has_grad(a)) specs.push_back({"d" + a.name, a.shape, a.kind == OpArgKind::param ? p.param_grad : p.act});
  return Arena("op case " + c.name, dev, specs);
}

void op_case_fill(const OpCase& c, const Arena& t, uint64_t seed) {
  for (size_t i = 0; i < t.count(); ++i) fill_zero(t.at(i));
  uint64_t k = seed * 1000;
  for (const OpArg& a : c.args) {
    if (a.kind == OpArgKind::input || a.kind == OpArgKind::param) fill_pseudo_random(t.get(a.name), ++k, a.scale);
    if (a.kind == OpArgKind::output && has_grad(a)) fill_pseudo_random(t.get("d" + a.name), ++k, 1.0);
  }
  if (c.indices) c.indices(t);
}

void op_case_zero_grads(const OpCase& c, const Arena& t) {
  for (const OpArg& a : c.args)
    if (a.kind == OpArgKind::input || a.kind == OpArgKind::param) fill_zero(t.get("d" + a.name));
}

void write_indices(Tensor t, const std::function<int32_t(int64_t)>& value) {
  MONTA_CHECK(t.dtype == DType::i32, "write_indices: " + t.str() + " is not i32");
  std::vector<int32_t> h(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) h[size_t(i)] = value(i);
  copy(make_view(t.data, {t.numel()}, DType::i32, t.device), Tensor(h.data(), {t.numel()}, DType::i32));
}

}  // namespace monta::engine
