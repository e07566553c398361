// Public op entry points, expanded from each family's op list (engine/ops/declare.h): the op's contract (shapes and
// aliasing, in STYLE.md rule 4's letters) is checked here, once for both backends, then the device of the list's
// `on` argument picks the backend, which checks only dtype, device and alignment. CPU-only builds
// (MONTA_WITH_CUDA undefined) fail loudly if a CUDA tensor ever reaches an op.
#include <string>

#include "engine/check.h"
#include "engine/fp8_math.h"
#include "engine/op_timing.h"
#include "engine/ops/adamw.h"
#include "engine/ops/attention.h"
#include "engine/ops/cross_entropy.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/embedding.h"
#include "engine/ops/fp8.h"
#include "engine/ops/init.h"
#include "engine/ops/linear.h"
#include "engine/ops/moe_permute.h"
#include "engine/ops/rmsnorm.h"
#include "engine/ops/rope.h"
#include "engine/ops/router.h"
#include "engine/ops/router_sp.h"
#include "engine/ops/swiglu.h"

namespace monta::engine {
namespace {

// ---- contract vocabulary: each failure names the op, the argument and its tensor, shapes in STYLE rule 4 letters ----
// t holds numel elements (any dimensions: rows of a (B, S, ...) activation may be viewed as N).
void expect_numel(const char* op, const char* name, const Tensor& t, int64_t numel) {
  MONTA_CHECK(t.numel() == numel,
              std::string(op) + ": " + name + " " + t.str() + " must have " + std::to_string(numel) + " elements");
}
void expect(bool ok, const char* op, const std::string& what) { MONTA_CHECK(ok, std::string(op) + ": " + what); }

}  // namespace

// ---- contracts: one per op, named after it; the backends trust them ----
namespace contract {

void init_normal(Tensor out, const InitNormalArgs& a) {
  expect(out.ndim >= 1 && out.ndim <= 4, "init_normal", "out must have 1 to 4 dimensions, got " + out.str());
  for (int d = 0; d < out.ndim; ++d)
    expect(a.offset[size_t(d)] >= 0 && a.offset[size_t(d)] + out.shape[size_t(d)] <= a.full[size_t(d)], "init_normal",
           "slice " + out.str() + " does not fit its logical shape at dimension " + std::to_string(d));
}

// m, v, grad and the optional param_lowp hold as many elements as param.
void adamw_step(Tensor param, Tensor m, Tensor v, Tensor param_lowp, const Tensor& grad, const AdamWArgs&) {
  const char* op = "adamw_step";
  const int64_t n = param.numel();
  expect_numel(op, "m", m, n);
  expect_numel(op, "v", v, n);
  expect_numel(op, "grad", grad, n);
  expect(m.dtype == v.dtype, op, "m and v must have one dtype, got " + m.str() + " and " + v.str());
  if (!param_lowp.empty()) expect_numel(op, "param_lowp", param_lowp, n);
}
void adamw_step_many(std::span<const AdamWEntry> entries, const AdamWArgs& a) {
  for (const AdamWEntry& e : entries) {
    expect(e.param.device == entries[0].param.device, "adamw_step_many", "entries on different devices");
    contract::adamw_step(e.param, e.m, e.v, e.param_lowp, e.grad, a);
  }
}

// x (N, H), any leading dims, H > 0; out (N, H); weight (H); rstd (N).
void rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& x, const Tensor& weight, float) {
  const char* op = "rmsnorm_forward";
  expect(x.ndim >= 1 && x.dim(-1) > 0, op, "x must have a non-empty last dimension, got " + x.str());
  const int64_t H = x.dim(-1), N = x.numel() / H;
  expect_numel(op, "out", out, N * H);
  expect_numel(op, "weight", weight, H);
  expect_numel(op, "rstd", rstd, N);
}
// As forward, with dx and dout (N, H) and the optional dweight (H).
void rmsnorm_backward(Tensor dx, Tensor dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      const Tensor& rstd, Write) {
  const char* op = "rmsnorm_backward";
  expect(x.ndim >= 1 && x.dim(-1) > 0, op, "x must have a non-empty last dimension, got " + x.str());
  const int64_t H = x.dim(-1), N = x.numel() / H;
  expect_numel(op, "dx", dx, N * H);
  expect_numel(op, "dout", dout, N * H);
  expect_numel(op, "weight", weight, H);
  expect_numel(op, "rstd", rstd, N);
  if (!dweight.empty()) expect_numel(op, "dweight", dweight, H);
}

// Elementwise: every operand holds as many elements as gate.
void swiglu_forward(Tensor out, const Tensor& gate, const Tensor& up) {
  const char* op = "swiglu_forward";
  expect_numel(op, "up", up, gate.numel());
  expect_numel(op, "out", out, gate.numel());
}
void swiglu_backward(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up) {
  const char* op = "swiglu_backward";
  expect_numel(op, "up", up, gate.numel());
  expect_numel(op, "dout", dout, gate.numel());
  expect_numel(op, "dgate", dgate, gate.numel());
  expect_numel(op, "dup", dup, gate.numel());
}

// table (V_local, H); act (N, H) with N = tokens.numel(): out in forward, dout in backward.
void embedding_shapes(const char* op, const Tensor& act, const Tensor& tokens, const Tensor& table) {
  expect(table.ndim == 2 && act.ndim == 2 && act.dim(1) == table.dim(1) && act.dim(0) == tokens.numel(), op,
         "want (N, H) activations, (V_local, H) table and N tokens, got " + act.str() + ", " + table.str() + ", " +
             tokens.str());
}
void embedding_forward(Tensor out, const Tensor& tokens, const Tensor& table, int64_t) {
  embedding_shapes("embedding_forward", out, tokens, table);
}
void embedding_backward(Tensor dtable, const Tensor& dout, const Tensor& tokens, int64_t) {
  embedding_shapes("embedding_backward", dout, tokens, dtable);
}

// out and x (B, S, heads, D), D even; out may be x.
void rope_shapes(const char* op, const Tensor& out, const Tensor& x) {
  expect(same_shape(out, x) && x.ndim == 4 && x.dim(3) % 2 == 0, op,
         "want two (B, S, heads, D) tensors of one shape, D even, got " + out.str() + ", " + x.str());
}
void rope_forward(Tensor out, const Tensor& x, float) { rope_shapes("rope_forward", out, x); }
void rope_backward(Tensor dx, const Tensor& dout, float) { rope_shapes("rope_backward", dx, dout); }

// Router: probs, logits and their gradients (N, E); expert_idx, slot, weight (N, K) with 1 <= K <= E; counts (E);
// losses (1) and lse (N).
void router_rows(const char* op, const char* name, const Tensor& t) {
  expect(t.ndim == 2, op, std::string(name) + " must be (N, E), got " + t.str());
}
void softmax_forward(Tensor probs, const Tensor& logits) {
  router_rows("softmax_forward", "logits", logits);
  expect(same_shape(probs, logits), "softmax_forward", "probs " + probs.str() + " must match " + logits.str());
}
void softmax_backward(Tensor dlogits, const Tensor& dprobs, const Tensor& probs) {
  router_rows("softmax_backward", "probs", probs);
  expect(same_shape(dprobs, probs) && same_shape(dlogits, probs), "softmax_backward",
         "dlogits " + dlogits.str() + " and dprobs " + dprobs.str() + " must match " + probs.str());
}
void router_topk_assign(Tensor expert_idx, Tensor slot, Tensor counts, const Tensor& probs, int64_t capacity) {
  const char* op = "router_topk_assign";
  router_rows(op, "probs", probs);
  const int64_t N = probs.dim(0), E = probs.dim(1);
  expect(expert_idx.ndim == 2 && expert_idx.dim(0) == N && expert_idx.dim(1) >= 1 && expert_idx.dim(1) <= E, op,
         "expert_idx must be (N, K) with 1 <= K <= E, got " + expert_idx.str() + " for probs " + probs.str());
  expect(same_shape(slot, expert_idx), op, "slot " + slot.str() + " must match expert_idx " + expert_idx.str());
  expect_numel(op, "counts", counts, E);
  expect(capacity >= 0, op, "capacity must be >= 0, got " + std::to_string(capacity));
}
// Sequence-parallel capacity: expert_idx (N, K); counts (K, E) or (E); all_counts (t, K, E); slot as expert_idx.
void router_choice_counts(Tensor counts, const Tensor& expert_idx) {
  const char* op = "router_choice_counts";
  expect(expert_idx.ndim == 2 && counts.ndim == 2 && counts.dim(0) == expert_idx.dim(1), op,
         "want counts (K, E) for expert_idx (N, K), got " + counts.str() + ", " + expert_idx.str());
}
void router_sp_slots(Tensor slot, Tensor counts, const Tensor& expert_idx, const Tensor& all_counts, int64_t tp_rank,
                     int64_t capacity) {
  const char* op = "router_sp_slots";
  expect(expert_idx.ndim == 2 && same_shape(slot, expert_idx), op,
         "slot " + slot.str() + " must match expert_idx (N, K) " + expert_idx.str());
  expect(all_counts.ndim == 3 && all_counts.dim(1) == expert_idx.dim(1), op,
         "all_counts must be (t, K, E), got " + all_counts.str() + " for expert_idx " + expert_idx.str());
  expect_numel(op, "counts", counts, all_counts.dim(2));
  expect(tp_rank >= 0 && tp_rank < all_counts.dim(0), op, "tp_rank " + std::to_string(tp_rank) + " outside the group");
  expect(capacity >= 0, op, "capacity must be >= 0, got " + std::to_string(capacity));
}
void router_topk_assign_biased(Tensor expert_idx, Tensor slot, Tensor counts, const Tensor& probs, const Tensor& bias,
                               int64_t capacity) {
  contract::router_topk_assign(expert_idx, slot, counts, probs, capacity);
  expect_numel("router_topk_assign_biased", "bias", bias, probs.dim(1));
}
// weight (N, K) against probs (N, E) and expert_idx (N, K).
void topk_shapes(const char* op, const char* wname, const Tensor& weight, const char* pname, const Tensor& probs,
                 const Tensor& expert_idx) {
  router_rows(op, pname, probs);
  const int64_t N = probs.dim(0), E = probs.dim(1);
  expect(expert_idx.ndim == 2 && expert_idx.dim(0) == N && expert_idx.dim(1) >= 1 && expert_idx.dim(1) <= E, op,
         "expert_idx must be (N, K) with 1 <= K <= E for N = " + std::to_string(N) + ", E = " + std::to_string(E) +
             ", got " + expert_idx.str());
  expect(same_shape(weight, expert_idx), op, std::string(wname) + " " + weight.str() + " must be (N, K) as " +
                                                 expert_idx.str());
}
void topk_weights_forward(Tensor weight, const Tensor& probs, const Tensor& expert_idx) {
  topk_shapes("topk_weights_forward", "weight", weight, "probs", probs, expert_idx);
}
void topk_weights_backward(Tensor dprobs, const Tensor& dweight, const Tensor& expert_idx) {
  topk_shapes("topk_weights_backward", "dweight", dweight, "dprobs", dprobs, expert_idx);
}
void topk_weights_norm_forward(Tensor weight, const Tensor& probs, const Tensor& expert_idx) {
  topk_shapes("topk_weights_norm_forward", "weight", weight, "probs", probs, expert_idx);
}
void topk_weights_norm_backward(Tensor dprobs, const Tensor& dweight, const Tensor& probs, const Tensor& expert_idx) {
  topk_shapes("topk_weights_norm_backward", "dweight", dweight, "probs", probs, expert_idx);
  expect(same_shape(dprobs, probs), "topk_weights_norm_backward",
         "dprobs " + dprobs.str() + " must match probs " + probs.str());
}
void load_balance_shapes(const char* op, const char* pname, const Tensor& probs, const Tensor& counts, int64_t top_k) {
  router_rows(op, pname, probs);
  expect_numel(op, "counts", counts, probs.dim(1));
  expect(top_k >= 1 && probs.dim(0) > 0, op,
         "need top_k >= 1 and N > 0, got top_k " + std::to_string(top_k) + ", probs " + probs.str());
}
void load_balance_loss_forward(Tensor loss, const Tensor& probs, const Tensor& counts, int64_t top_k) {
  load_balance_shapes("load_balance_loss_forward", "probs", probs, counts, top_k);
  expect_numel("load_balance_loss_forward", "loss", loss, 1);
}
void load_balance_loss_backward(Tensor dprobs, const Tensor& counts, int64_t top_k, float) {
  load_balance_shapes("load_balance_loss_backward", "dprobs", dprobs, counts, top_k);
}
void router_z_loss_forward(Tensor loss, Tensor lse, const Tensor& logits) {
  const char* op = "router_z_loss_forward";
  router_rows(op, "logits", logits);
  expect(logits.dim(0) > 0, op, "logits " + logits.str() + " has no rows");
  expect_numel(op, "loss", loss, 1);
  expect_numel(op, "lse", lse, logits.dim(0));
}
void router_z_loss_backward(Tensor dlogits, const Tensor& lse, const Tensor& probs, float) {
  const char* op = "router_z_loss_backward";
  router_rows(op, "probs", probs);
  expect(same_shape(dlogits, probs), op, "dlogits " + dlogits.str() + " must match " + probs.str());
  expect_numel(op, "lse", lse, probs.dim(0));
}

// Token permutation: tokens (N, H), buffer (E, C, H), expert_idx and slot (N, K); the combine weights (N, K).
void moe_route(const char* op, const Tensor& tok, const Tensor& buf, const Tensor& expert_idx, const Tensor& slot) {
  expect(tok.ndim == 2 && buf.ndim == 3 && buf.dim(2) == tok.dim(1) && expert_idx.ndim == 2 &&
             expert_idx.dim(0) == tok.dim(0) && same_shape(slot, expert_idx),
         op, "want tokens (N, H), buffer (E, C, H), expert_idx and slot (N, K), got " + tok.str() + ", " + buf.str() +
                 ", " + expert_idx.str() + ", " + slot.str());
}
void moe_weight(const char* op, const char* name, const Tensor& w, const Tensor& expert_idx) {
  expect(same_shape(w, expert_idx), op, std::string(name) + " " + w.str() + " must be (N, K) like " + expert_idx.str());
}
void moe_dispatch_forward(Tensor buf, const Tensor& x, const Tensor& expert_idx, const Tensor& slot) {
  moe_route("moe_dispatch_forward", x, buf, expert_idx, slot);
}
void moe_dispatch_backward(Tensor dx, const Tensor& dbuf, const Tensor& expert_idx, const Tensor& slot) {
  moe_route("moe_dispatch_backward", dx, dbuf, expert_idx, slot);
}
void moe_combine_forward(Tensor y, const Tensor& ebuf, const Tensor& weight, const Tensor& expert_idx,
                         const Tensor& slot, const Tensor& residual) {
  const char* op = "moe_combine_forward";
  moe_route(op, y, ebuf, expert_idx, slot);
  moe_weight(op, "weight", weight, expert_idx);
  if (!residual.empty()) expect(same_shape(residual, y), op, "residual " + residual.str() + " must match y " + y.str());
}
void moe_combine_backward(Tensor debuf, Tensor dweight, const Tensor& dy, const Tensor& ebuf, const Tensor& weight,
                          const Tensor& expert_idx, const Tensor& slot) {
  const char* op = "moe_combine_backward";
  moe_route(op, dy, ebuf, expert_idx, slot);
  expect(same_shape(debuf, ebuf), op, "debuf " + debuf.str() + " must match ebuf " + ebuf.str());
  moe_weight(op, "weight", weight, expert_idx);
  if (!dweight.empty()) moe_weight(op, "dweight", dweight, expert_idx);
}

// Cross-entropy: logits and dlogits (N, V_local); per-row statistics and targets (N).
void ce_logits(const char* op, const Tensor& logits) {
  expect(logits.ndim == 2, op, "logits must be (N, V_local), got " + logits.str());
}
void logits_rowmax(Tensor rowmax, const Tensor& logits) {
  const char* op = "logits_rowmax";
  ce_logits(op, logits);
  expect_numel(op, "rowmax", rowmax, logits.dim(0));
  expect(logits.dim(1) > 0, op, "logits " + logits.str() + " has no columns");
}
void cross_entropy_partial(Tensor sumexp, Tensor target_logit, const Tensor& logits, const Tensor& rowmax,
                           const Tensor& targets, int64_t) {
  const char* op = "cross_entropy_partial";
  ce_logits(op, logits);
  const int64_t N = logits.dim(0);
  expect_numel(op, "sumexp", sumexp, N);
  expect_numel(op, "target_logit", target_logit, N);
  expect_numel(op, "rowmax", rowmax, N);
  expect_numel(op, "targets", targets, N);
}
void cross_entropy_finish(Tensor losses, Tensor lse, const Tensor& sumexp, const Tensor& rowmax,
                          const Tensor& target_logit, const Tensor& targets) {
  const char* op = "cross_entropy_finish";
  const int64_t N = targets.numel();
  expect_numel(op, "losses", losses, N);
  expect_numel(op, "lse", lse, N);
  expect_numel(op, "sumexp", sumexp, N);
  expect_numel(op, "rowmax", rowmax, N);
  expect_numel(op, "target_logit", target_logit, N);
}
void cross_entropy_backward(Tensor dlogits, const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t,
                            float) {
  const char* op = "cross_entropy_backward";
  ce_logits(op, logits);
  expect(same_shape(dlogits, logits), op, "dlogits " + dlogits.str() + " must match " + logits.str());
  expect_numel(op, "targets", targets, logits.dim(0));
  expect_numel(op, "lse", lse, logits.dim(0));
}

// Elementwise: operands hold as many elements as the output; the reductions write one element.
void add(Tensor out, const Tensor& a, const Tensor& b) {
  expect_numel("add", "a", a, out.numel());
  expect_numel("add", "b", b, out.numel());
}
void accumulate(Tensor dst, const Tensor& src) { expect_numel("accumulate", "src", src, dst.numel()); }
void scale(Tensor, double) {}
void cast(Tensor out, const Tensor& in) { expect_numel("cast", "in", in, out.numel()); }
void sum_squares(Tensor out, const Tensor&) { expect_numel("sum_squares", "out", out, 1); }
void sum(Tensor out, const Tensor&, double) { expect_numel("sum", "out", out, 1); }

// Attention: q and out (B, S, A, D); k and v (B, S, G, D) with G dividing A; lse (B, A, S); gradients as their inputs.
void attention_shapes(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                      const Tensor& lse) {
  expect(q.ndim == 4 && k.ndim == 4 && same_shape(k, v) && k.dim(0) == q.dim(0) && k.dim(1) == q.dim(1) &&
             k.dim(3) == q.dim(3) && k.dim(2) > 0 && q.dim(2) % k.dim(2) == 0,
         op, "want q (B, S, A, D), k and v (B, S, G, D) with G dividing A, got " + q.str() + ", " + k.str() + ", " +
                 v.str());
  expect(same_shape(out, q), op, "out " + out.str() + " must match q " + q.str());
  expect(lse.numel() == q.dim(0) * q.dim(2) * q.dim(1), op,
         "lse " + lse.str() + " must be (B, A, S) for q " + q.str());
}
void attention_forward(Tensor out, Tensor lse, const Tensor& q, const Tensor& k, const Tensor& v) {
  attention_shapes("attention_forward", q, k, v, out, lse);
}
void attention_backward(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& lse) {
  const char* op = "attention_backward";
  attention_shapes(op, q, k, v, out, lse);
  expect(same_shape(dout, q) && same_shape(dq, q) && same_shape(dk, k) && same_shape(dv, v), op,
         "gradients must match their inputs: dout " + dout.str() + ", dq " + dq.str() + ", dk " + dk.str() + ", dv " +
             dv.str());
}

// Linear: out and dout (M, O), x and dx (M, I), w and dw (O, I); the expert forms add a leading E to each.
std::string shapes(const Tensor& a, const Tensor& b, const Tensor& c) {
  return " (" + a.str() + ", " + b.str() + ", " + c.str() + ")";
}
void linear_forward(Tensor out, const Tensor& x, const Tensor& w, Write) {
  expect(x.ndim == 2 && w.ndim == 2 && out.ndim == 2 && w.dim(1) == x.dim(1) && out.dim(0) == x.dim(0) &&
             out.dim(1) == w.dim(0),
         "linear_forward", "want out (M, O), x (M, I), w (O, I), got" + shapes(out, x, w));
}
void linear_forward_residual(Tensor out, const Tensor& x, const Tensor& w, const Tensor& residual) {
  expect(x.ndim == 2 && w.ndim == 2 && out.ndim == 2 && w.dim(1) == x.dim(1) && out.dim(0) == x.dim(0) &&
             out.dim(1) == w.dim(0),
         "linear_forward_residual", "want out (M, O), x (M, I), w (O, I), got" + shapes(out, x, w));
  expect(same_shape(residual, out), "linear_forward_residual",
         "residual " + residual.str() + " must match out " + out.str());
}
void linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, Write, Write) {
  const char* op = "linear_backward";
  expect(dout.ndim == 2 && w.ndim == 2 && x.ndim == 2 && dout.dim(1) == w.dim(0) && x.dim(0) == dout.dim(0) &&
             x.dim(1) == w.dim(1),
         op, "want dout (M, O), x (M, I), w (O, I), got" + shapes(dout, x, w));
  expect(dx.empty() || same_shape(dx, x), op, "dx " + dx.str() + " must be (M, I) like x " + x.str());
  expect(dw.empty() || same_shape(dw, w), op, "dw " + dw.str() + " must be (O, I) like w " + w.str());
}
void expert_linear_forward(Tensor out, const Tensor& x, const Tensor& w) {
  expect(x.ndim == 3 && w.ndim == 3 && out.ndim == 3 && w.dim(0) == x.dim(0) && out.dim(0) == x.dim(0) &&
             w.dim(2) == x.dim(2) && out.dim(1) == x.dim(1) && out.dim(2) == w.dim(1),
         "expert_linear_forward", "want out (E, C, O), x (E, C, I), w (E, O, I), got" + shapes(out, x, w));
}
void expert_linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, Write, Write) {
  const char* op = "expert_linear_backward";
  expect(dout.ndim == 3 && w.ndim == 3 && x.ndim == 3 && w.dim(0) == dout.dim(0) && x.dim(0) == dout.dim(0) &&
             x.dim(1) == dout.dim(1) && w.dim(1) == dout.dim(2) && w.dim(2) == x.dim(2),
         op, "want dout (E, C, O), x (E, C, I), w (E, O, I), got" + shapes(dout, x, w));
  expect(dx.empty() || same_shape(dx, x), op, "dx " + dx.str() + " must match x " + x.str());
  expect(dw.empty() || same_shape(dw, w), op, "dw " + dw.str() + " must match w " + w.str());
}

// FP8 (engine/ops/fp8.h): tensors of 2 or 3 dimensions, read as (B, rows, cols) with B = 1 for 2.
struct Dims3 {
  int64_t b, r, c;
};
Dims3 dims3(const char* op, const char* name, const Tensor& t) {
  expect(t.ndim == 2 || t.ndim == 3, op, std::string(name) + " must be (rows, cols) or (B, rows, cols), got " + t.str());
  return t.ndim == 2 ? Dims3{1, t.dim(0), t.dim(1)} : Dims3{t.dim(0), t.dim(1), t.dim(2)};
}
void expect_dims(const char* op, const char* name, const Tensor& t, Dims3 want) {
  const Dims3 d = dims3(op, name, t);
  expect(d.b == want.b && d.r == want.r && d.c == want.c, op,
         std::string(name) + " " + t.str() + " must be (" + std::to_string(want.b) + ", " + std::to_string(want.r) +
             ", " + std::to_string(want.c) + ")");
}
void fp8_quantize_rows(Tensor q, Tensor scale, const Tensor& x) {
  const char* op = "fp8_quantize_rows";
  const Dims3 d = dims3(op, "x", x);
  expect_dims(op, "q", q, d);
  expect_dims(op, "scale", scale, {d.b, fp8::tiles(d.c), d.r});
}
void fp8_quantize_cols(Tensor qt, Tensor scale, const Tensor& x) {
  const char* op = "fp8_quantize_cols";
  const Dims3 d = dims3(op, "x", x);
  expect_dims(op, "qt", qt, {d.b, d.c, d.r});
  expect_dims(op, "scale", scale, {d.b, fp8::tiles(d.r), d.c});
}
void fp8_quantize_blocks(Tensor q, Tensor scale, Tensor qt, Tensor scale_t, const Tensor& w) {
  const char* op = "fp8_quantize_blocks";
  const Dims3 d = dims3(op, "w", w);
  expect(q.empty() == scale.empty(), op, "q and scale come together, got " + q.str() + ", " + scale.str());
  expect(qt.empty() == scale_t.empty(), op, "qt and scale_t come together, got " + qt.str() + ", " + scale_t.str());
  expect(!q.empty() || !qt.empty(), op, "wants q or qt (or both)");
  if (!q.empty()) {
    expect_dims(op, "q", q, d);
    expect_dims(op, "scale", scale, {d.b, fp8::tiles(d.r), fp8::block_scale_ld(d.c)});
  }
  if (qt.empty()) return;
  expect_dims(op, "qt", qt, {d.b, d.c, d.r});
  expect_dims(op, "scale_t", scale_t, {d.b, fp8::tiles(d.c), fp8::block_scale_ld(d.r)});
}
void expect_packed(const char* op, const Tensor& packed, const Tensor& x) {
  const Dims3 d = dims3(op, "x", x), p = dims3(op, "packed", packed);
  expect(p.b == d.b && p.r == d.r && p.c >= fp8::packed_row_bytes(d.c) && p.c % 4 == 0, op,
         "packed " + packed.str() + " must be (" + std::to_string(d.b) + ", " + std::to_string(d.r) +
             ", P) with P >= " + std::to_string(fp8::packed_row_bytes(d.c)) + " a multiple of 4");
}
void fp8_pack_rows(Tensor packed, const Tensor& x) { expect_packed("fp8_pack_rows", packed, x); }
void fp8_unpack_rows(Tensor out, const Tensor& packed) { expect_packed("fp8_unpack_rows", packed, out); }
void fp8_swiglu_forward(Tensor out, Tensor q, Tensor scale, const Tensor& gate, const Tensor& up) {
  const char* op = "fp8_swiglu_forward";
  const Dims3 d = dims3(op, "out", out);
  expect_dims(op, "gate", gate, d);
  expect_dims(op, "up", up, d);
  expect_dims(op, "q", q, d);
  expect_dims(op, "scale", scale, {d.b, fp8::tiles(d.c), d.r});
  expect(gate.dtype == out.dtype && up.dtype == out.dtype, op, "gate, up and out must share a dtype");
}
void fp8_gemm(Tensor out, const Tensor& a, const Tensor& a_scale, const Tensor& b, const Tensor& b_scale,
              Fp8Scaling b_scaling, Write) {
  const char* op = "fp8_gemm";
  const Dims3 da = dims3(op, "a", a), db = dims3(op, "b", b);
  expect(da.b == db.b && da.c == db.c, op, "want a (B, M, K) and b (B, N, K), got " + a.str() + ", " + b.str());
  expect_dims(op, "out", out, {da.b, da.r, db.r});
  expect_dims(op, "a_scale", a_scale, {da.b, fp8::tiles(da.c), da.r});
  if (b_scaling == Fp8Scaling::tiles)
    expect_dims(op, "b_scale", b_scale, {db.b, fp8::tiles(db.c), db.r});
  else
    expect_dims(op, "b_scale", b_scale, {db.b, fp8::tiles(db.r), fp8::block_scale_ld(db.c)});
}

}  // namespace contract

// Every entry point names its stream `s`; the OpScope times the call when op timing is on (engine/op_timing.h).
#ifdef MONTA_WITH_CUDA
#define MONTA_DISPATCH(t, fn, ...)                                \
  do {                                                            \
    const OpScope op_scope(#fn, (t), s);                          \
    if ((t).device == Device::cuda) return cuda::fn(__VA_ARGS__); \
    return cpu::fn(__VA_ARGS__);                                  \
  } while (0)
#else
#define MONTA_DISPATCH(t, fn, ...)                                                                 \
  do {                                                                                             \
    MONTA_CHECK((t).device == Device::cpu, std::string(#fn) + ": this build has no CUDA backend"); \
    const OpScope op_scope(#fn, (t), s);                                                           \
    return cpu::fn(__VA_ARGS__);                                                                   \
  } while (0)
#endif

// Definitions take no default arguments (the declarations have them).
#undef MONTA_OR
#define MONTA_OR(v)
#define MONTA_OP_DEFINE(name, on, params, args)         \
  void name(MONTA_OP_UNPAREN params, Stream s) {       \
    contract::name(MONTA_OP_UNPAREN args);              \
    MONTA_DISPATCH(on, name, MONTA_OP_UNPAREN args, s); \
  }

MONTA_OPS_INIT(MONTA_OP_DEFINE)
MONTA_OPS_EMBEDDING(MONTA_OP_DEFINE)
MONTA_OPS_RMSNORM(MONTA_OP_DEFINE)
MONTA_OPS_LINEAR(MONTA_OP_DEFINE)
MONTA_OPS_ROPE(MONTA_OP_DEFINE)
MONTA_OPS_ATTENTION(MONTA_OP_DEFINE)
MONTA_OPS_SWIGLU(MONTA_OP_DEFINE)
MONTA_OPS_ROUTER(MONTA_OP_DEFINE)
MONTA_OPS_ROUTER_SP(MONTA_OP_DEFINE)
MONTA_OPS_MOE_PERMUTE(MONTA_OP_DEFINE)
MONTA_OPS_CROSS_ENTROPY(MONTA_OP_DEFINE)
MONTA_OPS_ELEMENTWISE(MONTA_OP_DEFINE)
MONTA_OPS_ADAMW(MONTA_OP_DEFINE)
MONTA_OPS_FP8(MONTA_OP_DEFINE)

}  // namespace monta::engine
