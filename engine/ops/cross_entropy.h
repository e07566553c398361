// Cross-entropy over a vocabulary shard, in three steps so a vocab-parallel LM head can all-reduce the
// row max and the sum of exponentials between them without ever gathering the logits. Target -1 = ignored.
#pragma once
#include "engine/tensor.h"

namespace monta::engine {
// rowmax (N) = max_v logits[n, v]; logits (N, V_local); stats dtype stat_dtype(logits).
void logits_rowmax(Tensor rowmax, const Tensor& logits, Stream s = nullptr);
// sumexp (N) = Σ_v exp(logits - rowmax); target_logit (N) = logits[n, t - vocab_begin] when t is in this
// shard, else 0. targets i32 (N).
void cross_entropy_partial(Tensor sumexp, Tensor target_logit, const Tensor& logits, const Tensor& rowmax,
                           const Tensor& targets, int64_t vocab_begin, Stream s = nullptr);
// lse = rowmax + log(sumexp); losses (N) = lse - target_logit (0 where the target is ignored).
void cross_entropy_finish(Tensor losses, Tensor lse, const Tensor& sumexp, const Tensor& rowmax,
                          const Tensor& target_logit, const Tensor& targets, Stream s = nullptr);
// dlogits (N, V_local) overwritten = scale · (exp(logits - lse) - onehot(target)); 0 rows for ignored targets.
void cross_entropy_backward(Tensor dlogits, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int64_t vocab_begin, float scale, Stream s = nullptr);
namespace cpu {
void logits_rowmax(Tensor rowmax, const Tensor& logits, Stream s);
void cross_entropy_partial(Tensor sumexp, Tensor target_logit, const Tensor& logits, const Tensor& rowmax,
                           const Tensor& targets, int64_t vocab_begin, Stream s);
void cross_entropy_finish(Tensor losses, Tensor lse, const Tensor& sumexp, const Tensor& rowmax,
                          const Tensor& target_logit, const Tensor& targets, Stream s);
void cross_entropy_backward(Tensor dlogits, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int64_t vocab_begin, float scale, Stream s);
}  // namespace cpu
namespace cuda {
void logits_rowmax(Tensor rowmax, const Tensor& logits, Stream s);
void cross_entropy_partial(Tensor sumexp, Tensor target_logit, const Tensor& logits, const Tensor& rowmax,
                           const Tensor& targets, int64_t vocab_begin, Stream s);
void cross_entropy_finish(Tensor losses, Tensor lse, const Tensor& sumexp, const Tensor& rowmax,
                          const Tensor& target_logit, const Tensor& targets, Stream s);
void cross_entropy_backward(Tensor dlogits, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int64_t vocab_begin, float scale, Stream s);
}  // namespace cuda
}  // namespace monta::engine
