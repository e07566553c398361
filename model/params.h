// Parameters: the table of every tensor of the model with its logical (full) shape, its parallel kind and
// this rank's slice; the arenas that hold master weights, gradients, AdamW moments and compute copies; and
// initialisation from the counter-based RNG, so every layout holds the same logical values.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/memory.h"
#include "engine/ops/adamw.h"
#include "model/config.h"
#include "model/parallel.h"

namespace monta::model {

using engine::DType;
using engine::Device;
using engine::Tensor;

// How a parameter is split, which decides its gradient-reduction group and its checkpoint slice.
enum class ParamKind {
  replicated,  // same on every rank (norms, router)
  column,      // dim 0 split over TP (Q/K/V projections, vocab-parallel embedding and LM head)
  row,         // dim 1 split over TP (attention output projection)
  expert,      // dim 0 (experts) split over EP; with expert_tp the FFN dim is split over TP as well
};
const char* param_kind_name(ParamKind k);

struct Param {
  std::string name;
  ParamKind kind = ParamKind::replicated;
  std::vector<int64_t> full, local, offset;  // logical shape, this rank's slice shape and its offset
  double init_std = 0;                       // 0: initialised to ones (norm weights)
  bool init_zero = false;                    // initialised to zeros instead (the router's balancing bias)
  bool weight_decay = true;
  bool owner = true;  // this rank is the one that counts this slice (grad norm) and writes it (checkpoint)
  bool tp_first = true;  // not a TP replica, or TP rank 0: counts its part of a sharded gradient once over TP
  Tensor master, grad, m, v;  // master precision (f32, or f64 for gradient checks)
  Tensor compute;             // what the forward reads: bf16 copy on the GPU, == master on the CPU (without offload)
  // Offload only: the host copy of the reduced gradient that the host AdamW reads, and (GPU) the bf16 weights it
  // writes there for the upload to `compute`.
  Tensor host_grad, host_lowp;
  // train.zero = 1 with a reduction group of more than one rank (zero_comm): the gradient and compute copy sit in flat
  // ranges of zero_padded elements (a multiple of 64 x group size, zero padding), rank r owns elements
  // [r·zero_shard, (r+1)·zero_shard) of them; master, m and v are then that shard (1-D, zero_shard), grad_shard
  // receives the reduce-scatter, and the updated compute copy is all-gathered. Null / empty otherwise.
  comm::Communicator* zero_comm = nullptr;
  int64_t zero_padded = 0, zero_shard = 0;
  Tensor grad_flat, compute_flat, grad_shard;
  int64_t numel() const;  // elements of this rank's slice (p.local)
  bool grad_stale = false;    // logically zero since zero_grads(), memory not yet written: the next write overwrites
  // Counts the weights publish_compute published: what is derived from `compute` and kept (the FP8 weight codes,
  // model/model.cpp) is current while it was made at this version. Every writer of weights ends in publish_compute
  // (the optimizer step, refresh_compute after init or a checkpoint load).
  uint64_t version = 0;
};

// A parameter gradient as one write of the backward sees it: overwrite on the step's first write (the gradient is
// logically zero), accumulate after it.
struct GradWrite {
  Tensor grad;
  engine::Write write = engine::Write::accumulate;
};

// How the optimizer state is held (train.optimizer_state); model/footprint.cpp sizes memory by the same rule.
struct OptimizerLayout {
  DType moments = DType::f32;  // AdamW m and v: f32, or bf16 with f32 master weights (DeepSeek-V3's memory option)
  // train.optimizer_offload: master weights and moments in host memory (pinned beside a GPU), updated there by the
  // host AdamW from a host copy of the gradients; the device keeps the compute copy, gradients and activations.
  bool offload = false;
  // train.zero = 1 (ZeRO-1, Megatron's distributed optimizer): master weights and moments sharded over the group that
  // reduces each gradient (DP; expert-DP for experts) where it has more than one rank.
  int zero = 0;
};
OptimizerLayout optimizer_layout(const TrainConfig& t);

// The spec tables of the arenas a ParamStore allocates (ParamStore and rank_footprint read them: one formula).
// Fills each parameter's zero_padded / zero_shard.
struct StoreSpecs {
  std::vector<engine::TensorSpec> master, grad, moment, compute, host_grad, host_lowp, grad_shard;  // empty: none
  bool state_on_host = false, pinned = false, separate_compute = false;
};
struct Param;
StoreSpecs store_specs(std::vector<Param>& params, const ParallelContext& par, Device device, DType master_dtype,
                       DType compute_dtype, const OptimizerLayout& opt);

// Parameter table for a config and a layout (no memory).
std::vector<Param> param_table(const ModelConfig& m, const ParallelContext& par);

class ParamStore {
 public:
  ParamStore(const ModelConfig& m, const ParallelContext& par, Device device, DType master_dtype, DType compute_dtype,
             const OptimizerLayout& opt = {});
  std::vector<Param>& all() { return params_; }
  const std::vector<Param>& all() const { return params_; }
  Param& get(const std::string& name);
  const Param& get(const std::string& name) const;
  // Fills master weights from the RNG (seed, parameter name, logical index), zeroes moments, refreshes compute copies.
  void init(uint64_t seed);
  // Cheap deterministic pseudo-random weights (xorshift, same scale as init) for benchmarks of models whose
  // RNG initialisation would take minutes on the host; not layout-independent.
  void init_for_benchmark();
  // Gradients are zeroed lazily: zero_grads() only marks every one stale. The backward's first write of each
  // overwrites it (GEMMs with beta 0) and later writes add, so a step neither fills the gradients with zeros nor
  // reads those zeros back; ops that can only add get theirs zero-filled on first use.
  void zero_grads();
  GradWrite grad_write(Param& p);  // for ops that can overwrite (weight GEMMs); marks it written
  Tensor grad_accumulate(Param& p);  // for ops that only add (norm weights, embedding)
  // Zero-fills what no write reached since zero_grads() (a no-op after a full backward); call before reading
  // gradients as a whole (reduction, norm, optimizer).
  void settle_grad(Param& p);
  void settle_grads();
  void refresh_compute();  // master -> compute copy (no-op on the CPU without offload)
  // The operands of the fused AdamW step over params [first, last) (decay on the parameters that take it): on the
  // parameters' own device, or with offload the host tensors.
  std::vector<engine::AdamWEntry> adamw_entries(double weight_decay, size_t first = 0, size_t last = SIZE_MAX) const;
  bool offload() const { return offload_; }
  // Offload: parameter i's reduced gradient (its shard under zero 1) to its host copy, started on stream s (the
  // bytes are there once s is synchronised).
  void grad_to_host_async(size_t i, engine::Stream s);
  // After the update of params [first, last): the new weights into their compute copies (the upload with offload, a
  // copy where the step wrote no low-precision copy) and, for sharded parameters, the all-gather of the compute copy;
  // every parameter's version advances (also where the compute copy is the master, or the step wrote it).
  // With async the all-gathers are only started: await_compute() of the same params must come before their compute
  // copies are next read (the trainer waits per layer as the next forward reaches it, so the gathers overlap the
  // forward of the layers before).
  void publish_compute(size_t first, size_t last, bool async = false);
  void await_compute(size_t first, size_t last);
  void await_compute() { await_compute(0, params_.size()); }
  ~ParamStore();
  ParamStore(const ParamStore&) = delete;
  ParamStore& operator=(const ParamStore&) = delete;
  int zero() const { return zero_; }
  std::vector<const engine::Arena*> arenas() const;
  Device device() const { return device_; }
  DType master_dtype() const { return master_dtype_; }

  // The optimizer state as checkpoints hold it, whatever its form in memory (bf16 moments): group 0 the master
  // weights, 1 and 2 the AdamW moments, each this rank's slice (shape p.local) in the master dtype. Checkpoint files
  // therefore never depend on train.optimizer_state: a run resumes with either setting.
  static constexpr int kStateGroups = 3;
  Tensor state(const Param& p, int group) const;  // the tensor in memory
  // Whether state(p, group) is already that form, so a checkpoint may read or write it in place.
  bool state_direct(const Param& p, int group) const;
  // Sharded (train.zero = 1): state_read gathers the shards, a collective of p.zero_comm that every rank of the group
  // calls (dst empty on the ranks that do not write it); state_write keeps this rank's shard of the full slice.
  void state_read(const Param& p, int group, Tensor dst) const;  // dst: host, p.local elements of the master dtype
  void state_write(Param& p, int group, const Tensor& src);      // src: the same


 private:
  std::vector<Param> params_;
  Device device_;
  DType master_dtype_;
  bool offload_ = false;
  int zero_ = 0;
  engine::Arena master_, grad_, m_, v_, compute_;
  engine::Arena host_grad_, host_lowp_;  // offload only
  engine::Arena grad_shard_;             // zero 1 only
  std::vector<std::unique_ptr<comm::Request>> gathering_;  // per parameter: its compute copy's all-gather in flight
  void upload_compute(size_t first, size_t last);
};

}  // namespace monta::model
