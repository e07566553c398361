// The one table of config keys: each key's name, field, meaning (with unit) and valid range. The INI/CLI parser,
// `monta train --help`, docs/config.md, the saved config.ini and validate() all read this table, so a key cannot
// be parsed without being described and range-checked.
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "model/config.h"

namespace monta::model {

// A key's valid values: a closed or open interval for numbers (non-finite values are always refused), a list of
// choices "a|b|c" for strings (nullptr: any string; nonempty: any but ""). Booleans need no range.
struct KeyRange {
  double lo = -std::numeric_limits<double>::infinity(), hi = std::numeric_limits<double>::infinity();
  bool lo_open = false, hi_open = false;
  const char* choices = nullptr;
  bool nonempty = false;

  bool contains(double v) const;
  bool allows(const std::string& s) const;
  std::string describe() const;  // "[1, 2147483647]", "(0, inf)", "auto|cpu|cuda", "any", "non-empty"
};

namespace keyrange {
inline constexpr double kInf = std::numeric_limits<double>::infinity();
inline KeyRange at_least(double lo) { return KeyRange{lo, kInf}; }
inline KeyRange closed(double lo, double hi) { return KeyRange{lo, hi}; }
inline KeyRange positive(double hi = kInf) { return KeyRange{0, hi, true, false}; }
inline KeyRange unit_open() { return KeyRange{0, 1, false, true}; }  // [0, 1)
inline KeyRange choices(const char* c) {
  KeyRange r;
  r.choices = c;
  return r;
}
inline KeyRange nonempty() {
  KeyRange r;
  r.nonempty = true;
  return r;
}
inline KeyRange any() { return KeyRange{}; }
}  // namespace keyrange

// Calls f(key, field, help, range) for every key in section order. ConfigT is Config or const Config.
template <class ConfigT, class F>
void visit_config_keys(ConfigT& c, F&& f) {
  using namespace keyrange;
  constexpr double kInt32 = 2147483647.0;
  auto& m = c.model;
  f("model.vocab", m.vocab, "vocabulary size; token ids are 0..vocab-1 (must divide by parallel.tp)", closed(1, kInt32));
  f("model.hidden", m.hidden, "model width H (must divide by model.heads)", closed(1, 1 << 20));
  f("model.layers", m.layers, "decoder layers, each attention + MoE FFN", closed(1, 1 << 16));
  f("model.heads", m.heads, "query heads A; head dim hidden/heads must be even (RoPE)", closed(1, 1 << 16));
  f("model.kv_heads", m.kv_heads, "key/value heads G (grouped-query attention); heads must divide by kv_heads",
    closed(1, 1 << 16));
  f("model.ffn", m.ffn, "FFN width F of each expert (SwiGLU: gate, up, down)", closed(1, 1 << 24));
  f("model.experts", m.experts, "experts E per MoE layer", closed(1, 1 << 16));
  f("model.top_k", m.top_k, "experts each token is routed to, K (at most model.experts)", closed(1, 1 << 16));
  f("model.seq_len", m.seq_len, "sequence length S in tokens", closed(1, 1 << 24));
  f("model.capacity_factor", m.capacity_factor,
    "expert capacity C = max(min_capacity, ceil(capacity_factor x tokens x top_k / experts)) slots per micro-batch; "
    "0: dropless, no token is dropped (each step's capacity is its largest per-expert load, buffers sized for every "
    "token to one expert)",
    closed(0, 1e6));
  f("model.min_capacity", m.min_capacity, "lower bound on the expert capacity, in slots", closed(0, kInt32));
  f("model.rope_theta", m.rope_theta, "RoPE base frequency", positive());
  f("model.norm_eps", m.norm_eps, "RMSNorm epsilon added to the mean square", KeyRange{0, 1, true, true});
  f("model.init_std", m.init_std, "standard deviation of the weight init (output projections / sqrt(2 layers))",
    positive());
  f("model.aux_loss_coef", m.aux_loss_coef,
    "weight of each layer's Switch load-balancing loss in the objective (summed over layers, as Megatron-Core)",
    at_least(0));
  f("model.z_loss_coef", m.z_loss_coef, "weight of each layer's router z-loss in the objective (summed over layers)",
    at_least(0));
  f("model.router_bias_update", m.router_bias_update,
    "auxiliary-loss-free balancing (DeepSeek-V3): rate g of the per-expert bias added to the router scores for the "
    "top-k choice only, updated after each step by g x sign(mean load - load) over the global batch; 0: no bias",
    at_least(0));
  f("model.router_norm_topk", m.router_norm_topk,
    "combine weights: the chosen experts' softmax probabilities renormalised to sum to 1 (Mixtral, Qwen); false: the "
    "probabilities themselves", any());
  f("model.fp8", m.fp8,
    "FP8 E4M3 GEMMs with 1x128/128x128 scaling (docs/fp8.md): none; experts (expert forward, dgrad and wgrad); all "
    "(the experts and the attention's Q/K/V and output projections; router, LM head, embedding and SDPA stay bf16)",
    choices("none|experts|all"));
  f("model.fp8_wgrad", m.fp8_wgrad,
    "with model.fp8 experts or all: the weight-gradient GEMMs in FP8 too (DeepSeek-V3's recipe); false: those in the "
    "activation dtype from the unquantised operands, forward and dgrad still FP8 (docs/fp8.md)",
    any());
  auto& t = c.train;
  f("train.steps", t.steps, "optimizer steps to train to (a resumed run continues up to this step)", at_least(0));
  f("train.micro_batch", t.micro_batch, "sequences per rank per forward/backward", closed(1, 1 << 20));
  f("train.global_batch", t.global_batch,
    "sequences per optimizer step over the whole job (must divide by micro_batch x data-parallel size)",
    closed(1, 1 << 30));
  f("train.lr", t.lr, "peak learning rate, reached after warmup_steps", positive());
  f("train.min_lr", t.min_lr, "learning rate at the end of the cosine decay (at most train.lr)", at_least(0));
  f("train.warmup_steps", t.warmup_steps, "steps of linear warmup from 0 to train.lr", at_least(0));
  f("train.decay_steps", t.decay_steps, "steps of cosine decay to min_lr after warmup; 0: decay over train.steps",
    at_least(0));
  f("train.beta1", t.beta1, "AdamW first-moment decay", unit_open());
  f("train.beta2", t.beta2, "AdamW second-moment decay", unit_open());
  f("train.adam_eps", t.adam_eps, "AdamW epsilon added to sqrt(v)", positive());
  f("train.weight_decay", t.weight_decay, "decoupled weight decay (not on norms and router)", at_least(0));
  f("train.grad_clip", t.grad_clip, "global gradient-norm clip; 0 disables clipping", at_least(0));
  f("train.seed", t.seed, "seed of the weight init, the data order and the built-in corpus", any());
  f("train.run_dir", t.run_dir, "directory for config.ini, metrics.jsonl, checkpoints and built-in data", nonempty());
  f("train.device", t.device, "where to train: auto (GPU if visible), cpu or cuda", choices("auto|cpu|cuda"));
  f("train.log_interval", t.log_interval, "print a step line every N steps (metrics.jsonl gets every step)",
    closed(1, kInt32));
  f("train.max_skipped", t.max_skipped, "non-finite steps in a row that stop the run with an error",
    closed(1, kInt32));
  f("train.step_timeout_s", t.step_timeout_s,
    "seconds a step or save may take before the watchdog aborts the job (a stalled rank); 0 disables it",
    at_least(0));
  f("train.peak_tflops", t.peak_tflops, "per-GPU peak TFLOP/s that MFU is measured against (989: H100/H200 bf16)",
    positive());
  f("train.eval_interval", t.eval_interval,
    "evaluate on the held-out data every N steps and after the last; 0: only after the last", at_least(0));
  f("train.eval_steps", t.eval_steps, "global batches of held-out data per evaluation; 0 turns validation off",
    at_least(0));
  f("train.recompute", t.recompute,
    "activations re-computed in backward instead of kept: none, selective (norms, SwiGLU, dispatch buffer) or full "
    "(each layer keeps only its input and re-runs its forward, token exchange included)",
    choices("none|selective|full"));
  f("train.optimizer_state", t.optimizer_state,
    "AdamW moments m, v in fp32, or bf16 (rounded to nearest even; master weights and gradients stay fp32); "
    "checkpoints hold fp32 either way", choices("fp32|bf16"));
  f("train.optimizer_offload", t.optimizer_offload,
    "keep fp32 master weights and AdamW moments in (pinned) host memory and run AdamW on host threads; the GPU holds "
    "the compute weights, gradients and activations", any());
  f("train.zero", t.zero,
    "1: shard fp32 master weights and AdamW moments over data parallelism (experts over expert-DP; ZeRO-1): gradients "
    "reduce-scattered, compute weights all-gathered; a group of one rank keeps its state whole", closed(0, 1));
  auto& p = c.parallel;
  f("parallel.tp", p.tp, "tensor-parallel size (consecutive ranks; heads, kv_heads, vocab, ffn divide by it)",
    closed(1, 1 << 16));
  f("parallel.ep", p.ep, "expert-parallel size, carved out of data parallel (experts divide by it)", closed(1, 1 << 16));
  f("parallel.expert_tp", p.expert_tp, "split each expert's FFN over the TP group (false: whole on every TP rank)",
    any());
  f("parallel.sequence_parallel", p.sequence_parallel,
    "Megatron sequence parallelism (tp > 1): norms, residual adds, the router and the final norm on N/tp tokens per TP "
    "rank, all-gather before and reduce-scatter after the TP GEMMs; each token crosses the EP all-to-all once "
    "(not with comm.exchange duplicate)", any());
  f("data.path", c.data.path, "HDF5 token file (monta prepare-data), or builtin:markov (generated into the run dir)",
    nonempty());
  f("data.builtin_tokens", c.data.builtin_tokens, "tokens of the built-in corpus (more than model.seq_len)",
    closed(2, 1e12));
  f("data.valid_path", c.data.valid_path,
    "held-out token file for validation; empty: data.valid_fraction, or the built-in corpus's own held-out walk",
    any());
  f("data.valid_fraction", c.data.valid_fraction,
    "fraction of data.path's tokens held out at its end for validation (never trained on); 0: none",
    KeyRange{0, 1, false, true});
  f("checkpoint.interval", c.checkpoint.interval, "save every N steps and at the end; 0: never", at_least(0));
  f("checkpoint.keep", c.checkpoint.keep, "newest checkpoints kept; older ones are deleted", closed(1, kInt32));
  f("checkpoint.resume", c.checkpoint.resume, "\"\": start fresh; auto: newest complete checkpoint; or a directory",
    any());
  f("checkpoint.overwrite", c.checkpoint.overwrite,
    "let a fresh run (or an older explicit resume) write over the run directory's checkpoints", any());
  f("checkpoint.async", c.checkpoint.async,
    "snapshot the state to host memory and write it from a background thread while training continues", any());
  f("checkpoint.writers", c.checkpoint.writers,
    "files per rank in a checkpoint, each written by its own thread (any count loads into any layout)", closed(1, 256));
  f("checkpoint.direct", c.checkpoint.direct,
    "write checkpoint data with O_DIRECT (bypassing the page cache) where the filesystem allows; false: buffered",
    any());
  f("comm.exchange", c.comm.exchange, "MoE token exchange strategy (auto: the cost model picks, then verifies)",
    choices("duplicate|drop_gather|pipelined|overlapped|auto"));
  f("comm.chunks", c.comm.chunks, "capacity chunks of the pipelined and overlapped exchanges", closed(1, 64));
  f("comm.dispatch_dtype", c.comm.dispatch_dtype,
    "dtype of the tokens the MoE dispatch sends (docs/fp8.md): bf16 (the activation dtype), or fp8 (E4M3 codes and "
    "fp32 1x128 scales, about 0.52 of the bytes; combine stays in the activation dtype)",
    choices("bf16|fp8"));
  f("comm.emulate_nodes", c.comm.emulate_nodes,
    "split the ranks into N emulated nodes (own NCCL_HOSTID each, sockets between); 0: real topology",
    closed(0, 1 << 16));
  f("comm.links", c.comm.links, "link-model file for auto (intra/inter GB/s and us); empty: measure with a probe",
    any());
  f("comm.auto_verify", c.comm.auto_verify, "auto: time the predicted best of each strategy and keep the fastest",
    any());
}

// Sets one key from its text as the INI parser would (value parsed by the field's type; the range is checked later by
// validate/config_problem): "" on success, else the reason (unknown key, unparsable value). For tools that apply
// option sets to a config (the planner's memory options).
std::string set_config_key(Config& c, const std::string& key, const std::string& value);

// The key table as Markdown (docs/config.md is this text; a test keeps the file equal to it).
std::string config_keys_markdown();

}  // namespace monta::model
