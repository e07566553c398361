// Dropless routing (model.capacity_factor = 0): no (token, choice) is ever dropped. The buffers are sized for the
// worst case (every token of the micro-batch to one expert: capacity N); each MoE layer's forward then runs the
// dispatch buffer, the exchange and the expert GEMMs on this step's capacity, the largest per-expert load over the
// EP group rounded up, so padding rows are few and every expert processes exactly its routed tokens.
#pragma once
#include <cstdint>

#include "comm/communicator.h"
#include "engine/tensor.h"

namespace monta::model {

// The capacity of a step whose largest per-expert load (over the EP group) is max_load, out of `tokens` per rank:
// max_load rounded up to a multiple of q = min(128, max(1, tokens / 8)) and at most `tokens`. 128-row multiples keep
// the expert GEMMs on whole tiles and bound the distinct shapes a run meets (cuBLASLt's algorithm search is per
// shape) to tokens/128; the smaller q of a small micro-batch keeps its capacity following the load.
int64_t dropless_step_capacity(int64_t max_load, int64_t tokens);

// The largest per-expert load over the EP group: counts (E) i32 is this rank's (router_topk_assign's); it is copied
// into scratch (E) i32, all-reduced (max) over ep (null: this rank alone) and read to the host: one collective and one
// named device->host read per MoE layer forward.
int64_t dropless_max_load(const engine::Tensor& counts, engine::Tensor scratch, comm::Communicator* ep);

// A leading slice of a capacity-major buffer: t (X, Cmax, W) viewed as (X, C, W) over its first X·C·W elements, the
// layout the ops and the exchange use for capacity C.
engine::Tensor capacity_view(const engine::Tensor& t, int64_t C);

}  // namespace monta::model
