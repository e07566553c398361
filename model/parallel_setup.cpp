// Parallel setup: the config is validated against the world size before any group or buffer exists.
#include "model/parallel_setup.h"

#include <memory>
#include <vector>

#include "comm/calibrate.h"
#include "comm/cost_model.h"
#include "comm/exchange_choice.h"
#include "comm/fp8_dispatch.h"
#include "comm/runtime.h"
#include "comm/topology.h"
#include "engine/check.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "model/fp8_experts.h"
#include "model/shapes.h"
#ifdef MONTA_WITH_CUDA
#include "comm/cuda/nccl_communicator.h"
#endif

namespace monta::model {

#ifdef MONTA_WITH_CUDA
void NcclGroupsDeleter::operator()(comm::NcclGroups* g) const { delete g; }
#else
void NcclGroupsDeleter::operator()(comm::NcclGroups* g) const {
  MONTA_CHECK(g == nullptr, "NCCL groups in a build without CUDA");
}
#endif

engine::Device pick_device(const std::string& train_device) {
  if (train_device == "cpu") return engine::Device::cpu;
  const bool gpu = engine::cuda_available();
  MONTA_USER_CHECK(gpu || train_device != "cuda", "train.device = cuda but no CUDA device is visible (or this build has no "
                                                  "CUDA backend); use --train.device cpu or auto");
  return gpu ? engine::Device::cuda : engine::Device::cpu;
}

ParallelSetup setup_parallel(const model::Config& c, engine::Device device) {
  ParallelSetup ps;
  ps.device = device;
  const int world = comm::runtime_world_size();
  model::validate(c, world);
  if (device == engine::Device::cuda) {
    const std::string fp8 = model::fp8_cuda_shape_problem(c, c.parallel.tp, c.parallel.ep, c.parallel.expert_tp);
    MONTA_USER_CHECK(fp8.empty(), fp8);
  }
  const auto& m = c.model;
  comm::Layout layout = comm::make_layout(world, c.parallel.tp, c.parallel.ep, c.parallel.expert_tp, int(m.experts),
                                          int(m.heads), int(m.kv_heads), m.vocab, m.ffn);
  comm::Topology topo = comm::discover_topology(c.comm.emulate_nodes);
  ps.local_rank = comm::runtime_local_rank();
  if (device == engine::Device::cuda) comm::select_gpu(topo, ps.local_rank);
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
  model::Shapes s = model::Shapes::make(c.model, c.train.micro_batch, ps.ctx.tp, ps.ctx.ep, ps.ctx.dp, ps.ctx.expert_tp,
                                        c.parallel.sequence_parallel);
  int chunks = c.comm.chunks;
  comm::ExchangeKind kind = c.comm.exchange == "auto" ? choose_exchange(ps, c, s, act, device, &chunks)
                                                      : comm::parse_exchange_kind(c.comm.exchange);
  ps.exchange = comm::make_exchange(kind, *ps.ctx.tp_comm, *ps.ctx.ep_comm, exchange_shape(s, chunks), act, device);
  ps.ctx.exchange = ps.exchange.get();
}

comm::ExchangeShape exchange_shape(const model::Shapes& s, int chunks) {
  comm::ExchangeShape shape{s.E, s.C, s.H};
  shape.chunks = chunks;
  shape.sequence_parallel = s.sp;
  return shape;
}

comm::ExchangeKind choose_exchange(ParallelSetup& ps, const model::Config& c, const model::Shapes& s, engine::DType act,
                                   engine::Device device, int* chunks) {
  comm::ExchangeChoiceInput in;
  in.experts = s.E;
  // Dropless: measure and predict at the expected step capacity (comm/cost_model.h), not the worst case s.C = N.
  in.capacity = c.model.dropless() ? comm::dropless_expected_capacity(s.N, s.K, s.E, s.e) : s.C;
  if (c.model.dropless()) in.load = comm::dropless_expected_load(s.N, s.K, s.E, in.capacity);  // filled rows only
  in.hidden = s.H;
  if (c.comm.dispatch_fp8()) in.dispatch_width = comm::fp8_dispatch_width(s.H, act);
  in.ffn_local = s.F_l;
  in.dtype = act;
  in.device = device;
  in.sequence_parallel = s.sp;
  if (!c.comm.links.empty())
    in.links = comm::read_link_model(c.comm.links, {comm::link_from(300, 10), comm::link_from(10, 20)});
  in.verify = c.comm.auto_verify;
  if (c.model.fp8_experts()) {
    // Time the experts as they will run: the FP8 GEMM, the weight's codes made once (the model caches them per
    // step), the activations quantised at each call, in an arena of this probe's own (freed when auto is done).
    const int64_t E_l = s.E / ps.ctx.ep, rows = in.capacity * ps.ctx.ep;
    std::vector<engine::TensorSpec> specs = model::fp8_weight_specs("w", E_l, s.F_l, s.H);
    specs.push_back({"scratch", {model::fp8_expert_scratch_bytes(E_l, rows, s.H, s.F_l, false)}, engine::DType::u8});
    auto arena = std::make_shared<engine::Arena>("exchange_auto_fp8_probe", device, specs);
    auto made = std::make_shared<bool>(false);
    in.expert_gemm = [arena, made](engine::Tensor o, const engine::Tensor& y, const engine::Tensor& w) {
      const model::Fp8Weight codes = model::fp8_weight_bind(*arena, 0);
      if (!*made) model::fp8_weight_quantize(codes, w);  // the probe's w never changes
      *made = true;
      model::fp8_expert_linear_forward(o, y, w, arena->get("scratch"), false, &codes);
    };
    if (device == engine::Device::cuda)  // the same rule start-up checked for the configured exchange
      in.runnable = [c, &ps](comm::ExchangeKind k, int n) {
        model::Config cc = c;
        cc.comm.exchange = comm::exchange_kind_name(k);
        cc.comm.chunks = n;
        return model::fp8_cuda_shape_problem(cc, ps.ctx.tp, ps.ctx.ep, ps.ctx.expert_tp).empty();
      };
  }
  const comm::ExchangeChoice pick =
      comm::choose_exchange(*ps.groups, *ps.ctx.world, *ps.ctx.tp_comm, *ps.ctx.ep_comm, in);
  engine::log_info(pick.table);
  *chunks = pick.chunks;
  return pick.kind;
}

}  // namespace monta::model
