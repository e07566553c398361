// What one rank of a layout holds in memory, computed from the tables the allocators use (param_table, the arena
// padding of engine::Arena::bytes_for, Model::activation_specs) without allocating: `train --dry-run`, `plan` and the
// tests read it, so the printed, planned and allocated bytes are one number.
#pragma once
#include <cstdint>

#include <vector>

#include "engine/tensor.h"
#include "model/config.h"
#include "model/params.h"

namespace monta::model {

struct RankFootprint {
  int64_t params = 0;         // parameters this rank holds (its slices of every tensor)
  int64_t expert_params = 0;  // of which expert weights (reduced over expert-DP, the rest over DP)
  // Bytes of each arena: fp32 master weights, gradients, both AdamW moments (fp32 or bf16), the compute copy (bf16 on a GPU; none on
  // the CPU unless offload or zero need one), and the activations of one micro-batch (every layer's saved tensors and the backward scratch).
  double weights = 0, grads = 0, adam = 0, compute_copy = 0, activations = 0;
  // The MoE exchange's staging buffers (ep > 1; comm::exchange_staging_specs): for comm.exchange auto the largest of
  // the strategies and chunk counts it may pick.
  double exchange = 0;
  // model.fp8 experts or all: the FP8 codes of the weights those GEMMs read, q and qᵀ with their block scales
  // (Model::fp8_weight_specs; about 2 bytes per such parameter), held for the whole run.
  double fp8_weights = 0;
  // Host memory (not in total(), which is the device's): the checkpoint snapshot a save takes, pinned when the
  // parameters are on a GPU; 0 when saves need none (a synchronous save on the CPU writes from the parameters). Held
  // from start-up when checkpoint.interval > 0.
  double checkpoint_host = 0;
  // train.optimizer_offload: weights and adam live in host memory, with a host copy of the gradients and (GPU) of the
  // bf16 weights to upload; host_bytes is all of that, and state() leaves it out.
  // train.zero 1: weights and adam are this rank's shards, grads include the reduce-scatter's shard buffer.
  bool offload = false;
  double host_bytes = 0;
  double state() const { return offload ? grads + compute_copy : weights + grads + adam + compute_copy; }  // on device
  double total() const { return state() + activations + exchange + fp8_weights; }  // device memory
};

// Bytes of the host snapshot a checkpoint save takes of `params`: every owned slice's master weights and both AdamW
// moments in `master` precision, each padded to 4 KiB (the writer's O_DIRECT alignment). CkptSaver allocates exactly
// this; rank_footprint reports it.
int64_t checkpoint_host_bytes(const std::vector<Param>& params, engine::DType master);

// Rank 0 of the layout (tp, ep, expert_tp) with data-parallel size dp, training on `device` (cuda: bf16 activations
// and compute copy; cpu: f32).
RankFootprint rank_footprint(const Config& c, int tp, int ep, bool expert_tp, int dp, engine::Device device);

}  // namespace monta::model
