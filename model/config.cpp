// Validation and size arithmetic for the run configuration.
#include "model/config.h"

#include <cmath>

#include "engine/check.h"
#include "engine/log.h"

namespace monta::model {

using engine::strf;

int64_t expert_capacity(const ModelConfig& m, int64_t tokens) {
  auto c = int64_t(std::ceil(m.capacity_factor * double(tokens) * double(m.top_k) / double(m.experts)));
  return std::max(c, m.min_capacity);
}

static void need(bool ok, const std::string& msg) { MONTA_USER_CHECK(ok, msg); }

void validate(const Config& c, int world) {
  const auto& m = c.model;
  need(m.vocab > 0 && m.hidden > 0 && m.layers > 0 && m.heads > 0 && m.kv_heads > 0 && m.ffn > 0 && m.experts > 0 &&
           m.top_k > 0 && m.seq_len > 0,
       "model sizes must be positive (vocab, hidden, layers, heads, kv_heads, ffn, experts, top_k, seq_len)");
  need(m.hidden % m.heads == 0, strf("model.hidden (%ld) must be divisible by model.heads (%ld)", m.hidden, m.heads));
  need(m.heads % m.kv_heads == 0,
       strf("model.heads (%ld) must be divisible by model.kv_heads (%ld) for grouped-query attention", m.heads, m.kv_heads));
  need(m.head_dim() % 2 == 0, strf("head dimension hidden/heads = %ld must be even for RoPE", m.head_dim()));
  need(m.top_k <= m.experts, strf("model.top_k (%ld) cannot exceed model.experts (%ld)", m.top_k, m.experts));
  need(m.capacity_factor > 0, strf("model.capacity_factor must be > 0 (got %g)", m.capacity_factor));
  need(m.min_capacity >= 0, "model.min_capacity must be >= 0");
  need(m.aux_loss_coef >= 0 && m.z_loss_coef >= 0, "model.aux_loss_coef and model.z_loss_coef must be >= 0");
  const auto& t = c.train;
  need(t.steps >= 0, "train.steps must be >= 0");
  need(t.micro_batch > 0 && t.global_batch > 0, "train.micro_batch and train.global_batch must be positive");
  need(t.lr > 0 && t.min_lr >= 0 && t.min_lr <= t.lr, strf("need 0 <= train.min_lr <= train.lr and lr > 0 (lr %g, min_lr %g)", t.lr, t.min_lr));
  need(t.beta1 >= 0 && t.beta1 < 1 && t.beta2 >= 0 && t.beta2 < 1, "train.beta1 and train.beta2 must be in [0, 1)");
  need(t.grad_clip >= 0, "train.grad_clip must be >= 0 (0 disables clipping)");
  need(t.device == "auto" || t.device == "cpu" || t.device == "cuda",
       "train.device must be auto, cpu or cuda (got '" + t.device + "')");
  need(!t.run_dir.empty(), "train.run_dir must not be empty");
  need(t.max_skipped > 0, "train.max_skipped must be positive");
  need(t.step_timeout_s >= 0, "train.step_timeout_s must be >= 0 (0 disables the stall watchdog)");
  need(t.peak_tflops > 0, "train.peak_tflops must be positive (the per-GPU peak MFU is measured against)");
  const auto& p = c.parallel;
  need(p.tp >= 1 && p.ep >= 1, "parallel.tp and parallel.ep must be >= 1");
  need(m.heads % p.tp == 0, strf("model.heads (%ld) must be divisible by parallel.tp (%d)", m.heads, p.tp));
  need(m.kv_heads % p.tp == 0, strf("model.kv_heads (%ld) must be divisible by parallel.tp (%d)", m.kv_heads, p.tp));
  need(m.vocab % p.tp == 0, strf("model.vocab (%ld) must be divisible by parallel.tp (%d) for the vocab-parallel embedding", m.vocab, p.tp));
  need(!p.expert_tp || m.ffn % p.tp == 0,
       strf("model.ffn (%ld) must be divisible by parallel.tp (%d) when parallel.expert_tp is on", m.ffn, p.tp));
  need(m.experts % p.ep == 0, strf("model.experts (%ld) must be divisible by parallel.ep (%d)", m.experts, p.ep));
  need(c.checkpoint.interval >= 0 && c.checkpoint.keep >= 1, "checkpoint.interval must be >= 0 and checkpoint.keep >= 1");
  need(c.comm.emulate_nodes >= 0, "comm.emulate_nodes must be >= 0");
  need(c.comm.chunks >= 1 && c.comm.chunks <= 64, strf("comm.chunks must be in [1, 64] (got %d)", c.comm.chunks));
  need(c.comm.exchange == "auto" || c.comm.exchange == "duplicate" || c.comm.exchange == "drop_gather" ||
           c.comm.exchange == "pipelined" || c.comm.exchange == "overlapped",
       "comm.exchange must be duplicate, drop_gather, pipelined, overlapped or auto (got '" + c.comm.exchange + "')");
  need(c.data.path != "builtin:markov" || c.data.builtin_tokens > m.seq_len,
       "data.builtin_tokens must exceed model.seq_len");
  if (world > 0) {
    need(world % p.tp == 0, strf("world size %d is not divisible by parallel.tp (%d)", world, p.tp));
    int dp = world / p.tp;
    need(dp % p.ep == 0, strf("data-parallel size %d (world %d / tp %d) is not divisible by parallel.ep (%d)", dp, world, p.tp, p.ep));
    need(t.global_batch % (t.micro_batch * dp) == 0,
         strf("train.global_batch (%ld) must be divisible by train.micro_batch (%ld) x data-parallel size (%d)",
              t.global_batch, t.micro_batch, dp));
  }
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

double train_flops_per_token(const ModelConfig& m) {
  double D = double(m.head_dim());
  double H = double(m.hidden);
  double attn_proj = 2.0 * H * (2.0 * double(m.heads) * D + 2.0 * double(m.kv_heads) * D);
  double attn_core = 2.0 * double(m.seq_len) * double(m.heads) * D;  // QKᵀ and PV, halved by the mask
  double moe = 2.0 * double(m.top_k) * 3.0 * H * double(m.ffn) + 2.0 * H * double(m.experts);
  double head = 2.0 * H * double(m.vocab);
  return 3.0 * (double(m.layers) * (attn_proj + attn_core + moe) + head);
}

}  // namespace monta::model
