// ParallelContext from the process groups: the one place that maps group coordinates to the model's view.
#include "model/parallel.h"

#include "comm/groups.h"

namespace monta::model {

ParallelContext context_from_groups(const comm::ProcessGroups& g, bool expert_tp) {
  const auto& l = g.layout();
  const auto c = g.coords();
  ParallelContext x;
  x.tp = l.tp;
  x.tp_rank = c.tp_idx;
  x.ep = l.ep;
  x.ep_rank = c.ep_idx;
  x.dp = l.dp;
  x.dp_rank = c.dp_idx;
  x.expert_dp = l.expert_dp;
  x.expert_dp_rank = c.expert_dp_idx;
  x.expert_tp = expert_tp;
  x.world = &g.world();
  x.tp_comm = &g.tp();
  x.dp_comm = &g.dp();
  x.ep_comm = &g.ep();
  x.expert_dp_comm = &g.expert_dp();
  return x;
}

}  // namespace monta::model
