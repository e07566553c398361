// The planner over a model config (model/plan.h).
#include "model/plan.h"

#include "comm/fp8_dispatch.h"
#include "engine/log.h"
#include "model/config_keys.h"
#include "model/footprint.h"

namespace monta::model {

comm::Plan plan_layouts(const Config& c, const comm::Cluster& cluster, int max_chunks, bool only_fitting) {
  const auto& m = c.model;
  comm::PlanModel pm{m.vocab, m.hidden, m.layers, m.heads, m.kv_heads, m.ffn, m.experts, m.top_k, m.seq_len,
                     m.capacity_factor, m.min_capacity, c.train.micro_batch, c.train.global_batch, 2,
                     train_flops_per_token(m), 0.0, {}};
  pm.sequence_parallel = c.parallel.sequence_parallel;
  if (c.comm.dispatch_fp8()) pm.dispatch_width = comm::fp8_dispatch_width(m.hidden, engine::DType::bf16);
  pm.fp8_flops_per_token = fp8_train_flops_per_token(m);
  if (recompute_mode(c.train) == Recompute::full) {
    pm.recompute_flops_per_token = double(m.layers) * layer_train_flops_per_token(m, FlopCount::forward);
    pm.fp8_recompute_flops_per_token = fp8_train_flops_per_token(m, FlopCount::forward);
  }
  pm.footprint = [&c](int tp, int ep, bool expert_tp, int dp) {
    const RankFootprint f = rank_footprint(c, tp, ep, expert_tp, dp, engine::Device::cuda);
    return comm::PlanModel::Footprint{double(f.params - f.expert_params), double(f.expert_params), f.total(),
                                      f.checkpoint_host, f.host_bytes, f.offload ? double(f.params) : 0.0};
  };
  comm::PlanOptions opt;
  opt.max_chunks = max_chunks;
  opt.only_fitting = only_fitting;
  opt.layout_allowed = [&c](int tp, int ep, bool expert_tp) { return layout_problem(c, tp, ep, expert_tp, 0).empty(); };
  return comm::make_plan(cluster, pm, opt);
}

std::vector<MemoryOption> memory_options() {
  using Keys = std::vector<std::pair<std::string, std::string>>;
  auto opt = [](const char* recompute, Keys more) {
    Keys k{{"train.recompute", recompute}};
    std::string name = std::string("recompute ") + recompute;
    for (const auto& [key, value] : more) {
      k.push_back({key, value});
      name += ", " + key.substr(key.find('.') + 1) + " " + value;
    }
    return MemoryOption{name, k};
  };
  return {opt("none", {}),
          opt("selective", {}),
          opt("full", {}),
          opt("full", {{"train.optimizer_state", "bf16"}}),
          opt("full", {{"train.zero", "1"}, {"train.optimizer_state", "bf16"}}),
          opt("selective", {{"parallel.sequence_parallel", "true"}}),
          opt("full", {{"parallel.sequence_parallel", "true"}, {"train.optimizer_state", "bf16"}}),
          opt("selective", {{"train.optimizer_offload", "true"}}),
          opt("full", {{"train.optimizer_offload", "true"}}),
          opt("full", {{"train.optimizer_offload", "true"}, {"train.optimizer_state", "bf16"}}),
          opt("selective", {{"train.optimizer_offload", "true"}, {"parallel.sequence_parallel", "true"}}),
          opt("full", {{"train.optimizer_offload", "true"}, {"parallel.sequence_parallel", "true"}})};
}

std::string plan_memory_options(const Config& c, const comm::Cluster& cluster, int max_chunks) {
  using engine::strf;
  std::string s = strf("memory options (on top of the config), in %.0f GiB per GPU:\n", cluster.gpu_mem_gib);
  for (const MemoryOption& o : memory_options()) {
    Config with = c;
    std::string problem;
    for (const auto& [key, value] : o.keys) problem += set_config_key(with, key, value);
    if (problem.empty()) problem = config_problem(with, 0);
    if (!problem.empty()) {
      s += strf("  %-62s not applicable: %s\n", o.name.c_str(), problem.c_str());
      continue;
    }
    const comm::Plan p = plan_layouts(with, cluster, max_chunks, false);
    if (p.best >= 0) {
      const comm::PlanRow& b = p.rows[size_t(p.best)];
      s += strf("  %-62s fits: tp %d ep %d dp %d, %.1f GiB per GPU + %.1f GiB host, %s, %.2f s predicted step%s\n",
                o.name.c_str(), b.tp, b.ep, b.dp, b.mem_gib, b.host_gib, comm::exchange_kind_name(b.strategy),
                b.step_s, b.offload_s > 0 ? strf(" (offload %.2f s)", b.offload_s).c_str() : "");
      continue;
    }
    const comm::PlanRow* least = nullptr;
    for (const comm::PlanRow& r : p.rows)
      if (!least || r.mem_gib < least->mem_gib) least = &r;
    s += least ? strf("  %-62s no layout fits: the least is %.1f GiB per GPU + %.1f GiB host (tp %d ep %d dp %d)\n",
                      o.name.c_str(), least->mem_gib, least->host_gib, least->tp, least->ep, least->dp)
               : strf("  %-62s no layout is allowed\n", o.name.c_str());
  }
  return s;
}

std::string plan_pick_line(const comm::Plan& p, const comm::Cluster& cluster) {
  using engine::strf;
  if (p.best < 0)
    return strf("pick: none - no layout fits in %.0f GiB per GPU as the trainer allocates with these optimizer "
                "options (train.optimizer_state, train.optimizer_offload, train.zero); the table still ranks them by "
                "predicted step time (by communication without a TFLOP/s figure)",
                cluster.gpu_mem_gib);
  const auto& b = p.rows[size_t(p.best)];
  const bool chunked = b.strategy == comm::ExchangeKind::pipelined || b.strategy == comm::ExchangeKind::overlapped;
  return strf("pick: tp %d ep %d dp %d expert_tp %s, exchange %s%s: %.3f s communication, %.3f s predicted step", b.tp,
              b.ep, b.dp, b.expert_tp ? "yes" : "no", comm::exchange_kind_name(b.strategy),
              chunked ? strf(" (%d chunks)", b.chunks).c_str() : "", b.comm_s, b.step_s);
}

}  // namespace monta::model
