// Validation and size arithmetic for the run configuration.
#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "comm/cost_model.h"
#include "comm/shard.h"
#include "engine/check.h"
#include "engine/fp8_math.h"
#include "engine/log.h"
#include "model/config_keys.h"

namespace monta::model {

using engine::strf;

Recompute recompute_mode(const TrainConfig& t) {
  if (t.recompute == "selective") return Recompute::selective;
  if (t.recompute == "full") return Recompute::full;
  MONTA_CHECK(t.recompute == "none", "train.recompute: unknown mode " + t.recompute);  // the key table refuses it first
  return Recompute::none;
}

int64_t expert_capacity(const ModelConfig& m, int64_t tokens) {
  return comm::capacity_of(tokens, m.top_k, m.experts, m.capacity_factor, m.min_capacity);
}

namespace {

// The first problem of a config as one sentence ("" when none): the key table's ranges, then the constraints
// between keys, then (world > 0) those of the world size.
struct Problems {
  std::string first;
  void need(bool ok, const std::string& msg) {
    if (!ok && first.empty()) first = msg;
  }
};

template <class T>
std::string value_text(const T& v) {
  if constexpr (std::is_same_v<T, std::string>) return "'" + v + "'";
  else if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
  else if constexpr (std::is_floating_point_v<T>) return strf("%g", double(v));
  else return std::to_string(v);
}

void check_ranges(const Config& c, Problems& p) {
  visit_config_keys(c, [&](const char* key, const auto& field, const char*, const KeyRange& r) {
    using T = std::decay_t<decltype(field)>;
    if constexpr (std::is_same_v<T, std::string>) {
      p.need(r.allows(field), strf("%s must be %s (got %s)", key, r.choices ? ("one of " + std::string(r.choices)).c_str()
                                                                            : r.describe().c_str(),
                                   value_text(field).c_str()));
    } else if constexpr (!std::is_same_v<T, bool>) {
      p.need(r.contains(double(field)), strf("%s must be in %s (got %s)", key, r.describe().c_str(), value_text(field).c_str()));
    }
  });
}

void check_model(const Config& c, Problems& p) {
  const auto& m = c.model;
  p.need(m.hidden % m.heads == 0, strf("model.hidden (%ld) must be divisible by model.heads (%ld)", m.hidden, m.heads));
  p.need(m.heads % m.kv_heads == 0,
         strf("model.heads (%ld) must be divisible by model.kv_heads (%ld) for grouped-query attention", m.heads, m.kv_heads));
  p.need(m.head_dim() % 2 == 0, strf("head dimension hidden/heads = %ld must be even for RoPE", m.head_dim()));
  p.need(m.top_k <= m.experts, strf("model.top_k (%ld) cannot exceed model.experts (%ld)", m.top_k, m.experts));
  p.need(!c.comm.dispatch_fp8() || engine::fp8::packed_row_bytes(m.hidden) < 2 * m.hidden,
         strf("comm.dispatch_dtype = fp8 needs model.hidden >= 8 (a packed FP8 row of %ld activations is no smaller than "
              "bf16)", m.hidden));
  // Sizes are counted in int64: keep every product far from overflow (1e15 parameters is beyond any machine).
  const double params = double(m.layers) * double(m.experts) * 3.0 * double(m.hidden) * double(m.ffn) +
                        2.0 * double(m.vocab) * double(m.hidden) + double(m.layers) * 4.0 * double(m.hidden) * double(m.hidden);
  p.need(params < 1e15, strf("the model would have %.3g parameters; sizes this large overflow the size arithmetic", params));
  const auto& t = c.train;
  p.need(t.min_lr <= t.lr, strf("train.min_lr (%g) must not exceed train.lr (%g)", t.min_lr, t.lr));
  // The CUDA FP8 GEMM wants 16 | rows; a dropless step capacity is a multiple of min(128, N/8) or N (model/dropless.h).
  p.need(!(m.dropless() && m.fp8_experts()) || (t.micro_batch * m.seq_len) % 128 == 0,
         strf("model.capacity_factor 0 (dropless) with model.fp8 = experts needs train.micro_batch x model.seq_len (%ld) "
              "to be a multiple of 128",
              long(t.micro_batch * m.seq_len)));
  p.need(double(t.micro_batch) * double(m.seq_len) < 2147483648.0,
         strf("train.micro_batch x model.seq_len = %.0f tokens per micro-batch exceeds 2^31", double(t.micro_batch) * double(m.seq_len)));
  p.need(t.global_batch >= t.micro_batch,
         strf("train.global_batch (%ld) must be at least train.micro_batch (%ld)", t.global_batch, t.micro_batch));
  p.need(c.data.valid_path.empty() || c.data.valid_fraction == 0,
         "data.valid_path and data.valid_fraction are both set; hold data out one way: a file or a fraction");
  if (c.data.path == "builtin:markov")
    p.need(c.data.builtin_tokens > m.seq_len, strf("data.builtin_tokens (%ld) must exceed model.seq_len (%ld) for the "
                                                   "built-in corpus", c.data.builtin_tokens, m.seq_len));
}

}  // namespace

std::string fp8_cuda_shape_problem(const Config& c, int tp, int ep, bool expert_tp) {
  const auto& m = c.model;
  if (!m.fp8_experts()) return "";
  Problems p;
  const int64_t F_l = expert_tp ? m.ffn / tp : m.ffn;
  p.need(m.hidden % 16 == 0 && F_l % 16 == 0,
         strf("model.fp8 = %s on a GPU needs model.hidden (%ld) and the expert FFN width per rank (%ld) to be "
              "multiples of 16 (cuBLASLt's FP8 GEMM)", m.fp8.c_str(), m.hidden, F_l));
  if (m.fp8_all()) {  // the attention projections: rows = the micro-batch's tokens, widths per TP rank
    const int64_t N = c.train.micro_batch * m.seq_len, q = m.heads / tp * m.head_dim(), kv = m.kv_heads / tp * m.head_dim();
    p.need(N % 16 == 0 && q % 16 == 0 && kv % 16 == 0,
           strf("model.fp8 = all on a GPU needs the tokens per micro-batch (%ld), and the Q (%ld) and K/V (%ld) "
                "projection widths per TP rank to be multiples of 16 (cuBLASLt's FP8 GEMM)",
                long(N), long(q), long(kv)));
  }
  if (!m.dropless()) {  // dropless: its step capacities are multiples of 128 (checked with the config)
    const int64_t C = expert_capacity(m, c.train.micro_batch * m.seq_len);
    const int n = ep > 1 && c.comm.exchange == "overlapped" ? int(std::min<int64_t>(c.comm.chunks, C)) : 1;
    for (int k = 0; k < n; ++k) {
      const int64_t rows = int64_t(ep) * comm::shard(C, n, k, false).size;
      p.need(rows % 16 == 0,
             strf("model.fp8 = experts on a GPU: an expert GEMM would process %ld rows (ep %d x capacity %ld%s), not a "
                  "multiple of 16 (cuBLASLt's FP8 GEMM); change model.capacity_factor or model.min_capacity%s",
                  rows, ep, n > 1 ? comm::shard(C, n, k, false).size : C, n > 1 ? strf(", overlapped chunk %d", k).c_str() : "",
                  n > 1 ? " or comm.chunks" : ""));
      if (!p.first.empty()) break;
    }
  }
  return p.first;
}

std::string layout_problem(const Config& c, int tp, int ep, bool expert_tp, int world) {
  const auto& m = c.model;
  Problems p;
  p.need(tp >= 1 && ep >= 1, "parallel.tp and parallel.ep must be >= 1");
  if (!p.first.empty()) return p.first;
  p.need(m.heads % tp == 0, strf("model.heads (%ld) must be divisible by parallel.tp (%d)", m.heads, tp));
  p.need(m.kv_heads % tp == 0, strf("model.kv_heads (%ld) must be divisible by parallel.tp (%d)", m.kv_heads, tp));
  p.need(m.vocab % tp == 0, strf("model.vocab (%ld) must be divisible by parallel.tp (%d) for the vocab-parallel embedding", m.vocab, tp));
  p.need(!expert_tp || m.ffn % tp == 0,
         strf("model.ffn (%ld) must be divisible by parallel.tp (%d) when parallel.expert_tp is on", m.ffn, tp));
  p.need(m.experts % ep == 0, strf("model.experts (%ld) must be divisible by parallel.ep (%d)", m.experts, ep));
  if (c.parallel.sequence_parallel) {
    p.need(tp > 1, "parallel.sequence_parallel needs parallel.tp > 1 (it splits the tokens over the TP group)");
    p.need(c.train.micro_batch * m.seq_len % tp == 0,
           strf("parallel.sequence_parallel: train.micro_batch x model.seq_len (%ld tokens) must be divisible by "
                "parallel.tp (%d)", c.train.micro_batch * m.seq_len, tp));
  }
  if (world > 0) {
    const auto& t = c.train;
    p.need(world % tp == 0, strf("world size %d is not divisible by parallel.tp (%d)", world, tp));
    if (!p.first.empty()) return p.first;
    int dp = world / tp;
    p.need(dp % ep == 0, strf("data-parallel size %d (world %d / tp %d) is not divisible by parallel.ep (%d)", dp, world, tp, ep));
    p.need(t.global_batch % (t.micro_batch * dp) == 0,
           strf("train.global_batch (%ld) must be divisible by train.micro_batch (%ld) x data-parallel size (%d)",
                t.global_batch, t.micro_batch, dp));
  }
  return p.first;
}

std::string config_problem(const Config& c, int world) {
  Problems p;
  check_ranges(c, p);
  if (!p.first.empty()) return p.first;  // the checks below divide by sizes the ranges keep positive
  check_model(c, p);
  if (!p.first.empty()) return p.first;
  // Not a layout rule: the planner picks the strategy itself (and never duplicate under sequence parallelism).
  p.need(!c.parallel.sequence_parallel || c.parallel.ep == 1 || c.comm.exchange != "duplicate",
         "comm.exchange duplicate has no meaning with parallel.sequence_parallel (no token is duplicated over TP); "
         "use drop_gather, pipelined, overlapped or auto");
  // Under SP each TP rank's dispatch buffer holds its own tokens and the exchange sums the parts over TP (zeros
  // elsewhere): a sum of packed FP8 bytes read as activations would not keep them (-0 + 0, NaN payloads).
  p.need(!c.parallel.sequence_parallel || !c.comm.dispatch_fp8(),
         "comm.dispatch_dtype = fp8 is not supported with parallel.sequence_parallel yet (the exchange sums each TP "
         "rank's part of the dispatch buffer, which packed FP8 rows do not survive); use comm.dispatch_dtype = bf16");
  if (!p.first.empty()) return p.first;
  return layout_problem(c, c.parallel.tp, c.parallel.ep, c.parallel.expert_tp, world);
}

void validate(const Config& c, int world) {
  const std::string problem = config_problem(c, world);
  MONTA_USER_CHECK(problem.empty(), problem);
}

ModelSize model_size(const ModelConfig& m) {
  ModelSize s;
  int64_t D = m.head_dim();
  int64_t attn = m.hidden * m.heads * D * 2 + m.hidden * m.kv_heads * D * 2;
  int64_t expert = 3 * m.hidden * m.ffn;
  int64_t per_layer_dense = attn + 2 * m.hidden + m.experts * m.hidden;  // + norms + router
  s.embedding = 2 * m.vocab * m.hidden;
  s.expert = m.layers * m.experts * expert;
  s.total = s.embedding + m.layers * per_layer_dense + s.expert + m.hidden;
  s.active_per_token = s.embedding / 2 + m.layers * (per_layer_dense + m.top_k * expert) + m.hidden;
  return s;
}

namespace {
// One decoder layer's forward FLOPs per token, by part.
struct LayerFlops {
  double attn_proj, attn_core, experts, router;
};
LayerFlops layer_forward_flops(const ModelConfig& m, double expert_rows) {
  const double D = double(m.head_dim()), H = double(m.hidden);
  const double rows = expert_rows < 0 ? double(m.top_k) : expert_rows;
  return {2.0 * H * (2.0 * double(m.heads) * D + 2.0 * double(m.kv_heads) * D),
          2.0 * double(m.seq_len) * double(m.heads) * D,  // QKᵀ and PV, halved by the mask
          2.0 * rows * 3.0 * H * double(m.ffn), 2.0 * H * double(m.experts)};
}
}  // namespace

double layer_train_flops_per_token(const ModelConfig& m, FlopCount count, double expert_rows) {
  const LayerFlops f = layer_forward_flops(m, expert_rows);
  const double gemms = f.attn_proj + f.experts + f.router;
  if (count == FlopCount::forward) return gemms + f.attn_core;
  const double attn_factor = count == FlopCount::model ? 3.0 : 3.5;
  return 3.0 * gemms + attn_factor * f.attn_core;
}

double fp8_train_flops_per_token(const ModelConfig& m, FlopCount count) {
  if (!m.fp8_experts()) return 0;
  const LayerFlops f = layer_forward_flops(m, -1);
  const double fp8 = f.experts + (m.fp8_all() ? f.attn_proj : 0.0);
  return double(m.layers) * (count == FlopCount::forward ? 1.0 : 3.0) * fp8;
}

double train_flops_per_token(const ModelConfig& m, FlopCount count) {
  const double head = 2.0 * double(m.hidden) * double(m.vocab);
  return double(m.layers) * layer_train_flops_per_token(m, count) + (count == FlopCount::forward ? 1.0 : 3.0) * head;
}

}  // namespace monta::model
