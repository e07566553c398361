// Token embedding, vocabulary-parallel ready: this rank holds rows [vocab_begin, vocab_begin + V_local).
#pragma once
#include "engine/tensor.h"

namespace monta::engine {
// out (N, H) = table[tokens[n] - vocab_begin] if the token is in this shard, else 0. tokens i32 (N).
void embedding_forward(Tensor out, const Tensor& tokens, const Tensor& table, int64_t vocab_begin, Stream s = nullptr);
// dtable (V_local, H) += scatter of dout rows (parameter gradient: accumulates).
void embedding_backward(Tensor dtable, const Tensor& dout, const Tensor& tokens, int64_t vocab_begin, Stream s = nullptr);
namespace cpu {
void embedding_forward(Tensor out, const Tensor& tokens, const Tensor& table, int64_t vocab_begin, Stream s);
void embedding_backward(Tensor dtable, const Tensor& dout, const Tensor& tokens, int64_t vocab_begin, Stream s);
}  // namespace cpu
namespace cuda {
void embedding_forward(Tensor out, const Tensor& tokens, const Tensor& table, int64_t vocab_begin, Stream s);
void embedding_backward(Tensor dtable, const Tensor& dout, const Tensor& tokens, int64_t vocab_begin, Stream s);
}  // namespace cuda
}  // namespace monta::engine
