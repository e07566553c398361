// Planner: enumerate layouts × strategies × chunk counts, apply the memory model, predict communication per step
// with the cost model, rank. Deterministic: a fixed enumeration order and a total order for ties.
#include "comm/planner.h"

#include <algorithm>
#include <tuple>

#include "engine/check.h"
#include "engine/log.h"

namespace monta::comm {
namespace {

std::vector<int> divisors(int n) {
  std::vector<int> d;
  for (int i = 1; i <= n; ++i)
    if (n % i == 0) d.push_back(i);
  return d;
}

}  // namespace

Plan make_plan(const Cluster& c, const PlanModel& m, const PlanOptions& o) {
  MONTA_USER_CHECK(c.nodes > 0 && c.gpus_per_node > 0, "cluster: nodes and gpus_per_node must be positive");
  MONTA_USER_CHECK(m.hidden > 0 && m.heads > 0 && m.layers > 0 && m.seq_len > 0 && m.experts > 0,
                   "plan: the model shape needs hidden, heads, layers, seq_len and experts");
  MONTA_CHECK(bool(m.footprint), "plan: PlanModel::footprint is not set");
  const int world = c.world();
  const LinkModel links = c.links();
  const double mem_limit = c.gpu_mem_gib * double(1ull << 30);
  Plan plan;
  for (int tp : divisors(world)) {
    if (m.heads % tp || m.vocab % tp || m.kv_heads % tp) continue;
    const int dp = world / tp;
    for (int ep : divisors(dp)) {
      if (m.experts % ep) continue;
      const GroupPlacement g = place_groups(c, tp, ep);
      for (bool etp : {true, false}) {
        if (tp == 1 && !etp) continue;  // the same layout as expert_tp = true
        if (etp && m.ffn % tp) continue;
        if (o.layout_allowed && !o.layout_allowed(tp, ep, etp)) continue;
        PlanRow base;
        base.tp = tp;
        base.ep = ep;
        base.dp = dp;
        base.expert_dp = dp / ep;
        base.expert_tp = etp;
        const PlanModel::Footprint fp = m.footprint(tp, ep, etp, dp);
        base.params_per_gpu = fp.dense_params + fp.expert_params;
        const double mem = fp.bytes;
        base.mem_gib = mem / double(1ull << 30);
        base.ckpt_host_gib = fp.checkpoint_host / double(1ull << 30);
        base.host_gib = (fp.checkpoint_host + fp.optimizer_host) / double(1ull << 30);
        base.fits = mem <= mem_limit;
        if (!base.fits) base.why_not = "memory";
        if (base.fits && c.host_mem_gib > 0 && base.host_gib * c.gpus_per_node > c.host_mem_gib) {
          base.fits = false;
          base.why_not = "host";
        }
        // Offload: fp32 gradients to the host, AdamW there (the node's rate shared by its GPUs), bf16 weights back.
        if (fp.offloaded_params > 0 && c.host_adamw_gparams_s > 0 && c.pcie_gbps > 0)
          base.offload_s = fp.offloaded_params * c.gpus_per_node / (c.host_adamw_gparams_s * 1e9) +
                           fp.offloaded_params * (4.0 + 2.0) / (c.pcie_gbps * 1e9);
        if (m.global_batch % (int64_t(dp) * m.micro_batch)) {
          base.fits = false;
          base.why_not = "batch";
        }
        base.micro_steps = std::max<int64_t>(1, m.global_batch / (int64_t(dp) * m.micro_batch));
        // Dropless: the expected step capacity (ExchangeVolume::capacity), not the worst case the buffers hold.
        base.capacity = m.capacity_factor == 0
                            ? dropless_expected_capacity(m.micro_batch * m.seq_len, m.top_k, m.experts, ep)
                            : capacity_of(m.micro_batch * m.seq_len, m.top_k, m.experts, m.capacity_factor, m.min_capacity);
        // Gradient all-reduce of fp32 gradients: dense over dp, experts over expert-dp (rings; strides tp, tp·ep).
        const bool dp_spans = (dp - 1) * tp >= c.gpus_per_node, edp_spans = (dp / ep - 1) * tp * ep >= c.gpus_per_node;
        base.grad_sync_s = all_reduce_time(links, 4.0 * fp.dense_params, dp, dp_spans) +
                           all_reduce_time(links, 4.0 * fp.expert_params, dp / ep, edp_spans);
        // TP: per layer, forward and backward, an all-reduce of the attention output and (expert-TP) a sum of the
        // MoE output: an all-reduce, or (sliced strategies, below) a reduce-scatter into the exchange's slices.
        const bool tp_spans = tp > c.gpus_per_node;
        const double tp_bytes = double(m.micro_batch * m.seq_len * m.hidden * m.act_bytes);
        const bool recompute = m.recompute_flops_per_token > 0;  // full recompute: each layer's forward runs twice
        const double tp_calls = (recompute ? 3.0 : 2.0) * double(m.layers) * double(base.micro_steps);
        const double tp_ar = all_reduce_time(links, tp_bytes, tp, tp_spans);
        auto tp_seconds = [&](bool sliced) {
          return tp_calls * (tp_ar + (etp ? (sliced ? reduce_scatter_time(links, tp_bytes, tp, tp_spans) : tp_ar) : 0.0));
        };
        // Whole experts on every TP rank (expert-TP off) compute the same tokens tp times over.
        const double expert_flops = 3.0 * 2.0 * double(m.top_k) * 3.0 * double(m.hidden) * double(m.ffn) * double(m.layers);
        const double flops = m.flops_per_token + m.recompute_flops_per_token +
                             (etp ? 0.0 : double(tp - 1) * (recompute ? 4.0 / 3.0 : 1.0) * expert_flops);
        // FP8 GEMMs (model.fp8) at the FP8 rate, the rest at bf16's; with FP8 experts their expert-TP-off repeats too.
        const bool fp8_experts = m.fp8_flops_per_token > 0;
        const double fp8_flops = m.fp8_flops_per_token + m.fp8_recompute_flops_per_token +
                                 (fp8_experts ? flops - m.flops_per_token - m.recompute_flops_per_token : 0.0);
        const double bf16_rate = c.gpu_tflops * 1e12, fp8_rate = (c.gpu_fp8_tflops > 0 ? c.gpu_fp8_tflops : c.gpu_tflops) * 1e12;
        base.compute_s = c.gpu_tflops > 0 ? ((flops - fp8_flops) / bf16_rate + fp8_flops / fp8_rate) *
                                                double(m.global_batch * m.seq_len) / world
                                          : 0;
        ExchangeVolume v{m.micro_batch, m.seq_len, m.hidden, m.top_k, m.experts, m.min_capacity, m.capacity_factor,
                         m.act_bytes, ep};
        // One layer's expert forward on one GPU: E·C rows (E_l experts × e·C slots) through three H×F_l GEMMs.
        const double f_l = double(m.ffn) / (etp ? tp : 1);
        const double expert_fwd_s = c.gpu_tflops > 0 ? 2.0 * double(m.experts) * double(base.capacity) * 3.0 *
                                                           double(m.hidden) * f_l / (fp8_experts ? fp8_rate : bf16_rate)
                                                     : 0.0;
        // Sequence parallel: per layer and micro-step, the backward's second all-gather of the attention norm's output,
        // and without EP the all-reduce of the dispatch buffer's TP parts in forward and backward.
        const double dispatch_bytes = double(m.experts) * double(base.capacity) * double(m.hidden) * m.act_bytes;
        const double sp_tp_s =
            m.sequence_parallel && tp > 1
                ? double(m.layers) * double(base.micro_steps) *
                      (all_gather_time(links, tp_bytes, tp, tp_spans) +
                       (ep == 1 ? (recompute ? 3.0 : 2.0) * all_reduce_time(links, dispatch_bytes, tp, tp_spans) : 0.0))
                : 0.0;
        for (ExchangeKind k : o.strategies) {
          if (ep == 1 && k != ExchangeKind::duplicate) continue;  // no exchange at all: one row
          if (ep > 1 && m.sequence_parallel && k == ExchangeKind::duplicate) continue;  // no meaning under SP
          const bool chunked = k == ExchangeKind::pipelined || k == ExchangeKind::overlapped;
          const int hi = chunked ? o.max_chunks : 1;
          for (int n = k == ExchangeKind::overlapped ? 2 : 1; n <= hi; ++n) {
            PlanRow r = base;
            r.strategy = k;
            r.chunks = n;
            r.tp_s = tp_seconds(ep > 1 && k != ExchangeKind::duplicate) + sp_tp_s;
            if (ep > 1) r.exchange = predict_exchange(k, n, v, g, links);
            // Exposed exchange time of one layer: forward and backward MoE blocks less their expert compute (the
            // backward's is about twice the forward's). Only overlapped hides any of it behind the experts.
            // Full recompute runs the forward block (dispatch and combine) once more. FP8 dispatch: the forward
            // dispatches move the packed rows (Hd elements), every other call H.
            const int64_t Hd = m.dispatch_width > 0 ? m.dispatch_width : m.hidden;
            const int forward_dispatches = recompute ? 2 : 1;
            double per_layer = r.exchange.total * (kExchangesPerLayer + (recompute ? 2 : 0));
            if (ep > 1 && Hd != m.hidden) {
              ExchangeVolume vd = v;
              vd.H = Hd;
              per_layer += forward_dispatches * (predict_exchange(k, n, vd, g, links).total - r.exchange.total);
            }
            if (ep > 1 && k == ExchangeKind::overlapped) {
              per_layer = 0;
              for (double x : {expert_fwd_s, 2 * expert_fwd_s, recompute ? expert_fwd_s : -1.0})
                if (x >= 0)
                  per_layer += predict_moe_block_rows(k, n, m.experts, r.capacity, x == 2 * expert_fwd_s ? m.hidden : Hd,
                                                      m.hidden, m.act_bytes, g, links, x) - x;
            }
            // Sequence parallel: the dispatches (forward, backward, and the recomputed forward) reduce-scatter first.
            if (ep > 1 && m.sequence_parallel)
              per_layer += (recompute ? 3 : 2) *
                           sp_dispatch_reduce_scatter_time(k, n, m.experts, r.capacity, m.hidden, m.act_bytes, g, links);
            r.exchange_s = per_layer * double(m.layers) * double(r.micro_steps);
            r.comm_s = r.exchange_s + r.grad_sync_s + r.tp_s;
            r.step_s = r.compute_s + r.comm_s + r.offload_s;
            if (o.only_fitting && !r.fits) continue;
            plan.rows.push_back(r);
          }
        }
      }
    }
  }
  // Ranked by predicted step time when the cluster gives a compute rate (layouts differ in compute too: whole experts
  // on every TP rank repeat work), else by communication.
  const bool by_step = c.gpu_tflops > 0;
  auto key = [by_step](const PlanRow& r) {
    return std::make_tuple(!r.fits, by_step ? r.step_s : r.comm_s, r.tp, r.ep, !r.expert_tp, int(r.strategy), r.chunks);
  };
  std::stable_sort(plan.rows.begin(), plan.rows.end(), [&](const PlanRow& a, const PlanRow& b) { return key(a) < key(b); });
  if (!plan.rows.empty() && plan.rows.front().fits) plan.best = 0;
  return plan;
}

std::string format_plan(const Plan& p, size_t limit) {
  std::string s = engine::strf("%4s %3s %3s %3s %4s %4s %-11s %3s %9s %8s %9s %-6s %7s %9s %9s %10s %9s %9s %9s %9s %9s\n", "#", "tp",
                               "ep", "dp", "edp", "etp", "strategy", "n", "params/G", "mem GiB", "host GiB", "fits", "C",
                               "a2a ms", "ag ms", "exch ms", "exch s", "grad s", "tp s", "comm s", "step s");
  const size_t n = limit ? std::min(limit, p.rows.size()) : p.rows.size();
  for (size_t i = 0; i < n; ++i) {
    const PlanRow& r = p.rows[i];
    s += engine::strf("%4zu %3d %3d %3d %4d %4s %-11s %3d %8.2fB %8.1f %9.1f %-6s %7ld %9.3f %9.3f %10.3f %9.3f %9.3f %9.3f %9.3f %9.3f\n",
                      i + 1, r.tp, r.ep, r.dp, r.expert_dp, r.expert_tp ? "yes" : "no",
                      r.ep == 1 ? "-" : exchange_kind_name(r.strategy), r.chunks, r.params_per_gpu / 1e9, r.mem_gib,
                      r.host_gib,
                      r.fits ? "yes" : ("no:" + r.why_not).c_str(), long(r.capacity), r.exchange.a2a * 1e3,
                      r.exchange.ag * 1e3, r.exchange.total * 1e3, r.exchange_s, r.grad_sync_s, r.tp_s, r.comm_s, r.step_s);
  }
  if (n < p.rows.size()) s += engine::strf("     ... %zu more rows\n", p.rows.size() - n);
  return s;
}

}  // namespace monta::comm
