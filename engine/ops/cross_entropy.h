// Cross-entropy over a vocabulary shard, in three steps so a vocab-parallel LM head can all-reduce the
// row max and the sum of exponentials between them without ever gathering the logits. Target -1 = ignored.
#pragma once
#include "engine/ops/declare.h"

// logits_rowmax: rowmax (N) = max_v logits[n, v]; logits (N, V_local); stats dtype stat_dtype(logits).
// cross_entropy_partial: sumexp (N) = Σ_v exp(logits - rowmax); target_logit (N) = logits[n, t - vocab_begin] when t
// is in this shard, else 0. targets i32 (N).
// cross_entropy_finish: lse = rowmax + log(sumexp); losses (N) = lse - target_logit (0 where the target is ignored).
// cross_entropy_backward: dlogits (N, V_local) overwritten = scale · (exp(logits - lse) - onehot(target)); 0 rows
// for ignored targets.
#define MONTA_OPS_CROSS_ENTROPY(X)                                                                                  \
  X(logits_rowmax, logits, (Tensor rowmax, const Tensor& logits), (rowmax, logits))                                 \
  X(cross_entropy_partial, logits,                                                                                  \
    (Tensor sumexp, Tensor target_logit, const Tensor& logits, const Tensor& rowmax, const Tensor& targets,         \
     int64_t vocab_begin),                                                                                          \
    (sumexp, target_logit, logits, rowmax, targets, vocab_begin))                                                   \
  X(cross_entropy_finish, losses,                                                                                   \
    (Tensor losses, Tensor lse, const Tensor& sumexp, const Tensor& rowmax, const Tensor& target_logit,             \
     const Tensor& targets),                                                                                        \
    (losses, lse, sumexp, rowmax, target_logit, targets))                                                           \
  X(cross_entropy_backward, logits,                                                                                 \
    (Tensor dlogits, const Tensor& logits, const Tensor& targets, const Tensor& lse, int64_t vocab_begin,           \
     float scale),                                                                                                  \
    (dlogits, logits, targets, lse, vocab_begin, scale))

namespace monta::engine {
MONTA_DECLARE_OPS(MONTA_OPS_CROSS_ENTROPY)
}  // namespace monta::engine
