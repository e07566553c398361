// Memory of one rank from the allocators' own tables (model/footprint.h).
#include "model/footprint.h"

#include "engine/memory.h"
#include "model/model.h"
#include "model/params.h"
#include "model/shapes.h"

namespace monta::model {

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
  std::vector<engine::TensorSpec> whole;
  RankFootprint f;
  for (const Param& p : table) {
    f.params += p.numel();
    if (p.kind == ParamKind::expert) f.expert_params += p.numel();
    whole.push_back({p.name, p.local, engine::DType::f32});
  }
  const StoreSpecs st = store_specs(table, par, device, engine::DType::f32, act, opt);  // what ParamStore allocates
  auto bytes = [](const std::vector<engine::TensorSpec>& specs) { return double(engine::Arena::bytes_for(specs)); };
  f.weights = bytes(st.master);
  f.adam = 2 * bytes(st.moment);
  f.grads = bytes(st.grad) + bytes(st.grad_shard);
  f.compute_copy = bytes(st.compute);
  f.offload = opt.offload;
  if (opt.offload) f.host_bytes = f.weights + f.adam + bytes(st.host_grad) + bytes(st.host_lowp);
  f.snapshot = 3 * bytes(whole);
  const Shapes s = Shapes::make(c.model, c.train.micro_batch, tp, ep, dp, expert_tp);
  f.activations = double(engine::Arena::bytes_for(Model::activation_specs(c.model, s, act, ep > 1)));
  return f;
}

}  // namespace monta::model
