// Memory of one rank from the allocators' own tables (model/footprint.h).
#include "model/footprint.h"

#include <algorithm>
#include "comm/exchange.h"

#include "engine/memory.h"
#include "model/model.h"
#include "model/parallel_setup.h"
#include "model/params.h"
#include "model/shapes.h"

namespace monta::model {

int64_t checkpoint_host_bytes(const std::vector<Param>& params, engine::DType master) {
  int64_t n = 0;
  for (const Param& p : params) {
    if (!p.owner) continue;
    int64_t bytes = int64_t(engine::dtype_size(master));
    for (int64_t v : p.local) bytes *= v;
    n += 3 * ((bytes + 4095) / 4096 * 4096);
  }
  return n;
}

RankFootprint rank_footprint(const Config& c, int tp, int ep, bool expert_tp, int dp, engine::Device device) {
  ParallelContext par;
  par.tp = tp;
  par.ep = ep;
  par.dp = dp;
  par.expert_dp = dp / ep;
  par.expert_tp = expert_tp;
  const engine::DType act = device == engine::Device::cuda ? engine::DType::bf16 : engine::DType::f32;
  const OptimizerLayout opt = optimizer_layout(c.train);
  std::vector<Param> table = param_table(c.model, par);
  RankFootprint f;
  for (const Param& p : table) {
    f.params += p.numel();
    if (p.kind == ParamKind::expert) f.expert_params += p.numel();
  }
  const StoreSpecs st = store_specs(table, par, device, engine::DType::f32, act, opt);  // what ParamStore allocates
  auto bytes = [](const std::vector<engine::TensorSpec>& specs) { return double(engine::Arena::bytes_for(specs)); };
  f.weights = bytes(st.master);
  f.adam = 2 * bytes(st.moment);
  f.grads = bytes(st.grad) + bytes(st.grad_shard);
  f.compute_copy = bytes(st.compute);
  f.offload = opt.offload;
  if (opt.offload) f.host_bytes = f.weights + f.adam + bytes(st.host_grad) + bytes(st.host_lowp);
  const Shapes s = Shapes::make(c.model, c.train.micro_batch, tp, ep, dp, expert_tp, c.parallel.sequence_parallel);
  f.activations = double(engine::Arena::bytes_for(
      Model::activation_specs(c.model, s, act, ep > 1, recompute_mode(c.train), c.comm.dispatch_fp8())));
  f.fp8_weights = bytes(Model::fp8_weight_specs(c.model, s));
  if (ep > 1) {
    std::vector<comm::ExchangeKind> kinds;
    std::vector<int> chunks = {int(c.comm.chunks)};
    if (c.comm.exchange == "auto") {  // what choose_exchange may pick (never duplicate under SP), 1 to 8 chunks
      kinds = {comm::ExchangeKind::drop_gather, comm::ExchangeKind::pipelined, comm::ExchangeKind::overlapped};
      if (!s.sp) kinds.push_back(comm::ExchangeKind::duplicate);
      chunks = {1, 2, 3, 4, 5, 6, 7, 8};
    } else {
      kinds = {comm::parse_exchange_kind(c.comm.exchange)};
    }
    for (comm::ExchangeKind k : kinds)
      for (int n : chunks)
        f.exchange = std::max(f.exchange, bytes(comm::exchange_staging_specs(k, exchange_shape(s, n), tp, ep, act)));
  }
  // Rank 0 owns every slice it holds (the most any rank snapshots). Saves use the snapshot when asynchronous, or from
  // the GPU (a synchronous save stages through it).
  const bool snapshot = c.checkpoint.async || device == engine::Device::cuda;
  f.checkpoint_host = snapshot ? double(checkpoint_host_bytes(table, engine::DType::f32)) : 0.0;
  return f;
}

}  // namespace monta::model
