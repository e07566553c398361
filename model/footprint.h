// What one rank of a layout holds in memory, computed from the tables the allocators use (param_table, the arena
// padding of engine::Arena::bytes_for, Model::activation_specs) without allocating: `train --dry-run`, `plan` and the
// tests read it, so the printed, planned and allocated bytes are one number.
#pragma once
#include <cstdint>

#include "engine/tensor.h"
#include "model/config.h"

namespace monta::model {

struct RankFootprint {
  int64_t params = 0;         // parameters this rank holds (its slices of every tensor)
  int64_t expert_params = 0;  // of which expert weights (reduced over expert-DP, the rest over DP)
  // Bytes of each arena: fp32 master weights, gradients, both AdamW moments (fp32 or bf16), the compute copy (bf16 on a GPU; none on
  // the CPU unless offload or zero need one), and the activations of one micro-batch (every layer's saved tensors and the backward scratch).
  double weights = 0, grads = 0, adam = 0, compute_copy = 0, activations = 0;
  // train.optimizer_offload: weights and adam live in host memory, with a host copy of the gradients and (GPU) of the
  // bf16 weights to upload; host_bytes is all of that, and state() leaves it out.
  // train.zero 1: weights and adam are this rank's shards, grads include the reduce-scatter's shard buffer.
  bool offload = false;
  double host_bytes = 0;
  double snapshot = 0;  // host memory of an asynchronous checkpoint's snapshot (fp32 state of every slice held)
  double state() const { return offload ? grads + compute_copy : weights + grads + adam + compute_copy; }  // on device
  double total() const { return state() + activations; }  // device memory
};

// Rank 0 of the layout (tp, ep, expert_tp) with data-parallel size dp, training on `device` (cuda: bf16 activations
// and compute copy; cpu: f32).
RankFootprint rank_footprint(const Config& c, int tp, int ep, bool expert_tp, int dp, engine::Device device);

}  // namespace monta::model
