// Run configuration: one struct per INI section ([model], [train], [parallel], [data], [checkpoint], [comm]),
// validated before anything is allocated, and the parameter/memory arithmetic that `train` reports up front.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace monta::model {

struct ModelConfig {
  int64_t vocab = 256, hidden = 64, layers = 2, heads = 4, kv_heads = 2, ffn = 128;
  int64_t experts = 4, top_k = 2, seq_len = 64;
  double capacity_factor = 1.25;  // 0: dropless routing (model/dropless.h)
  int64_t min_capacity = 4;
  double rope_theta = 10000.0, norm_eps = 1e-5, init_std = 0.02;
  double aux_loss_coef = 0.01, z_loss_coef = 0.001;
  // Routing (docs/design.md, "Routing options"): the rate of the auxiliary-loss-free balancing bias (DeepSeek-V3;
  // 0: no bias), and whether the chosen experts' probabilities are renormalised to sum to 1 (Mixtral, Qwen).
  double router_bias_update = 0;
  bool router_norm_topk = false;
  std::string fp8 = "none";  // none | experts (the expert GEMMs in FP8 E4M3, docs/fp8.md) | all (+ attention projections)
  bool fp8_wgrad = true;     // the weight-gradient GEMMs of the FP8 GEMMs in FP8 too; false: in the activation dtype
  int64_t head_dim() const { return hidden / heads; }
  bool fp8_experts() const { return fp8 == "experts" || fp8 == "all"; }
  bool fp8_all() const { return fp8 == "all"; }
  bool dropless() const { return capacity_factor == 0; }
};

struct TrainConfig {
  int64_t steps = 200, micro_batch = 4, global_batch = 8;
  double lr = 3e-3, min_lr = 3e-4, beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8, weight_decay = 0.1, grad_clip = 1.0;
  int64_t warmup_steps = 20, decay_steps = 0;  // 0: decay over `steps`
  uint64_t seed = 1234;
  std::string run_dir = "runs/tiny", device = "auto";
  int64_t log_interval = 1, max_skipped = 5;
  int64_t step_timeout_s = 600;  // watchdog: abort the job when a step (or a save) takes longer; 0 disables it
  double peak_tflops = 989.0;    // per-GPU peak for MFU: dense bf16 of an H100/H200 SXM (datasheet); set yours
  // Validation on the held-out data (data.valid_*): every eval_interval steps (0: only at the end) and after the
  // last step, eval_steps global batches, forward only; eval_steps 0 turns validation off.
  int64_t eval_interval = 100, eval_steps = 8;
  std::string recompute = "none";  // none | selective | full: activations re-computed in backward (Recompute)
  // Optimizer memory (docs/design.md, "The optimizer"): AdamW moments in fp32 or bf16.
  std::string optimizer_state = "fp32";
  bool optimizer_offload = false;  // master weights and moments in host memory, AdamW on host threads
  int64_t zero = 0;                // 1: master weights and moments sharded over data parallelism (ZeRO-1)
};

// What the backward re-computes instead of keeping from the forward (docs/memory.md). none: every layer keeps all
// its activations. selective: the norm outputs, the SwiGLU output and (with an exchange) the dispatch buffer are one
// shared buffer, re-computed from kept inputs in backward (elementwise work only). full: a layer keeps only its
// input; its forward, the token exchange included, runs again inside its backward.
enum class Recompute { none, selective, full };
Recompute recompute_mode(const TrainConfig& t);

struct ParallelConfig {
  int tp = 1, ep = 1;
  bool expert_tp = true;  // experts split over the TP group (true) or whole on every TP rank (false)
  // Megatron-style sequence parallelism (tp > 1): norms, residual adds, the router and the final norm run on this TP
  // rank's N/tp tokens; all-gathers feed the column-parallel GEMMs, reduce-scatters follow the row-parallel ones.
  bool sequence_parallel = false;
};

struct DataConfig {
  std::string path = "builtin:markov";  // an HDF5 token file, or builtin:markov (generated into the run dir)
  int64_t builtin_tokens = 1 << 20;
  // Held-out data (data/sources.h): a token file, or else the tail fraction of data.path; with neither, the
  // built-in corpus holds out a second walk of its chain and a user file has no validation.
  std::string valid_path;
  double valid_fraction = 0;
};

struct CheckpointConfig {
  int64_t interval = 0, keep = 2;
  std::string resume;  // "", "auto" or a checkpoint directory
  bool overwrite = false;  // a fresh start may replace the checkpoints already in the run directory
  bool async = true;       // snapshot to host memory, write in a background thread (docs/checkpoints.md)
  int writers = 4;         // files per rank, each written by its own thread
  bool direct = true;      // O_DIRECT writes of the page-aligned bulk (false: through the page cache)
};

struct CommConfig {
  std::string exchange = "duplicate";  // duplicate | drop_gather | pipelined | overlapped | auto (cost model picks)
  int chunks = 4;                      // capacity chunks of the pipelined and overlapped exchanges
  // The tokens the dispatch sends: "bf16" (the activation dtype) or "fp8" (E4M3 plus 1x128 scales, comm/fp8_dispatch.h;
  // rounded so also with one EP rank, so every layout computes the same).
  std::string dispatch_dtype = "bf16";
  bool dispatch_fp8() const { return dispatch_dtype == "fp8"; }
  int emulate_nodes = 0;
  std::string links;  // link-model file (intra/inter GB/s and µs) for auto; empty: measure with a short probe
  bool auto_verify = true;  // auto: time the predicted best of each strategy on the real groups, keep the fastest
};

struct Config {
  ModelConfig model;
  TrainConfig train;
  ParallelConfig parallel;
  DataConfig data;
  CheckpointConfig checkpoint;
  CommConfig comm;
};

// Capacity slots per expert for n tokens: max(min_capacity, ceil(capacity_factor · n · top_k / experts)).
int64_t expert_capacity(const ModelConfig& m, int64_t tokens);
// Checks every constraint that does not depend on the world size (and those that do, when world > 0);
// the first violation is a user error (one sentence with the numbers).
void validate(const Config& c, int world);
// The same checks as one sentence, "" when the config is valid (for callers that must not fail, e.g. the planner).
std::string config_problem(const Config& c, int world);
// Whether a layout (tp, ep, expert_tp, and the world size when > 0) suits the model: the one rule `train`, `plan` and
// `bench` share. "" when it does, else the first reason.
std::string layout_problem(const Config& c, int tp, int ep, bool expert_tp, int world);
// model.fp8 = experts on a GPU: cuBLASLt's FP8 GEMM needs 16 | M, N, K of every expert GEMM (hidden, the expert FFN
// width per rank, and the rows an expert processes per call: e·C, or each overlapped chunk's e·c_k); model.fp8 = all
// also of the attention projections (the tokens of a micro-batch, the Q and the K/V widths per TP rank). "" when the
// layout has them or FP8 is off; the CPU emulation has no such limit, so setup_parallel checks it for CUDA.
std::string fp8_cuda_shape_problem(const Config& c, int tp, int ep, bool expert_tp);

struct ModelSize {
  int64_t total = 0, expert = 0, embedding = 0;  // parameters
  int64_t active_per_token = 0;                   // parameters touched per token (top-k experts)
};
ModelSize model_size(const ModelConfig& m);
// FLOPs per token of forward + backward, attention counted causal (half the scores). FlopCount::model, MFU's
// convention (PaLM, Megatron): every part 3x its forward. FlopCount::executed: causal attention's backward at 2.5x
// its forward, as the fused kernel runs it (it recomputes the scores), for the rates `bench layer` reports.
// FlopCount::forward: the forward alone. expert_rows: the (token, choice) rows the experts process per token, top_k
// when negative (every routed choice; dropless routing processes exactly those); fewer when capacity drops some (what
// `bench layer` measures). Padding rows are never counted: they are not work.
enum class FlopCount { model, executed, forward };
double layer_train_flops_per_token(const ModelConfig& m, FlopCount count, double expert_rows = -1);  // one decoder layer
double train_flops_per_token(const ModelConfig& m, FlopCount count = FlopCount::model);  // layers + LM head
// Of train_flops_per_token, the GEMMs model.fp8 runs in FP8 (the experts'; with `all` also the attention
// projections'), over all layers, by the same count; 0 with model.fp8 none. The planner prices them at the FP8 rate.
double fp8_train_flops_per_token(const ModelConfig& m, FlopCount count = FlopCount::model);

}  // namespace monta::model
