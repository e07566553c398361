// Parameter table, sharding and RNG initialisation.
#include "model/params.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/check.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/init.h"
#include "engine/rng.h"

namespace monta::model {

const char* param_kind_name(ParamKind k) {
  switch (k) {
    case ParamKind::replicated: return "replicated";
    case ParamKind::column: return "column";
    case ParamKind::row: return "row";
    case ParamKind::expert: return "expert";
  }
  return "?";
}

namespace {

// Splits dimension `dim` of p.full into `parts` equal slices and selects slice `index`.
void split(Param& p, size_t dim, int parts, int index) {
  MONTA_CHECK(p.full[dim] % parts == 0, p.name + ": dimension " + std::to_string(p.full[dim]) + " does not divide into " +
                                            std::to_string(parts) + " parts");
  p.local[dim] = p.full[dim] / parts;
  p.offset[dim] = p.local[dim] * index;
}

Param make(const std::string& name, ParamKind kind, std::vector<int64_t> full, double std, bool decay) {
  Param p;
  p.name = name;
  p.kind = kind;
  p.full = full;
  p.local = full;
  p.offset.assign(full.size(), 0);
  p.init_std = std;
  p.weight_decay = decay;
  return p;
}

}  // namespace

std::vector<Param> param_table(const ModelConfig& m, const ParallelContext& par) {
  std::vector<Param> t;
  const int64_t H = m.hidden, D = m.head_dim(), A = m.heads, G = m.kv_heads, F = m.ffn, E = m.experts, V = m.vocab;
  const double std = m.init_std, out_std = m.init_std / std::sqrt(2.0 * double(m.layers));
  auto column = [&](const std::string& n, std::vector<int64_t> full, double s) {
    Param p = make(n, ParamKind::column, full, s, true);
    split(p, 0, par.tp, par.tp_rank);
    t.push_back(p);
  };
  auto replicated = [&](const std::string& n, std::vector<int64_t> full, double s, bool decay) {
    t.push_back(make(n, ParamKind::replicated, full, s, decay));
  };
  auto expert = [&](const std::string& n, std::vector<int64_t> full, size_t tp_dim, double s) {
    Param p = make(n, ParamKind::expert, full, s, true);
    split(p, 0, par.ep, par.ep_rank);
    if (par.expert_tp) split(p, tp_dim, par.tp, par.tp_rank);
    t.push_back(p);
  };
  column("embed", {V, H}, std);
  for (int64_t l = 0; l < m.layers; ++l) {
    std::string L = "layers." + std::to_string(l) + ".";
    replicated(L + "attn_norm", {H}, 0, false);
    column(L + "wq", {A * D, H}, std);
    column(L + "wk", {G * D, H}, std);
    column(L + "wv", {G * D, H}, std);
    Param wo = make(L + "wo", ParamKind::row, {H, A * D}, out_std, true);
    split(wo, 1, par.tp, par.tp_rank);
    t.push_back(wo);
    replicated(L + "ffn_norm", {H}, 0, false);
    replicated(L + "router", {E, H}, std, false);
    expert(L + "w_gate", {E, F, H}, 1, std);
    expert(L + "w_up", {E, F, H}, 1, std);
    expert(L + "w_down", {E, H, F}, 2, out_std);
  }
  replicated("final_norm", {H}, 0, false);
  column("lm_head", {V, H}, std);
  for (auto& p : t) {
    bool tp_replica = p.kind == ParamKind::replicated || (p.kind == ParamKind::expert && !par.expert_tp);
    bool dp_replica = p.kind == ParamKind::expert ? par.expert_dp_rank != 0 : par.dp_rank != 0;
    p.owner = !(tp_replica && par.tp_rank != 0) && !dp_replica;
  }
  return t;
}

OptimizerLayout optimizer_layout(const TrainConfig& t) {
  OptimizerLayout o;
  o.moments = t.optimizer_state == "bf16" ? DType::bf16 : DType::f32;
  o.offload = t.optimizer_offload;
  return o;
}

ParamStore::ParamStore(const ModelConfig& m, const ParallelContext& par, Device device, DType master_dtype,
                       DType compute_dtype, const OptimizerLayout& opt)
    : params_(param_table(m, par)), device_(device), master_dtype_(master_dtype), offload_(opt.offload) {
  const DType moments = master_dtype == DType::f32 ? opt.moments : master_dtype;
  std::vector<engine::TensorSpec> master, compute, moment;
  for (const auto& p : params_) {
    master.push_back({p.name, p.local, master_dtype});
    compute.push_back({p.name, p.local, compute_dtype});
    moment.push_back({p.name, p.local, moments});
  }
  // Offloaded state lives on the host, page-locked beside a GPU; the CPU backend runs the same path with host
  // "copies" (so CI tests its plumbing).
  const Device state_device = opt.offload ? Device::cpu : device;
  const bool pin = opt.offload && device == Device::cuda;
  master_ = engine::Arena("params", state_device, master, pin);
  grad_ = engine::Arena("grads", device, master);
  engine::fill_zero(grad_.whole());  // once, padding included: bucketed all-reduces sum the padding between tensors
  m_ = engine::Arena("adam_m", state_device, moment, pin);
  v_ = engine::Arena("adam_v", state_device, moment, pin);
  const bool separate_compute = compute_dtype != master_dtype || opt.offload;
  if (separate_compute) compute_ = engine::Arena("params_compute", device, compute);
  if (opt.offload) {
    host_grad_ = engine::Arena("grads_host", Device::cpu, master, pin);
    if (compute_dtype != master_dtype) host_lowp_ = engine::Arena("params_upload", Device::cpu, compute, pin);
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    params_[i].master = master_.at(i);
    params_[i].grad = grad_.at(i);
    params_[i].m = m_.at(i);
    params_[i].v = v_.at(i);
    params_[i].compute = separate_compute ? compute_.at(i) : master_.at(i);
    if (host_grad_.count()) params_[i].host_grad = host_grad_.at(i);
    if (host_lowp_.count()) params_[i].host_lowp = host_lowp_.at(i);
  }
}

Param& ParamStore::get(const std::string& name) {
  for (auto& p : params_)
    if (p.name == name) return p;
  MONTA_CHECK(false, "no parameter named " + name);
  return params_[0];
}
const Param& ParamStore::get(const std::string& name) const { return const_cast<ParamStore*>(this)->get(name); }

void ParamStore::init(uint64_t seed) {
  for (auto& p : params_) {
    engine::InitNormalArgs a;
    a.seed = seed;
    a.stream = engine::fnv1a64(p.name);
    a.std = p.init_std;
    for (size_t d = 0; d < p.full.size(); ++d) {
      a.full[d] = p.full[d];
      a.offset[d] = p.offset[d];
    }
    engine::init_normal(p.master, a);  // on the parameter's device: the values depend on (seed, name, index) only
    engine::fill_zero(p.m);
    engine::fill_zero(p.v);
    engine::fill_zero(p.grad);
  }
  refresh_compute();
}

void ParamStore::init_for_benchmark() {
  uint64_t seed = 0;
  for (auto& p : params_) {
    if (p.init_std == 0) {  // norm weights: ones, as init() makes them
      engine::InitNormalArgs ones;
      for (size_t d = 0; d < p.full.size(); ++d) ones.full[d] = p.local[d];
      engine::init_normal(p.master, ones);
    } else {
      engine::fill_pseudo_random(p.master, seed++, p.init_std * 1.7320508);  // uniform with the same std
    }
    engine::fill_zero(p.m);
    engine::fill_zero(p.v);
    engine::fill_zero(p.grad);
  }
  refresh_compute();
}

void ParamStore::zero_grads() {
  for (auto& p : params_) p.grad_stale = true;
}

GradWrite ParamStore::grad_write(Param& p) {
  const engine::Write write = p.grad_stale ? engine::Write::overwrite : engine::Write::accumulate;
  p.grad_stale = false;
  return {p.grad, write};
}

Tensor ParamStore::grad_accumulate(Param& p) {
  settle_grad(p);
  return p.grad;
}

void ParamStore::settle_grad(Param& p) {
  if (!p.grad_stale) return;
  engine::fill_zero(p.grad);
  p.grad_stale = false;
}

void ParamStore::settle_grads() {
  for (auto& p : params_) settle_grad(p);
}

void ParamStore::refresh_compute() {
  if (offload_) {
    for (auto& p : params_)
      if (!p.host_lowp.empty()) engine::cast(p.host_lowp, p.master);  // on the host, then uploaded
    return upload_compute(0, params_.size());
  }
  for (auto& p : params_)
    if (p.compute.data != p.master.data) engine::cast(p.compute, p.master);
}

std::vector<engine::AdamWEntry> ParamStore::adamw_entries(double weight_decay, size_t first, size_t last) const {
  std::vector<engine::AdamWEntry> out;
  for (size_t i = first; i < std::min(last, params_.size()); ++i) {
    const Param& p = params_[i];
    const double wd = p.weight_decay ? weight_decay : 0.0;
    if (offload_)
      out.push_back({p.master, p.m, p.v, p.host_lowp, p.host_grad, wd});
    else
      out.push_back({p.master, p.m, p.v, p.compute.data != p.master.data ? p.compute : Tensor(), p.grad, wd});
  }
  return out;
}

void ParamStore::grads_to_host() {
  MONTA_CHECK(offload_, "grads_to_host without train.optimizer_offload");
  engine::copy(host_grad_.whole(), grad_.whole());
}

void ParamStore::upload_compute(size_t first, size_t last) {
  MONTA_CHECK(offload_, "upload_compute without train.optimizer_offload");
  for (size_t i = first; i < std::min(last, params_.size()); ++i) {
    const Param& p = params_[i];
    engine::copy(p.compute, p.host_lowp.empty() ? p.master : p.host_lowp);
  }
}

Tensor ParamStore::state(const Param& p, int group) const {
  MONTA_CHECK(group >= 0 && group < kStateGroups, "optimizer state group " + std::to_string(group) + " out of range");
  return group == 0 ? p.master : (group == 1 ? p.m : p.v);
}

bool ParamStore::state_direct(const Param& p, int group) const { return state(p, group).dtype == master_dtype_; }

void ParamStore::state_read(const Param& p, int group, Tensor dst) const {
  const Tensor t = state(p, group);
  MONTA_CHECK(dst.numel() == t.numel() && dst.dtype == master_dtype_ && dst.device == Device::cpu,
              p.name + ": state_read into " + dst.str() + ", expected " + std::to_string(t.numel()) + " elements");
  if (t.dtype == dst.dtype) return engine::copy(dst, t);
  // bf16 moments: copied to the host as they are, widened there (exact).
  std::vector<engine::bf16_t> h(size_t(t.numel()));
  engine::copy(engine::make_view(h.data(), p.local, t.dtype, Device::cpu), t);
  engine::cast(dst, engine::make_view(h.data(), p.local, t.dtype, Device::cpu));
}

void ParamStore::state_write(Param& p, int group, const Tensor& src) {
  const Tensor t = state(p, group);
  MONTA_CHECK(src.numel() == t.numel() && src.dtype == master_dtype_ && src.device == Device::cpu,
              p.name + ": state_write from " + src.str() + ", expected " + std::to_string(t.numel()) + " elements");
  if (t.dtype == src.dtype) return engine::copy(t, src);
  // bf16 moments: rounded to nearest even on the host, then copied.
  std::vector<engine::bf16_t> h(size_t(t.numel()));
  engine::cast(engine::make_view(h.data(), p.local, t.dtype, Device::cpu), src);
  engine::copy(t, engine::make_view(h.data(), p.local, t.dtype, Device::cpu));
}

std::vector<const engine::Arena*> ParamStore::arenas() const {
  std::vector<const engine::Arena*> a{&master_, &grad_, &m_, &v_};
  for (const engine::Arena* x : {&compute_, &host_grad_, &host_lowp_})
    if (x->bytes()) a.push_back(x);
  return a;
}

}  // namespace monta::model
