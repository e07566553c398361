// Capacity assignment under sequence parallelism: each TP rank routes only its N/t tokens, yet every (token, choice)
// must get the slot it gets when one rank routes the whole micro-batch (GShard's choice-major order over all N), so
// that sequence parallelism changes no result. The model counts each rank's choices per (choice, expert), gathers
// the counts over TP and offsets the local slots by what the other ranks' tokens take before them.
#pragma once
#include "engine/ops/declare.h"

// router_choice_counts: counts (K, E) i32 = number of this rank's tokens whose k-th choice is expert e;
// expert_idx (N, K) i32.
// router_sp_slots: all_counts (t, K, E) i32 holds every TP rank's router_choice_counts in rank order; slot (N, K) i32
// holds on entry this rank's local slots as router_topk_assign hands them out with a capacity of at least N·K (none
// dropped) and on return the global slot of GShard's order over the t ranks' tokens concatenated in rank order, -1
// from `capacity` on; counts (E) i32 = every rank's choices per expert (before dropping), the whole micro-batch's.
#define MONTA_OPS_ROUTER_SP(X)                                                                                        \
  X(router_choice_counts, expert_idx, (Tensor counts, const Tensor& expert_idx), (counts, expert_idx))                \
  X(router_sp_slots, slot,                                                                                            \
    (Tensor slot, Tensor counts, const Tensor& expert_idx, const Tensor& all_counts, int64_t tp_rank,                 \
     int64_t capacity),                                                                                               \
    (slot, counts, expert_idx, all_counts, tp_rank, capacity))

namespace monta::engine {
MONTA_DECLARE_OPS(MONTA_OPS_ROUTER_SP)
}  // namespace monta::engine
