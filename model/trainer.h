// One optimizer step over this rank's share of a global batch: micro-batches forward/backward, gradient
// reduction over the data-parallel groups, global-norm clipping, AdamW, LR schedule, skip on non-finite.
#pragma once
#include <cmath>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>

#include "engine/ops/adamw.h"
#include "engine/schedule.h"
#include "model/config.h"
#include "model/model.h"
#include "model/params.h"

namespace monta::model {

struct StepMetrics {
  int64_t step = 0;
  double loss = 0;        // mean token cross-entropy
  double loss_total = 0;  // the objective minimised (training_objective): loss + coef x router losses summed over layers
  double aux_loss = 0, z_loss = 0;  // router losses per layer (mean over layers and micro-batches), before coefficients
  double grad_norm = 0, lr = 0;
  double step_ms = 0, tokens_per_s = 0;
  // Host time inside the exchange calls: on the CPU (blocking MPI) the transfer time; on the GPU only what the host
  // spends enqueuing NCCL work, not the transfers (hence the name; the benches time transfers with events).
  double exchange_host_ms = 0, exchange_host_gbps = 0;
  // Device time of the exchange's collectives on the EP and TP groups' communication streams (CUDA events,
  // Model::meter_exchange; 0 where the groups have no such stream, i.e. over MPI). The two streams may overlap each
  // other and the experts (pipelined, overlapped): each is that stream's busy time, not the step's exposed time.
  double exchange_ep_ms = 0, exchange_tp_ms = 0;
  double tflops_per_gpu = 0, mfu = 0;  // model FLOPs (train_flops_per_token) per second per rank; / train.peak_tflops
  int64_t dropped = 0;
  // Expert load over the global batch ((token, choice) pairs routed to each expert, before dropping) against the mean
  // load, in the worst layer: the largest max_e load_e / mean and the smallest min_e load_e / mean (1 and 1: uniform).
  double load_max = NAN, load_min = NAN;
  int64_t host_syncs = 0;  // times the host waited on the device during the step (engine::host_sync_count)
  bool skipped = false;
  double val_loss = NAN, val_ppl = NAN;  // set by the caller after a validation pass (EvalResult); NaN: none
};

// Validation loss over held-out batches: cross-entropy only (no aux or z term), mean per token.
struct EvalResult {
  double loss = NAN, ppl = NAN;  // ppl = exp(loss)
  int64_t batches = 0, tokens = 0;
};

// Fills this rank's share of the next held-out global batch (inputs, targets), as TokenLoader::next_batch does.
using BatchSource = std::function<void(std::span<int32_t>, std::span<int32_t>)>;

class Trainer {
 public:
  Trainer(const Config& cfg, const ParallelContext& par, Device device);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;
  // inputs/targets: this rank's (global_batch / dp) sequences of seq_len tokens, row-major.
  StepMetrics step(std::span<const int32_t> inputs, std::span<const int32_t> targets);
  // The first half of step(): zeroes, accumulates and reduces the gradients of one global batch, and fills
  // the loss fields of the result; no update. Tests compare these gradients across layouts.
  StepMetrics compute_gradients(std::span<const int32_t> inputs, std::span<const int32_t> targets);
  // Forward only on one global batch (this rank's share, as for step): the mean cross-entropy per token over the
  // global batch, reduced over data parallelism exactly as the training loss is, so equal on every rank. No
  // gradient, no update; the MoE exchange runs its forward as in training.
  double evaluate(std::span<const int32_t> inputs, std::span<const int32_t> targets);
  // `batches` global batches from next: their mean loss (every batch has the same token count).
  EvalResult evaluate(const BatchSource& next, int64_t batches);
  // The parameters with every compute copy settled: a caller outside the step (checkpoints, tests, eval) waits here
  // for the all-gathers a zero-1 step left in flight for the next forward.
  ParamStore& params() {
    params_->await_compute();
    return *params_;
  }
  Model& model() { return *model_; }
  int64_t steps_done() const { return step_; }
  void set_steps_done(int64_t s) { step_ = s; }
  int64_t consecutive_skips() const { return skips_; }
  void set_consecutive_skips(int64_t s) { skips_ = s; }
  DType act_dtype() const { return act_; }

 private:
  // The exchange's metered device time since the last call, EP then TP, in ms (Model::meter_exchange).
  std::pair<double, double> take_exchange_ms();
  int grad_group(const std::string& name) const;  // layer index, layers (head and final norm), or -1 (embedding)
  void build_buckets();
  void start_reduction(int group);  // group: layer index, layers (head), -1 (embedding)
  void finish_reduction();
  void update_offloaded(const engine::AdamWArgs& a);  // train.optimizer_offload: the step on host threads
  double global_grad_norm();
  void check_batch(std::span<const int32_t> inputs, std::span<const int32_t> targets) const;
  // model.router_bias_update: b_e += rate · sign(mean load − load_e) per layer, from the global batch's loads of the
  // step (load_, equal on every rank), into the master weights; called before AdamW, which leaves the bias as it is
  // (no gradient, no decay) and refreshes its compute copy.
  void update_router_bias();
  double ce_scale() const;                 // 1 / tokens of a global batch
  void sum_over_dp(std::span<double> sums);  // per-rank sums -> global sums, on every rank

  Config cfg_;
  ParallelContext par_;
  Device device_;
  DType act_;
  engine::LrSchedule sched_;
  std::unique_ptr<ParamStore> params_;
  std::unique_ptr<Model> model_;
  engine::Arena scalars_;
  int64_t step_ = 0, skips_ = 0;
  std::vector<double> load_;  // (L, E) the last compute_gradients' expert loads, summed over the global batch
  struct GradBucket {
    int group;  // layer index, layers (LM head and final norm), or -1 (embedding)
    comm::Communicator* comm;
    Tensor grads;  // 1-D span over the bucket's gradients in the arena
    std::vector<Param*> params;  // whose gradients it spans
  };
  std::vector<GradBucket> buckets_;
  std::vector<engine::AdamWEntry> adamw_entries_;  // every parameter's optimizer operands, fixed at construction
  std::vector<size_t> offload_chunks_;  // offload: parameter index bounds of the chunks the host step pipelines
  std::vector<std::vector<engine::AdamWEntry>> offload_entries_;  // chunk k's operands, fixed at construction
  std::vector<Param*> zero_params_;  // train.zero 1: the sharded parameters (reduce-scattered, all-gathered)
  std::vector<std::vector<size_t>> group_params_;  // per gradient group + 1: the indices of its parameters
  struct Pending {
    int group;
    std::unique_ptr<comm::Request> request;  // reset once waited
  };
  std::vector<Pending> pending_;
  // Offload: the gradients go to the host group by group during the backward, on their own stream, each once its
  // reduction is done; uncopied_ holds the groups whose reduction started but whose copy did not.
  engine::Stream copy_stream_ = nullptr;
  std::vector<int> uncopied_;
  void group_to_host(int group);
};

}  // namespace monta::model
