// `monta plan --config MODEL.ini --cluster CLUSTER.ini|key=value,...`: the planner's ranked table of layouts and
// exchange strategies for a cluster (ours or one we do not have), the pick, and the paper's claims as predicted
// by the cost model (duplicate vs drop_gather at the widest TP, and the effect on step time).
#include <boost/program_options.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "app/commands.h"
#include "app/options.h"
#include "comm/calibrate.h"
#include "comm/planner.h"
#include "engine/check.h"
#include "engine/log.h"
#include "model/config.h"
#include "model/plan.h"

namespace po = boost::program_options;

namespace monta::app {

comm::Cluster load_cluster(const std::string& spec) {
  comm::Cluster c;
  po::options_description d("cluster");
  d.add_options()("cluster.name", po::value(&c.name)->default_value("cluster"), "")(
      "cluster.nodes", po::value(&c.nodes)->required(), "")("cluster.gpus_per_node", po::value(&c.gpus_per_node)->required(), "")(
      "cluster.intra_gbps", po::value(&c.intra_gbps)->required(), "")(
      "cluster.intra_latency_us", po::value(&c.intra_latency_us)->default_value(5.0), "")(
      "cluster.inter_gbps", po::value(&c.inter_gbps)->required(), "")(
      "cluster.inter_latency_us", po::value(&c.inter_latency_us)->default_value(10.0), "")(
      "cluster.gpu_mem_gib", po::value(&c.gpu_mem_gib)->required(), "")(
      "cluster.gpu_tflops", po::value(&c.gpu_tflops)->default_value(0.0), "")(
      "cluster.gpu_fp8_tflops", po::value(&c.gpu_fp8_tflops)->default_value(0.0), "")(
      "cluster.host_mem_gib", po::value(&c.host_mem_gib)->default_value(0.0), "")(
      "cluster.host_adamw_gparams_s", po::value(&c.host_adamw_gparams_s)->default_value(0.0), "")(
      "cluster.pcie_gbps", po::value(&c.pcie_gbps)->default_value(0.0), "");
  // A file, or inline `nodes=2,gpus_per_node=8,...` (the same keys, comma separated, as one [cluster] section).
  std::string text;
  const bool inline_spec = !std::filesystem::exists(spec) && spec.find('=') != std::string::npos;
  if (inline_spec) {
    text = "[cluster]\n" + spec;
    for (char& ch : text)
      if (ch == ',') ch = '\n';
  } else {
    std::ifstream in(spec);
    MONTA_USER_CHECK(in.good(), "cannot open cluster file '" + spec +
                                    "' (give a file such as configs/clusters/a800_2x8.ini or inline "
                                    "nodes=2,gpus_per_node=8,intra_gbps=200,inter_gbps=12.5,gpu_mem_gib=80)");
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  try {
    std::istringstream in(text);
    po::variables_map vm;
    po::store(po::parse_config_file(in, d, false), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    engine::fail_user("cluster '" + spec + "': " + e.what() +
                      " (keys: name, nodes, gpus_per_node, intra_gbps, intra_latency_us, inter_gbps, inter_latency_us, "
                      "gpu_mem_gib, gpu_tflops, gpu_fp8_tflops, host_mem_gib, host_adamw_gparams_s, pcie_gbps)");
  }
  auto finite_pos = [](double v) { return std::isfinite(v) && v > 0; };
  auto finite_nonneg = [](double v) { return std::isfinite(v) && v >= 0; };
  MONTA_USER_CHECK(c.nodes > 0 && c.gpus_per_node > 0 && finite_pos(c.intra_gbps) && finite_pos(c.inter_gbps) &&
                       finite_pos(c.gpu_mem_gib),
                   "cluster '" + spec + "': nodes, gpus_per_node, intra_gbps, inter_gbps and gpu_mem_gib must be positive");
  MONTA_USER_CHECK(double(c.nodes) * double(c.gpus_per_node) <= 1e6,
                   "cluster '" + spec + "': nodes x gpus_per_node must be at most 1000000");
  MONTA_USER_CHECK(finite_nonneg(c.intra_latency_us) && finite_nonneg(c.inter_latency_us) && finite_nonneg(c.gpu_tflops) &&
                       finite_nonneg(c.gpu_fp8_tflops),
                   "cluster '" + spec + "': intra_latency_us, inter_latency_us, gpu_fp8_tflops and gpu_tflops must be >= 0 "
                   "(gpu_tflops 0: rank by communication only; gpu_fp8_tflops 0: FP8 GEMMs priced at gpu_tflops)");
  MONTA_USER_CHECK(finite_nonneg(c.host_mem_gib) && finite_nonneg(c.host_adamw_gparams_s) && finite_nonneg(c.pcie_gbps),
                   "cluster '" + spec + "': host_mem_gib, host_adamw_gparams_s and pcie_gbps must be >= 0 (0: host memory "
                   "not checked, offload not priced)");
  return c;
}

namespace {

const comm::PlanRow* find_row(const comm::Plan& p, int tp, int ep, comm::ExchangeKind k, int chunks) {
  for (const auto& r : p.rows)
    if (r.tp == tp && r.ep == ep && r.expert_tp && r.strategy == k && (chunks == 0 || r.chunks == chunks)) return &r;
  return nullptr;
}

// The paper's claims at TP = GPUs per node, EP = 2 (the 2 × 8 A800 case: every EP group spans both nodes).
void print_claims(const comm::Plan& p, const comm::Cluster& c) {
  const int tp = c.gpus_per_node, ep = 2;
  const auto* dup = find_row(p, tp, ep, comm::ExchangeKind::duplicate, 1);
  const auto* dg = find_row(p, tp, ep, comm::ExchangeKind::drop_gather, 1);
  if (!dup || !dg) {
    engine::log_info(engine::strf("(no tp %d ep %d layout on this cluster/model: paper comparison skipped)", tp, ep));
    return;
  }
  const comm::PlanRow* pl = nullptr;  // the best chunk count
  const comm::PlanRow* ov = nullptr;
  for (const auto& r : p.rows) {
    if (r.tp != tp || r.ep != ep || !r.expert_tp) continue;
    if (r.strategy == comm::ExchangeKind::pipelined && (!pl || r.exchange.total < pl->exchange.total)) pl = &r;
    if (r.strategy == comm::ExchangeKind::overlapped && (!ov || r.step_s < ov->step_s)) ov = &r;
  }
  engine::log_info(engine::strf("\nPaper claims, predicted (tp %d, ep %d, EP all-to-all %.0f%% inter-node):", tp, ep,
                                100.0 * double(dup->exchange.inter_bytes) / std::max(1.0, dup->exchange.ep_bytes)));
  engine::log_info(engine::strf("  inter-node bytes per rank per call: duplicate %.1f MB, drop_gather %.1f MB -> %.1fx less",
                                dup->exchange.inter_bytes / 1e6, dg->exchange.inter_bytes / 1e6,
                                dup->exchange.inter_bytes / std::max(1.0, dg->exchange.inter_bytes)));
  engine::log_info(engine::strf("  EP all-to-all time per call:        duplicate %.3f ms, drop_gather %.3f ms -> %.2fx faster",
                                dup->exchange.a2a * 1e3, dg->exchange.a2a * 1e3, dup->exchange.a2a / dg->exchange.a2a));
  engine::log_info(engine::strf("  whole exchange per call:            duplicate %.3f ms, drop_gather %.3f ms (%.2fx)%s",
                                dup->exchange.total * 1e3, dg->exchange.total * 1e3,
                                dup->exchange.total / dg->exchange.total,
                                pl ? engine::strf(", pipelined n=%d %.3f ms (%.2fx of drop_gather)", pl->chunks,
                                                  pl->exchange.total * 1e3, dg->exchange.total / pl->exchange.total)
                                         .c_str()
                                   : ""));
  if (dup->compute_s > 0)
    engine::log_info(engine::strf(
        "  step time (compute %.2f s + comm, nothing overlapped): duplicate %.2f s, drop_gather %.2f s (%.1f%% less)%s",
        dup->compute_s, dup->step_s, dg->step_s, 100.0 * (1 - dg->step_s / dup->step_s),
        pl ? engine::strf(", pipelined %.2f s (%.1f%% less than drop_gather)", pl->step_s,
                          100.0 * (1 - pl->step_s / dg->step_s))
                 .c_str()
           : ""));
  if (dup->compute_s > 0 && ov)
    engine::log_info(engine::strf("  overlapped n=%d (experts hide part of the exchange): %.2f s (%.1f%% less than "
                                  "duplicate, %.1f%% less than drop_gather)",
                                  ov->chunks, ov->step_s, 100.0 * (1 - ov->step_s / dup->step_s),
                                  100.0 * (1 - ov->step_s / dg->step_s)));
}

}  // namespace

// `monta plan`'s own options; every other word goes to `monta train`'s parser (a model key or an override).
struct PlanArgs {
  std::string config, cluster_spec, links;
  int top = 40, max_chunks = 8;
  bool only_fitting = false, help = false;
  model::Config cfg;
};

// With --help, or without a cluster, prints the help and returns help = true with the exit code to use.
PlanArgs parse_plan_args(int argc, char** argv, int* exit_code) {
  PlanArgs a;
  std::string &config = a.config, &cluster_spec = a.cluster_spec, &links = a.links;
  int &top = a.top, &max_chunks = a.max_chunks;
  bool& only_fitting = a.only_fitting;
  po::options_description desc(
      "monta plan options (any `monta train` key such as --model.layers or --train.micro_batch overrides the config)");
  desc.add_options()("help,h", "print this help")("config", po::value(&config), "model INI (e.g. configs/2x70b.ini)")(
      "cluster", po::value(&cluster_spec), "cluster INI or inline nodes=2,gpus_per_node=8,intra_gbps=...")(
      "links", po::value(&links), "link-model cache (key = value) overriding the cluster's bandwidths/latencies")(
      "top", po::value(&top)->default_value(40), "rows to print (0: all)")(
      "max-chunks", po::value(&max_chunks)->default_value(8), "pipelined chunk counts 1..N")(
      "fitting", po::bool_switch(&only_fitting), "list only layouts that fit in memory");
  po::variables_map vm;
  const std::vector<std::string> rest = parse_command_line_with_overrides(argc, argv, desc, "plan", vm);
  if (vm.count("help") || cluster_spec.empty()) {
    std::cout << desc << "\n";
    *exit_code = vm.count("help") ? 0 : 2;
    a.help = true;
    return a;
  }
  MONTA_USER_CHECK(max_chunks >= 1 && max_chunks <= 64 && top >= 0, "--max-chunks must be in [1, 64] and --top not negative");
  a.cfg = config_with_overrides("plan", config, rest);
  {  // the model and training keys as `train` checks them; the layout is the planner's to choose
    model::Config any_layout = a.cfg;
    any_layout.parallel.tp = any_layout.parallel.ep = 1;
    model::validate(any_layout, 0);
  }
  return a;
}

int cmd_plan(int argc, char** argv) {
  int exit_code = 0;
  const PlanArgs args = parse_plan_args(argc, argv, &exit_code);
  if (args.help) return exit_code;
  const model::Config& cfg = args.cfg;
  const std::string& config = args.config;
  const int top = args.top;
  comm::Cluster cl = load_cluster(args.cluster_spec);
  if (!args.links.empty()) {
    const comm::LinkModel l = comm::read_link_model(args.links, cl.links());
    cl.intra_gbps = 1e-9 / l.intra.beta;
    cl.intra_latency_us = l.intra.alpha * 1e6;
    cl.inter_gbps = 1e-9 / l.inter.beta;
    cl.inter_latency_us = l.inter.alpha * 1e6;
  }
  const auto& m = cfg.model;
  const comm::Plan plan = model::plan_layouts(cfg, cl, args.max_chunks, args.only_fitting);

  engine::log_info(engine::strf(
      "monta plan: cluster %s = %d nodes x %d GPUs, NVLink %.1f GB/s + %.1f us, network %.2f GB/s/GPU + %.1f us, "
      "%.0f GiB, %.0f TFLOP/s%s",
      cl.name.c_str(), cl.nodes, cl.gpus_per_node, cl.intra_gbps, cl.intra_latency_us, cl.inter_gbps,
      cl.inter_latency_us, cl.gpu_mem_gib, cl.gpu_tflops,
      !m.fp8_experts()       ? ""
      : cl.gpu_fp8_tflops > 0 ? engine::strf(" (model.fp8 %s: its FP8 GEMMs at %.0f TFLOP/s)", m.fp8.c_str(),
                                             cl.gpu_fp8_tflops).c_str()
                              : engine::strf(" (model.fp8 %s: the cluster gives no gpu_fp8_tflops, so its FP8 GEMMs "
                                             "are priced at the bf16 rate)", m.fp8.c_str()).c_str()));
  engine::log_info(engine::strf(
      "model %s: H %ld, L %ld, E %ld, top-%ld, S %ld, cf %.2f, micro-batch %ld, global batch %ld (bf16 exchange)",
      config.empty() ? "(defaults)" : config.c_str(), long(m.hidden), long(m.layers), long(m.experts), long(m.top_k),
      long(m.seq_len), m.capacity_factor, long(cfg.train.micro_batch), long(cfg.train.global_batch)));
  engine::log_info("memory: weights, gradients, AdamW, bf16 copy and activations as the trainer allocates them "
                   "(model::rank_footprint, as --dry-run prints); ckpt GiB = pinned host memory of the checkpoint "
                   "snapshot per GPU (checkpoint.async); times per optimizer step; exch ms = one "
                   "dispatch or combine call; exch s = 4 calls x layers x micro-steps, less what the experts hide (overlapped)\n");
  engine::log_info(comm::format_plan(plan, size_t(top)));
  engine::log_info(model::plan_pick_line(plan, cl));
  engine::log_info(model::plan_memory_options(cfg, cl, args.max_chunks));
  print_claims(plan, cl);
  return 0;
}

}  // namespace monta::app
