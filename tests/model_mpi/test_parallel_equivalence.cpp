// N ranks in any layout = 1 rank: for every (tp, ep, expert_tp, exchange) the world size allows, the loss,
// every parameter gradient (this rank's slice against the same slice of a single-process run on the whole
// global batch, computed on every rank), the losses of five AdamW steps and the forward-only validation loss
// (equal on every rank) match within float32 tolerance; so do the routing options (renormalised top-k weights, the
// balancing bias). Each layout is its own test, named after it
// (Layouts/ParallelEquivalence.LayoutEqualsOneProcess/tp2_ep2_dp2_etp_pipelined).
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "comm/exchange.h"
#include "comm/groups.h"
#include "comm/runtime.h"
#include "comm/topology.h"
#include "engine/log.h"
#include "engine/rng.h"
#include "model/checkpoint.h"
#include "model/footprint.h"
#include "model/trainer.h"
#include "layout_rig.h"

using namespace monta;
using namespace monta::testing_mpi;

namespace {

// One layout of the sweep. A new dimension (a recompute mode, say) is one more field here, one more word in name(),
// one more loop in cases() and its use in apply().
struct Case {
  int tp, ep;
  bool expert_tp;
  std::string exchange;
  std::string name() const {
    return engine::strf("tp%d_ep%d_dp%d_%s_%s", tp, ep, comm::runtime_world_size() / tp,
                        expert_tp ? "etp" : "ewhole", exchange.c_str());
  }
};

std::vector<Case> cases(int world) {
  std::vector<Case> out;
  for_each_layout(world, [&](int tp, int ep, bool etp) {
    if (ep == 1) return out.push_back({tp, ep, etp, "none"});
    for (const char* k : {"duplicate", "drop_gather", "pipelined", "overlapped"}) out.push_back({tp, ep, etp, k});
  });
  return out;
}

// The largest deviations over every layout of the run, printed (over all ranks) after the last one.
struct Worst {
  double loss = 0, grad = 0, val = 0;
};
Worst g_worst;

class ParallelEquivalence : public testing::TestWithParam<Case> {
 public:
  static void TearDownTestSuite() {
    print_largest({g_worst.loss, g_worst.grad, g_worst.val}, [](const std::vector<double>& r) {
      std::printf("world %d: largest |loss - loss_1rank| %.3g; largest gradient deviation %.3g x 1e-3 of the tensor's "
                  "max; largest |val_loss - val_loss_1rank| %.3g\n",
                  comm::runtime_world_size(), r[0], r[1], r[2]);
    });
  }
};

}  // namespace

TEST_P(ParallelEquivalence, LayoutEqualsOneProcess) {
  const int world = comm::runtime_world_size();
  const Case& k = GetParam();
  std::vector<int32_t> in, tg;
  double& worst_loss = g_worst.loss;
  double& worst_grad = g_worst.grad;
  double& worst_val = g_worst.val;
  {
    model::Config c = small_config();
    // overlapped in 3 expert chunks: uneven for most capacities, and the experts then run per chunk.
    Rig rig(c, world, k.tp, k.ep, k.expert_tp, k.exchange, 3, world >= 4 ? 2 : 0);
    const model::ParallelContext& par = rig.par;
    model::Trainer mine(c, par, engine::Device::cpu);
    model::Trainer ref(c, model::ParallelContext{}, engine::Device::cpu);
    {  // --dry-run and the planner size memory with rank_footprint: it must be what this rank allocated
      const model::RankFootprint f = model::rank_footprint(c, k.tp, k.ep, k.expert_tp, par.dp, engine::Device::cpu);
      EXPECT_EQ(f.activations, double(mine.model().activations().bytes()));
      EXPECT_EQ(f.exchange, par.exchange ? double(par.exchange->staging_bytes()) : 0.0) << "exchange staging";
      if (par.exchange && par.exchange->kind() != comm::ExchangeKind::duplicate) EXPECT_GT(f.exchange, 0.0);
      size_t state = 0;
      for (const auto* a : mine.params().arenas()) state += a->bytes();
      EXPECT_EQ(f.state(), double(state));
      int64_t held = 0;
      for (const auto& p : mine.params().all()) held += p.master.numel();
      EXPECT_EQ(f.params, held);
      // The checkpoint snapshot (checkpoint.async): rank 0 owns all it holds, the most any rank snapshots.
      model::CkptSaver saver(true);
      saver.reserve(mine.params());
      ASSERT_GT(f.checkpoint_host, 0.0);
      if (comm::runtime_world_rank() == 0)
        EXPECT_EQ(f.checkpoint_host, double(saver.snapshot_bytes()));
      else
        EXPECT_LE(double(saver.snapshot_bytes()), f.checkpoint_host);
    }
    const int64_t per_rank = c.train.global_batch / par.dp * c.model.seq_len;
    for (int step = 0; step < 5; ++step) {
      make_batch(c, 100 + uint64_t(step), in, tg);
      std::span<const int32_t> my_in(in.data() + par.dp_rank * per_rank, size_t(per_rank));
      std::span<const int32_t> my_tg(tg.data() + par.dp_rank * per_rank, size_t(per_rank));
      if (step == 0) {
        auto a = mine.compute_gradients(my_in, my_tg);
        auto b = ref.compute_gradients(in, tg);
        EXPECT_NEAR(a.loss, b.loss, 1e-5 * std::abs(b.loss));
        EXPECT_NEAR(a.aux_loss, b.aux_loss, 1e-5 * std::abs(b.aux_loss));
        EXPECT_EQ(a.dropped, b.dropped);
        std::string where;
        double dev = compare_grads(mine.params(), ref.params(), &where);
        EXPECT_LT(dev, 1.0) << "worst gradient element " << where;
        worst_grad = std::max(worst_grad, dev);
        worst_loss = std::max(worst_loss, std::abs(a.loss - b.loss));
      }
      auto a = mine.step(my_in, my_tg);
      auto b = ref.step(in, tg);
      EXPECT_NEAR(a.loss, b.loss, 2e-5 * std::abs(b.loss)) << "step " << step + 1;
      EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-4 * b.grad_norm) << "step " << step + 1;
      worst_loss = std::max(worst_loss, std::abs(a.loss - b.loss));
    }
    // Validation after the five steps, on a batch no step saw: forward only, the same bound as the training loss.
    make_batch(c, 999, in, tg);
    const double val = mine.evaluate(std::span<const int32_t>(in.data() + par.dp_rank * per_rank, size_t(per_rank)),
                                     std::span<const int32_t>(tg.data() + par.dp_rank * per_rank, size_t(per_rank)));
    const double val_ref = ref.evaluate(in, tg);
    EXPECT_NEAR(val, val_ref, 2e-5 * std::abs(val_ref)) << "validation loss";
    double lo = val, hi = val;
    MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    EXPECT_EQ(lo, hi) << "validation loss differs between ranks";
    worst_val = std::max(worst_val, std::abs(val - val_ref));
  }
}

// Registered after MPI is up (gtest evaluates the generator in InitGoogleTest), so the world size is known.
INSTANTIATE_TEST_SUITE_P(Layouts, ParallelEquivalence, testing::ValuesIn(cases(comm::runtime_world_size())),
                         [](const testing::TestParamInfo<Case>& info) { return info.param.name(); });

// Dropless routing (model.capacity_factor = 0) in every layout and exchange equals one process: no choice is dropped
// anywhere, so the layout changes only each step's capacity (its padding rows), never a token's experts. Layer 0's
// router is skewed towards expert 0 (its logit raised by 2 for every token, on every rank and in the reference) and
// layer 1's spread round-robin, so the per-expert and per-rank loads differ and the exchange runs at a capacity agreed over EP that changes per layer
// and per step; the arena is what rank_footprint predicts for the worst case.
class DroplessEquivalence : public testing::TestWithParam<Case> {};

TEST_P(DroplessEquivalence, SkewedRouterEqualsOneProcess) {
  const int world = comm::runtime_world_size();
  const Case& k = GetParam();
  std::vector<int32_t> in, tg;
  model::Config c = small_config();
  c.model.capacity_factor = 0;
  c.model.seq_len = 16;  // room below the worst case: the largest load over 4 EP ranks of 8 tokens each reaches 8
  Rig rig(c, world, k.tp, k.ep, k.expert_tp, k.exchange, 3, world >= 4 ? 2 : 0);
  const model::ParallelContext& par = rig.par;
  model::Trainer mine(c, par, engine::Device::cpu);
  model::Trainer ref(c, model::ParallelContext{}, engine::Device::cpu);
  // Layer 0: every token's logit of expert 0 raised (skewed); layer 1: token n's logit of expert n mod E raised (near
  // balanced, so its capacity stays below the worst case).
  const auto skew = [](int l, engine::Tensor logits) {
    const int64_t E = logits.dim(1);
    for (int64_t n = 0; n < logits.dim(0); ++n) logits.as<float>()[n * E + (l == 0 ? 0 : n % E)] += 2.0f;
  };
  mine.model().on_router_logits = skew;
  ref.model().on_router_logits = skew;
  // The expert GEMM calls over the filled rows exactly (rows not rounded up to 16: at C_step <= 16 that would merge
  // every expert's runs into one call over all its rows), so an expert's weight gradient sums several calls, one per
  // EP peer with tokens for it, and an expert with no token from any peer is written as zeros.
  mine.model().dropless_row_quantum = 1;
  const model::RankFootprint f = model::rank_footprint(c, k.tp, k.ep, k.expert_tp, par.dp, engine::Device::cpu);
  EXPECT_EQ(f.activations, double(mine.model().activations().bytes()));
  const int64_t per_rank = c.train.global_batch / par.dp * c.model.seq_len;
  const int64_t N = mine.model().shapes().N, balanced = N * c.model.top_k / c.model.experts;
  int64_t lowest = N;  // the smallest step capacity any layer of this rank ran at
  for (int step = 0; step < 3; ++step) {  // three steps (of five elsewhere): np8 runs 37 such layouts
    make_batch(c, 500 + uint64_t(step), in, tg);
    std::span<const int32_t> my_in(in.data() + par.dp_rank * per_rank, size_t(per_rank));
    std::span<const int32_t> my_tg(tg.data() + par.dp_rank * per_rank, size_t(per_rank));
    if (step == 0) {
      auto a = mine.compute_gradients(my_in, my_tg);
      auto b = ref.compute_gradients(in, tg);
      EXPECT_EQ(a.dropped, 0);
      EXPECT_EQ(b.dropped, 0);
      EXPECT_NEAR(a.loss, b.loss, 1e-5 * std::abs(b.loss));
      EXPECT_NEAR(a.aux_loss, b.aux_loss, 1e-5 * std::abs(b.aux_loss));
      std::string where;
      EXPECT_LT(compare_grads(mine.params(), ref.params(), &where), 1.0) << "worst gradient element " << where;
    }
    auto a = mine.step(my_in, my_tg);
    auto b = ref.step(in, tg);
    EXPECT_EQ(a.dropped, 0) << "step " << step + 1;
    EXPECT_NEAR(a.loss, b.loss, 2e-5 * std::abs(b.loss)) << "step " << step + 1;
    EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-4 * b.grad_norm) << "step " << step + 1;
    EXPECT_GT(mine.model().capacity(0), balanced) << "the skewed layer's largest load, step " << step + 1;
    for (int l = 0; l < int(c.model.layers); ++l) lowest = std::min(lowest, mine.model().capacity(l));
  }
  EXPECT_LT(lowest, N) << "no layer ran below the worst-case capacity: the partial buffers went untested";
}

INSTANTIATE_TEST_SUITE_P(Layouts, DroplessEquivalence, testing::ValuesIn(cases(comm::runtime_world_size())),
                         [](const testing::TestParamInfo<Case>& info) { return info.param.name(); });

// Recompute changes memory and time only: in every layout and exchange, train.recompute = selective and full give the
// losses, every gradient and five steps of recompute = none bit for bit (same layout, deterministic CPU ops and MPI
// reductions), and the arena each allocates is what rank_footprint predicts.
class RecomputeEquivalence : public testing::TestWithParam<Case> {};

TEST_P(RecomputeEquivalence, ModesEqualNoRecomputeBitForBit) {
  const int world = comm::runtime_world_size();
  const Case& k = GetParam();
  std::vector<int32_t> in, tg;
  model::Config c = small_config();
  c.model.layers = 3;
  Rig rig(c, world, k.tp, k.ep, k.expert_tp, k.exchange, 3, world >= 4 ? 2 : 0);
  const model::ParallelContext& par = rig.par;
  const int64_t per_rank = c.train.global_batch / par.dp * c.model.seq_len;
  std::vector<std::unique_ptr<model::Trainer>> t;
  for (const char* mode : {"none", "selective", "full"}) {
    c.train.recompute = mode;
    t.push_back(std::make_unique<model::Trainer>(c, par, engine::Device::cpu));
    const model::RankFootprint f = model::rank_footprint(c, k.tp, k.ep, k.expert_tp, par.dp, engine::Device::cpu);
    EXPECT_EQ(f.activations, double(t.back()->model().activations().bytes())) << mode;
  }
  for (int step = 0; step < 5; ++step) {
    make_batch(c, 300 + uint64_t(step), in, tg);
    std::span<const int32_t> my_in(in.data() + par.dp_rank * per_rank, size_t(per_rank));
    std::span<const int32_t> my_tg(tg.data() + par.dp_rank * per_rank, size_t(per_rank));
    std::vector<model::StepMetrics> m;
    for (auto& tr : t) m.push_back(step == 0 ? tr->compute_gradients(my_in, my_tg) : tr->step(my_in, my_tg));
    for (size_t i = 1; i < t.size(); ++i) {
      EXPECT_EQ(m[i].loss, m[0].loss) << "mode " << i << " step " << step;
      EXPECT_EQ(m[i].loss_total, m[0].loss_total) << "mode " << i << " step " << step;
      EXPECT_EQ(m[i].grad_norm, m[0].grad_norm) << "mode " << i << " step " << step;
      if (step > 0) continue;
      for (auto& p : t[i]->params().all()) {
        const auto& q = t[0]->params().get(p.name);
        EXPECT_EQ(std::memcmp(p.grad.data, q.grad.data, p.grad.bytes()), 0) << "mode " << i << " gradient " << p.name;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, RecomputeEquivalence, testing::ValuesIn(cases(comm::runtime_world_size())),
                         [](const testing::TestParamInfo<Case>& info) { return info.param.name(); });

// Routing options (model.router_norm_topk and model.router_bias_update) in every layout and exchange: the losses,
// gradient norms and expert load ratios of five steps equal one process's (the loads are integers counted over the
// global batch, so exactly), and the balancing bias after them equals the single process's bit for bit on every rank
// (a bias updated from this rank's loads alone, not the global batch's, would differ between data-parallel ranks).
class RoutingEquivalence : public testing::TestWithParam<Case> {};

TEST_P(RoutingEquivalence, NormTopkAndBalancingBiasEqualOneProcess) {
  const int world = comm::runtime_world_size();
  const Case& k = GetParam();
  std::vector<int32_t> in, tg;
  model::Config c = small_config();
  c.model.router_norm_topk = true;
  c.model.router_bias_update = 0.05;  // large against the router's probability gaps: choices move within the steps
  Rig rig(c, world, k.tp, k.ep, k.expert_tp, k.exchange, 3, world >= 4 ? 2 : 0);
  const model::ParallelContext& par = rig.par;
  model::Trainer mine(c, par, engine::Device::cpu);
  model::Trainer ref(c, model::ParallelContext{}, engine::Device::cpu);
  const int64_t per_rank = c.train.global_batch / par.dp * c.model.seq_len;
  for (int step = 0; step < 5; ++step) {
    make_batch(c, 500 + uint64_t(step), in, tg);
    std::span<const int32_t> my_in(in.data() + par.dp_rank * per_rank, size_t(per_rank));
    std::span<const int32_t> my_tg(tg.data() + par.dp_rank * per_rank, size_t(per_rank));
    auto a = mine.step(my_in, my_tg);
    auto b = ref.step(in, tg);
    EXPECT_NEAR(a.loss, b.loss, 2e-5 * std::abs(b.loss)) << "step " << step + 1;
    EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-4 * b.grad_norm) << "step " << step + 1;
    EXPECT_EQ(a.load_max, b.load_max) << "step " << step + 1;
    EXPECT_EQ(a.load_min, b.load_min) << "step " << step + 1;
    EXPECT_EQ(a.dropped, b.dropped) << "step " << step + 1;
  }
  const model::Param& p = mine.params().get("router_bias");
  const model::Param& q = ref.params().get("router_bias");
  ASSERT_EQ(p.master.numel(), q.master.numel());  // replicated and unsharded (zero 0): the whole (L, E) tensor
  std::vector<float> bias(p.master.as<float>(), p.master.as<float>() + p.master.numel());
  const std::vector<float> want(q.master.as<float>(), q.master.as<float>() + q.master.numel());
  EXPECT_EQ(bias, want) << "the balancing bias differs from one process's";
  float moved = 0;
  for (float v : want) moved = std::max(moved, std::abs(v));
  EXPECT_GT(moved, 0.f) << "the bias never moved";
  std::vector<float> lo = bias, hi = bias;
  MPI_Allreduce(MPI_IN_PLACE, lo.data(), int(lo.size()), MPI_FLOAT, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, hi.data(), int(hi.size()), MPI_FLOAT, MPI_MAX, MPI_COMM_WORLD);
  EXPECT_EQ(lo, hi) << "the balancing bias differs between ranks";
}

INSTANTIATE_TEST_SUITE_P(Layouts, RoutingEquivalence, testing::ValuesIn(cases(comm::runtime_world_size())),
                         [](const testing::TestParamInfo<Case>& info) { return info.param.name(); });
