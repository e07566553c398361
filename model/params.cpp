// Parameter table, sharding and RNG initialisation.
#include "model/params.h"

#include <algorithm>
#include <cmath>
#include <cstring>
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
  // model.router_bias_update: every layer's balancing bias (L, E), one tensor so the step's update reads and writes it
  // once. No gradient reaches it and it takes no weight decay, so AdamW leaves it bit for bit as it is (m = v = 0);
  // the trainer updates it (Trainer::update_router_bias). Replicated, checkpointed and exported like a weight.
  if (m.router_bias_update > 0) {
    replicated("router_bias", {m.layers, E}, 0, false);
    t.back().init_zero = true;
  }
  replicated("final_norm", {H}, 0, false);
  column("lm_head", {V, H}, std);
  for (auto& p : t) {
    bool tp_replica = p.kind == ParamKind::replicated || (p.kind == ParamKind::expert && !par.expert_tp);
    bool dp_replica = p.kind == ParamKind::expert ? par.expert_dp_rank != 0 : par.dp_rank != 0;
    p.tp_first = !(tp_replica && par.tp_rank != 0);
    p.owner = p.tp_first && !dp_replica;
  }
  return t;
}

OptimizerLayout optimizer_layout(const TrainConfig& t) {
  OptimizerLayout o;
  o.moments = t.optimizer_state == "bf16" ? DType::bf16 : DType::f32;
  o.offload = t.optimizer_offload;
  o.zero = int(t.zero);
  return o;
}

int64_t Param::numel() const {
  int64_t n = 1;
  for (int64_t d : local) n *= d;
  return n;
}

StoreSpecs store_specs(std::vector<Param>& params, const ParallelContext& par, Device device, DType master_dtype,
                       DType compute_dtype, const OptimizerLayout& opt) {
  StoreSpecs s;
  const DType moments = master_dtype == DType::f32 ? opt.moments : master_dtype;
  s.state_on_host = opt.offload;
  s.pinned = opt.offload && device == Device::cuda;
  s.separate_compute = compute_dtype != master_dtype || opt.offload || opt.zero > 0;
  for (auto& p : params) {
    const int group = p.kind == ParamKind::expert ? par.expert_dp : par.dp;
    std::vector<int64_t> flat = p.local, state = p.local, shard = {0};
    if (opt.zero > 0 && group > 1) {  // padded so each rank's shard is a whole number of 256-byte blocks
      const int64_t unit = 64 * int64_t(group);
      p.zero_padded = (p.numel() + unit - 1) / unit * unit;
      p.zero_shard = p.zero_padded / group;
      flat = {p.zero_padded};
      state = shard = {p.zero_shard};
    }
    s.master.push_back({p.name, state, master_dtype});
    s.moment.push_back({p.name, state, moments});
    s.grad.push_back({p.name, flat, master_dtype});
    s.compute.push_back({p.name, flat, compute_dtype});
    s.grad_shard.push_back({p.name, shard, master_dtype});
    if (opt.offload) {
      s.host_grad.push_back({p.name, state, master_dtype});
      if (compute_dtype != master_dtype) s.host_lowp.push_back({p.name, state, compute_dtype});
    }
  }
  if (!s.separate_compute) s.compute.clear();
  if (opt.zero == 0) s.grad_shard.clear();
  return s;
}

ParamStore::ParamStore(const ModelConfig& m, const ParallelContext& par, Device device, DType master_dtype,
                       DType compute_dtype, const OptimizerLayout& opt)
    : params_(param_table(m, par)), device_(device), master_dtype_(master_dtype), offload_(opt.offload), zero_(opt.zero) {
  const StoreSpecs s = store_specs(params_, par, device, master_dtype, compute_dtype, opt);
  // Offloaded state lives on the host, page-locked beside a GPU; the CPU backend runs the same path with host
  // "copies" (so CI tests its plumbing).
  const Device state_device = s.state_on_host ? Device::cpu : device;
  master_ = engine::Arena("params", state_device, s.master, s.pinned);
  grad_ = engine::Arena("grads", device, s.grad);
  engine::fill_zero(grad_.whole());  // once, padding included: bucketed all-reduces sum the padding between tensors
  m_ = engine::Arena("adam_m", state_device, s.moment, s.pinned);
  v_ = engine::Arena("adam_v", state_device, s.moment, s.pinned);
  if (!s.compute.empty()) compute_ = engine::Arena("params_compute", device, s.compute);
  if (!s.host_grad.empty()) host_grad_ = engine::Arena("grads_host", Device::cpu, s.host_grad, s.pinned);
  if (!s.host_lowp.empty()) host_lowp_ = engine::Arena("params_upload", Device::cpu, s.host_lowp, s.pinned);
  if (!s.grad_shard.empty()) grad_shard_ = engine::Arena("grads_shard", device, s.grad_shard);
  for (size_t i = 0; i < params_.size(); ++i) {
    Param& p = params_[i];
    p.master = master_.at(i);
    p.m = m_.at(i);
    p.v = v_.at(i);
    p.grad = engine::make_view(grad_.at(i).data, p.local, master_dtype, device);
    p.compute = compute_.count() ? engine::make_view(compute_.at(i).data, p.local, compute_dtype, device) : master_.at(i);
    if (host_grad_.count()) p.host_grad = host_grad_.at(i);
    if (host_lowp_.count()) p.host_lowp = host_lowp_.at(i);
    if (p.zero_shard > 0) {
      p.zero_comm = p.kind == ParamKind::expert ? par.expert_dp_comm : par.dp_comm;
      MONTA_CHECK(p.zero_comm, p.name + ": train.zero 1 needs the reduction group's communicator");
      p.grad_flat = grad_.at(i);
      p.compute_flat = compute_.at(i);
      p.grad_shard = grad_shard_.at(i);
    }
  }
}

Param& ParamStore::get(const std::string& name) {
  for (auto& p : params_)
    if (p.name == name) return p;
  MONTA_CHECK(false, "no parameter named " + name);
  return params_[0];
}
const Param& ParamStore::get(const std::string& name) const { return const_cast<ParamStore*>(this)->get(name); }

namespace {

// Rank r's block of a sharded parameter's flat range.
Tensor own_block(const Param& p, const Tensor& flat) { return flat.rows(int64_t(p.zero_comm->rank()) * p.zero_shard, p.zero_shard); }

}  // namespace

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
    // On the parameter's device: the values depend on (seed, name, index) only. A sharded parameter is made whole in
    // its gradient buffer (the step's scratch until the backward) and keeps its shard.
    if (p.init_zero)
      engine::fill_zero(p.zero_comm ? p.grad : p.master);
    else
      engine::init_normal(p.zero_comm ? p.grad : p.master, a);
    if (p.zero_comm) engine::copy(p.master, own_block(p, p.grad_flat));
    engine::fill_zero(p.m);
    engine::fill_zero(p.v);
  }
  engine::fill_zero(grad_.whole());
  refresh_compute();
}

void ParamStore::init_for_benchmark() {
  uint64_t seed = 0;
  for (auto& p : params_) {
    const Tensor dst = p.zero_comm ? p.grad : p.master;
    if (p.init_zero) {
      engine::fill_zero(dst);
    } else if (p.init_std == 0) {  // norm weights: ones, as init() makes them
      engine::InitNormalArgs ones;
      for (size_t d = 0; d < p.full.size(); ++d) ones.full[d] = p.local[d];
      engine::init_normal(dst, ones);
    } else {
      engine::fill_pseudo_random(dst, seed++, p.init_std * 1.7320508);  // uniform with the same std
    }
    if (p.zero_comm) engine::copy(p.master, own_block(p, p.grad_flat));
    engine::fill_zero(p.m);
    engine::fill_zero(p.v);
  }
  engine::fill_zero(grad_.whole());
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
  for (auto& p : params_) {
    if (p.compute.data == p.master.data) continue;
    if (!p.host_lowp.empty())
      engine::cast(p.host_lowp, p.master);  // offload: on the host, then uploaded
    else if (!offload_)
      engine::cast(p.zero_comm ? own_block(p, p.compute_flat) : p.compute, p.master);  // what the step's lowp would be
  }
  publish_compute(0, params_.size());
}

std::vector<engine::AdamWEntry> ParamStore::adamw_entries(double weight_decay, size_t first, size_t last) const {
  std::vector<engine::AdamWEntry> out;
  for (size_t i = first; i < std::min(last, params_.size()); ++i) {
    const Param& p = params_[i];
    const double wd = p.weight_decay ? weight_decay : 0.0;
    const Tensor compute = p.zero_comm ? own_block(p, p.compute_flat) : p.compute;
    if (offload_)
      out.push_back({p.master, p.m, p.v, p.host_lowp, p.host_grad, wd});
    else  // the step writes the compute copy itself where it is bf16
      out.push_back({p.master, p.m, p.v, compute.dtype == DType::bf16 ? compute : Tensor(),
                     p.zero_comm ? p.grad_shard : p.grad, wd});
  }
  return out;
}

void ParamStore::grad_to_host_async(size_t i, engine::Stream s) {
  MONTA_CHECK(offload_, "grad_to_host_async without train.optimizer_offload");
  const Param& p = params_.at(i);
  engine::copy_to_host_async(p.host_grad, p.zero_comm ? p.grad_shard : p.grad, s);
}

ParamStore::~ParamStore() { await_compute(); }

void ParamStore::await_compute(size_t first, size_t last) {
  for (size_t i = first; i < std::min(last, gathering_.size()); ++i)
    if (gathering_[i]) {
      gathering_[i]->wait();
      gathering_[i].reset();
    }
}

void ParamStore::publish_compute(size_t first, size_t last, bool async) {
  await_compute(first, last);  // a gather still in flight into the copies this overwrites
  if (async) gathering_.resize(params_.size());
  for (size_t i = first; i < std::min(last, params_.size()); ++i) {
    Param& p = params_[i];
    ++p.version;
    if (p.compute.data == p.master.data) continue;
    const Tensor mine = p.zero_comm ? own_block(p, p.compute_flat) : p.compute;
    if (offload_)
      engine::copy(mine, p.host_lowp.empty() ? p.master : p.host_lowp);  // the upload
    else if (mine.dtype == p.master.dtype)
      engine::copy(mine, p.master);  // the step wrote no low-precision copy (the CPU under zero 1)
    if (!p.zero_comm) continue;
    if (async)
      gathering_[i] = p.zero_comm->all_gather_async(p.compute_flat, mine);  // in place: mine is block rank()
    else
      p.zero_comm->all_gather(p.compute_flat, mine);
  }
}

Tensor ParamStore::state(const Param& p, int group) const {
  MONTA_CHECK(group >= 0 && group < kStateGroups, "optimizer state group " + std::to_string(group) + " out of range");
  return group == 0 ? p.master : (group == 1 ? p.m : p.v);
}

bool ParamStore::state_direct(const Param& p, int group) const {
  return !p.zero_comm && state(p, group).dtype == master_dtype_;
}

void ParamStore::state_read(const Param& p, int group, Tensor dst) const {
  const Tensor t = state(p, group);
  const int64_t n = p.numel();
  MONTA_CHECK(dst.empty() || (dst.numel() == n && dst.dtype == master_dtype_ && dst.device == Device::cpu),
              p.name + ": state_read into " + dst.str() + ", expected " + std::to_string(n) + " elements");
  MONTA_CHECK(!dst.empty() || p.zero_comm, p.name + ": state_read needs a destination");
  // bf16 moments are copied to the host as they are and widened there (exact).
  std::vector<char> wide;
  Tensor src = t;
  if (t.dtype != master_dtype_) {
    std::vector<engine::bf16_t> h(size_t(t.numel()));
    engine::copy(engine::make_view(h.data(), {t.numel()}, t.dtype, Device::cpu), t.view({t.numel()}));
    wide.resize(size_t(t.numel()) * engine::dtype_size(master_dtype_));
    src = engine::make_view(wide.data(), {t.numel()}, master_dtype_, Device::cpu);
    engine::cast(src, engine::make_view(h.data(), {t.numel()}, t.dtype, Device::cpu));
  }
  if (!p.zero_comm) return engine::copy(dst.view({n}), src.view({n}));
  // A shard: gathered through the parameter's gradient buffer (free between steps; on the device the group's
  // communicator works on), which is zeroed again after (the padding must stay zero for the reduce-scatter).
  const Tensor mine = own_block(p, p.grad_flat);
  engine::copy(mine, src.view({p.zero_shard}));
  p.zero_comm->all_gather(p.grad_flat, mine);
  if (!dst.empty()) engine::copy(dst.view({n}), p.grad_flat.rows(0, n));
  engine::fill_zero(p.grad_flat);
}

void ParamStore::state_write(Param& p, int group, const Tensor& src) {
  const Tensor t = state(p, group);
  const int64_t n = p.numel();
  MONTA_CHECK(src.numel() == n && src.dtype == master_dtype_ && src.device == Device::cpu,
              p.name + ": state_write from " + src.str() + ", expected " + std::to_string(n) + " elements");
  // This rank's part of the full slice (a shard: its elements, zero beyond the tensor's end), in the master dtype.
  std::vector<char> part;
  Tensor from = src.view({n});
  if (p.zero_comm) {
    const size_t es = engine::dtype_size(master_dtype_);
    const int64_t begin = int64_t(p.zero_comm->rank()) * p.zero_shard;
    const int64_t count = std::clamp<int64_t>(n - begin, 0, p.zero_shard);
    part.assign(size_t(p.zero_shard) * es, 0);
    if (count > 0) std::memcpy(part.data(), static_cast<const char*>(src.data) + size_t(begin) * es, size_t(count) * es);
    from = engine::make_view(part.data(), {p.zero_shard}, master_dtype_, Device::cpu);
  }
  if (t.dtype == master_dtype_) return engine::copy(t.view({t.numel()}), from);
  // bf16 moments: rounded to nearest even on the host, then copied.
  std::vector<engine::bf16_t> h(size_t(t.numel()));
  engine::cast(engine::make_view(h.data(), {t.numel()}, t.dtype, Device::cpu), from);
  engine::copy(t.view({t.numel()}), engine::make_view(h.data(), {t.numel()}, t.dtype, Device::cpu));
}

std::vector<const engine::Arena*> ParamStore::arenas() const {
  std::vector<const engine::Arena*> a{&master_, &grad_, &m_, &v_};
  for (const engine::Arena* x : {&compute_, &host_grad_, &host_lowp_, &grad_shard_})
    if (x->bytes()) a.push_back(x);
  return a;
}

}  // namespace monta::model
