// The planner: for a cluster and a model shape, enumerate the layouts (tp, ep, dp, expert-TP, exchange strategy,
// chunk count), drop those that do not fit in GPU memory, predict each one's communication per training step
// with the cost model, and rank them. Pure and deterministic (docs/cost_model.md states the memory model).
#pragma once
#include <functional>
#include <cstdint>
#include <string>
#include <vector>

#include "comm/cost_model.h"

namespace monta::comm {

// What the planner needs of the model (comm may not include model/; app/plan_cmd.cpp fills it from the config).
struct PlanModel {
  int64_t vocab = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, ffn = 0, experts = 1, top_k = 1, seq_len = 0;
  double capacity_factor = 1.0;
  int64_t min_capacity = 0;
  int64_t micro_batch = 1, global_batch = 1;  // sequences per rank per micro-step / per optimizer step (whole job)
  int act_bytes = 2;                          // activation element size (bf16 on GPUs)
  double flops_per_token = 0;                 // training FLOPs per token (fwd+bwd), for the step-time estimate
  // Full activation recompute re-runs every layer's forward inside its backward: these FLOPs per token once more,
  // with the forward's token exchange and TP all-reduces (0: no recompute, or selective's elementwise re-computation).
  double recompute_flops_per_token = 0;
  // What one GPU of a layout holds: its dense and expert parameters and its bytes in all (weights, gradients, AdamW,
  // compute copy, activations); and the host memory its checkpoint snapshot takes (pinned). The model's own arithmetic
  // (model::rank_footprint, from the allocators' tables), which comm may not include: `monta plan` fills it; tests
  // give their own.
  struct Footprint {
    double dense_params = 0, expert_params = 0, bytes = 0;
    double checkpoint_host = 0;
    // Optimizer offload: host bytes of its state and staging, and the parameters whose AdamW step runs on the host
    // (0: no offload).
    double optimizer_host = 0, offloaded_params = 0;
  };
  std::function<Footprint(int tp, int ep, bool expert_tp, int dp)> footprint;
  // parallel.sequence_parallel: no duplicate strategy (meaningless), each dispatch adds its reduce-scatter over TP
  // (sp_dispatch_reduce_scatter_time), each layer's backward one more all-gather of (N, H) activations (the attention
  // norm's output, gathered again rather than kept), and without EP the dispatch buffer is all-reduced over TP twice
  // per layer. Layouts with tp 1 are left to layout_allowed to refuse.
  bool sequence_parallel = false;
  // comm.dispatch_dtype = fp8: the forward's dispatches (and the recomputed forward's) move rows of dispatch_width
  // activation elements (comm::fp8_dispatch_width: the packed FP8 row); 0: hidden. Combines and the backward's
  // dispatch move H.
  int64_t dispatch_width = 0;
  // model.fp8: of flops_per_token and recompute_flops_per_token, those of the FP8 GEMMs (model::fp8_train_flops_per_
  // token), priced at the cluster's gpu_fp8_tflops; the experts' forward in the exposed-exchange estimate too. 0: none.
  double fp8_flops_per_token = 0, fp8_recompute_flops_per_token = 0;
};

struct PlanOptions {
  std::vector<ExchangeKind> strategies = {ExchangeKind::duplicate, ExchangeKind::drop_gather, ExchangeKind::pipelined,
                                          ExchangeKind::overlapped};
  int max_chunks = 8;
  bool only_fitting = false;  // leave layouts that do not fit out of the table
  // The trainer's layout rule (model::layout_problem, which comm may not include): when set, only layouts it allows
  // are ranked, so `plan` never proposes one that `train` refuses. Unset: the same divisibility rules, built in.
  std::function<bool(int tp, int ep, bool expert_tp)> layout_allowed;
};

struct PlanRow {
  int tp = 1, ep = 1, dp = 1, expert_dp = 1;
  bool expert_tp = true;
  ExchangeKind strategy = ExchangeKind::duplicate;
  int chunks = 1;
  double params_per_gpu = 0, mem_gib = 0;
  double ckpt_host_gib = 0;  // host memory of the checkpoint snapshot per GPU (pinned); not part of mem_gib's limit
  double host_gib = 0;       // host memory per GPU in all: the snapshot and the offloaded optimizer (x GPUs per node
                             // against Cluster::host_mem_gib when the cluster gives it)
  double offload_s = 0;      // per step: gradients down, host AdamW, bf16 weights up (0 without offload or a rate)
  bool fits = false;
  std::string why_not;  // empty when feasible
  int64_t capacity = 0;
  int64_t micro_steps = 0;            // micro-batches per optimizer step on each DP rank
  ExchangePrediction exchange;        // one exchange call
  double exchange_s = 0;              // per step, exposed: 4 calls × layers × micro-steps (overlapped: less what
                                      // the experts hide, predict_moe_block)
  double grad_sync_s = 0;             // per step: gradient all-reduce over dp (dense) and expert-dp (experts)
  double tp_s = 0;                    // per step: Megatron TP all-reduces of (N, H) activations, 2 or 4 per layer
  double comm_s = 0;                  // exchange_s + grad_sync_s + tp_s
  double compute_s = 0;               // per step, from flops_per_token and the cluster's TFLOP/s (0 if unknown)
  double step_s = 0;                  // compute_s + comm_s + offload_s (nothing overlapped: an upper bound)
};

struct Plan {
  std::vector<PlanRow> rows;  // ranked: feasible first, then by step_s (comm_s when the cluster has no TFLOP/s), then
                              // by a fixed tie-break
  int best = -1;              // index into rows of the cheapest feasible layout; -1 when none fits
};

Plan make_plan(const Cluster& c, const PlanModel& m, const PlanOptions& o = {});
// The ranked table, fixed-width, one line per row (top `limit` rows; 0 = all).
std::string format_plan(const Plan& p, size_t limit = 0);

}  // namespace monta::comm
