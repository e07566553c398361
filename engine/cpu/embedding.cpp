// CPU token embedding, vocabulary-parallel: a rank holds rows [vocab_begin, vocab_begin + V_local) of the
// table; tokens outside its shard read zeros (the TP all-reduce adds the owner's row) and get no gradient.
#include <algorithm>
#include <cstdint>
#include <string>

#include "engine/check.h"
#include "engine/ops/embedding.h"

namespace monta::engine::cpu {
namespace {

void check_args(const char* op, const Tensor& act, const Tensor& tokens, const Tensor& table) {
  MONTA_CHECK(act.device == Device::cpu && tokens.device == Device::cpu && table.device == Device::cpu,
              std::string(op) + ": all tensors must be on the CPU (" + act.str() + ", " + tokens.str() + ", " +
                  table.str() + ")");
  MONTA_CHECK(tokens.dtype == DType::i32, std::string(op) + ": tokens must be i32, got " + tokens.str());
  MONTA_CHECK(act.dtype == table.dtype && (act.dtype == DType::f32 || act.dtype == DType::f64),
              std::string(op) + ": activations and table must share a dtype f32 or f64, got " + act.str() + " and " +
                  table.str());
}

template <class T> void embed_fwd(Tensor out, const Tensor& tokens, const Tensor& table, int64_t vocab_begin) {
  const int64_t N = out.dim(0), H = out.dim(1), V = table.dim(0);
  const int32_t* tok = tokens.as<int32_t>();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t r = int64_t(tok[n]) - vocab_begin;
    T* o = out.as<T>() + n * H;
    if (r >= 0 && r < V)
      std::copy(table.as<T>() + r * H, table.as<T>() + (r + 1) * H, o);
    else
      std::fill(o, o + H, T(0));
  }
}

template <class T> void embed_bwd(Tensor dtable, const Tensor& dout, const Tensor& tokens, int64_t vocab_begin) {
  const int64_t N = dout.dim(0), H = dout.dim(1), V = dtable.dim(0);
  const int32_t* tok = tokens.as<int32_t>();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t r = int64_t(tok[n]) - vocab_begin;
    if (r < 0 || r >= V) continue;
    T* d = dtable.as<T>() + r * H;
    const T* g = dout.as<T>() + n * H;
    for (int64_t h = 0; h < H; ++h) d[h] += g[h];
  }
}

}  // namespace

void embedding_forward(Tensor out, const Tensor& tokens, const Tensor& table, int64_t vocab_begin, Stream) {
  check_args("embedding_forward", out, tokens, table);
  if (out.dtype == DType::f32)
    embed_fwd<float>(out, tokens, table, vocab_begin);
  else
    embed_fwd<double>(out, tokens, table, vocab_begin);
}

void embedding_backward(Tensor dtable, const Tensor& dout, const Tensor& tokens, int64_t vocab_begin, Stream) {
  check_args("embedding_backward", dout, tokens, dtable);
  if (dout.dtype == DType::f32)
    embed_bwd<float>(dtable, dout, tokens, vocab_begin);
  else
    embed_bwd<double>(dtable, dout, tokens, vocab_begin);
}

}  // namespace monta::engine::cpu
