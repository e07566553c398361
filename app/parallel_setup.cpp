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
  int64_t pick[2] = {int64_t(comm::ExchangeKind::duplicate), 1};
  double best = 1e300;
  for (auto k : {comm::ExchangeKind::duplicate, comm::ExchangeKind::drop_gather, comm::ExchangeKind::pipelined,
                 comm::ExchangeKind::overlapped}) {
    const bool chunked = k == comm::ExchangeKind::pipelined || k == comm::ExchangeKind::overlapped;
    for (int n = chunked ? 2 : 1; n <= (chunked ? 8 : 1); ++n) {
      const auto p = comm::predict_exchange_shape(k, n, s.E, s.C, s.H, es, place, links);
      const double t = comm::predict_moe_block(k, n, s.E, s.C, s.H, es, place, links, xf) +
                       comm::predict_moe_block(k, n, s.E, s.C, s.H, es, place, links, 2 * xf);
      table += engine::strf("  %-12s %6d %12.1f %14.1f\n", comm::exchange_kind_name(k), n, p.total * 1e6, t * 1e6);
      if (t < best * 0.98) {  // prefer the simpler strategy unless the gain is real
        best = t;
        pick[0] = int64_t(k);
        pick[1] = n;
      }
    }
  }
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
