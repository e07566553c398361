// Megatron-style sequence parallelism (parallel.sequence_parallel): the pieces of Model that move tokens between the
// sequence-split parts (norms, residual stream, router, final norm: N/t tokens per TP rank) and the tensor-parallel
// GEMMs (all N tokens), and the router's capacity over the whole micro-batch. docs/memory.md says what it saves.
#include "engine/ops/elementwise.h"
#include "engine/ops/linear.h"
#include "engine/ops/router.h"
#include "engine/ops/router_sp.h"
#include "model/model.h"

namespace monta::model {

using namespace monta::engine;

Tensor Model::whole_tokens(const Tensor& local) {
  if (!s_.sp) return local;
  par_.tp_comm->all_gather(gather_, local);  // rank r's N/t tokens are rows [r·N/t, (r+1)·N/t)
  return gather_;
}

void Model::reduce_tokens(Tensor out, Tensor whole) {
  if (s_.sp)
    par_.tp_comm->reduce_scatter(out, whole, comm::ReduceOp::sum);
  else
    tp_all_reduce(whole);
}

void Model::sp_output_projection(Tensor h, const Tensor& ao, const Param& wo, const Tensor& x) {
  proj_forward(gather_, ao, wo);  // (N, H) partial sums of this rank's heads
  par_.tp_comm->reduce_scatter(h, gather_, comm::ReduceOp::sum);
  accumulate(h, x);  // the residual, once per token (on its own rank)
}

void Model::sp_route(int l, Layer& a) {
  // Local top-k and choice-major slots with room for every choice (nothing dropped yet), each rank's counts per
  // (choice, expert) gathered, then the slots offset by the other ranks' tokens before them and cut at capacity.
  route_topk(l, a, s_.N_l * s_.K);
  const Tensor mine = choice_counts_.rows(par_.tp_rank, 1).view({s_.K, s_.E});
  router_choice_counts(mine, a.expert_idx);
  par_.tp_comm->all_gather(choice_counts_, mine);
  router_sp_slots(a.slot, a.counts, a.expert_idx, choice_counts_, par_.tp_rank, s_.C);
}

Model::SpLossScale Model::sp_loss_scale() const {
  if (!s_.sp) return {};
  const double t = double(s_.t);
  return {1.0 / (t * t), 1.0 / t};
}

}  // namespace monta::model
