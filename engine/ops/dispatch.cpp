// Public op entry points: the device of the first tensor argument picks the backend. CPU-only builds
// (MONTA_WITH_CUDA undefined) fail loudly if a CUDA tensor ever reaches an op.
#include "engine/check.h"
#include "engine/op_timing.h"
#include "engine/ops/adamw.h"
#include "engine/ops/attention.h"
#include "engine/ops/cross_entropy.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/embedding.h"
#include "engine/ops/init.h"
#include "engine/ops/linear.h"
#include "engine/ops/moe_permute.h"
#include "engine/ops/rmsnorm.h"
#include "engine/ops/rope.h"
#include "engine/ops/router.h"
#include "engine/ops/swiglu.h"

namespace monta::engine {

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

void init_normal(Tensor out, const InitNormalArgs& a, Stream s) {
  MONTA_CHECK(out.ndim >= 1 && out.ndim <= 4, "init_normal: out must have 1 to 4 dimensions, got " + out.str());
  for (int d = 0; d < out.ndim; ++d)
    MONTA_CHECK(a.offset[size_t(d)] >= 0 && a.offset[size_t(d)] + out.shape[size_t(d)] <= a.full[size_t(d)],
                "init_normal: slice " + out.str() + " does not fit its logical shape at dimension " + std::to_string(d));
  MONTA_DISPATCH(out, init_normal, out, a, s);
}

void embedding_forward(Tensor out, const Tensor& tokens, const Tensor& table, int64_t vocab_begin, Stream s) {
  MONTA_DISPATCH(out, embedding_forward, out, tokens, table, vocab_begin, s);
}
void embedding_backward(Tensor dtable, const Tensor& dout, const Tensor& tokens, int64_t vocab_begin, Stream s) {
  MONTA_DISPATCH(dtable, embedding_backward, dtable, dout, tokens, vocab_begin, s);
}

void rmsnorm_forward(Tensor out, Tensor rstd, const Tensor& x, const Tensor& weight, float eps, Stream s) {
  MONTA_DISPATCH(out, rmsnorm_forward, out, rstd, x, weight, eps, s);
}
void rmsnorm_backward(Tensor dx, Tensor dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                      const Tensor& rstd, bool accumulate_dx, Stream s) {
  MONTA_DISPATCH(dout, rmsnorm_backward, dx, dweight, dout, x, weight, rstd, accumulate_dx, s);
}

void linear_forward(Tensor out, const Tensor& x, const Tensor& w, bool accumulate, Stream s) {
  MONTA_DISPATCH(out, linear_forward, out, x, w, accumulate, s);
}
void linear_forward_residual(Tensor out, const Tensor& x, const Tensor& w, const Tensor& residual, Stream s) {
  MONTA_DISPATCH(out, linear_forward_residual, out, x, w, residual, s);
}
void linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, bool accumulate_dx,
                     bool accumulate_dw, Stream s) {
  MONTA_DISPATCH(dout, linear_backward, dx, dw, dout, x, w, accumulate_dx, accumulate_dw, s);
}
void expert_linear_forward(Tensor out, const Tensor& x, const Tensor& w, Stream s) {
  MONTA_DISPATCH(out, expert_linear_forward, out, x, w, s);
}
void expert_linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, bool accumulate_dx,
                            bool accumulate_dw, Stream s) {
  MONTA_DISPATCH(dout, expert_linear_backward, dx, dw, dout, x, w, accumulate_dx, accumulate_dw, s);
}

void rope_forward(Tensor out, const Tensor& x, float theta, Stream s) { MONTA_DISPATCH(out, rope_forward, out, x, theta, s); }
void rope_backward(Tensor dx, const Tensor& dout, float theta, Stream s) {
  MONTA_DISPATCH(dx, rope_backward, dx, dout, theta, s);
}

void attention_forward(Tensor out, Tensor lse, const Tensor& q, const Tensor& k, const Tensor& v, Stream s) {
  MONTA_DISPATCH(out, attention_forward, out, lse, q, k, v, s);
}
void attention_backward(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& out, const Tensor& lse, Stream s) {
  MONTA_DISPATCH(dout, attention_backward, dq, dk, dv, dout, q, k, v, out, lse, s);
}

void swiglu_forward(Tensor out, const Tensor& gate, const Tensor& up, Stream s) {
  MONTA_DISPATCH(out, swiglu_forward, out, gate, up, s);
}
void swiglu_backward(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up, Stream s) {
  MONTA_DISPATCH(dout, swiglu_backward, dgate, dup, dout, gate, up, s);
}

void softmax_forward(Tensor probs, const Tensor& logits, Stream s) { MONTA_DISPATCH(probs, softmax_forward, probs, logits, s); }
void softmax_backward(Tensor dlogits, const Tensor& dprobs, const Tensor& probs, Stream s) {
  MONTA_DISPATCH(dlogits, softmax_backward, dlogits, dprobs, probs, s);
}
void router_topk_assign(Tensor expert_idx, Tensor slot, Tensor counts, const Tensor& probs, int64_t capacity, Stream s) {
  MONTA_DISPATCH(probs, router_topk_assign, expert_idx, slot, counts, probs, capacity, s);
}
void topk_weights_forward(Tensor weight, const Tensor& probs, const Tensor& expert_idx, Stream s) {
  MONTA_DISPATCH(probs, topk_weights_forward, weight, probs, expert_idx, s);
}
void topk_weights_backward(Tensor dprobs, const Tensor& dweight, const Tensor& expert_idx, Stream s) {
  MONTA_DISPATCH(dprobs, topk_weights_backward, dprobs, dweight, expert_idx, s);
}
void load_balance_loss_forward(Tensor loss, const Tensor& probs, const Tensor& counts, int64_t top_k, Stream s) {
  MONTA_DISPATCH(probs, load_balance_loss_forward, loss, probs, counts, top_k, s);
}
void load_balance_loss_backward(Tensor dprobs, const Tensor& counts, int64_t top_k, float dloss, Stream s) {
  MONTA_DISPATCH(dprobs, load_balance_loss_backward, dprobs, counts, top_k, dloss, s);
}
void router_z_loss_forward(Tensor loss, Tensor lse, const Tensor& logits, Stream s) {
  MONTA_DISPATCH(logits, router_z_loss_forward, loss, lse, logits, s);
}
void router_z_loss_backward(Tensor dlogits, const Tensor& lse, const Tensor& probs, float dloss, Stream s) {
  MONTA_DISPATCH(dlogits, router_z_loss_backward, dlogits, lse, probs, dloss, s);
}

void moe_dispatch_forward(Tensor buf, const Tensor& x, const Tensor& expert_idx, const Tensor& slot, Stream s) {
  MONTA_DISPATCH(buf, moe_dispatch_forward, buf, x, expert_idx, slot, s);
}
void moe_dispatch_backward(Tensor dx, const Tensor& dbuf, const Tensor& expert_idx, const Tensor& slot, Stream s) {
  MONTA_DISPATCH(dx, moe_dispatch_backward, dx, dbuf, expert_idx, slot, s);
}
void moe_combine_forward(Tensor y, const Tensor& ebuf, const Tensor& weight, const Tensor& expert_idx,
                         const Tensor& slot, const Tensor& residual, Stream s) {
  MONTA_DISPATCH(y, moe_combine_forward, y, ebuf, weight, expert_idx, slot, residual, s);
}
void moe_combine_backward(Tensor debuf, Tensor dweight, const Tensor& dy, const Tensor& ebuf, const Tensor& weight,
                          const Tensor& expert_idx, const Tensor& slot, Stream s) {
  MONTA_DISPATCH(dy, moe_combine_backward, debuf, dweight, dy, ebuf, weight, expert_idx, slot, s);
}

void logits_rowmax(Tensor rowmax, const Tensor& logits, Stream s) { MONTA_DISPATCH(logits, logits_rowmax, rowmax, logits, s); }
void cross_entropy_partial(Tensor sumexp, Tensor target_logit, const Tensor& logits, const Tensor& rowmax,
                           const Tensor& targets, int64_t vocab_begin, Stream s) {
  MONTA_DISPATCH(logits, cross_entropy_partial, sumexp, target_logit, logits, rowmax, targets, vocab_begin, s);
}
void cross_entropy_finish(Tensor losses, Tensor lse, const Tensor& sumexp, const Tensor& rowmax,
                          const Tensor& target_logit, const Tensor& targets, Stream s) {
  MONTA_DISPATCH(losses, cross_entropy_finish, losses, lse, sumexp, rowmax, target_logit, targets, s);
}
void cross_entropy_backward(Tensor dlogits, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int64_t vocab_begin, float scale, Stream s) {
  MONTA_DISPATCH(logits, cross_entropy_backward, dlogits, logits, targets, lse, vocab_begin, scale, s);
}

void add(Tensor out, const Tensor& a, const Tensor& b, Stream s) { MONTA_DISPATCH(out, add, out, a, b, s); }
void accumulate(Tensor dst, const Tensor& src, Stream s) { MONTA_DISPATCH(dst, accumulate, dst, src, s); }
void scale(Tensor t, double alpha, Stream s) { MONTA_DISPATCH(t, scale, t, alpha, s); }
void cast(Tensor out, const Tensor& in, Stream s) { MONTA_DISPATCH(out, cast, out, in, s); }
void sum_squares(Tensor out, const Tensor& x, Stream s) { MONTA_DISPATCH(x, sum_squares, out, x, s); }
void sum(Tensor out, const Tensor& x, double alpha, Stream s) { MONTA_DISPATCH(x, sum, out, x, alpha, s); }

void adamw_step(Tensor param, Tensor m, Tensor v, Tensor param_lowp, const Tensor& grad, const AdamWArgs& a, Stream s) {
  MONTA_DISPATCH(param, adamw_step, param, m, v, param_lowp, grad, a, s);
}
void adamw_step_many(std::span<const AdamWEntry> entries, const AdamWArgs& a, Stream s) {
  if (entries.empty()) return;
  for (const AdamWEntry& e : entries)
    MONTA_CHECK(e.param.device == entries[0].param.device, "adamw_step_many: entries on different devices");
  MONTA_DISPATCH(entries[0].param, adamw_step_many, entries, a, s);
}

}  // namespace monta::engine
