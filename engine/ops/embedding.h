// Token embedding, vocabulary-parallel ready: this rank holds rows [vocab_begin, vocab_begin + V_local).
#pragma once
#include "engine/ops/declare.h"

// embedding_forward: out (N, H) = table[tokens[n] - vocab_begin] if the token is in this shard, else 0; tokens
// i32 (N). embedding_backward: dtable (V_local, H) += scatter of dout rows (parameter gradient: accumulates).
#define MONTA_OPS_EMBEDDING(X)                                                                                     \
  X(embedding_forward, out, (Tensor out, const Tensor& tokens, const Tensor& table, int64_t vocab_begin),          \
    (out, tokens, table, vocab_begin))                                                                             \
  X(embedding_backward, dtable, (Tensor dtable, const Tensor& dout, const Tensor& tokens, int64_t vocab_begin),    \
    (dtable, dout, tokens, vocab_begin))

namespace monta::engine {
MONTA_DECLARE_OPS(MONTA_OPS_EMBEDDING)
}  // namespace monta::engine
