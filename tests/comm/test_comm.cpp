// Pure functions of monta_comm, no MPI: layout validation and its messages, group membership for many layouts,
// shard math, exchange-kind parsing, emulated topology and the cross-node share.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "comm/exchange.h"
#include "comm/groups.h"
#include "comm/shard.h"
#include "comm/topology.h"
#include "engine/check.h"

namespace monta::comm {
namespace {

class ThrowingEnv : public ::testing::Environment {
 public:
  void SetUp() override { engine::install_throwing_handler(); }
};
[[maybe_unused]] auto* g_env = ::testing::AddGlobalTestEnvironment(new ThrowingEnv);

// The error fn raises (message, user flag); "" when it does not raise.
std::pair<std::string, bool> error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const engine::Error& e) {
    return {e.what(), e.user};
  }
  return {"", false};
}

void expect_user_error(const std::function<void()>& fn, std::vector<std::string> phrases) {
  auto [msg, user] = error_of(fn);
  ASSERT_FALSE(msg.empty()) << "expected an error containing " << phrases.front();
  EXPECT_TRUE(user) << msg;
  for (const auto& p : phrases) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one sentence, one line: " << msg;
}

// ---- make_layout -------------------------------------------------------------------------------------------

TEST(Layout, ValidLayoutDerivesDpAndExpertDp) {
  Layout l = make_layout(8, 2, 2, true, 4, 8, 8, 64, 32);
  EXPECT_EQ(l.world, 8);
  EXPECT_EQ(l.tp, 2);
  EXPECT_EQ(l.dp, 4);
  EXPECT_EQ(l.ep, 2);
  EXPECT_EQ(l.expert_dp, 2);
  EXPECT_TRUE(l.expert_tp);
  Layout one = make_layout(1, 1, 1, false, 1, 1, 1, 1, 1);
  EXPECT_EQ(one.dp, 1);
  EXPECT_EQ(one.expert_dp, 1);
}

TEST(Layout, KvHeadsFewerThanTpAreReplicated) {
  EXPECT_EQ(make_layout(8, 8, 1, false, 2, 64, 2, 64, 64).tp, 8);  // tp % kv == 0
  EXPECT_EQ(make_layout(8, 2, 1, false, 2, 64, 8, 64, 64).tp, 2);  // kv % tp == 0
}

TEST(Layout, WorldNotDivisibleByTp) {
  expect_user_error([] { make_layout(6, 4, 1, false, 4, 8, 8, 64, 32); }, {"6 ranks", "parallel.tp = 4"});
}
TEST(Layout, DpNotDivisibleByEp) {
  expect_user_error([] { make_layout(6, 2, 2, false, 4, 8, 8, 64, 32); }, {"data-parallel size 3", "parallel.ep = 2"});
}
TEST(Layout, ExpertsNotDivisibleByEp) {
  expect_user_error([] { make_layout(8, 2, 4, false, 6, 8, 8, 64, 32); }, {"model.experts = 6", "parallel.ep = 4"});
}
TEST(Layout, HeadsNotDivisibleByTp) {
  expect_user_error([] { make_layout(8, 4, 1, false, 4, 6, 6, 64, 32); }, {"model.heads = 6", "parallel.tp = 4"});
}
TEST(Layout, KvHeadsIncompatibleWithTp) {
  expect_user_error([] { make_layout(8, 4, 1, false, 4, 12, 6, 64, 32); }, {"model.kv_heads = 6", "parallel.tp = 4"});
  expect_user_error([] { make_layout(8, 8, 1, false, 4, 24, 3, 64, 32); }, {"model.kv_heads = 3", "parallel.tp = 8"});
}
TEST(Layout, VocabNotDivisibleByTp) {
  expect_user_error([] { make_layout(4, 4, 1, false, 4, 8, 8, 1001, 32); }, {"model.vocab = 1001", "parallel.tp = 4"});
}
TEST(Layout, FfnNotDivisibleByTpOnlyWithExpertTp) {
  expect_user_error([] { make_layout(4, 4, 1, true, 4, 8, 8, 64, 30); }, {"model.ffn = 30", "parallel.tp = 4"});
  EXPECT_EQ(make_layout(4, 4, 1, false, 4, 8, 8, 64, 30).tp, 4);
}
TEST(Layout, NonPositiveSizes) {
  expect_user_error([] { make_layout(4, 0, 1, false, 4, 8, 8, 64, 32); }, {"parallel.tp", "0"});
  expect_user_error([] { make_layout(4, 1, 0, false, 4, 8, 8, 64, 32); }, {"parallel.ep", "0"});
}

// ---- group_ranks --------------------------------------------------------------------------------------------

using Partition = std::vector<std::vector<int>>;

// Every rank's group of kind k is the block of p that contains it.
void expect_partition(const Layout& l, GroupKind k, const Partition& p) {
  for (int r = 0; r < l.world; ++r) {
    const auto it = std::find_if(p.begin(), p.end(), [r](const auto& g) { return std::count(g.begin(), g.end(), r); });
    ASSERT_NE(it, p.end()) << "rank " << r << " in no expected group";
    EXPECT_EQ(group_ranks(l, k, r), *it) << group_kind_name(k) << " group of rank " << r << " (world " << l.world
                                         << ", tp " << l.tp << ", ep " << l.ep << ")";
  }
}

Partition singletons(int world) {
  Partition p;
  for (int r = 0; r < world; ++r) p.push_back({r});
  return p;
}

// 840 = lcm(1..8): every tp and ep up to 8 divides the model sizes, so only world/tp/ep decide.
Layout layout(int world, int tp, int ep) { return make_layout(world, tp, ep, false, 840, 840, 840, 840, 840); }

TEST(GroupRanks, Tp2World2) {
  Layout l = layout(2, 2, 1);
  expect_partition(l, GroupKind::tp, {{0, 1}});
  expect_partition(l, GroupKind::dp, singletons(2));
  expect_partition(l, GroupKind::ep, singletons(2));
  expect_partition(l, GroupKind::expert_dp, singletons(2));
  expect_partition(l, GroupKind::world, {{0, 1}});
}

TEST(GroupRanks, Ep2World2) {
  Layout l = layout(2, 1, 2);
  expect_partition(l, GroupKind::tp, singletons(2));
  expect_partition(l, GroupKind::dp, {{0, 1}});
  expect_partition(l, GroupKind::ep, {{0, 1}});
  expect_partition(l, GroupKind::expert_dp, singletons(2));
}

TEST(GroupRanks, Dp2World2) {
  Layout l = layout(2, 1, 1);
  expect_partition(l, GroupKind::dp, {{0, 1}});
  expect_partition(l, GroupKind::ep, singletons(2));
  expect_partition(l, GroupKind::expert_dp, {{0, 1}});
}

TEST(GroupRanks, Tp2Ep2World4) {
  Layout l = layout(4, 2, 2);
  expect_partition(l, GroupKind::tp, {{0, 1}, {2, 3}});
  expect_partition(l, GroupKind::dp, {{0, 2}, {1, 3}});
  expect_partition(l, GroupKind::ep, {{0, 2}, {1, 3}});
  expect_partition(l, GroupKind::expert_dp, singletons(4));
}

TEST(GroupRanks, Tp2Dp2World4) {
  Layout l = layout(4, 2, 1);
  expect_partition(l, GroupKind::tp, {{0, 1}, {2, 3}});
  expect_partition(l, GroupKind::dp, {{0, 2}, {1, 3}});
  expect_partition(l, GroupKind::ep, singletons(4));
  expect_partition(l, GroupKind::expert_dp, {{0, 2}, {1, 3}});
}

TEST(GroupRanks, Ep2Dp4World4) {
  Layout l = layout(4, 1, 2);
  expect_partition(l, GroupKind::dp, {{0, 1, 2, 3}});
  expect_partition(l, GroupKind::ep, {{0, 1}, {2, 3}});
  expect_partition(l, GroupKind::expert_dp, {{0, 2}, {1, 3}});
}

TEST(GroupRanks, Ep2Dp8World8) {
  Layout l = layout(8, 1, 2);
  expect_partition(l, GroupKind::ep, {{0, 1}, {2, 3}, {4, 5}, {6, 7}});
  expect_partition(l, GroupKind::expert_dp, {{0, 2, 4, 6}, {1, 3, 5, 7}});
}

TEST(GroupRanks, Tp2Ep2Dp2World8) {
  Layout l = layout(8, 2, 2);  // dp 4 = ep 2 x expert-dp 2
  EXPECT_EQ(l.expert_dp, 2);
  expect_partition(l, GroupKind::tp, {{0, 1}, {2, 3}, {4, 5}, {6, 7}});
  expect_partition(l, GroupKind::dp, {{0, 2, 4, 6}, {1, 3, 5, 7}});
  expect_partition(l, GroupKind::ep, {{0, 2}, {4, 6}, {1, 3}, {5, 7}});
  expect_partition(l, GroupKind::expert_dp, {{0, 4}, {2, 6}, {1, 5}, {3, 7}});
}

TEST(GroupRanks, Tp4Ep2World8) {
  Layout l = layout(8, 4, 2);
  expect_partition(l, GroupKind::tp, {{0, 1, 2, 3}, {4, 5, 6, 7}});
  expect_partition(l, GroupKind::ep, {{0, 4}, {1, 5}, {2, 6}, {3, 7}});
  expect_partition(l, GroupKind::expert_dp, singletons(8));
}

// Structural properties for every valid (world, tp, ep) up to 8 ranks.
TEST(GroupRanks, PropertiesOfEveryLayoutUpTo8) {
  int layouts = 0;
  for (int world = 1; world <= 8; ++world)
    for (int tp = 1; tp <= world; ++tp)
      for (int ep = 1; ep <= world; ++ep) {
        if (world % tp || (world / tp) % ep) continue;
        ++layouts;
        Layout l = layout(world, tp, ep);
        const std::map<GroupKind, int> size = {{GroupKind::world, world}, {GroupKind::tp, tp},
                                               {GroupKind::dp, l.dp},     {GroupKind::ep, ep},
                                               {GroupKind::expert_dp, l.expert_dp}};
        for (int r = 0; r < world; ++r) {
          const RankCoords c = rank_coords(l, r);
          EXPECT_EQ(c.dp_idx * tp + c.tp_idx, r);
          for (auto [k, n] : size) {
            auto g = group_ranks(l, k, r);
            ASSERT_EQ(int(g.size()), n) << group_kind_name(k) << " world " << world << " tp " << tp << " ep " << ep;
            EXPECT_TRUE(std::is_sorted(g.begin(), g.end()));
            EXPECT_EQ(std::count(g.begin(), g.end(), r), 1);
            for (int m : g) EXPECT_EQ(group_ranks(l, k, m), g) << "members agree on their group";
          }
          auto tpg = group_ranks(l, GroupKind::tp, r), dpg = group_ranks(l, GroupKind::dp, r);
          auto epg = group_ranks(l, GroupKind::ep, r), edp = group_ranks(l, GroupKind::expert_dp, r);
          // EP rank = dp_idx % ep; EP and expert-DP groups partition the DP group (their product).
          EXPECT_EQ(epg[size_t(c.ep_idx)], r);
          EXPECT_EQ(edp[size_t(c.expert_dp_idx)], r);
          std::set<int> ep_times_edp;  // the EP groups of the expert-DP members tile the DP group
          for (int b : edp)
            for (int a : group_ranks(l, GroupKind::ep, b)) ep_times_edp.insert(a);
          EXPECT_EQ(ep_times_edp, std::set<int>(dpg.begin(), dpg.end()));
          EXPECT_EQ(int(ep_times_edp.size()), ep * l.expert_dp);
          for (int m : tpg) EXPECT_EQ(m / tp, c.dp_idx) << "TP groups are consecutive ranks";
          for (int m : epg) EXPECT_EQ(m % tp, c.tp_idx);
        }
      }
  EXPECT_GT(layouts, 20);
}

TEST(GroupRanks, NodeKindNeedsTopology) {
  auto [msg, user] = error_of([] { group_ranks(layout(2, 1, 1), GroupKind::node, 0); });
  EXPECT_NE(msg.find("node_ranks"), std::string::npos) << msg;
  Topology t = emulated_topology(5, 8, 2, "h");
  EXPECT_EQ(node_ranks(t, 5), (std::vector<int>{4, 5, 6, 7}));
}

TEST(GroupRanks, LayoutTableNamesEveryGroup) {
  Layout l = layout(8, 2, 2);
  const std::string s = format_layout_table(l, emulated_topology(0, 8, 2, "host"));
  EXPECT_NE(s.find("8 ranks = tp 2 x dp 4; ep 2, expert-dp 2"), std::string::npos) << s;
  EXPECT_NE(s.find("2 nodes (emulated)"), std::string::npos) << s;
  EXPECT_NE(s.find("[0 2] [1 3] [4 6] [5 7]"), std::string::npos) << s;  // ep
  EXPECT_NE(s.find("host/v1"), std::string::npos) << s;
}

// ---- shard -------------------------------------------------------------------------------------------------

TEST(Shard, BalancedFirstPartsGetOneMore) {
  const std::vector<std::pair<int64_t, int64_t>> want = {{0, 4}, {4, 3}, {7, 3}};
  for (int i = 0; i < 3; ++i) {
    Shard s = shard(10, 3, i, false);
    EXPECT_EQ(s.offset, want[size_t(i)].first);
    EXPECT_EQ(s.size, want[size_t(i)].second);
  }
}

TEST(Shard, FewerItemsThanParts) {
  const std::vector<std::pair<int64_t, int64_t>> want = {{0, 1}, {1, 1}, {2, 0}, {2, 0}};
  for (int i = 0; i < 4; ++i) {
    Shard s = shard(2, 4, i, false);
    EXPECT_EQ(s.offset, want[size_t(i)].first) << i;
    EXPECT_EQ(s.size, want[size_t(i)].second) << i;
  }
}

TEST(Shard, CoversEveryItemOnce) {
  for (int64_t n = 0; n < 40; ++n)
    for (int parts = 1; parts <= 9; ++parts) {
      int64_t next = 0;
      for (int i = 0; i < parts; ++i) {
        Shard s = shard(n, parts, i, false);
        EXPECT_EQ(s.offset, next);
        EXPECT_LE(s.size, (n + parts - 1) / parts);
        EXPECT_GE(s.size, n / parts);
        next += s.size;
      }
      EXPECT_EQ(next, n);
    }
}

TEST(Shard, MustDivide) {
  Shard s = shard(12, 4, 3, true);
  EXPECT_EQ(s.offset, 9);
  EXPECT_EQ(s.size, 3);
  auto [msg, user] = error_of([] { shard(10, 4, 0, true); });
  EXPECT_FALSE(user);
  EXPECT_NE(msg.find("10 items do not divide into 4"), std::string::npos) << msg;
  EXPECT_FALSE(error_of([] { shard(10, 4, 4, false); }).first.empty()) << "index out of range";
  EXPECT_FALSE(error_of([] { shard(10, 0, 0, false); }).first.empty()) << "zero parts";
}

// ---- exchange kinds ----------------------------------------------------------------------------------------

TEST(ExchangeKindNames, ParseValidNames) {
  EXPECT_EQ(parse_exchange_kind("duplicate"), ExchangeKind::duplicate);
  EXPECT_EQ(parse_exchange_kind("drop_gather"), ExchangeKind::drop_gather);
  EXPECT_EQ(parse_exchange_kind("pipelined"), ExchangeKind::pipelined);
  EXPECT_STREQ(exchange_kind_name(ExchangeKind::pipelined), "pipelined");
  EXPECT_STREQ(exchange_kind_name(ExchangeKind::drop_gather), "drop_gather");
  EXPECT_EQ(parse_exchange_kind(exchange_kind_name(ExchangeKind::duplicate)), ExchangeKind::duplicate);
}

TEST(ExchangeKindNames, UnknownNameListsValidOnes) {
  expect_user_error([] { parse_exchange_kind("pipelined_typo"); }, {"pipelined_typo", "duplicate", "drop_gather", "pipelined"});
  expect_user_error([] { parse_exchange_kind(""); }, {"duplicate", "drop_gather"});
}

// ---- topology (pure parts) ---------------------------------------------------------------------------------

TEST(TopologyPure, EmulatedNodesOfConsecutiveRanks) {
  Topology t = emulated_topology(5, 8, 2, "box");
  EXPECT_TRUE(t.emulated);
  EXPECT_EQ(t.node, 1);
  EXPECT_EQ(t.num_nodes, 2);
  EXPECT_EQ(t.local_rank, 1);
  EXPECT_EQ(t.local_size, 4);
  EXPECT_EQ(t.host, "box/v1");
  EXPECT_EQ(t.node_of_rank, (std::vector<int>{0, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_TRUE(t.same_node(4, 7));
  EXPECT_FALSE(t.same_node(3, 4));
}

TEST(TopologyPure, EmulateNodesMustDivideWorld) {
  expect_user_error([] { emulated_topology(0, 8, 3, "h"); }, {"--emulate-nodes 3", "8 ranks"});
  expect_user_error([] { emulated_topology(0, 8, -1, "h"); }, {"-1"});
}

// One GPU per rank, or emulated nodes no larger than the GPU count (each node's consecutive ranks on distinct GPUs).
TEST(TopologyPure, GpuPerRankValid) {
  const Topology real = emulated_topology(0, 4, 1, "h");  // one node of 4 ranks: as a real host
  EXPECT_TRUE(gpu_per_rank_valid(real, 4, 4));
  EXPECT_FALSE(gpu_per_rank_valid(real, 4, 2));
  EXPECT_TRUE(gpu_per_rank_valid(emulated_topology(3, 4, 2, "h"), 4, 2));   // 2 nodes x 2 ranks on 2 GPUs
  EXPECT_FALSE(gpu_per_rank_valid(emulated_topology(3, 4, 2, "h"), 4, 1));  // 2 ranks of a node on one GPU
  EXPECT_TRUE(gpu_per_rank_valid(emulated_topology(3, 4, 4, "h"), 4, 1));   // a node per rank on one GPU
  EXPECT_FALSE(gpu_per_rank_valid(emulated_topology(0, 8, 2, "h"), 8, 2));  // nodes of 4 ranks, 2 GPUs
  EXPECT_FALSE(gpu_per_rank_valid(emulated_topology(0, 2, 2, "h"), 2, 0));  // no GPU at all
}

TEST(TopologyPure, CrossNodeFraction) {
  Topology t = emulated_topology(0, 8, 2, "h");
  const std::vector<int> intra = {0, 1, 2}, cross = {0, 4}, mixed = {0, 1, 4, 5}, single = {3};
  EXPECT_DOUBLE_EQ(cross_node_fraction(t, intra), 0.0);
  EXPECT_DOUBLE_EQ(cross_node_fraction(t, cross), 1.0);
  EXPECT_DOUBLE_EQ(cross_node_fraction(t, mixed), 8.0 / 12.0);
  EXPECT_DOUBLE_EQ(cross_node_fraction(t, single), 0.0);
  Topology four = emulated_topology(0, 8, 4, "h");
  const std::vector<int> all = {0, 1, 2, 3, 4, 5, 6, 7};
  EXPECT_DOUBLE_EQ(cross_node_fraction(four, all), 48.0 / 56.0);
}

// Dropless stage B: the filled rows of an expert-side view, per (local expert, peer) in view order.
TEST(FilledRuns, ClampsEachLoadToTheChunkAndSkipsEmptyRuns) {
  // EP group of 2, 4 experts (2 local); this rank is EP rank 1 and owns experts 2 and 3.
  // loads[p*4 + x]: rank 0 fills 5 slots of expert 2 and 0 of expert 3; rank 1 fills 8 and 3.
  const std::vector<int32_t> loads = {1, 1, 5, 0, /*rank 1:*/ 2, 2, 8, 3};
  using R = ExpertRun;
  auto eq = [](const std::vector<R>& a, const std::vector<R>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
      if (a[i].j != b[i].j || a[i].row != b[i].row || a[i].count != b[i].count) return false;
    return true;
  };
  // The whole capacity (8 slots): (j 0, p 0) 5 rows at 0, (j 0, p 1) 8 rows at 8, (j 1, p 1) 3 rows at 8.
  EXPECT_TRUE(eq(filled_runs(2, 2, 1, 0, 8, loads), {{0, 0, 5}, {0, 8, 8}, {1, 8, 3}}));
  // Slots [4, 8) as a chunk of 4: 1 of (0, 0), 4 of (0, 1), none of expert 3.
  EXPECT_TRUE(eq(filled_runs(2, 2, 1, 4, 4, loads), {{0, 0, 1}, {0, 4, 4}}));
  // No loads: every slot filled.
  EXPECT_TRUE(eq(filled_runs(2, 2, 0, 2, 3, {}), {{0, 0, 3}, {0, 3, 3}, {1, 0, 3}, {1, 3, 3}}));
  EXPECT_THROW(filled_runs(2, 2, 0, 0, 8, std::vector<int32_t>(3, 0)), engine::Error);
}

}  // namespace
}  // namespace monta::comm
