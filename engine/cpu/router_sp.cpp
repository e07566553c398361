// CPU capacity assignment under sequence parallelism (engine/ops/router_sp.h): per-(choice, expert) counts, and the
// local slots offset by the tokens of the other TP ranks that come before them in GShard's choice-major order.
#include <algorithm>
#include <cstdint>

#include "engine/cpu/check_args.h"
#include "engine/ops/router_sp.h"

namespace monta::engine::cpu {

void router_choice_counts(Tensor counts, const Tensor& expert_idx, Stream) {
  const char* op = "router_choice_counts";
  need(op, "counts", counts, DType::i32);
  need(op, "expert_idx", expert_idx, DType::i32);
  const int64_t N = expert_idx.dim(0), K = expert_idx.dim(1), E = counts.dim(1);
  int32_t* c = counts.as<int32_t>();
  std::fill(c, c + K * E, 0);
  const int32_t* idx = expert_idx.as<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) ++c[k * E + idx[n * K + k]];
}

// Slot of (n, k) with expert e on rank r, over all ranks: the choices before k of every rank, the k-th choices of
// ranks before r, then r's own k-th choices before n = local slot − r's choices before k.
void router_sp_slots(Tensor slot, Tensor counts, const Tensor& expert_idx, const Tensor& all_counts, int64_t tp_rank,
                     int64_t capacity, Stream) {
  const char* op = "router_sp_slots";
  need(op, "slot", slot, DType::i32);
  need(op, "counts", counts, DType::i32);
  need(op, "expert_idx", expert_idx, DType::i32);
  need(op, "all_counts", all_counts, DType::i32);
  const int64_t N = expert_idx.dim(0), K = expert_idx.dim(1), t = all_counts.dim(0), E = all_counts.dim(2);
  const int32_t* g = all_counts.as<int32_t>();
  auto at = [&](int64_t r, int64_t k, int64_t e) { return int64_t(g[(r * K + k) * E + e]); };
  const int32_t* idx = expert_idx.as<int32_t>();
  int32_t* sl = slot.as<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t e = idx[n * K + k];
      int64_t s = sl[n * K + k];
      for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t r = 0; r < t; ++r) s += r == tp_rank ? 0 : at(r, kk, e);
      for (int64_t r = 0; r < tp_rank; ++r) s += at(r, k, e);
      sl[n * K + k] = s < capacity ? int32_t(s) : -1;
    }
  int32_t* c = counts.as<int32_t>();
  for (int64_t e = 0; e < E; ++e) {
    int64_t total = 0;
    for (int64_t r = 0; r < t; ++r)
      for (int64_t k = 0; k < K; ++k) total += at(r, k, e);
    c[e] = int32_t(total);
  }
}

}  // namespace monta::engine::cpu
