// The shape vocabulary of STYLE.md rule 4, resolved for one rank: global sizes and this rank's local ones.
#pragma once
#include <cstdint>

#include "model/config.h"

namespace monta::model {

struct Shapes {
  int64_t B, S, H, A, G, D, F, E, K, C, N, V;  // batch (micro), sequence, hidden, heads, KV heads, head dim, FFN,
                                               // experts, top-k, capacity, tokens B·S, vocab
  int t, e, d;                                 // TP, EP, DP sizes
  int64_t A_l, G_l, F_l, E_l, V_l;             // local heads, KV heads, expert FFN width, experts, vocab rows
  int64_t EC;                                  // capacity slots of local experts after the exchange: e·C
  bool sp;                                     // sequence parallelism (parallel.sequence_parallel, t > 1)
  int64_t N_l;                                 // tokens of the sequence-parallel parts on this rank: N/t with sp, else N

  static Shapes make(const ModelConfig& m, int64_t micro_batch, int tp, int ep, int dp, bool expert_tp,
                     bool sequence_parallel = false) {
    Shapes s{};
    s.B = micro_batch;
    s.S = m.seq_len;
    s.H = m.hidden;
    s.A = m.heads;
    s.G = m.kv_heads;
    s.D = m.head_dim();
    s.F = m.ffn;
    s.E = m.experts;
    s.K = m.top_k;
    s.N = s.B * s.S;
    s.C = expert_capacity(m, s.N);
    s.V = m.vocab;
    s.t = tp;
    s.e = ep;
    s.d = dp;
    s.A_l = s.A / tp;
    s.G_l = s.G / tp;
    s.F_l = expert_tp ? s.F / tp : s.F;
    s.E_l = s.E / ep;
    s.V_l = s.V / tp;
    s.EC = int64_t(ep) * s.C;
    s.sp = sequence_parallel && tp > 1;
    s.N_l = s.sp ? s.N / tp : s.N;
    return s;
  }
};

}  // namespace monta::model
