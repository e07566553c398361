// The training step. Gradients are summed (not averaged) across ranks: every loss term is already scaled
// by 1 / (global tokens) or 1 / (global micro-batches), so the sum over ranks is the gradient of the mean.
#include "model/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <thread>

#include "engine/check.h"
#include "engine/log.h"
#include "engine/parse.h"
#include "engine/trace.h"
#include "engine/ops/adamw.h"
#include "engine/ops/elementwise.h"

namespace monta::model {

using namespace monta::engine;

Trainer::Trainer(const Config& cfg, const ParallelContext& par, Device device)
    : cfg_(cfg), par_(par), device_(device), act_(device == Device::cuda ? DType::bf16 : DType::f32) {
  sched_.lr = cfg.train.lr;
  sched_.min_lr = cfg.train.min_lr;
  sched_.warmup_steps = cfg.train.warmup_steps;
  sched_.decay_steps = cfg.train.decay_steps > 0 ? cfg.train.decay_steps : cfg.train.steps;
  {
    const StartupPhase phase(strf("allocating parameters, gradients and AdamW state (%s)", engine::device_name(device)));
    params_ = std::make_unique<ParamStore>(cfg.model, par, device, DType::f32, act_, optimizer_layout(cfg.train));
  }
  {
    const StartupPhase phase(strf("initialising weights (%s)", engine::device_name(device)));
    params_->init(cfg.train.seed);
    sync_device(device);
  }
  Shapes s = Shapes::make(cfg.model, cfg.train.micro_batch, par.tp, par.ep, par.dp, par.expert_tp,
                          cfg.parallel.sequence_parallel);
  {
    const StartupPhase phase("allocating activations");
    model_ = std::make_unique<Model>(cfg.model, s, par, *params_, act_, recompute_mode(cfg.train),
                                     cfg.comm.dispatch_fp8());
  }
  model_->meter_exchange = true;  // StepMetrics' exchange_ep_ms / exchange_tp_ms
  build_buckets();
  for (auto& p : params_->all())
    if (p.zero_comm) zero_params_.push_back(&p);
  for (size_t i = 0; i < params_->all().size(); ++i) {
    const size_t g = size_t(grad_group(params_->all()[i].name) + 1);
    if (group_params_.size() <= g) group_params_.resize(g + 1);
    group_params_[g].push_back(i);
  }
  if (!zero_params_.empty())  // the step's all-gathers overlap the next forward: each group waits for its own
    model_->on_forward_group = [this](int g) {
      if (size_t(g + 1) < group_params_.size())
        for (size_t i : group_params_[size_t(g + 1)]) params_->await_compute(i, i + 1);
    };
  if (params_->offload()) copy_stream_ = engine::stream_create(device);
  scalars_ = Arena("scalars", device, {{"sumsq", {1}, DType::f32}});
  if (!params_->offload()) {
    adamw_entries_ = params_->adamw_entries(cfg.train.weight_decay);
  } else {  // one chunk per gradient group (embedding, each layer, head): one's upload overlaps the next one's AdamW
    const auto& all = params_->all();
    offload_chunks_.push_back(0);
    for (size_t i = 0; i < all.size(); ++i)
      if (i + 1 == all.size() || grad_group(all[i].name) != grad_group(all[i + 1].name)) offload_chunks_.push_back(i + 1);
    for (size_t k = 0; k + 1 < offload_chunks_.size(); ++k)
      offload_entries_.push_back(params_->adamw_entries(cfg.train.weight_decay, offload_chunks_[k], offload_chunks_[k + 1]));
  }
}

Trainer::~Trainer() {
  if (copy_stream_) {
    sync_device(device_, copy_stream_);
    engine::stream_destroy(device_, copy_stream_);
  }
}

void Trainer::update_offloaded(const AdamWArgs& a) {
  // The gradients are on the host already: copied group by group during the backward (finish_reduction waited).
  // Chunk k's AdamW runs on host threads while this thread uploads chunk k-1's weights (CUDA calls stay on the
  // thread that owns the device). Every element is updated as adamw_step would: chunking changes no bit.
  std::thread worker;
  for (size_t k = 0; k + 1 < offload_chunks_.size(); ++k) {
    worker = std::thread([&a, &entries = offload_entries_[k]] { adamw_step_many(entries, a); });
    if (k > 0) params_->publish_compute(offload_chunks_[k - 1], offload_chunks_[k], /*async=*/true);
    worker.join();
  }
  const size_t last = offload_chunks_.size() - 1;
  if (last > 0) params_->publish_compute(offload_chunks_[last - 1], offload_chunks_[last], /*async=*/true);
}

int Trainer::grad_group(const std::string& name) const {
  if (name.rfind("layers.", 0) == 0) {  // "layers.<i>.<tensor>": names this code made, so <i> parses
    const std::string rest = name.substr(7);
    return engine::parse_int(rest.substr(0, rest.find('.')), "layer index of parameter " + name);
  }
  return name == "embed" ? -1 : int(cfg_.model.layers);
}

void Trainer::build_buckets() {
  // A bucket is a run of parameters that become final together (same layer, or head, or embedding), reduce over the
  // same group and sit back to back in the gradient arena: one all-reduce covers the run (the 256-byte padding
  // between tensors is zeroed with the arena, so summing it is harmless). Experts whole on every TP rank
  // (expert_tp off) see the same tokens there and hold identical gradients, so only expert-DP replicas are summed.
  for (auto& p : params_->all()) {
    if (p.zero_comm) continue;  // train.zero 1: reduce-scattered on its own (start_reduction)
    comm::Communicator* c = p.kind == ParamKind::expert ? (par_.expert_dp > 1 ? par_.expert_dp_comm : nullptr)
                                                        : (par_.dp > 1 ? par_.dp_comm : nullptr);
    if (!c) continue;
    const int g = grad_group(p.name);
    char* begin = static_cast<char*>(p.grad.data);
    char* end = begin + p.grad.bytes();
    if (!buckets_.empty()) {
      GradBucket& b = buckets_.back();
      char* b_end = static_cast<char*>(b.grads.data) + b.grads.bytes();
      if (b.group == g && b.comm == c && begin - b_end >= 0 && begin - b_end < 256) {
        b.grads.shape[0] = (end - static_cast<char*>(b.grads.data)) / int64_t(dtype_size(b.grads.dtype));
        b.params.push_back(&p);
        continue;
      }
    }
    buckets_.push_back({g, c, p.grad.view({p.grad.numel()}), {&p}});
  }
}

void Trainer::start_reduction(int group) {
  // Sequence parallelism: the norms and the router saw only this TP rank's tokens, so their gradients are partial
  // sums over the TP group; summed there first (Megatron's all-reduce of the sequence-parallel parameters' gradients),
  // then over DP as every gradient.
  if (model_->shapes().sp)
    for (auto& p : params_->all()) {
      if (p.kind != ParamKind::replicated || grad_group(p.name) != group) continue;
      params_->settle_grad(p);
      par_.tp_comm->all_reduce(p.grad, comm::ReduceOp::sum);
    }
  for (auto& b : buckets_) {
    if (b.group != group) continue;
    for (Param* p : b.params) params_->settle_grad(*p);  // a gradient no write reached is zero, not stale memory
    pending_.push_back({group, b.comm->all_reduce_async(b.grads, comm::ReduceOp::sum)});
  }
  // train.zero 1: each sharded gradient reduce-scattered whole (its padded flat range, zero padding) into this rank's
  // shard, one collective per tensor (no bucket spans tensors, so a shard never does and weight decay stays per tensor).
  for (Param* p : zero_params_) {
    if (grad_group(p->name) != group) continue;
    params_->settle_grad(*p);
    pending_.push_back({group, p->zero_comm->reduce_scatter_async(p->grad_shard, p->grad_flat, comm::ReduceOp::sum)});
  }
  if (!params_->offload()) return;
  // Offload: the groups before this one (later layers: backward runs last to first) have had this group's backward
  // to finish their reductions; their gradients go to the host now, on the copy stream, under the backward that
  // follows. This group's copy waits for the next call (or finish_reduction).
  for (int h : uncopied_) group_to_host(h);
  uncopied_.assign(1, group);
}

void Trainer::group_to_host(int group) {
  for (auto& p : pending_)
    if (p.group == group && p.request) {
      p.request->wait();
      p.request.reset();
    }
  const auto& ids = group_params_[size_t(group + 1)];
  for (size_t i : ids) params_->settle_grad(params_->all()[i]);
  engine::stream_wait(device_, copy_stream_, nullptr);  // after the reduction and the backward that wrote them
  for (size_t i : ids) params_->grad_to_host_async(i, copy_stream_);
}

void Trainer::finish_reduction() {
  for (auto& p : pending_)
    if (p.request) p.request->wait();
  pending_.clear();
  if (!params_->offload()) return;
  const TraceRange copy("gradients to host (wait)");
  for (int h : uncopied_) group_to_host(h);
  uncopied_.clear();
  sync_device(device_, copy_stream_);  // the host AdamW reads them next
}

double Trainer::global_grad_norm() {
  const TraceRange trace("gradient norm");
  Tensor acc = scalars_.get("sumsq");
  fill_zero(acc);
  for (auto& p : params_->all()) {
    if (p.zero_comm && p.tp_first)
      sum_squares(acc, p.grad_shard);  // the group's shards partition the gradient: each element counted once
    else if (!p.zero_comm && p.owner)
      sum_squares(acc, p.grad);
  }
  if (par_.world && par_.world->size() > 1) par_.world->all_reduce(acc, comm::ReduceOp::sum);
  float host = 0;
  read_to_host(Tensor(&host, {1}, DType::f32), acc, "gradient norm");  // the step's one device->host sync
  return std::sqrt(double(host));
}

void Trainer::check_batch(std::span<const int32_t> inputs, std::span<const int32_t> targets) const {
  const int64_t expected = cfg_.train.global_batch / par_.dp * model_->shapes().S;
  MONTA_CHECK(int64_t(inputs.size()) == expected && inputs.size() == targets.size(),
              "trainer: batch of " + std::to_string(inputs.size()) + " tokens, expected " + std::to_string(expected));
}

double Trainer::ce_scale() const { return 1.0 / double(cfg_.train.global_batch * model_->shapes().S); }

void Trainer::update_router_bias() {
  const TraceRange trace("router bias update");
  Param& p = params_->get("router_bias");
  const int64_t E = cfg_.model.experts;
  std::vector<float> bias(size_t(p.numel()));
  const Tensor host(bias.data(), {p.numel()}, DType::f32);
  params_->state_read(p, 0, host);  // collective over the ZeRO group where sharded
  const float rate = float(cfg_.model.router_bias_update);
  for (int64_t l = 0; l < cfg_.model.layers; ++l) {
    const double* load = load_.data() + l * E;
    const double total = std::accumulate(load, load + E, 0.0);
    for (int64_t e = 0; e < E; ++e) {  // sign(mean − load_e) = sign(total − E·load_e), in exact integer arithmetic
      const double d = total - double(E) * load[e];
      if (d != 0) bias[size_t(l * E + e)] += d > 0 ? rate : -rate;
    }
  }
  params_->state_write(p, 0, host);
}

void Trainer::sum_over_dp(std::span<double> sums) {
  if (par_.dp <= 1) return;
  Tensor host(sums.data(), {int64_t(sums.size())}, DType::f64);
  par_.dp_comm->all_reduce(host, comm::ReduceOp::sum);
}

std::pair<double, double> Trainer::take_exchange_ms() {
  return {par_.ep_comm ? par_.ep_comm->take_metered_ms() : 0.0, par_.tp_comm ? par_.tp_comm->take_metered_ms() : 0.0};
}

StepMetrics Trainer::compute_gradients(std::span<const int32_t> inputs, std::span<const int32_t> targets) {
  const auto& t = cfg_.train;
  const Shapes& s = model_->shapes();
  const int64_t micro_steps = t.global_batch / par_.dp / t.micro_batch;
  check_batch(inputs, targets);
  const double ce_scale = this->ce_scale();
  const double aux_scale = 1.0 / double(t.global_batch / t.micro_batch);

  const TraceRange trace("forward and backward");
  params_->zero_grads();  // lazily: the first micro-batch's writes overwrite (no fill, no read of zeros)
  take_exchange_ms();  // forget what was metered since the last step (a validation pass)
  const size_t LE = size_t(cfg_.model.layers * s.E);
  std::vector<double> sums(4 + LE, 0.0);  // ce, aux, z, dropped, then the (L, E) expert loads (integers: exact)
  double exch_s = 0, exch_bytes = 0;
  for (int64_t i = 0; i < micro_steps; ++i) {
    if (i + 1 == micro_steps) model_->on_grads_ready = [this](int g) { start_reduction(g); };
    auto r = model_->forward_backward(inputs.data() + i * s.N, targets.data() + i * s.N, ce_scale, aux_scale);
    sums[0] += r.ce_sum;
    sums[1] += r.aux_sum;
    sums[2] += r.z_sum;
    sums[3] += double(r.dropped);
    for (size_t j = 0; j < LE; ++j) sums[4 + j] += double(r.load[j]);
    exch_s += r.exchange_s;
    exch_bytes += r.exchange_bytes;
  }
  model_->on_grads_ready = nullptr;
  params_->settle_grads();  // the gradients outside any bucket, for the norm and the optimizer
  {
    const TraceRange wait("gradient all-reduce (wait)");
    finish_reduction();
  }
  sum_over_dp(sums);
  StepMetrics m;
  m.step = step_ + 1;
  m.loss = sums[0] * ce_scale;
  m.loss_total = training_objective(cfg_.model, sums[0], sums[1], sums[2], ce_scale, aux_scale);
  m.aux_loss = sums[1] * aux_scale / double(cfg_.model.layers);
  m.z_loss = sums[2] * aux_scale / double(cfg_.model.layers);
  m.dropped = int64_t(sums[3]);
  load_.assign(sums.begin() + 4, sums.end());
  for (int64_t l = 0; l < cfg_.model.layers; ++l) {
    const double* load = load_.data() + l * s.E;
    const double mean = std::accumulate(load, load + s.E, 0.0) / double(s.E);
    const auto [lo, hi] = std::minmax_element(load, load + s.E);
    m.load_max = l == 0 ? *hi / mean : std::max(m.load_max, *hi / mean);
    m.load_min = l == 0 ? *lo / mean : std::min(m.load_min, *lo / mean);
  }
  m.exchange_host_ms = exch_s * 1000.0;
  std::tie(m.exchange_ep_ms, m.exchange_tp_ms) = take_exchange_ms();
  m.exchange_host_gbps = exch_s > 0 ? exch_bytes / exch_s / 1e9 : 0.0;
  return m;
}

double Trainer::evaluate(std::span<const int32_t> inputs, std::span<const int32_t> targets) {
  check_batch(inputs, targets);
  const TraceRange trace("evaluate");
  const Shapes& s = model_->shapes();
  const int64_t micro_steps = cfg_.train.global_batch / par_.dp / cfg_.train.micro_batch;
  double ce = 0;
  for (int64_t i = 0; i < micro_steps; ++i) ce += model_->forward(inputs.data() + i * s.N, targets.data() + i * s.N).ce_sum;
  sum_over_dp({&ce, 1});
  return ce * ce_scale();
}

EvalResult Trainer::evaluate(const BatchSource& next, int64_t batches) {
  const int64_t local = cfg_.train.global_batch / par_.dp * model_->shapes().S;
  std::vector<int32_t> inputs(static_cast<size_t>(local)), targets(static_cast<size_t>(local));
  EvalResult r;
  double sum = 0;
  for (int64_t b = 0; b < batches; ++b) {
    next(inputs, targets);
    sum += evaluate(inputs, targets);
  }
  r.batches = batches;
  r.tokens = batches * cfg_.train.global_batch * model_->shapes().S;
  r.loss = batches > 0 ? sum / double(batches) : NAN;
  r.ppl = std::exp(r.loss);
  return r;
}

StepMetrics Trainer::step(std::span<const int32_t> inputs, std::span<const int32_t> targets) {
  auto t0 = std::chrono::steady_clock::now();
  const int64_t syncs0 = host_sync_count();
  const auto& t = cfg_.train;
  StepMetrics m = compute_gradients(inputs, targets);
  m.grad_norm = global_grad_norm();
  m.lr = lr_at(m.step, sched_);
  if (!std::isfinite(m.grad_norm) || !std::isfinite(m.loss_total)) {
    m.skipped = true;
    ++skips_;
    log_warn(strf("step %ld: non-finite loss or gradient norm (loss %g, grad norm %g); update skipped (%ld in a row)",
                  m.step, m.loss, m.grad_norm, skips_));
    MONTA_USER_CHECK(skips_ < t.max_skipped,
                     strf("%ld consecutive steps had a non-finite loss or gradient norm; stopping (train.max_skipped = %ld). "
                          "Lower train.lr or check the data.", skips_, t.max_skipped));
  } else {
    skips_ = 0;
    AdamWArgs a;
    a.lr = m.lr;
    a.beta1 = t.beta1;
    a.beta2 = t.beta2;
    a.eps = t.adam_eps;
    a.step = m.step;
    a.grad_scale = (t.grad_clip > 0 && m.grad_norm > t.grad_clip) ? t.grad_clip / (m.grad_norm + 1e-6) : 1.0;
    if (cfg_.model.router_bias_update > 0) update_router_bias();
    const TraceRange opt("optimizer");
    if (params_->offload())
      update_offloaded(a);
    else
      adamw_step_many(adamw_entries_, a);  // one fused pass over every parameter (a few launches on the GPU)
    // Sharded compute copies are all-gathered asynchronously; the next forward waits for each group as it reaches it
    // (on_forward_group), so the gathers of later layers overlap the forward of earlier ones. Unsharded, the step
    // wrote the compute copies itself and publishing only advances the weights' versions (the FP8 codes' validity).
    if (!params_->offload()) params_->publish_compute(0, params_->all().size(), /*async=*/params_->zero() != 0);
  }
  ++step_;
  sync_device(device_);
  m.step_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  m.host_syncs = host_sync_count() - syncs0;
  m.tokens_per_s = double(t.global_batch * cfg_.model.seq_len) / (m.step_ms / 1000.0);
  const int ranks = par_.world ? par_.world->size() : 1;
  m.tflops_per_gpu = m.tokens_per_s * train_flops_per_token(cfg_.model) / double(ranks) / 1e12;
  m.mfu = m.tflops_per_gpu / t.peak_tflops;
  return m;
}

}  // namespace monta::model
