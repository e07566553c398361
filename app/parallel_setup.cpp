// Parallel setup: the config is validated against the world size before any group or buffer exists.
#include "app/parallel_setup.h"

#include "comm/calibrate.h"
#include "comm/cost_model.h"
#include "comm/runtime.h"
#include "comm/topology.h"
#include "engine/check.h"
#include "engine/log.h"
#include "engine/memory.h"
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
  if (device == engine::Device::cuda) {
    // Before any NCCL call: NCCL binds each communicator to the device current at its creation.
    const int gpus = engine::cuda_device_count();
    MONTA_USER_CHECK(gpus > 0, "train.device = cuda but no CUDA device is visible; use --train.device cpu");
    MONTA_USER_CHECK(ps.local_rank < gpus, "local rank " + std::to_string(ps.local_rank) + " on " +
                                               comm::runtime_host() + " has no GPU of its own (" + std::to_string(gpus) +
                                               " visible); NCCL needs one GPU per rank: launch at most one rank per "
                                               "GPU or use --train.device cpu");
    engine::cuda_set_device(ps.local_rank % gpus);
  }
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
  // Predict every strategy on this layer's (E, C, H) buffer; rank 0's choice is broadcast so all ranks agree.
  const int es = int(engine::dtype_size(act));
  std::string table = "exchange auto: predicted dispatch time per call for (E, C, H) = (" + std::to_string(s.E) + ", " +
                      std::to_string(s.C) + ", " + std::to_string(s.H) + ")\n";
  int64_t pick[2] = {int64_t(comm::ExchangeKind::duplicate), 1};
  double best = 1e300;
  for (auto k : {comm::ExchangeKind::duplicate, comm::ExchangeKind::drop_gather, comm::ExchangeKind::pipelined}) {
    const int hi = k == comm::ExchangeKind::pipelined ? 8 : 1;
    for (int n = k == comm::ExchangeKind::pipelined ? 2 : 1; n <= hi; ++n) {
      auto p = comm::predict_exchange_shape(k, n, s.E, s.C, s.H, es, place, links);
      table += engine::strf("  %-12s chunks %d  %10.1f us\n", comm::exchange_kind_name(k), n, p.total * 1e6);
      if (p.total < best * 0.98) {  // prefer the simpler strategy unless the gain is real
        best = p.total;
        pick[0] = int64_t(k);
        pick[1] = n;
      }
    }
  }
  ps.ctx.world->broadcast(engine::Tensor(pick, {2}, engine::DType::i64), 0);
  const auto kind = comm::ExchangeKind(pick[0]);
  *chunks = int(pick[1]);
  engine::log_info(table + engine::strf("exchange auto: chose %s%s", comm::exchange_kind_name(kind),
                                        kind == comm::ExchangeKind::pipelined
                                            ? engine::strf(" with %d chunks", *chunks).c_str()
                                            : ""));
  return kind;
}

}  // namespace monta::app
