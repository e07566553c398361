// The whole model: embedding → L × [RMSNorm → attention → residual → RMSNorm → MoE → residual] → RMSNorm →
// LM head → cross-entropy, with its hand-written backward. Activations live in one arena sized from the
// shapes at construction; tensor/expert parallelism enters only through ParallelContext's communicators.
#pragma once
#include <functional>
#include <optional>
#include <vector>

#include "comm/exchange.h"
#include "engine/memory.h"
#include "model/config.h"
#include "model/fp8_experts.h"
#include "model/params.h"
#include "model/parallel.h"
#include "model/shapes.h"

namespace monta::model {

struct MicroResult {
  double ce_sum = 0;      // Σ token losses of this rank's micro-batch (after TP reduction)
  double aux_sum = 0;     // Σ over layers of the load-balancing loss
  double z_sum = 0;       // Σ over layers of the router z-loss
  int64_t dropped = 0;    // (token, choice) pairs dropped by capacity, summed over layers
  std::vector<int64_t> load;  // (L, E) (token, choice) pairs routed to each expert, before dropping
  double exchange_s = 0;  // seconds spent in the token exchange
  double exchange_bytes = 0;
};

// The objective training minimises, Megatron-Core's convention: mean token cross-entropy plus, for every layer,
// aux_loss_coef x its load-balancing loss + z_loss_coef x its router z-loss (summed over layers, not averaged),
// the router terms averaged over micro-batches. With the sums of a step, ce_scale = 1/(global tokens) and
// aux_scale = 1/(global micro-batches) it is what the backward differentiates; metrics.jsonl prints it as loss_total.
double training_objective(const ModelConfig& m, double ce_sum, double aux_sum, double z_sum, double ce_scale,
                          double aux_scale);

class Model {
 public:
  // fp8_dispatch (comm.dispatch_dtype = fp8): the dispatched tokens are rounded through FP8 (comm/fp8_dispatch.h),
  // sent that way when an exchange is attached, rounded in place without one, so every layout computes the same.
  Model(const ModelConfig& cfg, const Shapes& shapes, const ParallelContext& par, ParamStore& params, DType act_dtype,
        Recompute recompute = Recompute::none, bool fp8_dispatch = false);
  // One micro-batch (N = B·S tokens, host int32). Parameter gradients accumulate into params.grad with
  // d(total)/d(param), total = ce_scale · Σ CE + aux_scale · Σ_layers (aux_coef · aux + z_coef · z); after
  // params.zero_grads() the first micro-batch's writes overwrite instead (ParamStore's lazy zeroing).
  MicroResult forward_backward(const int32_t* tokens, const int32_t* targets, double ce_scale, double aux_scale);
  MicroResult forward(const int32_t* tokens, const int32_t* targets);
  // The activation arena's tensors in allocation order (name, shape, dtype): what the constructor allocates, for
  // sizing memory without allocating (--dry-run, the planner). exchanged: an exchange is attached (ep > 1).
  static std::vector<engine::TensorSpec> activation_specs(const ModelConfig& cfg, const Shapes& s, DType act,
                                                          bool exchanged, Recompute recompute = Recompute::none,
                                                          bool fp8_dispatch = false);
  // The FP8 codes of the weights the FP8 GEMMs read (model.fp8 experts or all; model/fp8_experts.h Fp8Weight), in
  // layer order: its own arena, held for the whole run and refreshed when a weight's version changes.
  static std::vector<engine::TensorSpec> fp8_weight_specs(const ModelConfig& cfg, const Shapes& s);
  const Shapes& shapes() const { return s_; }
  const engine::Arena& activations() const { return acts_; }
  const engine::Arena& fp8_weights() const { return fp8_weights_; }
  Tensor logits() const { return logits_; }  // (N, V_l) of the last forward
  // (L, N_l, K) slot of every (token, choice) of the last forward; -1: dropped. Sequence parallel: this TP rank's
  // N/t tokens (rows [tp_rank·N/t, (tp_rank+1)·N/t) of the micro-batch), with the slots they get without it.
  Tensor slots() const { return slots_; }
  Tensor counts() const { return counts_; }  // (L, E) i32 choices per expert of the last forward, before dropping
  // Called during backward when a group of parameter gradients is final for this micro-batch: layer index
  // l for layer l's parameters, layers() for the LM head and final norm, -1 for the embedding. The trainer
  // starts their data-parallel reduction there (on the last micro-batch), overlapping the rest of backward.
  std::function<void(int)> on_grads_ready;
  // Called during forward before a group of parameters is first read, with the same group numbers: the trainer
  // waits there for that group's compute copies (train.zero 1 all-gathers them while the forward runs).
  std::function<void(int)> on_forward_group;
  // The trainer's exchange time: while on, the exchange's collectives (and the expert-TP reductions run inside it)
  // are metered on the TP and EP groups' communication streams (Communicator::set_metering; NCCL only), for the
  // trainer to take once per step. Off: nothing recorded (bench layer, tests).
  bool meter_exchange = false;
  // Test hook: may change layer l's router logits (N, E) in place before the softmax, e.g. bias them so most tokens
  // pick one expert (a skewed router for the dropless tests). The backward treats the change as a constant.
  std::function<void(int, Tensor)> on_router_logits;
  // Test hook: quantise the FP8 GEMMs' weights at every use (into the same arena) instead of once per weight version,
  // the reference the cache must equal bit for bit.
  bool fp8_quantize_every_use = false;
  // The capacity layer l's last forward used: s.C, or with dropless routing that step's (model/dropless.h).
  int64_t capacity(int l) const { return layers_[size_t(l)].cap; }
  // Dropless routing only: the expert GEMMs run over each expert's filled rows (true, model/dropless.h
  // dropless_gemm_runs), or over every row of the step's capacity, padding included (false: the all-rows path the
  // tests compare against).
  bool dropless_filled_rows = true;
  // Dropless routing only: each GEMM call's rows rounded up to a multiple of this (dropless_gemm_runs' quantum: 16, for
  // CUDA's FP8 GEMM and whole tiles). Tests lower it to 1: at their sizes (step capacities of 16 rows or less) 16 would
  // merge every expert's runs into one call over all rows and leave the per-call path untested.
  int64_t dropless_row_quantum = 16;
  // Forward (+ backward) of layer l alone on the activations of the last forward (benchmarks), as on a step's
  // first micro-batch (its weight gradients are written) or, with later_micro_batch, a later one (they are added).
  void bench_layer(int l, bool backward = true, bool later_micro_batch = false);

 private:
  struct SpecList;
  // A layer's parameters, looked up by name once at construction (ParamStore's storage does not move).
  struct LayerParams {
    Param *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *router, *w_gate, *w_up, *w_down;
  };
  // The parameters outside the layers.
  struct OuterParams {
    Param *embed, *final_norm, *lm_head;
  };
  static std::vector<LayerParams> bind_layer_params(ParamStore& params, int layers);
  static OuterParams bind_outer_params(ParamStore& params);
  struct Layer {
    Tensor x, xn1, rstd1, q, k, v, ao, lse, h, xn2, rstd2;
    Tensor rlogits, probs, expert_idx, slot, weight, counts, zlse, aux, z;
    Tensor dbuf, y, gate, up, act, eo, cbuf;
    int64_t cap = 0;  // capacity of the last forward: s.C, or this step's when dropless
    std::vector<int32_t> loads;  // dropless: (e, E) the last forward's slots filled per EP rank and expert
  };
  // A layer tensor the recompute mode does not keep per layer: every layer's `field` is the shared work_.`work`.
  struct Shared {
    Tensor Layer::*field;
    Tensor Layer::*work;
  };
  static std::vector<Shared> shared_fields(Recompute mode, bool exchanged);
  // Declares every activation tensor in allocation order, binding each to its field of self (null: sizing only).
  static void declare_activations(const ModelConfig& cfg, const Shapes& s, DType act, bool exchanged, Recompute mode,
                                  bool fp8_dispatch, Model* self, SpecList& L);
  MicroResult run_forward(const int32_t* tokens, const int32_t* targets);
  void layer_forward(int l, const Tensor& x_in, Tensor x_out, MicroResult& r);
  void layer_backward(int l, Tensor dx, double aux_scale, MicroResult& r);
  Tensor layer_output(int l) const;  // where layer l's forward writes: the next layer's input, or x_final_
  void tp_all_reduce(Tensor t, bool max = false);
  // The MoE exchange around the experts: dispatch x -> y, experts(k) per expert chunk (y -> z), combine z -> out.
  // Without an exchange y aliases x and out aliases z, and experts(0) runs on the whole buffers. fp8: the forward's
  // token dispatch under comm.dispatch_dtype = fp8 (y = the FP8-rounded rows of x, sent packed).
  void exchange_experts(Tensor out, Tensor z, Tensor y, const Tensor& x, const std::function<void(int)>& experts,
                        MicroResult& r, bool fp8 = false);
  Tensor expert_chunk(const Tensor& t, int k) const;  // chunk k of an expert-side (E_l, e*C, W) tensor
  // Layer l's capacity a.cap from its expert counts (dropless: this step's, from the loads of every EP rank, a.loads;
  // else s.C), set into the exchange with the loads (apply_layer_capacity).
  void set_layer_capacity(int l);
  // Dropless with an exchange: sets a's capacity and loads into it (the forward, and the backward again, since later
  // layers' forwards changed them). Nothing otherwise.
  void apply_layer_capacity(const Layer& a);
  // The expert GEMM calls of expert chunk k of rows R (its dim 1) under dropless routing: the filled runs
  // (Exchange::expert_runs, or comm::filled_runs of a.loads without an exchange) made into calls by
  // dropless_gemm_runs. nullopt: one batched GEMM per projection over the whole chunk (capacity routing, a step whose
  // calls would cover every row anyway, or dropless_filled_rows off).
  std::optional<std::vector<comm::ExpertRun>> expert_calls(const Layer& a, int k, int64_t rows) const;
  // Sums expert-TP partial outputs over TP: the exchange's reduce-scatter where it has one, else an all-reduce.
  void reduce_expert_partials(Tensor t, int k);
  // The expert GEMMs (engine/ops/linear.h's expert_linear_*), in FP8 when model.fp8 = experts (model/fp8_experts.h).
  // x_quantised: FP8 only, q(x) is already in the scratch (the previous call's x, or fp8_swiglu_forward's output).
  void expert_forward(Tensor out, const Tensor& x, const Tensor& w, bool x_quantised = false);
  void expert_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                       engine::Write dx_write, engine::Write dw_write);
  // w's FP8 codes (w: the compute copy of a weight with codes, or whole experts of it: views of their codes),
  // quantised first, the whole weight, if its version moved since.
  Fp8Weight fp8_codes(const Tensor& w);
  // An attention projection out (N, O) = x (N, I) · wᵀ and its backward (dx as dx_write says, the weight gradient as
  // grad_write says): in FP8 with model.fp8 = all (a batch of one), else linear_forward / linear_backward_w.
  // x_quantised: FP8 only, q(x) is in the scratch from the previous projection of the same x.
  void proj_forward(Tensor out, const Tensor& x, const Param& w, bool x_quantised = false);
  void proj_backward(Tensor dx, Param& w, const Tensor& dout, const Tensor& x,
                     engine::Write dx_write = engine::Write::overwrite);
  // linear_backward of parameter w: dx, and its weight gradient as ParamStore::grad_write says.
  void linear_backward_w(Tensor dx, Param& w, const Tensor& dout, const Tensor& x,
                         engine::Write dx_write = engine::Write::overwrite);
  // Sequence parallelism (model/sequence_parallel.cpp); with it off, each is the plain path's op or nothing.
  // Its activation tensors: the (N, H) buffer of gathered tokens and partial sums, the local norm-input gradient,
  // the gathered router counts.
  static void declare_sequence_parallel(const Shapes& s, DType act, Model* self, SpecList& L);
  // local (N_l, H) all-gathered over TP into gather_ (N, H), returned; local itself without sequence parallelism.
  Tensor whole_tokens(const Tensor& local);
  // out = the sum over TP of `whole` (N, H): all-reduced in place (out is whole), or reduce-scattered to this
  // rank's tokens (sequence parallel; out (N_l, H)).
  void reduce_tokens(Tensor out, Tensor whole);
  // h (N_l, H) = x + this rank's rows of Σ_TP ao · woᵀ (the row-parallel projection, reduce-scattered).
  void sp_output_projection(Tensor h, const Tensor& ao, const Param& wo, const Tensor& x);
  // Top-k and capacity of this rank's tokens with the slots of the whole micro-batch's GShard order, global counts.
  void sp_route(int l, Layer& a);
  // Top-k choice and slots of layer l with the balancing bias when model.router_bias_update is on.
  void route_topk(int l, Layer& a, int64_t capacity);
  // The router losses are means over the micro-batch's N tokens; a rank computes them as means over its N_l = N/t
  // (the load-balancing loss E·Σ f_e·P_e has two: f from the global counts over N_l·K, P over N_l): its share of the
  // whole is aux / t², z / t, and so are the gradient scales. 1 without sequence parallelism.
  struct SpLossScale {
    double aux = 1, z = 1;
  };
  SpLossScale sp_loss_scale() const;
  // CE sum, every layer's aux and z losses, and the dropped choices (from the expert counts and the capacity): one
  // device->host copy per micro-batch.
  void read_scalars(MicroResult& r) const;

  ModelConfig cfg_;
  Shapes s_;
  ParallelContext par_;
  ParamStore& params_;
  std::vector<LayerParams> lp_;  // per layer
  OuterParams op_;
  DType act_, stat_;
  engine::Arena acts_;
  Recompute recompute_;
  std::vector<Layer> layers_;
  Layer work_;  // the shared buffers of the tensors recompute does not keep per layer (shared_fields)
  Tensor router_stats_, counts_, slots_;  // (L, 2) aux and z; (L, E) choices per expert; (L, N, K) slots
  Tensor tokens_, targets_, x_final_, xf_, rstdf_, logits_, rowmax_, sumexp_, tlogit_, lse_, losses_, ce_sum_;
  Tensor dx_, dxn_, dq_, dk_, dv_, dao_, dcbuf_, deo_, dact_, dgate_, dup_, dy_, ddbuf_;
  Tensor dweight_, dprobs_, drlogits_, dlogits_;
  Param* router_bias_ = nullptr;  // (L, E) the balancing bias, model.router_bias_update > 0; else null
  Tensor fp8_scratch_;  // (bytes) the quantised activation operands of the FP8 GEMMs (model.fp8 experts or all)
  // Each FP8 GEMM weight's codes, with the version of the weights they were made from (none yet: ~0).
  struct Fp8Cached {
    const Param* p;
    Fp8Weight codes;
    uint64_t version = ~uint64_t(0);
  };
  std::vector<Fp8Cached> fp8_cache_;
  engine::Arena fp8_weights_;
  // Sequence parallel only: (N, H) gathered tokens / partial sums; (N_l, H) gradient of this rank's norm outputs;
  // (t, K, E) i32 every TP rank's choices per (choice, expert).
  Tensor gather_, dxn_l_, choice_counts_;
  bool fp8_dispatch_ = false;
  Tensor dispatch_q_, expert_q_;  // (E, C, Wq), (E_l, e·C, Wq): packed FP8 tokens sent and received (fp8_dispatch_)
  Tensor load_;         // (e, E) i32 the expert loads of every EP rank when dropless (model/dropless.h)
};

}  // namespace monta::model
