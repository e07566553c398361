// Unit tests of the cost model (volumes and times hand-computed), the planner (feasibility, the pick, determinism)
// and the calibration fit (recovers α and β from synthetic timings) plus the link-model cache text.
#include <gtest/gtest.h>

#include "comm/calibrate.h"
#include "comm/cost_model.h"
#include "comm/fp8_dispatch.h"
#include "comm/planner.h"
#include "comm/topology.h"
#include "engine/check.h"

namespace monta::comm {
namespace {

// tp 2 x ep 2, each EP pair across two nodes and each TP pair on one: the placement the by-hand tests price.
GroupPlacement tp2_ep2_across_nodes() {
  GroupPlacement g;
  g.t = 2;
  g.e = 2;
  g.ep_peers_inter = 1;
  return g;
}

// (test_comm.cpp installs the throwing error handler for the whole test_comm binary.)
Cluster a800() { return {"a800", 2, 8, 200, 5, 12.5, 10, 80, 156}; }

TEST(CostModel, CapacityAndVolumeByHand) {
  // 2x70B: N = 8192, K = 1, E = 2, cf 1: C = 4096; X = 2·4096·8192·2 B = 134217728.
  ExchangeVolume v{1, 8192, 8192, 1, 2, 4, 1.0, 2};
  EXPECT_EQ(v.capacity(), 4096);
  EXPECT_DOUBLE_EQ(v.dispatch_bytes(), 134217728.0);
  EXPECT_EQ(capacity_of(10, 2, 4, 1.25, 0), 7);  // ceil(1.25·10·2/4) = ceil(6.25)
  EXPECT_EQ(capacity_of(10, 2, 4, 1.25, 9), 9);  // min capacity wins
}

// Dropless (capacity factor 0): buffers for the worst case N; time priced at the expected largest load over the EP
// group. 2x70B, ep 2: μ = 4096, σ = sqrt(4096·(1 − 1/2)) = 45.25, sqrt(2·ln 4) = 1.665: 4096 + 75.35 -> 4172.
TEST(CostModel, DroplessPricedAtTheExpectedLargestLoad) {
  EXPECT_EQ(capacity_of(8192, 1, 2, 0.0, 4), 8192);  // the buffers: every token to one expert
  ExchangeVolume v{1, 8192, 8192, 1, 2, 4, 0.0, 2, 2};
  EXPECT_EQ(v.capacity(), 4172);
  EXPECT_EQ(dropless_expected_capacity(8192, 1, 2, 2), 4172);
  // More loads in the group, a larger expected maximum; a skew multiplies the mean; never above N.
  EXPECT_GT(dropless_expected_capacity(8192, 1, 2, 8), 4172);
  EXPECT_EQ(dropless_expected_capacity(8192, 1, 2, 2, 1.5), 6220);  // 6144 + 75.35
  EXPECT_EQ(dropless_expected_capacity(8192, 1, 2, 2, 3.0), 8192);
}

TEST(CostModel, PlacementOfGroups) {
  const GroupPlacement g = place_groups(a800(), 8, 2);  // EP pairs rank r with r+8: other node
  EXPECT_EQ(g.ep_peers_inter, 1);
  EXPECT_EQ(g.ep_peers_intra, 0);
  EXPECT_FALSE(g.tp_spans_nodes);
  EXPECT_DOUBLE_EQ(g.ep_cross_fraction, 1.0);
  const GroupPlacement h = place_groups(a800(), 2, 4);  // ranks r, r+2, r+4, r+6: one node
  EXPECT_EQ(h.ep_peers_inter, 0);
  EXPECT_EQ(h.ep_peers_intra, 3);
  const GroupPlacement k = place_groups(a800(), 2, 8);  // r + 2i, i < 8: 4 on each node
  EXPECT_EQ(k.ep_peers_inter, 4);
  EXPECT_EQ(k.ep_peers_intra, 3);
  EXPECT_TRUE(place_groups(a800(), 16, 1).tp_spans_nodes);
}

// The one placement rule that `bench exchange`, `auto` and the planner share: one rank's view, and the slower of two.
TEST(CostModel, RankPlacementAndTheSlowerOfTwo) {
  const Topology t = emulated_topology(0, 8, 2, "h");  // nodes {0..3} and {4..7}
  const GroupPlacement a = rank_placement(t, 5, {4, 5}, {1, 3, 5, 7});
  EXPECT_EQ(a.t, 2);
  EXPECT_EQ(a.e, 4);
  EXPECT_EQ(a.ep_peers_inter, 2);  // 1 and 3
  EXPECT_EQ(a.ep_peers_intra, 1);  // 7
  EXPECT_FALSE(a.tp_spans_nodes);
  EXPECT_DOUBLE_EQ(a.ep_cross_fraction, 2.0 / 3.0);
  const GroupPlacement b = rank_placement(t, 4, {3, 4}, {4, 5, 6, 7});
  EXPECT_EQ(b.ep_peers_inter, 0);
  EXPECT_TRUE(b.tp_spans_nodes);
  const GroupPlacement w = slower_placement(b, a);
  EXPECT_EQ(w.ep_peers_inter, 2);
  EXPECT_EQ(w.ep_peers_intra, 1);
  EXPECT_TRUE(w.tp_spans_nodes);  // from b
  EXPECT_EQ(slower_placement(a, b).ep_peers_inter, 2);
}

TEST(CostModel, CollectiveTimesByHand) {
  LinkModel l{{1e-6, 1e-9}, {1e-5, 1e-8}};
  // all-to-all of M = 800 over 4 ranks, 1 intra + 2 inter peers: max(1e-6 + 200e-9, 1e-5 + 400e-8).
  EXPECT_DOUBLE_EQ(all_to_all_time(l, 800, 1, 2), 1e-5 + 400e-8);
  EXPECT_DOUBLE_EQ(all_to_all_time(l, 800, 3, 0), 1e-6 + 600e-9);
  EXPECT_DOUBLE_EQ(all_gather_time(l, 800, 4, false), 3e-6 + 600e-9);
  EXPECT_DOUBLE_EQ(all_reduce_time(l, 800, 4, true), 6e-5 + 1200e-8);
  EXPECT_EQ(all_to_all_time(l, 800, 0, 0), 0.0);
}

TEST(CostModel, StrategiesByHand) {
  LinkModel l{{0, 1e-9}, {0, 1e-8}};  // no latency: pure volumes
  GroupPlacement g = tp2_ep2_across_nodes();
  // E 2, C 8, H 10, 2 B: X = 320 B. duplicate: 160 B inter.
  const auto d = predict_exchange_shape(ExchangeKind::duplicate, 1, 2, 8, 10, 2, g, l);
  EXPECT_DOUBLE_EQ(d.inter_bytes, 160);
  EXPECT_DOUBLE_EQ(d.total, 160e-8);
  // drop_gather: a2a of M = 160 (half the slots): 80 B inter = 80e-8 s; all-gather of 320: 160 B intra = 160e-9.
  const auto dg = predict_exchange_shape(ExchangeKind::drop_gather, 1, 2, 8, 10, 2, g, l);
  EXPECT_DOUBLE_EQ(dg.inter_bytes, 80);
  EXPECT_DOUBLE_EQ(dg.tp_bytes, 160);
  EXPECT_DOUBLE_EQ(dg.total, 80e-8 + 160e-9);
  // pipelined 4: chunks of 2 slots, 1 per TP rank: A = 20e-8, G = 40e-9; total = A + 3·max(A, G) + G.
  const auto p = predict_exchange_shape(ExchangeKind::pipelined, 4, 2, 8, 10, 2, g, l);
  EXPECT_DOUBLE_EQ(p.total, 20e-8 + 3 * 20e-8 + 40e-9);
  const auto p1 = predict_exchange_shape(ExchangeKind::pipelined, 1, 2, 8, 10, 2, g, l);
  EXPECT_DOUBLE_EQ(p1.total, dg.total);
  // Contention: EP peer on the same node: the all-gather shares NVLink with the all-to-all.
  g.ep_peers_inter = 0;
  g.ep_peers_intra = 1;
  const auto c = predict_exchange_shape(ExchangeKind::pipelined, 4, 2, 8, 10, 2, g, l);
  EXPECT_DOUBLE_EQ(c.total, 20e-9 + 3 * (20e-9 + 40e-9) + 40e-9);
}

// Sequence parallelism: each dispatch reduce-scatters the TP parts into the capacity slices first, as many bytes as
// the all-gather (t blocks of the chunk's padded slice); nothing for t = 1 or for duplicate (refused under SP).
TEST(CostModel, SequenceParallelDispatchAddsItsReduceScatter) {
  LinkModel l{{1e-6, 1e-9}, {1e-5, 1e-8}};
  GroupPlacement g = tp2_ep2_across_nodes();
  // E 2, C 8, H 10, 2 B, drop_gather: the reduce-scatter of 320 B over 2 ranks = alpha + 160 B intra.
  EXPECT_DOUBLE_EQ(sp_dispatch_reduce_scatter_time(ExchangeKind::drop_gather, 1, 2, 8, 10, 2, g, l), 1e-6 + 160e-9);
  EXPECT_DOUBLE_EQ(sp_dispatch_reduce_scatter_time(ExchangeKind::drop_gather, 1, 2, 8, 10, 2, g, l),
                   predict_exchange_shape(ExchangeKind::drop_gather, 1, 2, 8, 10, 2, g, l).ag);
  // pipelined 4: chunks of 2 slots, 1 per rank: four reduce-scatters of 80 B, 40 B each over the link.
  EXPECT_DOUBLE_EQ(sp_dispatch_reduce_scatter_time(ExchangeKind::pipelined, 4, 2, 8, 10, 2, g, l), 4 * (1e-6 + 40e-9));
  EXPECT_EQ(sp_dispatch_reduce_scatter_time(ExchangeKind::duplicate, 1, 2, 8, 10, 2, g, l), 0.0);
  g.t = 1;
  EXPECT_EQ(sp_dispatch_reduce_scatter_time(ExchangeKind::drop_gather, 1, 2, 8, 10, 2, g, l), 0.0);
}

// A measured back-to-back latency (alpha_next) prices the later chunks; the first still pays alpha, and one
// chunk (drop_gather) or no measurement (alpha_next < 0) leave the prediction as it was.
TEST(CostModel, LaterChunksPayTheBackToBackLatency) {
  LinkModel l{{1e-6, 1e-9}, {3e-3, 1e-8}};
  GroupPlacement g = tp2_ep2_across_nodes();
  const auto base = predict_exchange_shape(ExchangeKind::pipelined, 4, 2, 8, 10, 2, g, l);
  const auto dg0 = predict_exchange_shape(ExchangeKind::drop_gather, 1, 2, 8, 10, 2, g, l);
  // As in StrategiesByHand plus latencies: A = 3e-3 + 20e-8, G = 1e-6 + 40e-9 (t = 2: one ring step).
  const double A = 3e-3 + 20e-8, G = 1e-6 + 40e-9;
  EXPECT_DOUBLE_EQ(base.total, A + 3 * A + G);
  l.inter.alpha_next = 2e-3;
  l.intra.alpha_next = 0.5e-6;
  const double An = 2e-3 + 20e-8, Gn = 0.5e-6 + 40e-9;
  const auto p = predict_exchange_shape(ExchangeKind::pipelined, 4, 2, 8, 10, 2, g, l);
  EXPECT_DOUBLE_EQ(p.total, A + 3 * An + Gn);
  EXPECT_DOUBLE_EQ(p.a2a, A + 3 * An);
  EXPECT_DOUBLE_EQ(p.chunk_a2a, A);
  EXPECT_DOUBLE_EQ(p.next_a2a, An);
  EXPECT_DOUBLE_EQ(predict_exchange_shape(ExchangeKind::drop_gather, 1, 2, 8, 10, 2, g, l).total, dg0.total);
  // overlapped, communication-bound: fill (first chunk) + x + 3·2·stage(later) + drain (a later chunk).
  EXPECT_DOUBLE_EQ(predict_moe_block(ExchangeKind::overlapped, 4, 2, 8, 10, 2, g, l, 4e-8),
                   (A + G) + 1e-8 + 3 * 2 * An + (An + Gn));
}

TEST(CostModel, OverlappedBlockByHand) {
  LinkModel l{{0, 1e-9}, {0, 1e-8}};
  GroupPlacement g = tp2_ep2_across_nodes();
  // As above, 4 chunks: A = 20e-8, G = 40e-9, stage = max(A_intra + G, A_inter) = 20e-8 (TP intra-node).
  const double A = 20e-8, G = 40e-9, stage = 20e-8;
  const auto dg = predict_exchange_shape(ExchangeKind::drop_gather, 1, 2, 8, 10, 2, g, l);
  const auto pl = predict_exchange_shape(ExchangeKind::pipelined, 4, 2, 8, 10, 2, g, l);
  // Sequential strategies: 2 calls + X.
  EXPECT_DOUBLE_EQ(predict_moe_block(ExchangeKind::pipelined, 4, 2, 8, 10, 2, g, l, 1e-6), 2 * pl.total + 1e-6);
  // One chunk: drop_gather in sequence.
  EXPECT_DOUBLE_EQ(predict_moe_block(ExchangeKind::overlapped, 1, 2, 8, 10, 2, g, l, 1e-6), 2 * dg.total + 1e-6);
  // Compute-bound (x = 1e-6 > 2·stage): (A+G) + x + 3x + (A+G) = X + 2(A+G).
  EXPECT_DOUBLE_EQ(predict_moe_block(ExchangeKind::overlapped, 4, 2, 8, 10, 2, g, l, 4e-6), 2 * (A + G) + 4e-6);
  // Communication-bound (x = 1e-8): (A+G) + x + 3·2·stage + (A+G).
  EXPECT_DOUBLE_EQ(predict_moe_block(ExchangeKind::overlapped, 4, 2, 8, 10, 2, g, l, 4e-8),
                   2 * (A + G) + 1e-8 + 3 * 2 * stage);
  // Either way it beats pipelined in sequence, which it reduces to when nothing is to hide.
  for (double X : {4e-8, 4e-7, 4e-6})
    EXPECT_LT(predict_moe_block(ExchangeKind::overlapped, 4, 2, 8, 10, 2, g, l, X),
              predict_moe_block(ExchangeKind::pipelined, 4, 2, 8, 10, 2, g, l, X));
}

// FP8 dispatch: H + 4·H/128 bytes a token instead of 2H (≈ 0.52 at 2x70B's H = 8192), priced per direction.
TEST(CostModel, Fp8DispatchPricesTheNarrowerRows) {
  EXPECT_EQ(dispatch_row_bytes(8192, engine::DType::bf16, false), 2 * 8192);
  EXPECT_EQ(dispatch_row_bytes(8192, engine::DType::bf16, true), 8192 + 4 * 64);
  EXPECT_NEAR(double(dispatch_row_bytes(8192, engine::DType::bf16, true)) / (2 * 8192), 0.5156, 1e-4);
  EXPECT_EQ(fp8_dispatch_width(300, engine::DType::bf16), (300 + 12) / 2);  // 3 scales after 300 codes
  EXPECT_EQ(fp8_dispatch_width(301, engine::DType::f32), (304 + 12) / 4);   // codes padded to 4 bytes
  LinkModel l{{0, 1e-9}, {0, 1e-8}};
  GroupPlacement g = tp2_ep2_across_nodes();
  // Without latency every time scales with the bytes: a dispatch of half-width rows costs half.
  const double A = 20e-8, G = 40e-9, stage = 20e-8;  // OverlappedBlockByHand's H = 10 numbers
  const auto half = predict_exchange_shape(ExchangeKind::pipelined, 4, 2, 8, 5, 2, g, l);
  const auto full = predict_exchange_shape(ExchangeKind::pipelined, 4, 2, 8, 10, 2, g, l);
  EXPECT_DOUBLE_EQ(half.ep_bytes * 2, full.ep_bytes);
  EXPECT_DOUBLE_EQ(half.tp_bytes * 2, full.tp_bytes);
  EXPECT_DOUBLE_EQ(predict_moe_block_rows(ExchangeKind::pipelined, 4, 2, 8, 5, 10, 2, g, l, 1e-6),
                   half.total + full.total + 1e-6);
  EXPECT_DOUBLE_EQ(predict_moe_block_rows(ExchangeKind::pipelined, 4, 2, 8, 10, 10, 2, g, l, 1e-6),
                   predict_moe_block(ExchangeKind::pipelined, 4, 2, 8, 10, 2, g, l, 1e-6));
  // overlapped, communication-bound: the dispatch's fill at half, 3 stages of half + full, the combine's drain.
  EXPECT_DOUBLE_EQ(predict_moe_block_rows(ExchangeKind::overlapped, 4, 2, 8, 5, 10, 2, g, l, 4e-8),
                   (A + G) / 2 + 1e-8 + 3 * (stage / 2 + stage) + (A + G));
}

PlanModel small_model() {
  PlanModel m;
  m.vocab = 32000; m.hidden = 8192; m.layers = 4; m.heads = 64; m.kv_heads = 8; m.ffn = 28672;
  m.experts = 2; m.top_k = 1; m.seq_len = 4096; m.capacity_factor = 1.0; m.min_capacity = 4;
  m.micro_batch = 1; m.global_batch = 16; m.flops_per_token = 1e9;
  // A stand-in for model::rank_footprint (comm's tests may not use model/): 18 bytes per parameter, no activations.
  m.footprint = [m](int tp, int ep, bool expert_tp, int) {
    const double H = double(m.hidden), L = double(m.layers);
    const double dense = L * 4.0 * H * H / tp + 2.0 * double(m.vocab) * H / tp;
    const double experts = L * double(m.experts / ep) * 3.0 * H * double(m.ffn) / (expert_tp ? tp : 1);
    return PlanModel::Footprint{dense, experts, 18.0 * (dense + experts)};
  };
  return m;
}

TEST(Planner, FeasibilityPickAndDeterminism) {
  const Plan p = make_plan(a800(), small_model());
  ASSERT_FALSE(p.rows.empty());
  ASSERT_EQ(p.best, 0);
  double best = 1e300;
  for (const PlanRow& r : p.rows) {
    EXPECT_EQ(r.fits, r.mem_gib * double(1ull << 30) <= 80.0 * double(1ull << 30) && r.why_not.empty());
    if (r.fits) best = std::min(best, r.step_s);
    EXPECT_EQ(r.tp * r.dp, 16);
  }
  EXPECT_DOUBLE_EQ(p.rows[0].step_s, best);  // the cluster gives a TFLOP/s: ranked by predicted step time
  // Without a compute rate, by communication.
  Cluster no_rate = a800();
  no_rate.gpu_tflops = 0;
  const Plan pc = make_plan(no_rate, small_model());
  double least = 1e300;
  for (const PlanRow& r : pc.rows)
    if (r.fits) least = std::min(least, r.comm_s);
  EXPECT_DOUBLE_EQ(pc.rows[0].comm_s, least);
  const Plan q = make_plan(a800(), small_model());
  EXPECT_EQ(format_plan(p), format_plan(q));
  // A 1 GiB GPU holds nothing.
  Cluster tiny = a800();
  tiny.gpu_mem_gib = 1;
  EXPECT_EQ(make_plan(tiny, small_model()).best, -1);
}

// The planner takes memory from the footprint it is given (the model's own arithmetic in `monta plan`): a layout fits
// exactly when that footprint fits, and the parameter column is its dense + expert count.
TEST(Planner, MemoryComesFromTheFootprint) {
  PlanModel m = small_model();
  m.footprint = [](int tp, int, bool, int) { return PlanModel::Footprint{1e9 / tp, 1e9 / tp, 60e9 / tp}; };
  const Plan p = make_plan(a800(), m);  // 80 GiB GPUs: tp 1 (60 GB) fits, every tp fits
  for (const PlanRow& r : p.rows) {
    EXPECT_DOUBLE_EQ(r.params_per_gpu, 2e9 / r.tp);
    EXPECT_DOUBLE_EQ(r.mem_gib, 60e9 / r.tp / double(1ull << 30));
    EXPECT_TRUE(r.fits);
  }
  m.footprint = [](int tp, int, bool, int) { return PlanModel::Footprint{1e9, 1e9, tp >= 4 ? 1e9 : 1e12}; };
  for (const PlanRow& r : make_plan(a800(), m).rows) EXPECT_EQ(r.fits, r.tp >= 4) << "tp " << r.tp;
}

// Full recompute prices its extra forward: the compute grows by exactly its FLOPs, every non-overlapped exchange by
// the forward's two calls on top of four (x 6/4), the TP all-reduces by one call on top of two (x 3/2).
TEST(Planner, FullRecomputeAddsOneForwardOfComputeExchangeAndTp) {
  const PlanModel m = small_model();
  PlanModel r = m;
  r.recompute_flops_per_token = 0.25e9;
  const Plan a = make_plan(a800(), m), b = make_plan(a800(), r);
  ASSERT_EQ(a.rows.size(), b.rows.size());
  auto find = [](const Plan& p, const PlanRow& like) {
    for (const PlanRow& x : p.rows)
      if (x.tp == like.tp && x.ep == like.ep && x.expert_tp == like.expert_tp && x.strategy == like.strategy &&
          x.chunks == like.chunks)
        return x;
    ADD_FAILURE() << "row missing";
    return PlanRow{};
  };
  int checked = 0;
  for (const PlanRow& x : a.rows) {
    if (!x.expert_tp || x.ep == 1 || x.strategy == ExchangeKind::overlapped) continue;
    const PlanRow y = find(b, x);
    EXPECT_NEAR(y.compute_s, x.compute_s * 1.25, 1e-12 * x.compute_s);
    EXPECT_NEAR(y.exchange_s, x.exchange_s * 1.5, 1e-9 * x.exchange_s);
    EXPECT_NEAR(y.tp_s, x.tp_s * 1.5, 1e-9 * x.tp_s + 1e-15);
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

// model.fp8: the FP8 GEMMs' FLOPs go at the cluster's FP8 rate, the rest at bf16's (expert-TP on: no repeats), and
// overlapped's experts run at the FP8 rate too (they hide less of the exchange); no FP8 rate: nothing changes.
TEST(Planner, Fp8GemmsArePricedAtTheFp8Rate) {
  const PlanModel m = small_model();
  PlanModel f = m;
  f.fp8_flops_per_token = 0.6e9;
  Cluster c = a800();
  const Plan plain = make_plan(c, m), same = make_plan(c, f);
  c.gpu_fp8_tflops = 2 * c.gpu_tflops;
  const Plan fast = make_plan(c, f);
  ASSERT_EQ(plain.rows.size(), fast.rows.size());
  int checked = 0, hid_less = 0;
  for (size_t i = 0; i < plain.rows.size(); ++i) {
    const PlanRow &x = plain.rows[i], &y = same.rows[i];
    EXPECT_DOUBLE_EQ(y.compute_s, x.compute_s);  // no FP8 rate given
    EXPECT_DOUBLE_EQ(y.exchange_s, x.exchange_s);
  }
  for (const PlanRow& x : plain.rows)
    for (const PlanRow& y : fast.rows) {
      if (!(y.tp == x.tp && y.ep == x.ep && y.expert_tp == x.expert_tp && y.strategy == x.strategy &&
            y.chunks == x.chunks))
        continue;
      if (x.expert_tp || x.tp == 1) {
        EXPECT_NEAR(y.compute_s, x.compute_s * (0.4 + 0.6 / 2), 1e-12 * x.compute_s);
        ++checked;
      }
      if (x.strategy == ExchangeKind::overlapped && x.ep > 1) hid_less += y.exchange_s > x.exchange_s;
      else EXPECT_DOUBLE_EQ(y.exchange_s, x.exchange_s);
    }
  EXPECT_GT(checked, 0);
  EXPECT_GT(hid_less, 0);
}

// Sequence parallelism: no duplicate row where there is an exchange (ep 1 keeps its one row), and every layout with
// tp > 1 pays more communication (the dispatch's reduce-scatters, the backward's second all-gather) than without.
TEST(Planner, SequenceParallelDropsDuplicateAndPricesItsCollectives) {
  const PlanModel m = small_model();
  PlanModel sp = m;
  sp.sequence_parallel = true;
  const Plan a = make_plan(a800(), m), b = make_plan(a800(), sp);
  int checked = 0;
  for (const PlanRow& y : b.rows) {
    EXPECT_FALSE(y.ep > 1 && y.strategy == ExchangeKind::duplicate) << "tp " << y.tp << " ep " << y.ep;
    for (const PlanRow& x : a.rows) {
      if (x.tp != y.tp || x.ep != y.ep || x.expert_tp != y.expert_tp || x.strategy != y.strategy || x.chunks != y.chunks)
        continue;
      if (y.tp > 1) {
        EXPECT_GT(y.tp_s, x.tp_s);
        if (y.ep > 1) EXPECT_GT(y.exchange_s, x.exchange_s);
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 0);
}

// FP8 dispatch: the forward's dispatch (one of a layer's four exchange calls) moves narrower rows, so every layout with
// an exchange pays less exchange time, but no less than its other three calls; without EP nothing changes.
TEST(Planner, Fp8DispatchPricesTheForwardDispatchAtItsWidth) {
  const PlanModel m = small_model();
  PlanModel f = m;
  f.dispatch_width = m.hidden / 2;  // about the packed FP8 row of bf16 activations
  const Plan a = make_plan(a800(), m), b = make_plan(a800(), f);
  ASSERT_EQ(a.rows.size(), b.rows.size());
  int checked = 0;
  for (const PlanRow& y : b.rows)
    for (const PlanRow& x : a.rows) {
      if (x.tp != y.tp || x.ep != y.ep || x.expert_tp != y.expert_tp || x.strategy != y.strategy || x.chunks != y.chunks)
        continue;
      if (y.ep == 1) {
        EXPECT_DOUBLE_EQ(y.exchange_s, x.exchange_s);
        continue;
      }
      EXPECT_LT(y.exchange_s, x.exchange_s) << "tp " << y.tp << " ep " << y.ep;
      if (y.strategy != ExchangeKind::overlapped) EXPECT_GT(y.exchange_s, 0.75 * x.exchange_s);
      ++checked;
    }
  EXPECT_GT(checked, 0);
}

// Offload: a layout fits only when its host memory (snapshot + optimizer) times the GPUs of a node fits the node's host
// memory, when the cluster gives it; the step time adds gradients down, host AdamW at the node's rate shared by its
// GPUs, and bf16 weights up.
TEST(Planner, OffloadChecksHostMemoryAndAddsItsTime) {
  PlanModel m = small_model();
  m.footprint = [](int tp, int, bool, int) {
    PlanModel::Footprint f{1e9 / tp, 1e9 / tp, 10e9 / tp};
    f.checkpoint_host = 8e9 / tp;
    f.optimizer_host = 24e9 / tp;
    f.offloaded_params = 2e9 / tp;
    return f;
  };
  Cluster c = a800();
  c.host_mem_gib = 100;  // a node's 8 GPUs need 8 x 32e9 / tp bytes = 238 / tp GiB: fits from tp 4
  c.host_adamw_gparams_s = 4;
  c.pcie_gbps = 20;
  const Plan p = make_plan(c, m);
  int offloaded = 0;
  for (const PlanRow& r : p.rows) {
    const double host_gib = 32e9 / r.tp / double(1ull << 30);
    EXPECT_NEAR(r.host_gib, host_gib, 1e-9);
    EXPECT_EQ(r.fits, host_gib * 8 <= 100 && r.why_not != "batch") << "tp " << r.tp;
    if (host_gib * 8 > 100) EXPECT_EQ(r.why_not, "host");
    const double params = 2e9 / r.tp;
    EXPECT_NEAR(r.offload_s, params * 8 / 4e9 + params * 6 / 20e9, 1e-12);
    EXPECT_NEAR(r.step_s, r.compute_s + r.comm_s + r.offload_s, 1e-12);
    ++offloaded;
  }
  EXPECT_GT(offloaded, 0);
  c.host_mem_gib = 0;  // not given: not checked
  for (const PlanRow& r : make_plan(c, m).rows) EXPECT_NE(r.why_not, "host");
}

TEST(Calibration, FitRecoversAlphaBeta) {
  const double a = 7e-6, b = 1.0 / 3e9;
  std::vector<CalibSample> s;
  for (bool gather : {false, true})
    for (double M : {4096.0, 65536.0, 1048576.0}) {
      CalibSample c{LinkClass::intra, gather, 4, M, 0};
      c.seconds = a * c.latencies() + b * c.bytes() * (1 + (gather ? 1e-3 : -1e-3));  // slight noise
      s.push_back(c);
    }
  const LinkParams p = fit_link(s);
  EXPECT_NEAR(p.alpha, a, 0.05 * a);
  EXPECT_NEAR(p.beta, b, 0.01 * b);
  EXPECT_THROW(fit_link(std::vector<CalibSample>(1, s[0])), engine::Error);
}

// The inter-node class is fitted from its all-to-alls alone; the intra-node class from both collectives.
TEST(Calibration, InterClassFitsItsAllToAlls) {
  const double a = 3e-3, b_a2a = 1.0 / 3e9, b_gather = 1.0 / 2e9;  // all-gathers slower, as over sockets
  std::vector<CalibSample> s;
  for (bool gather : {false, true})
    for (double M : {4096.0, 1048576.0, 67108864.0}) {
      CalibSample c{LinkClass::inter, gather, 2, M, 0};
      c.seconds = a * c.latencies() + (gather ? b_gather : b_a2a) * c.bytes();
      s.push_back(c);
    }
  const LinkParams inter = fit_class(LinkClass::inter, s);
  EXPECT_NEAR(inter.alpha, a, 1e-6 * a);
  EXPECT_NEAR(inter.beta, b_a2a, 1e-6 * b_a2a);
  const LinkParams intra = fit_class(LinkClass::intra, s);  // both: beta between the two
  EXPECT_GT(intra.beta, 1.05 * b_a2a);
  EXPECT_LT(intra.beta, 0.95 * b_gather);
  EXPECT_LT(inter.alpha_next, 0);  // no burst sample: not measured
  // A burst of 4 all-to-alls of 1 MiB at alpha_next = 2 ms: recovered; one slower than 4 single ones: clamped.
  CalibSample b{LinkClass::inter, false, 2, 1048576.0, 0};
  b.burst = 4;
  b.seconds = a + 3 * 2e-3 + 4 * b_a2a * b.bytes();
  s.push_back(b);
  EXPECT_NEAR(fit_class(LinkClass::inter, s).alpha_next, 2e-3, 1e-9);
  EXPECT_NEAR(fit_class(LinkClass::inter, s).alpha, a, 1e-6 * a);  // bursts stay out of the alpha-beta fit
  s.back().seconds = 4 * (a + b_a2a * b.bytes()) + 1e-3;
  EXPECT_DOUBLE_EQ(fit_class(LinkClass::inter, s).alpha_next, fit_class(LinkClass::inter, s).alpha);
}

// The probe sizes span the prediction's range: 4 KiB ×4 up to the largest size asked for (at least 4 MiB), which
// is itself the last probe.
TEST(Calibration, SizesSpanTheLargestBuffer) {
  EXPECT_EQ(calibration_sizes(1 << 10), (std::vector<int64_t>{4096, 16384, 65536, 262144, 1048576, 4194304}));
  const std::vector<int64_t> big = calibration_sizes(int64_t(96) << 20);
  EXPECT_EQ(big.front(), 4096);
  EXPECT_EQ(big.back(), int64_t(96) << 20);
  EXPECT_EQ(big[big.size() - 2], int64_t(64) << 20);
  // With a 3 ms latency and 2% timing noise, probes up to 4 MiB leave β off by far more than probes up to the
  // 64 MiB predicted: the reason for spanning the range.
  const double a = 3e-3, b = 1.0 / 5e9;
  auto fit_upto = [&](int64_t largest) {
    std::vector<CalibSample> s;
    int i = 0;
    for (int64_t M : calibration_sizes(largest)) {
      CalibSample c{LinkClass::inter, false, 2, double(M), 0};
      c.seconds = (a * c.latencies() + b * c.bytes()) * (1 + (i++ % 2 ? 0.02 : -0.02));
      s.push_back(c);
    }
    return fit_link(s);
  };
  const double M = double(int64_t(64) << 20) / 2;  // bytes() of a 2-rank all-to-all of 64 MiB
  const double truth = a + b * M;
  const LinkParams small = fit_upto(int64_t(1) << 22), spanning = fit_upto(int64_t(64) << 20);
  EXPECT_LT(std::abs(spanning.alpha + spanning.beta * M - truth) / truth, 0.03);
  EXPECT_GT(std::abs(small.alpha + small.beta * M - truth) / truth, 0.1);
}

TEST(Calibration, CacheTextRoundTripAndErrors) {
  const LinkModel base{{1e-6, 1e-9}, {1e-5, 1e-8}};
  const LinkModel l =
      parse_link_model("# c\nintra_gbps = 400\ninter_latency_us=20\ninter_next_latency_us = 12\n", base, "t");
  EXPECT_DOUBLE_EQ(l.inter.alpha_next, 12e-6);
  EXPECT_LT(l.intra.alpha_next, 0);
  EXPECT_DOUBLE_EQ(l.intra.beta, 1.0 / 400e9);
  EXPECT_DOUBLE_EQ(l.inter.alpha, 20e-6);
  EXPECT_DOUBLE_EQ(l.intra.alpha, 1e-6);
  EXPECT_THROW(parse_link_model("bogus = 1\n", base, "t"), engine::Error);
  EXPECT_THROW(parse_link_model("intra_gbps = fast\n", base, "t"), engine::Error);
  const std::string path = ::testing::TempDir() + "links.txt";
  write_link_model(path, l);
  const LinkModel r = read_link_model(path, LinkModel{});
  EXPECT_NEAR(r.intra.beta, l.intra.beta, 1e-6 * l.intra.beta);
  EXPECT_NEAR(r.inter.alpha, l.inter.alpha, 1e-9);
  EXPECT_NEAR(r.inter.alpha_next, 12e-6, 1e-12);
  EXPECT_LT(r.intra.alpha_next, 0);
}

}  // namespace
// Dropless stage B: only the filled slots travel, and every collective waits for the most loaded rank, so each
// leg's bytes scale by fill x imbalance (at most 1); the latencies stay.
TEST(CostModel, FilledSlotsPricedAtTheMostLoadedRank) {
  LinkModel l{{0, 1e-9}, {0, 1e-8}};  // no latency: pure volumes
  GroupPlacement g = tp2_ep2_across_nodes();
  // E 2, C 8, H 10, 2 B: duplicate sends 160 B inter with every slot; a quarter filled, balanced: 40 B.
  const auto quarter = predict_exchange_shape(ExchangeKind::duplicate, 1, 2, 8, 10, 2, g, l, {0.25, 1});
  EXPECT_DOUBLE_EQ(quarter.inter_bytes, 40);
  EXPECT_DOUBLE_EQ(quarter.total, 40e-8);
  // The slowest rank moves twice the mean: 80 B; three times half the slots would exceed the buffer: all of it.
  EXPECT_DOUBLE_EQ(predict_exchange_shape(ExchangeKind::duplicate, 1, 2, 8, 10, 2, g, l, {0.25, 2}).total, 80e-8);
  EXPECT_DOUBLE_EQ(predict_exchange_shape(ExchangeKind::duplicate, 1, 2, 8, 10, 2, g, l, {0.5, 3}).total, 160e-8);
  // drop_gather at 0.5 x 1.5 = 0.75 of StrategiesByHand's volumes: 60 B inter, an all-gather of 240 B (120 B sent).
  const auto dg = predict_exchange_shape(ExchangeKind::drop_gather, 1, 2, 8, 10, 2, g, l, {0.5, 1.5});
  EXPECT_DOUBLE_EQ(dg.inter_bytes, 60);
  EXPECT_DOUBLE_EQ(dg.tp_bytes, 120);
  EXPECT_DOUBLE_EQ(dg.total, 60e-8 + 120e-9);
  // pipelined 4 at half: A = 10e-8, G = 20e-9: A + 3·max(A, G) + G.
  EXPECT_DOUBLE_EQ(predict_exchange_shape(ExchangeKind::pipelined, 4, 2, 8, 10, 2, g, l, {0.5, 1}).total,
                   10e-8 + 3 * 10e-8 + 20e-9);
  // The MoE block and the SP reduce-scatter take the same load.
  EXPECT_DOUBLE_EQ(predict_moe_block(ExchangeKind::drop_gather, 1, 2, 8, 10, 2, g, l, 1e-6, {0.5, 1.5}),
                   2 * dg.total + 1e-6);
  EXPECT_DOUBLE_EQ(sp_dispatch_reduce_scatter_time(ExchangeKind::drop_gather, 1, 2, 8, 10, 2, g, l, {0.5, 1.5}),
                   120e-9);
  // Latency is per message, not per byte: unchanged.
  LinkModel lat{{1e-6, 1e-9}, {1e-5, 1e-8}};
  EXPECT_DOUBLE_EQ(predict_exchange_shape(ExchangeKind::duplicate, 1, 2, 8, 10, 2, g, lat, {0.25, 1}).total,
                   1e-5 + 40e-8);
  // A dropless volume fills N·K of its E·C slots (C the expected largest load, 4172 for N 8192, K 1, E 2, e 2);
  // with a capacity factor every slot travels.
  ExchangeVolume v{1, 8192, 8192, 1, 2, 4, 0.0, 2, 2, 1.25};
  EXPECT_DOUBLE_EQ(v.load().fill, 8192.0 / (2 * 4172));
  EXPECT_DOUBLE_EQ(v.load().imbalance, 1.25);
  v.imbalance = 1;  // 1.25 x 0.98 would move the whole buffer
  EXPECT_DOUBLE_EQ(predict_exchange(ExchangeKind::duplicate, 1, v, g, l).ep_bytes, 0.5 * 2 * 8192 * 2 * 8192 / 2);
  v.capacity_factor = 1.0;
  EXPECT_DOUBLE_EQ(v.load().fill, 1);
  EXPECT_DOUBLE_EQ(v.load().imbalance, 1);
  EXPECT_THROW(predict_exchange_shape(ExchangeKind::duplicate, 1, 2, 8, 10, 2, g, l, {0, 1}), engine::Error);
  EXPECT_THROW(predict_exchange_shape(ExchangeKind::duplicate, 1, 2, 8, 10, 2, g, l, {0.5, 0.5}), engine::Error);
}

// The loads behind `bench exchange --skew` and auto's measurement, and the ExchangeLoad read back from loads.
TEST(CostModel, SkewedLoadsAndTheirLoad) {
  // e 2, E 4, C 8, half of the tokens to expert 0: it fills its 8 slots, the other three get 8/3 -> 3 each.
  const std::vector<int32_t> L = skewed_loads(2, 4, 8, 0.5);
  EXPECT_EQ(L, (std::vector<int32_t>{8, 3, 3, 3, 8, 3, 3, 3}));
  // Each rank sends 17 rows of its 32 slots; EP rank 0 (experts 0 and 1) receives 2 x 11 = 22: 22/17 the mean.
  const ExchangeLoad ld = load_of(L, 2, 4, 8);
  EXPECT_DOUBLE_EQ(ld.fill, 34.0 / 64);
  EXPECT_DOUBLE_EQ(ld.imbalance, 22.0 / 17);
  // Balanced (skew 1/E): every slot filled, no imbalance.
  const ExchangeLoad even = load_of(skewed_loads(2, 4, 8, 0.25), 2, 4, 8);
  EXPECT_DOUBLE_EQ(even.fill, 1);
  EXPECT_DOUBLE_EQ(even.imbalance, 1);
  // loads_like: round(0.5 x 8) = 4 slots each, EP rank 0's experts 1.5 times that.
  EXPECT_EQ(loads_like(2, 4, 8, {0.5, 1.5}), (std::vector<int32_t>{6, 6, 4, 4, 6, 6, 4, 4}));
  EXPECT_THROW(skewed_loads(2, 4, 8, 0), engine::Error);
  EXPECT_THROW(load_of(L, 2, 3, 8), engine::Error);
}

}  // namespace monta::comm
