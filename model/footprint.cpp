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
  std::vector<engine::TensorSpec> master, compute, moment;
  RankFootprint f;
  for (const Param& p : param_table(c.model, par)) {
    int64_t n = 1;
    for (int64_t v : p.local) n *= v;
    f.params += n;
    if (p.kind == ParamKind::expert) f.expert_params += n;
    master.push_back({p.name, p.local, engine::DType::f32});
    compute.push_back({p.name, p.local, act});
    moment.push_back({p.name, p.local, opt.moments});
  }
  f.weights = f.grads = double(engine::Arena::bytes_for(master));
  f.adam = 2 * double(engine::Arena::bytes_for(moment));
  const double compute_bytes = double(engine::Arena::bytes_for(compute));
  f.compute_copy = act == engine::DType::f32 && !opt.offload ? 0.0 : compute_bytes;  // ParamStore's separate_compute
  f.offload = opt.offload;
  if (opt.offload) f.host_bytes = f.weights + f.adam + f.grads + (act == engine::DType::f32 ? 0.0 : compute_bytes);
  const Shapes s = Shapes::make(c.model, c.train.micro_batch, tp, ep, dp, expert_tp);
  f.activations = double(engine::Arena::bytes_for(Model::activation_specs(c.model, s, act, ep > 1)));
  return f;
}

}  // namespace monta::model
