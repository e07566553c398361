// Parallel setup: the config is validated against the world size before any group or buffer exists.
#include "app/parallel_setup.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "comm/calibrate.h"
#include "comm/cost_model.h"
#include "comm/runtime.h"
#include "comm/topology.h"
#include "engine/check.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "engine/ops/linear.h"
#include "model/shapes.h"
#ifdef MONTA_WITH_CUDA
#include "comm/cuda/nccl_communicator.h"
#endif

namespace monta::app {

#ifdef MONTA_WITH_CUDA
void NcclGroupsDeleter::operator()(comm::NcclGroups* g) const { delete g; }
#else
void NcclGroupsDeleter::operator()(comm::NcclGroups* g) const {
  MONTA_CHECK(g == nullptr, "NCCL groups in a build without CUDA");
}
#endif

void select_gpu(const comm::Topology& topo, int local_rank) {
  // Before any NCCL call: NCCL binds each communicator to the device current at its creation.
  const int gpus = engine::cuda_device_count(), world = comm::runtime_world_size();
  MONTA_USER_CHECK(gpus > 0, "train.device = cuda but no CUDA device is visible; use --train.device cpu");
  // Ranks may share a GPU only when each is its own emulated node: NCCL then sees distinct hosts (sockets
  // between them) instead of refusing a duplicate GPU. For tests and functional runs on a one-GPU machine.
  const bool node_per_rank = topo.emulated && topo.num_nodes == world;
  MONTA_USER_CHECK(local_rank < gpus || node_per_rank,
                   "local rank " + std::to_string(local_rank) + " on " + comm::runtime_host() +
                       " has no GPU of its own (" + std::to_string(gpus) +
                       " visible); NCCL needs one GPU per rank: launch at most one rank per GPU, give every rank its "
                       "own emulated node (--comm.emulate_nodes " + std::to_string(world) +
                       ", timings then shared), or use --train.device cpu");
  if (local_rank == gpus)
    engine::log_warn("ranks share GPUs (one emulated node per rank): functional only, timings are not per-GPU");
  engine::cuda_set_device(local_rank % gpus);
}

ParallelSetup setup_parallel(const model::Config& c, engine::Device device) {
  ParallelSetup ps;
  ps.device = device;
  const int world = comm::runtime_world_size();
  model::validate(c, world);
  const auto& m = c.model;
  comm::Layout layout = comm::make_layout(world, c.parallel.tp, c.parallel.ep, c.parallel.expert_tp, int(m.experts),
                                          int(m.heads), int(m.kv_heads), m.vocab, m.ffn);
  comm::Topology topo = comm::discover_topology(c.comm.emulate_nodes);
  ps.local_rank = comm::runtime_local_rank();
  if (device == engine::Device::cuda) select_gpu(topo, ps.local_rank);
  ps.groups = std::make_unique<comm::ProcessGroups>(layout, topo);
  ps.layout_table = ps.groups->layout_table();
  auto& g = *ps.groups;
  ps.ctx = model::context_from_groups(g, c.parallel.expert_tp);
  auto& x = ps.ctx;
  if (device == engine::Device::cuda) {
#ifdef MONTA_WITH_CUDA
    ps.nccl.reset(comm::make_nccl_groups(g).release());
    auto& n = *ps.nccl;
    x.world = &n.world();
    x.tp_comm = &n.tp();
    x.dp_comm = &n.dp();
    x.ep_comm = &n.ep();
    x.expert_dp_comm = &n.expert_dp();
#else
    MONTA_USER_CHECK(false, "train.device = cuda but this build has no CUDA backend; use --train.device cpu");
#endif
  }
  return ps;
}

void attach_exchange(ParallelSetup& ps, const model::Config& c, engine::Device device, engine::DType act) {
  if (ps.ctx.ep <= 1) return;  // no all-to-all: the dispatch buffer is the experts' input
  MONTA_CHECK(device == ps.device, std::string("attach_exchange on ") + engine::device_name(device) +
                                       " but setup_parallel chose " + engine::device_name(ps.device));
  model::Shapes s = model::Shapes::make(c.model, c.train.micro_batch, ps.ctx.tp, ps.ctx.ep, ps.ctx.dp, ps.ctx.expert_tp);
  comm::ExchangeShape shape{s.E, s.C, s.H};
  int chunks = c.comm.chunks;
  comm::ExchangeKind kind = c.comm.exchange == "auto" ? choose_exchange(ps, c, s, act, device, &chunks)
                                                      : comm::parse_exchange_kind(c.comm.exchange);
  shape.chunks = chunks;
  ps.exchange = comm::make_exchange(kind, *ps.ctx.tp_comm, *ps.ctx.ep_comm, shape, act, device);
  ps.ctx.exchange = ps.exchange.get();
}

namespace {

// One layer's expert forward on this device, measured: the gate GEMM of this layer's shape (E_l experts, e*C rows,
// H -> F_l) on scratch buffers, median of 3 after a warm-up, times 3 (gate, up and down have the same FLOPs).
double expert_forward_seconds(const model::Shapes& s, engine::DType act, engine::Device device) {
  engine::Arena scratch("expert_probe", device,
                        {{"y", {s.E_l, s.EC, s.H}, act}, {"w", {s.E_l, s.F_l, s.H}, act}, {"o", {s.E_l, s.EC, s.F_l}, act}});
  for (const char* n : {"y", "w"}) engine::fill_zero(scratch.get(n));
  const engine::Tensor y = scratch.get("y"), w = scratch.get("w"), o = scratch.get("o");
  std::vector<double> t;
  for (int i = 0; i < 4; ++i) {
    engine::sync_device(device);
    const auto t0 = std::chrono::steady_clock::now();
    engine::expert_linear_forward(o, y, w);
    engine::sync_device(device);
    if (i > 0) t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return 3 * t[1];
}

struct Candidate {
  comm::ExchangeKind kind;
  int chunks;
  double predicted, predicted_fwd, measured;  // seconds: fwd+bwd blocks, forward block; measured forward block
};

// Times each candidate's forward MoE block on scratch buffers: dispatch, then per expert chunk three GEMMs of the
// chunk's rows (gate, up and down have the same FLOPs), then combine. All ranks run every candidate in the same
// order; the median of 3 after a warm-up, maximum over the world, so every rank gets the same numbers.
void measure_forward_blocks(ParallelSetup& ps, const model::Shapes& s, engine::DType act, engine::Device device,
                            std::vector<Candidate>& cands) {
  const int64_t n = s.E * s.C * s.H;
  engine::Arena scratch("exchange_auto_probe", device,
                        {{"x", {n}, act}, {"y", {n}, act}, {"z", {n}, act}, {"out", {n}, act},
                         {"w", {s.E_l, s.F_l, s.H}, act}, {"o", {s.E_l, s.EC, s.F_l}, act}});
  for (const char* t : {"x", "z", "w"}) engine::fill_zero(scratch.get(t));
  const engine::Tensor x = scratch.get("x").view({s.E, s.C, s.H}), y = scratch.get("y").view({s.E_l, s.EC, s.H});
  const engine::Tensor z = scratch.get("z").view({s.E_l, s.EC, s.H}), out = scratch.get("out").view({s.E, s.C, s.H});
  const engine::Tensor w = scratch.get("w"), o = scratch.get("o");
  for (Candidate& k : cands) {
    comm::ExchangeShape shape{s.E, s.C, s.H};
    shape.chunks = k.chunks;
    auto ex = comm::make_exchange(k.kind, *ps.ctx.tp_comm, *ps.ctx.ep_comm, shape, act, device);
    auto block = [&] {
      ex->dispatch_experts_combine(out, z, y, x, [&](int c) {
        const engine::Tensor yc = ex->expert_chunk(y, c), oc = ex->expert_chunk(o, c);
        for (int g = 0; g < 3; ++g) engine::expert_linear_forward(oc, yc, w);
      });
    };
    std::vector<double> t;
    for (int i = 0; i < 4; ++i) {
      ps.ctx.world->barrier();
      const auto t0 = std::chrono::steady_clock::now();
      block();
      engine::sync_device(device);
      if (i > 0) t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    double med[1] = {t[1]};
    ps.ctx.world->all_reduce(engine::Tensor(med, {1}, engine::DType::f64), comm::ReduceOp::max);
    k.measured = med[0];
  }
}

}  // namespace

comm::ExchangeKind choose_exchange(ParallelSetup& ps, const model::Config& c, const model::Shapes& s, engine::DType act,
                                   engine::Device device, int* chunks) {
  const auto& g = *ps.groups;
  const auto& topo = g.topology();
  const int me = topo.world_rank;
  // Where this rank's TP and EP peers sit.
  comm::GroupPlacement place;
  place.t = ps.ctx.tp;
  place.e = ps.ctx.ep;
  for (int r : g.members(comm::GroupKind::ep))
    if (r != me) (topo.same_node(r, me) ? place.ep_peers_intra : place.ep_peers_inter)++;
  for (int r : g.members(comm::GroupKind::tp)) place.tp_spans_nodes |= !topo.same_node(r, me);
  place.ep_cross_fraction = place.e > 1 ? double(place.ep_peers_inter) / double(place.e - 1) : 0.0;
  // Link model: a file, or a short probe over the very groups the exchange uses.
  comm::LinkModel links{comm::link_from(300, 10), comm::link_from(10, 20)};
  if (!c.comm.links.empty()) {
    links = comm::read_link_model(c.comm.links, links);
  } else {
    comm::Communicator* intra = nullptr;
    comm::Communicator* inter = nullptr;
    if (ps.ctx.tp > 1 && !place.tp_spans_nodes) intra = ps.ctx.tp_comm;
    if (place.ep_peers_inter > 0)
      inter = ps.ctx.ep_comm;
    else if (!intra)
      intra = ps.ctx.ep_comm;
    const int64_t sizes[] = {1 << 16, 1 << 20, 1 << 22};
    links = comm::calibrate(intra, inter, links, sizes, 3, device).links;
  }
  // Predict every strategy on this layer's (E, C, H) buffer and measured expert time: the forward and backward MoE
  // blocks (dispatch, experts, combine) of one layer. Rank 0's choice is broadcast so all ranks agree.
  const int es = int(engine::dtype_size(act));
  const double xf = expert_forward_seconds(s, act, device);
  std::string table = engine::strf(
      "exchange auto: predicted MoE blocks of one layer, forward + backward, for (E, C, H) = (%ld, %ld, %ld), experts "
      "measured at %.1f us forward (backward taken as 2x)\n  %-12s %6s %12s %14s\n",
      long(s.E), long(s.C), long(s.H), xf * 1e6, "strategy", "chunks", "call us", "fwd+bwd us");
  // The predicted best chunk count of every strategy, in order of simplicity.
  std::vector<Candidate> cands;
  for (auto k : {comm::ExchangeKind::duplicate, comm::ExchangeKind::drop_gather, comm::ExchangeKind::pipelined,
                 comm::ExchangeKind::overlapped}) {
    const bool chunked = k == comm::ExchangeKind::pipelined || k == comm::ExchangeKind::overlapped;
    for (int n = chunked ? 2 : 1; n <= (chunked ? 8 : 1); ++n) {
      const auto p = comm::predict_exchange_shape(k, n, s.E, s.C, s.H, es, place, links);
      const double fwd = comm::predict_moe_block(k, n, s.E, s.C, s.H, es, place, links, xf);
      const double t = fwd + comm::predict_moe_block(k, n, s.E, s.C, s.H, es, place, links, 2 * xf);
      table += engine::strf("  %-12s %6d %12.1f %14.1f\n", comm::exchange_kind_name(k), n, p.total * 1e6, t * 1e6);
      if (cands.empty() || cands.back().kind != k) cands.push_back({k, n, t, fwd, 0});
      else if (t < cands.back().predicted) cands.back() = {k, n, t, fwd, 0};
    }
  }
  // Prediction: the fastest, unless a simpler strategy is within 2%.
  auto choose = [](const std::vector<Candidate>& v, double Candidate::*by) {
    size_t best = 0;
    for (size_t i = 1; i < v.size(); ++i)
      if (v[i].*by < v[best].*by * 0.98) best = i;
    return best;
  };
  size_t pick_i = choose(cands, &Candidate::predicted);
  if (c.comm.auto_verify) {
    // Ranks may place their groups differently and predict other chunk counts: all measure rank 0's candidates.
    std::vector<int64_t> ks(cands.size());
    for (size_t i = 0; i < cands.size(); ++i) ks[i] = cands[i].chunks;
    ps.ctx.world->broadcast(engine::Tensor(ks.data(), {int64_t(ks.size())}, engine::DType::i64), 0);
    for (size_t i = 0; i < cands.size(); ++i) cands[i].chunks = int(ks[i]);
    // Verification: every strategy's predicted best runs the forward MoE block (dispatch, experts, combine) on
    // scratch buffers of this layer's shape over the real groups; the slowest rank's median counts.
    measure_forward_blocks(ps, s, act, device, cands);
    table += "exchange auto: measured forward MoE block (predicted best chunk count of each strategy)\n";
    for (const Candidate& k : cands)
      table += engine::strf("  %-12s %6d  predicted %10.1f us  measured %10.1f us  (%+.0f%%)\n",
                            comm::exchange_kind_name(k.kind), k.chunks, k.predicted_fwd * 1e6, k.measured * 1e6,
                            100.0 * (k.measured - k.predicted_fwd) / k.predicted_fwd);
    const size_t by_measure = choose(cands, &Candidate::measured);
    if (by_measure != pick_i)
      table += engine::strf("exchange auto: measurement overrides the prediction (%s -> %s)\n",
                            comm::exchange_kind_name(cands[pick_i].kind), comm::exchange_kind_name(cands[by_measure].kind));
    pick_i = by_measure;
  }
  int64_t pick[2] = {int64_t(cands[pick_i].kind), cands[pick_i].chunks};
  ps.ctx.world->broadcast(engine::Tensor(pick, {2}, engine::DType::i64), 0);
  const auto kind = comm::ExchangeKind(pick[0]);
  *chunks = int(pick[1]);
  engine::log_info(table + engine::strf("exchange auto: chose %s%s", comm::exchange_kind_name(kind),
                                        kind == comm::ExchangeKind::pipelined || kind == comm::ExchangeKind::overlapped
                                            ? engine::strf(" with %d chunks", *chunks).c_str()
                                            : ""));
  return kind;
}

}  // namespace monta::app
