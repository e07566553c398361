// Dropless routing (model.capacity_factor = 0): no (token, choice) is ever dropped. The buffers are sized for the
// worst case (every token of the micro-batch to one expert: capacity N); each MoE layer's forward then runs the
// dispatch buffer and the exchange on this step's capacity, the largest per-expert load over the EP group rounded up,
// and the expert GEMMs over the filled rows of each expert only (the loads of every EP rank are known to all).
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "comm/communicator.h"
#include "comm/exchange.h"
#include "engine/tensor.h"

namespace monta::model {

// The capacity of a step whose largest per-expert load (over the EP group) is max_load, out of `tokens` per rank:
// max_load rounded up to a multiple of q = min(128, max(1, tokens / 8)) and at most `tokens`. 128-row multiples keep
// the expert GEMMs on whole tiles and bound the distinct shapes a run meets (cuBLASLt's algorithm search is per
// shape) to tokens/128; the smaller q of a small micro-batch keeps its capacity following the load.
int64_t dropless_step_capacity(int64_t max_load, int64_t tokens);

// The loads of every EP rank: counts (E) i32 is this rank's choices per expert (router_topk_assign's; under sequence
// parallelism router_sp_slots' counts of the whole micro-batch, the same on every TP rank), all-gathered over ep
// (null: this rank alone, e = 1) into table (e, E) i32 and read to the host: one collective and one named
// device->host read per MoE layer forward. Entry p*E + x is how many slots of expert x EP rank p's dispatch buffer
// fills; they are its leading slots, since the router hands an expert's slots out in order 0, 1, 2, ... and dropless
// drops none (Exchange::set_loads' convention).
std::vector<int32_t> dropless_loads(const engine::Tensor& counts, engine::Tensor table, comm::Communicator* ep);

// The expert GEMM calls of one expert chunk (E_l, R, W) under dropless routing: rows [row, row + count) of local
// expert j's R rows per call. From the chunk's filled runs (Exchange::expert_runs or comm::filled_runs: ascending rows
// per expert, experts in order), each run's end is rounded up to a multiple of `quantum` rows past its start (16:
// cuBLASLt's FP8 GEMM needs 16 | M, and whole tiles run faster), but never past the next run of the same expert nor R;
// then runs of one expert that touch are merged into one call (a fully filled peer block and the next one). The rows a
// call adds beyond its runs are padding, which the exchange's dispatch writes as zeros (without an exchange,
// moe_dispatch_forward and moe_combine_backward do): their outputs are read by nobody and their weight-gradient terms
// are exact zeros. An empty result: no row is filled.
std::vector<comm::ExpertRun> dropless_gemm_runs(std::span<const comm::ExpertRun> runs, int64_t rows,
                                                int64_t quantum = 16);
// True when `calls` cover every row of every one of El experts' R rows (one call per expert): a single batched GEMM
// per projection does the same work in fewer launches.
bool dropless_runs_cover_all(std::span<const comm::ExpertRun> calls, int64_t El, int64_t rows);

// A leading slice of a capacity-major buffer: t (X, Cmax, W) viewed as (X, C, W) over its first X·C·W elements, the
// layout the ops and the exchange use for capacity C.
engine::Tensor capacity_view(const engine::Tensor& t, int64_t C);

}  // namespace monta::model
