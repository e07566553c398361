// Forward and backward of the whole model. Gradient rule (STYLE.md 3): parameter gradients accumulate,
// activation gradients overwrite, the residual-stream gradient dx_ accumulates across the two branches.
#include "model/model.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <tuple>
#include <utility>

#include "comm/exchange.h"
#include "comm/fp8_dispatch.h"
#include "engine/check.h"
#include "engine/trace.h"
#include "engine/ops/attention.h"
#include "engine/ops/cross_entropy.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/embedding.h"
#include "engine/ops/fp8.h"
#include "engine/ops/linear.h"
#include "engine/ops/moe_permute.h"
#include "engine/ops/rmsnorm.h"
#include "engine/ops/rope.h"
#include "engine/ops/router.h"
#include "engine/ops/swiglu.h"
#include "model/dropless.h"
#include "model/fp8_experts.h"

namespace monta::model {

using namespace monta::engine;

// The activation tensors in allocation order, each with the field it binds to (null when only sizing).
struct Model::SpecList {
  std::vector<TensorSpec> specs;
  std::vector<Tensor*> targets;
  void add(Tensor* t, const std::string& name, std::vector<int64_t> shape, DType dt) {
    specs.push_back({name, std::move(shape), dt});
    targets.push_back(t);
  }
};

std::vector<Model::Shared> Model::shared_fields(Recompute mode, bool exchanged) {
  using L = Layer;
  switch (mode) {
    case Recompute::none: return {};
    case Recompute::selective: {
      // Elementwise re-computation only: both norm outputs share one buffer (backward re-computes each right before
      // its use), the SwiGLU output is re-computed per expert chunk, and the dispatch buffer is read by nothing in
      // backward once the exchange has sent it (without an exchange it is the experts' input, so it stays).
      std::vector<Shared> s{{&L::xn1, &L::xn1}, {&L::xn2, &L::xn1}, {&L::act, &L::act}};
      if (exchanged) s.push_back({&L::dbuf, &L::dbuf});
      return s;
    }
    case Recompute::full: {
      std::vector<Shared> s;
      for (Tensor L::*f : {&L::xn1, &L::rstd1, &L::q, &L::k, &L::v, &L::ao, &L::lse, &L::h, &L::xn2, &L::rstd2,
                           &L::rlogits, &L::probs, &L::expert_idx, &L::weight, &L::zlse, &L::dbuf, &L::y, &L::gate,
                           &L::up, &L::act, &L::eo, &L::cbuf})
        s.push_back({f, f});
      return s;
    }
  }
  return {};
}

void Model::declare_activations(const ModelConfig& cfg, const Shapes& s, DType act, bool exchanged, Recompute mode,
                                bool fp8_dispatch, Model* self, SpecList& L) {
  const DType stat = stat_dtype(act);
  const std::vector<Shared> shared = shared_fields(mode, exchanged);
  // Nl: the tokens of the parts sequence parallelism splits over TP (norms, residual stream, router); N otherwise.
  const int64_t N = s.N, Nl = s.N_l, H = s.H, D = s.D;
  // A layer tensor: its own buffer per layer, or (recomputed) the shared work buffer, declared once with layer 0.
  auto add = [&](int64_t l, Tensor Layer::*f, const char* name, std::vector<int64_t> shape, DType dt) {
    for (const Shared& sh : shared) {
      if (sh.field != f) continue;
      if (l == 0 && sh.work == f) L.add(self ? &(self->work_.*f) : nullptr, std::string("work.") + name, shape, dt);
      return;
    }
    L.add(self ? &(self->layers_[size_t(l)].*f) : nullptr, "l" + std::to_string(l) + "." + name, std::move(shape), dt);
  };
  for (int64_t l = 0; l < cfg.layers; ++l) {
    add(l, &Layer::x, "x", {Nl, H}, act);
    add(l, &Layer::xn1, "xn1", {Nl, H}, act);
    add(l, &Layer::rstd1, "rstd1", {Nl}, stat);
    add(l, &Layer::q, "q", {N, s.A_l * D}, act);
    add(l, &Layer::k, "k", {N, s.G_l * D}, act);
    add(l, &Layer::v, "v", {N, s.G_l * D}, act);
    add(l, &Layer::ao, "ao", {N, s.A_l * D}, act);
    add(l, &Layer::lse, "lse", {s.B, s.A_l, s.S}, stat);
    add(l, &Layer::h, "h", {Nl, H}, act);
    add(l, &Layer::xn2, "xn2", {Nl, H}, act);
    add(l, &Layer::rstd2, "rstd2", {Nl}, stat);
    add(l, &Layer::rlogits, "rlogits", {Nl, s.E}, act);
    add(l, &Layer::probs, "probs", {Nl, s.E}, act);
    add(l, &Layer::expert_idx, "expert_idx", {Nl, s.K}, DType::i32);
    add(l, &Layer::weight, "weight", {Nl, s.K}, act);
    add(l, &Layer::zlse, "zlse", {Nl}, stat);
    add(l, &Layer::dbuf, "dbuf", {s.E, s.C, H}, act);
    if (exchanged) add(l, &Layer::y, "y", {s.E_l, s.EC, H}, act);
    add(l, &Layer::gate, "gate", {s.E_l, s.EC, s.F_l}, act);
    add(l, &Layer::up, "up", {s.E_l, s.EC, s.F_l}, act);
    add(l, &Layer::act, "act", {s.E_l, s.EC, s.F_l}, act);
    add(l, &Layer::eo, "eo", {s.E_l, s.EC, H}, act);
    if (exchanged) add(l, &Layer::cbuf, "cbuf", {s.E, s.C, H}, act);
  }
  // The micro-batch's scalars side by side (every layer's aux and z losses and expert counts, then the CE sum), so one
  // copy of that byte range brings them all to the host (read_scalars).
  L.add(self ? &self->router_stats_ : nullptr, "router_stats", {cfg.layers, 2}, stat);  // (L, 2): aux, z
  L.add(self ? &self->counts_ : nullptr, "counts", {cfg.layers, s.E}, DType::i32);        // (L, E): choices per expert before dropping
  L.add(self ? &self->ce_sum_ : nullptr, "ce_sum", {1}, stat);
  L.add(self ? &self->slots_ : nullptr, "slots", {cfg.layers, Nl, s.K}, DType::i32);
  L.add(self ? &self->tokens_ : nullptr, "tokens", {N}, DType::i32);
  L.add(self ? &self->targets_ : nullptr, "targets", {N}, DType::i32);
  L.add(self ? &self->x_final_ : nullptr, "x_final", {Nl, H}, act);
  L.add(self ? &self->xf_ : nullptr, "xf", {Nl, H}, act);
  L.add(self ? &self->rstdf_ : nullptr, "rstdf", {Nl}, stat);
  L.add(self ? &self->logits_ : nullptr, "logits", {N, s.V_l}, act);
  L.add(self ? &self->rowmax_ : nullptr, "rowmax", {N}, stat);
  L.add(self ? &self->sumexp_ : nullptr, "sumexp", {N}, stat);
  L.add(self ? &self->tlogit_ : nullptr, "tlogit", {N}, stat);
  L.add(self ? &self->lse_ : nullptr, "lse", {N}, stat);
  L.add(self ? &self->losses_ : nullptr, "losses", {N}, stat);
  // Backward scratch, reused by every layer.
  L.add(self ? &self->dx_ : nullptr, "dx", {Nl, H}, act);
  L.add(self ? &self->dxn_ : nullptr, "dxn", {N, H}, act);
  L.add(self ? &self->dq_ : nullptr, "dq", {N, s.A_l * D}, act);
  L.add(self ? &self->dk_ : nullptr, "dk", {N, s.G_l * D}, act);
  L.add(self ? &self->dv_ : nullptr, "dv", {N, s.G_l * D}, act);
  L.add(self ? &self->dao_ : nullptr, "dao", {N, s.A_l * D}, act);
  L.add(self ? &self->dcbuf_ : nullptr, "dcbuf", {s.E, s.C, H}, act);
  if (exchanged) L.add(self ? &self->deo_ : nullptr, "deo", {s.E_l, s.EC, H}, act);
  L.add(self ? &self->dact_ : nullptr, "dact", {s.E_l, s.EC, s.F_l}, act);
  L.add(self ? &self->dgate_ : nullptr, "dgate", {s.E_l, s.EC, s.F_l}, act);
  L.add(self ? &self->dup_ : nullptr, "dup", {s.E_l, s.EC, s.F_l}, act);
  L.add(self ? &self->dy_ : nullptr, "dy", {s.E_l, s.EC, H}, act);
  if (exchanged) L.add(self ? &self->ddbuf_ : nullptr, "ddbuf", {s.E, s.C, H}, act);
  L.add(self ? &self->dweight_ : nullptr, "dweight", {Nl, s.K}, act);
  L.add(self ? &self->dprobs_ : nullptr, "dprobs", {Nl, s.E}, act);
  L.add(self ? &self->drlogits_ : nullptr, "drlogits", {Nl, s.E}, act);
  L.add(self ? &self->dlogits_ : nullptr, "dlogits", {N, s.V_l}, act);
  if (cfg.fp8_experts()) {  // the largest FP8 GEMM's activation operands (the weights' codes are cached)
    int64_t bytes = std::max(fp8_expert_scratch_bytes(s.E_l, s.EC, H, s.F_l, false),  // gate/up: H -> F_l
                             fp8_expert_scratch_bytes(s.E_l, s.EC, s.F_l, H, false));  // down: F_l -> H
    if (cfg.fp8_all())  // the attention projections: Q, K/V (H -> A_l·D, G_l·D) and the output (A_l·D -> H)
      for (const auto& [i, o] : {std::pair{H, s.A_l * D}, {H, s.G_l * D}, {s.A_l * D, H}})
        bytes = std::max(bytes, fp8_expert_scratch_bytes(1, N, i, o, false));
    L.add(self ? &self->fp8_scratch_ : nullptr, "fp8_scratch", {bytes}, DType::u8);
  }
  if (fp8_dispatch) {  // packed FP8 token rows: sent (or rounded through, without an exchange) and received
    const int64_t Wq = comm::fp8_dispatch_width(H, act);
    L.add(self ? &self->dispatch_q_ : nullptr, "dispatch_q", {s.E, s.C, Wq}, act);
    if (exchanged) L.add(self ? &self->expert_q_ : nullptr, "expert_q", {s.E_l, s.EC, Wq}, act);
  }
  if (cfg.dropless()) L.add(self ? &self->load_ : nullptr, "load", {int64_t(s.e), s.E}, DType::i32);
  if (s.sp) declare_sequence_parallel(s, act, self, L);
}

// Sequence parallelism's tensors (model.h).
void Model::declare_sequence_parallel(const Shapes& s, DType act, Model* self, SpecList& L) {
  L.add(self ? &self->gather_ : nullptr, "sp.gather", {s.N, s.H}, act);
  L.add(self ? &self->dxn_l_ : nullptr, "sp.dxn_local", {s.N_l, s.H}, act);
  L.add(self ? &self->choice_counts_ : nullptr, "sp.choice_counts", {int64_t(s.t), s.K, s.E}, DType::i32);
}

std::vector<TensorSpec> Model::fp8_weight_specs(const ModelConfig& cfg, const Shapes& s) {
  std::vector<TensorSpec> out;
  if (!cfg.fp8_experts()) return out;
  const int64_t H = s.H, Q = s.A_l * s.D, KV = s.G_l * s.D;
  for (int64_t l = 0; l < cfg.layers; ++l) {  // the order the constructor binds them in (fp8_cache_)
    const std::string P = "l" + std::to_string(l) + ".";
    std::vector<std::vector<TensorSpec>> w = {model::fp8_weight_specs(P + "w_gate", s.E_l, s.F_l, H),
                                              model::fp8_weight_specs(P + "w_up", s.E_l, s.F_l, H),
                                              model::fp8_weight_specs(P + "w_down", s.E_l, H, s.F_l)};
    if (cfg.fp8_all())
      for (auto [name, o, i] : {std::tuple{"wq", Q, H}, {"wk", KV, H}, {"wv", KV, H}, {"wo", H, Q}})
        w.push_back(model::fp8_weight_specs(P + name, 1, o, i));
    for (auto& v : w) out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

std::vector<TensorSpec> Model::activation_specs(const ModelConfig& cfg, const Shapes& s, DType act, bool exchanged,
                                                Recompute recompute, bool fp8_dispatch) {
  SpecList L;
  declare_activations(cfg, s, act, exchanged, recompute, fp8_dispatch, nullptr, L);
  return L.specs;
}

Model::Model(const ModelConfig& cfg, const Shapes& s, const ParallelContext& par, ParamStore& params, DType act,
             Recompute recompute, bool fp8_dispatch)
    : cfg_(cfg), s_(s), par_(par), params_(params), lp_(bind_layer_params(params, cfg.layers)),
      op_(bind_outer_params(params)), act_(act), stat_(stat_dtype(act)), recompute_(recompute),
      fp8_dispatch_(fp8_dispatch) {
  if (cfg.router_bias_update > 0) router_bias_ = &params.get("router_bias");
  const Device dev = params.device();
  layers_.resize(size_t(cfg.layers));
  const bool exchanged = par.exchange != nullptr;
  SpecList L;
  declare_activations(cfg, s, act, exchanged, recompute, fp8_dispatch, this, L);
  acts_ = Arena("activations", dev, L.specs);
  for (size_t i = 0; i < L.targets.size(); ++i) *L.targets[i] = acts_.at(i);
  const std::vector<Shared> shared = shared_fields(recompute, exchanged);
  for (int64_t l = 0; l < cfg.layers; ++l) {
    auto& a = layers_[size_t(l)];
    for (const Shared& sh : shared) a.*sh.field = work_.*sh.work;
    char* row = static_cast<char*>(router_stats_.rows(l, 1).data);
    a.aux = Tensor(row, {1}, stat_, dev);
    a.z = Tensor(row + dtype_size(stat_), {1}, stat_, dev);
    a.slot = slots_.rows(l, 1).view({s.N_l, s.K});
    a.counts = counts_.rows(l, 1).view({s.E});
  }
  // Without an exchange the expert buffers are the dispatch buffers themselves (E_l = E, e·C = C).
  for (auto& a : layers_) {
    if (!exchanged) {
      a.y = a.dbuf;
      a.cbuf = a.eo;
    }
  }
  if (!exchanged) {
    deo_ = dcbuf_;
    ddbuf_ = dy_;
  }
  // The FP8 weights' codes, bound in fp8_weight_specs' order.
  fp8_weights_ = Arena("fp8_weights", dev, fp8_weight_specs(cfg, s));
  for (size_t l = 0; l < lp_.size() && fp8_weights_.count() > 0; ++l) {
    const LayerParams& w = lp_[l];
    std::vector<const Param*> ps = {w.w_gate, w.w_up, w.w_down};
    if (cfg.fp8_all()) ps.insert(ps.end(), {w.wq, w.wk, w.wv, w.wo});
    for (const Param* p : ps) {
      const Fp8Weight codes = fp8_weight_bind(fp8_weights_, 4 * fp8_cache_.size());
      MONTA_CHECK(codes.q.numel() == p->compute.numel(), "fp8 weight codes of " + p->name + " sized wrong");
      fp8_cache_.push_back({p, codes});
    }
  }
}

std::vector<Model::LayerParams> Model::bind_layer_params(ParamStore& params, int layers) {
  std::vector<LayerParams> out;
  for (int l = 0; l < layers; ++l) {
    const std::string P = "layers." + std::to_string(l) + ".";
    auto get = [&](const char* name) { return &params.get(P + name); };
    out.push_back({get("attn_norm"), get("wq"), get("wk"), get("wv"), get("wo"), get("ffn_norm"), get("router"),
                   get("w_gate"), get("w_up"), get("w_down")});
  }
  return out;
}
Model::OuterParams Model::bind_outer_params(ParamStore& params) {
  return {&params.get("embed"), &params.get("final_norm"), &params.get("lm_head")};
}

void Model::linear_backward_w(Tensor dx, Param& w, const Tensor& dout, const Tensor& x, Write dx_write) {
  const GradWrite g = params_.grad_write(w);
  linear_backward(dx, g.grad, dout, x, w.compute, dx_write, g.write);
}

Fp8Weight Model::fp8_codes(const Tensor& w) {
  const char* at = static_cast<const char*>(w.data);
  for (Fp8Cached& c : fp8_cache_) {
    const Tensor& whole = c.p->compute;
    const char* begin = static_cast<const char*>(whole.data);
    if (at < begin || at >= begin + whole.bytes()) continue;
    const int64_t E = c.codes.q.dim(0), per = whole.numel() / E;  // elements per expert
    // Lazily, at the first use after publish_compute: under ZeRO-1 that is after the forward awaited the gather.
    if (c.version != c.p->version || fp8_quantize_every_use) {
      fp8_weight_quantize(c.codes, whole.view({E, c.codes.q.dim(1), c.codes.q.dim(2)}));
      c.version = c.p->version;
    }
    // w may be experts [j, j + n) of the weight (dropless stage B: one call per run of filled rows of one expert).
    const int64_t off = int64_t(at - begin) / int64_t(engine::dtype_size(whole.dtype));
    const int64_t j = off / per, n = w.numel() / per;
    MONTA_CHECK(off % per == 0 && w.numel() % per == 0 && n >= 1 && j + n <= E,
                "model: FP8 codes asked for " + w.str() + ", not whole experts of " + c.p->name);
    if (j == 0 && n == E) return c.codes;
    return {c.codes.q.rows(j, n), c.codes.scale.rows(j, n), c.codes.qt.rows(j, n), c.codes.scale_t.rows(j, n)};
  }
  MONTA_CHECK(false, "model: no FP8 codes for a weight of shape " + w.str());
}

void Model::expert_forward(Tensor out, const Tensor& x, const Tensor& w, bool x_quantised) {
  if (!cfg_.fp8_experts()) return expert_linear_forward(out, x, w);
  const Fp8Weight codes = fp8_codes(w);
  fp8_expert_linear_forward(out, x, w, fp8_scratch_, x_quantised, &codes);
}
void Model::expert_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                            Write dx_write, Write dw_write) {
  if (!cfg_.fp8_experts()) return expert_linear_backward(dx, dw, dout, x, w, dx_write, dw_write);
  const Fp8Weight codes = dx.empty() ? Fp8Weight{} : fp8_codes(w);
  fp8_expert_linear_backward(dx, dw, dout, x, w, dx_write, dw_write, fp8_scratch_, dx.empty() ? nullptr : &codes,
                             cfg_.fp8_wgrad);
}

// (N, K) as a batch of one expert: the FP8 GEMMs' shapes.
static Tensor one_batch(const Tensor& t) { return t.view({1, t.dim(0), t.dim(1)}); }

void Model::proj_forward(Tensor out, const Tensor& x, const Param& w, bool x_quantised) {
  if (!cfg_.fp8_all()) return linear_forward(out, x, w.compute);
  const Fp8Weight codes = fp8_codes(w.compute);
  fp8_expert_linear_forward(one_batch(out), one_batch(x), one_batch(w.compute), fp8_scratch_, x_quantised, &codes);
}
void Model::proj_backward(Tensor dx, Param& w, const Tensor& dout, const Tensor& x, Write dx_write) {
  if (!cfg_.fp8_all()) return linear_backward_w(dx, w, dout, x, dx_write);
  const GradWrite g = params_.grad_write(w);
  const Fp8Weight codes = fp8_codes(w.compute);
  fp8_expert_linear_backward(one_batch(dx), one_batch(g.grad), one_batch(dout), one_batch(x), one_batch(w.compute),
                             dx_write, g.write, fp8_scratch_, &codes, cfg_.fp8_wgrad);
}

void Model::tp_all_reduce(Tensor t, bool max) {
  if (par_.tp > 1) par_.tp_comm->all_reduce(t, max ? comm::ReduceOp::max : comm::ReduceOp::sum);
}

void Model::exchange_experts(Tensor out, Tensor z, Tensor y, const Tensor& x,
                             const std::function<void(int)>& experts, MicroResult& r, bool fp8) {
  // The packed FP8 buffers at the capacity of x and y (this step's when dropless).
  if (!par_.exchange) {
    if (fp8) comm::fp8_round_trip(y, capacity_view(dispatch_q_, y.dim(1)));  // y is x: a sent token's rounding
    experts(0);
    return;
  }
  const auto meter = [&](bool on) {
    if (!meter_exchange) return;
    par_.tp_comm->set_metering(on);
    par_.ep_comm->set_metering(on);
  };
  meter(true);
  const comm::ExchangeStats st =
      fp8 ? comm::fp8_dispatch_experts_combine(*par_.exchange, out, z, y, x, capacity_view(dispatch_q_, x.dim(1)),
                                               capacity_view(expert_q_, y.dim(1)), experts)
          : par_.exchange->dispatch_experts_combine(out, z, y, x, experts);
  meter(false);
  r.exchange_s += st.seconds;
  r.exchange_bytes += double(st.ep_bytes + st.tp_bytes);
}

void Model::reduce_expert_partials(Tensor t, int k) {
  if (par_.exchange && par_.exchange->reduce_tp_partials(t, k)) return;  // reduce-scatter where combine reads
  tp_all_reduce(t);
}

Tensor Model::expert_chunk(const Tensor& t, int k) const { return par_.exchange ? par_.exchange->expert_chunk(t, k) : t; }

void Model::route_topk(int l, Layer& a, int64_t capacity) {
  if (router_bias_)  // the balancing bias steers the choice only (DeepSeek-V3); the combine weights never see it
    router_topk_assign_biased(a.expert_idx, a.slot, a.counts, a.probs, router_bias_->compute.rows(l, 1).view({s_.E}),
                              capacity);
  else
    router_topk_assign(a.expert_idx, a.slot, a.counts, a.probs, capacity);
}

void Model::set_layer_capacity(int l) {
  auto& a = layers_[size_t(l)];
  if (!cfg_.dropless()) {
    a.cap = s_.C;
    return;
  }
  a.loads = dropless_loads(a.counts, load_, par_.exchange ? par_.ep_comm : nullptr);
  a.cap = dropless_step_capacity(*std::max_element(a.loads.begin(), a.loads.end()), s_.N);
  apply_layer_capacity(a);
}

void Model::apply_layer_capacity(const Layer& a) {
  if (!cfg_.dropless() || !par_.exchange) return;
  par_.exchange->set_capacity(a.cap);
  par_.exchange->set_loads(a.loads);
}

std::optional<std::vector<comm::ExpertRun>> Model::expert_calls(const Layer& a, int k, int64_t rows) const {
  if (!cfg_.dropless() || !dropless_filled_rows) return std::nullopt;
  const std::vector<comm::ExpertRun> runs =
      par_.exchange ? par_.exchange->expert_runs(k) : comm::filled_runs(1, s_.E, 0, 0, a.cap, a.loads);
  std::vector<comm::ExpertRun> calls = dropless_gemm_runs(runs, rows, dropless_row_quantum);
  if (dropless_runs_cover_all(calls, s_.E_l, rows)) return std::nullopt;
  return calls;
}

namespace {
// Rows [c.row, c.row + c.count) of local expert c.j of an expert-side tensor t (E_l, R, W): a (1, count, W) view.
Tensor call_rows(const Tensor& t, const comm::ExpertRun& c) {
  const int64_t at = (c.j * t.dim(1) + c.row) * t.dim(2);
  return make_view(static_cast<char*>(t.data) + size_t(at) * dtype_size(t.dtype), {1, c.count, t.dim(2)}, t.dtype,
                   t.device);
}
}  // namespace

void Model::layer_forward(int l, const Tensor& x_in, Tensor x_out, MicroResult& r) {
  const engine::TraceRange trace("layer " + std::to_string(l) + " forward");
  auto& a = layers_[size_t(l)];
  const LayerParams& w = lp_[size_t(l)];
  const float eps = float(cfg_.norm_eps), theta = float(cfg_.rope_theta);
  if (a.x.data != x_in.data) copy(a.x, x_in);
  // Attention: column-parallel Q/K/V by heads, row-parallel output projection + all-reduce over TP.
  rmsnorm_forward(a.xn1, a.rstd1, a.x, w.attn_norm->compute, eps);
  const Tensor xn1 = whole_tokens(a.xn1);  // sequence parallel: all-gathered over TP
  proj_forward(a.q, xn1, *w.wq);
  proj_forward(a.k, xn1, *w.wk, /*x_quantised=*/true);  // FP8: q(xn1) from the Q projection, still in the scratch
  proj_forward(a.v, xn1, *w.wv, /*x_quantised=*/true);
  Tensor q4 = a.q.view({s_.B, s_.S, s_.A_l, s_.D}), k4 = a.k.view({s_.B, s_.S, s_.G_l, s_.D});
  Tensor v4 = a.v.view({s_.B, s_.S, s_.G_l, s_.D});
  rope_forward(q4, q4, theta);
  rope_forward(k4, k4, theta);
  attention_forward(a.ao.view({s_.B, s_.S, s_.A_l, s_.D}), a.lse, q4, k4, v4);
  // h = x + ao · woᵀ with the residual added by the GEMM; under TP only rank 0 adds it, and the all-reduce sums.
  // Sequence parallel: the partial sums of every token are reduce-scattered to this rank's tokens, then x is added.
  if (s_.sp) {
    sp_output_projection(a.h, a.ao, *w.wo, a.x);
  } else if (cfg_.fp8_all()) {  // FP8: the residual added after the GEMM
    proj_forward(a.h, a.ao, *w.wo);
    if (par_.tp_rank == 0) accumulate(a.h, a.x);
  } else if (par_.tp_rank == 0) {
    linear_forward_residual(a.h, a.ao, w.wo->compute, a.x);
  } else {
    linear_forward(a.h, a.ao, w.wo->compute);
  }
  if (!s_.sp) tp_all_reduce(a.h);
  // MoE: router (replicated) → capacity assignment → (E, C, H) buffer → exchange → experts → back → combine.
  rmsnorm_forward(a.xn2, a.rstd2, a.h, w.ffn_norm->compute, eps);
  linear_forward(a.rlogits, a.xn2, w.router->compute);
  if (on_router_logits) on_router_logits(l, a.rlogits);
  softmax_forward(a.probs, a.rlogits);
  if (s_.sp)
    sp_route(l, a);  // this rank's tokens, each given the slot it gets when one rank routes them all
  else
    route_topk(l, a, s_.C);  // dropless: s.C = N, nothing is dropped
  set_layer_capacity(l);
  // The expert-path buffers at this step's capacity C (the whole buffers unless dropless).
  const auto tcap = [C = a.cap](const Tensor& t) { return capacity_view(t, C); };         // (E, C, W)
  const auto ecap = [C = a.cap * s_.e](const Tensor& t) { return capacity_view(t, C); };  // (E_l, e*C, W)
  if (cfg_.router_norm_topk)
    topk_weights_norm_forward(a.weight, a.probs, a.expert_idx);
  else
    topk_weights_forward(a.weight, a.probs, a.expert_idx);
  load_balance_loss_forward(a.aux, a.probs, a.counts, s_.K);
  router_z_loss_forward(a.z, a.zlse, a.rlogits);
  moe_dispatch_forward(tcap(a.dbuf), a.xn2, a.expert_idx, a.slot);
  if (s_.sp && !par_.exchange) tp_all_reduce(tcap(a.dbuf));  // sequence parallel, no EP: the TP ranks' parts summed
  const Tensor w_gate = w.w_gate->compute, w_up = w.w_up->compute, w_down = w.w_down->compute;
  exchange_experts(
      tcap(a.cbuf), ecap(a.eo), ecap(a.y), tcap(a.dbuf),
      [&](int k) {
        const Tensor y = expert_chunk(ecap(a.y), k), gate = expert_chunk(ecap(a.gate), k);
        const Tensor up = expert_chunk(ecap(a.up), k);
        const Tensor act = expert_chunk(ecap(a.act), k), eo = expert_chunk(ecap(a.eo), k);
        // The expert FFN over rows of this chunk: v maps a chunk tensor to those rows; the weights are their experts'.
        const auto ffn = [&](const auto& v, const Tensor& wg, const Tensor& wu, const Tensor& wd) {
          expert_forward(v(gate), v(y), wg);
          expert_forward(v(up), v(y), wu, /*x_quantised=*/true);  // FP8: q(y) from the gate GEMM, still in the scratch
          if (cfg_.fp8_experts()) {  // the SwiGLU output quantised where it is produced, for the down projection
            const Fp8Rows in = fp8_expert_input(fp8_scratch_, v(act));
            fp8_swiglu_forward(v(act), in.q, in.scale, v(gate), v(up));
          } else {
            swiglu_forward(v(act), v(gate), v(up));
          }
          expert_forward(v(eo), v(act), wd, /*x_quantised=*/cfg_.fp8_experts());
        };
        // Dropless: one chain per call over filled rows (model/dropless.h); the rows no call covers are never read.
        if (const auto calls = expert_calls(a, k, y.dim(1)))
          for (const comm::ExpertRun& c : *calls)
            ffn([&c](const Tensor& t) { return call_rows(t, c); }, w_gate.rows(c.j, 1), w_up.rows(c.j, 1),
                w_down.rows(c.j, 1));
        else
          ffn([](const Tensor& t) { return t; }, w_gate, w_up, w_down);
        if (par_.expert_tp) reduce_expert_partials(eo, k);
      },
      r, fp8_dispatch_);
  moe_combine_forward(x_out, tcap(a.cbuf), a.weight, a.expert_idx, a.slot, a.h);  // x_out = h + the weighted expert rows
}

void Model::read_scalars(MicroResult& r) const {
  // One device->host copy of the byte range from router_stats_ to the end of ce_sum_ (adjacent in the arena).
  const char* begin = static_cast<const char*>(router_stats_.data);
  const char* end = static_cast<const char*>(ce_sum_.data) + ce_sum_.bytes();
  MONTA_CHECK(static_cast<const char*>(counts_.data) > begin && static_cast<const char*>(ce_sum_.data) > begin,
              "model: the scalars are not laid out side by side");
  std::vector<char> host(size_t(end - begin));
  read_to_host(Tensor(host.data(), {int64_t(host.size())}, DType::u8),
               engine::make_view(const_cast<char*>(begin), {int64_t(host.size())}, DType::u8, router_stats_.device),
               "micro-batch scalars");
  auto stat_at = [&](const void* dev_ptr, int64_t i) {
    const char* p = host.data() + (static_cast<const char*>(dev_ptr) - begin);
    if (stat_ == DType::f64) return reinterpret_cast<const double*>(p)[i];
    return double(reinterpret_cast<const float*>(p)[i]);
  };
  const auto* counts = reinterpret_cast<const int32_t*>(host.data() + (static_cast<const char*>(counts_.data) - begin));
  const SpLossScale ls = sp_loss_scale();  // sequence parallel: the sums over TP of each rank's share
  r.load.assign(size_t(counts_.numel()), 0);
  for (size_t i = 0; i < r.load.size(); ++i) r.load[i] = counts[i];
  for (size_t l = 0; l < layers_.size(); ++l) {
    r.aux_sum += ls.aux * stat_at(router_stats_.data, int64_t(2 * l));
    r.z_sum += ls.z * stat_at(router_stats_.data, int64_t(2 * l + 1));
    for (int64_t e = 0; e < s_.E; ++e) r.dropped += std::max<int64_t>(0, counts[int64_t(l) * s_.E + e] - s_.C);
  }
  r.ce_sum = stat_at(ce_sum_.data, 0);
}

void Model::bench_layer(int l, bool backward, bool later_micro_batch) {
  MicroResult r;
  Tensor out = layer_output(l);
  if (on_forward_group) on_forward_group(l);
  layer_forward(l, layers_[size_t(l)].x, out, r);
  if (!backward) return;
  copy(dx_, out);  // any well-scaled gradient will do for timing
  if (!later_micro_batch) params_.zero_grads();
  layer_backward(l, dx_, 1.0, r);
}

MicroResult Model::run_forward(const int32_t* tokens, const int32_t* targets) {
  MicroResult r;
  copy(tokens_, Tensor(const_cast<int32_t*>(tokens), {s_.N}, DType::i32));
  copy(targets_, Tensor(const_cast<int32_t*>(targets), {s_.N}, DType::i32));
  const int64_t vocab_begin = int64_t(par_.tp_rank) * s_.V_l;
  Tensor x = layers_.empty() ? x_final_ : layers_[0].x;
  auto ready = [this](int g) { if (on_forward_group) on_forward_group(g); };
  ready(-1);
  if (s_.sp) {  // every token's vocab-parallel partial row, reduce-scattered to this rank's tokens
    embedding_forward(gather_, tokens_, op_.embed->compute, vocab_begin);
    par_.tp_comm->reduce_scatter(x, gather_, comm::ReduceOp::sum);
  } else {
    embedding_forward(x, tokens_, op_.embed->compute, vocab_begin);
    tp_all_reduce(x);
  }
  for (int l = 0; l < int(layers_.size()); ++l) {
    ready(l);
    layer_forward(l, layers_[size_t(l)].x, layer_output(l), r);
  }
  ready(int(layers_.size()));
  rmsnorm_forward(xf_, rstdf_, x_final_, op_.final_norm->compute, float(cfg_.norm_eps));
  linear_forward(logits_, whole_tokens(xf_), op_.lm_head->compute);
  // Vocab-parallel cross-entropy: max and Σexp are reduced over TP; the logits are never gathered.
  logits_rowmax(rowmax_, logits_);
  tp_all_reduce(rowmax_, true);
  cross_entropy_partial(sumexp_, tlogit_, logits_, rowmax_, targets_, vocab_begin);
  tp_all_reduce(sumexp_);
  tp_all_reduce(tlogit_);
  cross_entropy_finish(losses_, lse_, sumexp_, rowmax_, tlogit_, targets_);
  sum(ce_sum_, losses_, 1.0);
  if (s_.sp) tp_all_reduce(router_stats_);  // each TP rank's share of every layer's aux and z losses
  read_scalars(r);
  return r;
}

MicroResult Model::forward(const int32_t* tokens, const int32_t* targets) { return run_forward(tokens, targets); }

Tensor Model::layer_output(int l) const { return l + 1 < int(layers_.size()) ? layers_[size_t(l) + 1].x : x_final_; }

void Model::layer_backward(int l, Tensor dx, double aux_scale, MicroResult& r) {
  // Full recompute: the forward again from the kept input into the shared buffers, exchange included. Its output
  // lands where it did the first time (the next layer's input, no longer needed) with the same bits.
  if (recompute_ == Recompute::full) {
    const engine::TraceRange trace("layer " + std::to_string(l) + " recompute");
    layer_forward(l, layers_[size_t(l)].x, layer_output(l), r);
  }
  const engine::TraceRange trace("layer " + std::to_string(l) + " backward");
  auto& a = layers_[size_t(l)];
  const LayerParams& w = lp_[size_t(l)];
  const float theta = float(cfg_.rope_theta), eps = float(cfg_.norm_eps);
  const bool selective = recompute_ == Recompute::selective;
  // MoE branch; dx is the gradient of the layer output = of moe_out = of h through the residual. The expert path at
  // the forward's capacity (the exchange's is set back to it: later layers' forwards changed it when dropless).
  apply_layer_capacity(a);
  const auto tcap = [C = a.cap](const Tensor& t) { return capacity_view(t, C); };         // (E, C, W)
  const auto ecap = [C = a.cap * s_.e](const Tensor& t) { return capacity_view(t, C); };  // (E_l, e*C, W)
  moe_combine_backward(tcap(dcbuf_), dweight_, dx, tcap(a.cbuf), a.weight, a.expert_idx, a.slot);
  if (s_.sp && !par_.exchange) tp_all_reduce(tcap(dcbuf_));  // sequence parallel, no EP: the TP ranks' parts summed
  // The backward of combine is dispatch and that of dispatch is combine: dcbuf -> deo -> experts -> dy -> ddbuf.
  const Tensor w_gate = w.w_gate->compute, w_up = w.w_up->compute, w_down = w.w_down->compute;
  exchange_experts(
      tcap(ddbuf_), ecap(dy_), ecap(deo_), tcap(dcbuf_),
      [&](int k) {
        const Tensor deo = expert_chunk(ecap(deo_), k), act = expert_chunk(ecap(a.act), k);
        const Tensor dact = expert_chunk(ecap(dact_), k);
        const Tensor gate = expert_chunk(ecap(a.gate), k), up = expert_chunk(ecap(a.up), k);
        const Tensor y = expert_chunk(ecap(a.y), k);
        const Tensor dgate = expert_chunk(ecap(dgate_), k), dup = expert_chunk(ecap(dup_), k);
        const Tensor dy = expert_chunk(ecap(dy_), k);
        const GradWrite g_down = params_.grad_write(*w.w_down), g_gate = params_.grad_write(*w.w_gate);
        const GradWrite g_up = params_.grad_write(*w.w_up);
        // The expert FFN's backward over rows of this chunk (v as in the forward), the weight gradients g written as
        // `write` says (per parameter: down, gate, up).
        const auto chain = [&](const auto& v, const Tensor& wg, const Tensor& wu, const Tensor& wd, Tensor gg, Tensor gu,
                               Tensor gd, const std::array<Write, 3>& write) {
          if (selective) swiglu_forward(v(act), v(gate), v(up));  // the shared SwiGLU output, re-computed
          expert_backward(v(dact), gd, v(deo), v(act), wd, Write::overwrite, write[0]);
          swiglu_backward(v(dgate), v(dup), v(dact), v(gate), v(up));
          expert_backward(v(dy), gg, v(dgate), v(y), wg, Write::overwrite, write[1]);
          // dy += the up branch's gradient
          expert_backward(v(dy), gu, v(dup), v(y), wu, Write::accumulate, write[2]);
        };
        const std::array<GradWrite, 3> g{g_down, g_gate, g_up};
        if (const auto calls = expert_calls(a, k, y.dim(1))) {
          // Dropless, one chain per call over filled rows: an expert's first call writes its gradient as this chunk
          // asks (overwrite on the step's first write), its later calls add; an expert no call reaches in this chunk
          // still gets its gradient written, zeros when overwriting (nothing to add otherwise).
          std::vector<char> seen(size_t(s_.E_l), 0);
          for (const comm::ExpertRun& c : *calls) {
            std::array<Write, 3> write{};
            for (size_t i = 0; i < 3; ++i) write[i] = seen[size_t(c.j)] ? Write::accumulate : g[i].write;
            seen[size_t(c.j)] = 1;
            chain([&c](const Tensor& t) { return call_rows(t, c); }, w_gate.rows(c.j, 1), w_up.rows(c.j, 1),
                  w_down.rows(c.j, 1), g_gate.grad.rows(c.j, 1), g_up.grad.rows(c.j, 1), g_down.grad.rows(c.j, 1),
                  write);
          }
          for (int64_t j = 0; j < s_.E_l; ++j)
            for (const GradWrite& gw : g)
              if (!seen[size_t(j)] && gw.write == Write::overwrite) fill_zero(gw.grad.rows(j, 1));
        } else {
          chain([](const Tensor& t) { return t; }, w_gate, w_up, w_down, g_gate.grad, g_up.grad, g_down.grad,
                {g_down.write, g_gate.write, g_up.write});
        }
        if (par_.expert_tp) reduce_expert_partials(dy, k);
      },
      r);
  const Tensor dxn = s_.sp ? dxn_l_ : dxn_;  // the gradient of this rank's norm outputs
  moe_dispatch_backward(dxn, tcap(ddbuf_), a.expert_idx, a.slot);
  // Router: through the chosen weights, the load-balancing loss and the z-loss (sequence parallel: this rank's
  // share of losses that are means over all N tokens, sp_loss_scale).
  const SpLossScale ls = sp_loss_scale();
  fill_zero(dprobs_);
  if (cfg_.router_norm_topk)
    topk_weights_norm_backward(dprobs_, dweight_, a.probs, a.expert_idx);
  else
    topk_weights_backward(dprobs_, dweight_, a.expert_idx);
  load_balance_loss_backward(dprobs_, a.counts, s_.K, float(aux_scale * cfg_.aux_loss_coef * ls.aux));
  softmax_backward(drlogits_, dprobs_, a.probs);
  router_z_loss_backward(drlogits_, a.zlse, a.probs, float(aux_scale * cfg_.z_loss_coef * ls.z));
  if (selective) rmsnorm_forward(a.xn2, a.rstd2, a.h, w.ffn_norm->compute, eps);  // the shared norm output
  linear_backward_w(dxn, *w.router, drlogits_, a.xn2, Write::accumulate);
  // dx: now d(loss)/dh.
  rmsnorm_backward(dx, params_.grad_accumulate(*w.ffn_norm), dxn, a.h, w.ffn_norm->compute, a.rstd2,
                   Write::accumulate);
  // Attention branch (sequence parallel: the backward of the reduce-scatter is an all-gather).
  proj_backward(dao_, *w.wo, whole_tokens(dx), a.ao);
  Tensor q4 = a.q.view({s_.B, s_.S, s_.A_l, s_.D}), k4 = a.k.view({s_.B, s_.S, s_.G_l, s_.D});
  Tensor v4 = a.v.view({s_.B, s_.S, s_.G_l, s_.D});
  Tensor dq4 = dq_.view({s_.B, s_.S, s_.A_l, s_.D}), dk4 = dk_.view({s_.B, s_.S, s_.G_l, s_.D});
  attention_backward(dq4, dk4, dv_.view({s_.B, s_.S, s_.G_l, s_.D}), dao_.view({s_.B, s_.S, s_.A_l, s_.D}), q4, k4, v4,
                     a.ao.view({s_.B, s_.S, s_.A_l, s_.D}), a.lse);
  rope_backward(dq4, dq4, theta);
  rope_backward(dk4, dk4, theta);
  if (selective) rmsnorm_forward(a.xn1, a.rstd1, a.x, w.attn_norm->compute, eps);  // the shared norm output
  const Tensor xn1 = whole_tokens(a.xn1);  // sequence parallel: gathered again, not kept
  proj_backward(dxn_, *w.wq, dq_, xn1);
  proj_backward(dxn_, *w.wk, dk_, xn1, Write::accumulate);
  proj_backward(dxn_, *w.wv, dv_, xn1, Write::accumulate);
  reduce_tokens(dxn, dxn_);  // sum over TP: all-reduce, or the reduce-scatter to this rank's tokens
  // dx: now d(loss)/d(input).
  rmsnorm_backward(dx, params_.grad_accumulate(*w.attn_norm), dxn, a.x, w.attn_norm->compute, a.rstd1,
                   Write::accumulate);
}

double training_objective(const ModelConfig& m, double ce_sum, double aux_sum, double z_sum, double ce_scale,
                          double aux_scale) {
  return ce_scale * ce_sum + aux_scale * (m.aux_loss_coef * aux_sum + m.z_loss_coef * z_sum);
}

MicroResult Model::forward_backward(const int32_t* tokens, const int32_t* targets, double ce_scale, double aux_scale) {
  MicroResult r = run_forward(tokens, targets);
  const int64_t vocab_begin = int64_t(par_.tp_rank) * s_.V_l;
  cross_entropy_backward(dlogits_, logits_, targets_, lse_, vocab_begin, float(ce_scale));
  linear_backward_w(dxn_, *op_.lm_head, dlogits_, whole_tokens(xf_));
  const Tensor dxn = s_.sp ? dxn_l_ : dxn_;
  reduce_tokens(dxn, dxn_);
  rmsnorm_backward(dx_, params_.grad_accumulate(*op_.final_norm), dxn, x_final_, op_.final_norm->compute, rstdf_);
  if (on_grads_ready) on_grads_ready(int(layers_.size()));
  for (int l = int(layers_.size()) - 1; l >= 0; --l) {
    layer_backward(l, dx_, aux_scale, r);
    if (on_grads_ready) on_grads_ready(l);
  }
  embedding_backward(params_.grad_accumulate(*op_.embed), whole_tokens(dx_), tokens_, vocab_begin);
  if (on_grads_ready) on_grads_ready(-1);
  return r;
}

}  // namespace monta::model
