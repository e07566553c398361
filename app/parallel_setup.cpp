// Parallel setup: the config is validated against the world size before any group or buffer exists.
#include "app/parallel_setup.h"

#include "comm/runtime.h"
#include "comm/topology.h"
#include "engine/check.h"
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
  auto coords = g.coords();
  auto& x = ps.ctx;
  x.tp = layout.tp;
  x.tp_rank = coords.tp_idx;
  x.ep = layout.ep;
  x.ep_rank = coords.ep_idx;
  x.dp = layout.dp;
  x.dp_rank = coords.dp_idx;
  x.expert_dp = layout.expert_dp;
  x.expert_dp_rank = coords.expert_dp_idx;
  x.expert_tp = c.parallel.expert_tp;
  x.world = &g.world();
  x.tp_comm = &g.tp();
  x.dp_comm = &g.dp();
  x.ep_comm = &g.ep();
  x.expert_dp_comm = &g.expert_dp();
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
  ps.exchange = comm::make_exchange(comm::parse_exchange_kind(c.comm.exchange), *ps.ctx.tp_comm, *ps.ctx.ep_comm,
                                    shape, act, device);
  ps.ctx.exchange = ps.exchange.get();
}

}  // namespace monta::app
