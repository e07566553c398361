// Layout validation, pure group membership, and the MPI process groups built from it.
#include "comm/groups.h"

#include <mpi.h>

#include <algorithm>

#include "comm/mpi_communicator.h"
#include "engine/check.h"
#include "engine/log.h"

namespace monta::comm {
namespace {

std::string n2s(int64_t v) { return std::to_string(v); }

}  // namespace

Layout make_layout(int world, int tp, int ep, bool expert_tp, int n_experts, int n_heads, int n_kv_heads,
                   int64_t vocab, int64_t ffn) {
  MONTA_USER_CHECK(world >= 1, "The job has " + n2s(world) + " ranks; it needs at least 1.");
  MONTA_USER_CHECK(tp >= 1, "parallel.tp must be at least 1, not " + n2s(tp) + ".");
  MONTA_USER_CHECK(ep >= 1, "parallel.ep must be at least 1, not " + n2s(ep) + ".");
  MONTA_USER_CHECK(n_experts >= 1 && n_heads >= 1 && n_kv_heads >= 1 && vocab >= 1 && ffn >= 1,
                   "model.experts (" + n2s(n_experts) + "), model.heads (" + n2s(n_heads) + "), model.kv_heads (" +
                       n2s(n_kv_heads) + "), model.vocab (" + n2s(vocab) + ") and model.ffn (" + n2s(ffn) +
                       ") must all be at least 1.");
  MONTA_USER_CHECK(world % tp == 0, "The " + n2s(world) + " ranks of this job do not divide into tensor-parallel groups of "
                                        "parallel.tp = " + n2s(tp) + "; choose a tp that divides the world size.");
  const int dp = world / tp;
  MONTA_USER_CHECK(dp % ep == 0, "The data-parallel size " + n2s(dp) + " (" + n2s(world) + " ranks / tp " + n2s(tp) +
                                     ") is not divisible by parallel.ep = " + n2s(ep) +
                                     "; choose an ep that divides world / tp.");
  MONTA_USER_CHECK(n_experts % ep == 0, "model.experts = " + n2s(n_experts) + " is not divisible by parallel.ep = " +
                                            n2s(ep) + "; every EP rank must own the same number of experts.");
  MONTA_USER_CHECK(n_heads % tp == 0, "model.heads = " + n2s(n_heads) + " is not divisible by parallel.tp = " + n2s(tp) +
                                          "; choose a tp that divides the number of attention heads.");
  MONTA_USER_CHECK(n_kv_heads % tp == 0 || tp % n_kv_heads == 0,
                   "model.kv_heads = " + n2s(n_kv_heads) + " neither is divisible by nor divides parallel.tp = " +
                       n2s(tp) + "; KV heads must split evenly over TP ranks or be replicated on an equal share.");
  MONTA_USER_CHECK(vocab % tp == 0, "model.vocab = " + n2s(vocab) + " is not divisible by parallel.tp = " + n2s(tp) +
                                        "; pad the vocabulary to a multiple of tp.");
  MONTA_USER_CHECK(!expert_tp || ffn % tp == 0, "model.ffn = " + n2s(ffn) + " is not divisible by parallel.tp = " +
                                                    n2s(tp) + " with parallel.expert_tp on; choose a tp that divides "
                                                    "the FFN width or turn expert_tp off.");
  Layout l;
  l.world = world;
  l.tp = tp;
  l.ep = ep;
  l.dp = dp;
  l.expert_dp = dp / ep;
  l.expert_tp = expert_tp;
  return l;
}

const char* group_kind_name(GroupKind k) {
  switch (k) {
    case GroupKind::world: return "world";
    case GroupKind::tp: return "tp";
    case GroupKind::dp: return "dp";
    case GroupKind::ep: return "ep";
    case GroupKind::expert_dp: return "expert_dp";
    case GroupKind::node: return "node";
  }
  return "?";
}

RankCoords rank_coords(const Layout& l, int world_rank) {
  MONTA_CHECK(world_rank >= 0 && world_rank < l.world && l.tp * l.dp == l.world && l.dp % l.ep == 0,
              "rank " + n2s(world_rank) + " outside layout of " + n2s(l.world) + " ranks, or layout not from make_layout");
  RankCoords c;
  c.tp_idx = world_rank % l.tp;
  c.dp_idx = world_rank / l.tp;
  c.ep_idx = c.dp_idx % l.ep;
  c.expert_dp_idx = c.dp_idx / l.ep;
  return c;
}

std::vector<int> group_ranks(const Layout& l, GroupKind k, int world_rank) {
  const RankCoords c = rank_coords(l, world_rank);
  std::vector<int> g;
  switch (k) {
    case GroupKind::world:
      for (int r = 0; r < l.world; ++r) g.push_back(r);
      break;
    case GroupKind::tp:
      for (int t = 0; t < l.tp; ++t) g.push_back(c.dp_idx * l.tp + t);
      break;
    case GroupKind::dp:
      for (int d = 0; d < l.dp; ++d) g.push_back(d * l.tp + c.tp_idx);
      break;
    case GroupKind::ep:  // consecutive dp indices: the block of ep that holds dp_idx
      for (int i = 0; i < l.ep; ++i) g.push_back((c.expert_dp_idx * l.ep + i) * l.tp + c.tp_idx);
      break;
    case GroupKind::expert_dp:  // same place inside the EP block, every block
      for (int b = 0; b < l.expert_dp; ++b) g.push_back((b * l.ep + c.ep_idx) * l.tp + c.tp_idx);
      break;
    case GroupKind::node:
      MONTA_CHECK(false, "group_ranks: node groups come from the topology; use node_ranks");
  }
  return g;
}

std::vector<int> node_ranks(const Topology& topo, int world_rank) {
  std::vector<int> g;
  for (int r = 0; r < topo.world_size; ++r)
    if (topo.same_node(r, world_rank)) g.push_back(r);
  return g;
}

ProcessGroups::ProcessGroups(const Layout& layout, const Topology& topo) : layout_(layout), topo_(topo) {
  int world = 0;
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world));
  MONTA_CHECK(layout.world == world && topo.world_size == world,
              "layout of " + n2s(layout.world) + " ranks / topology of " + n2s(topo.world_size) + " ranks in a job of " +
                  n2s(world) + " ranks");
  const int me = topo.world_rank;
  for (GroupKind k : kGroupKinds) {
    const size_t i = size_t(k);
    members_[i] = k == GroupKind::node ? node_ranks(topo, me) : group_ranks(layout, k, me);
    // Colour = the group's lowest world rank, key = world rank, so the group rank is the position in members.
    comms_[i] = MpiCommunicator::split(MPI_COMM_WORLD, members_[i].front(), me, group_kind_name(k));
    const auto pos = std::find(members_[i].begin(), members_[i].end(), me) - members_[i].begin();
    MONTA_CHECK(comms_[i]->size() == int(members_[i].size()) && comms_[i]->rank() == int(pos),
                std::string(group_kind_name(k)) + " group: MPI split disagrees with the layout");
  }
}

ProcessGroups::~ProcessGroups() = default;

Communicator& ProcessGroups::get(GroupKind k) const { return *comms_[size_t(k)]; }

std::string ProcessGroups::layout_table() const { return format_layout_table(layout_, topo_); }

std::string format_layout_table(const Layout& l, const Topology& topo) {
  using engine::strf;
  std::string s = strf("parallel layout: %d ranks = tp %d x dp %d; ep %d, expert-dp %d, expert-tp %s; %d node%s%s\n",
                       l.world, l.tp, l.dp, l.ep, l.expert_dp, l.expert_tp ? "on" : "off", topo.num_nodes,
                       topo.num_nodes == 1 ? "" : "s", topo.emulated ? " (emulated)" : "");
  s += strf("  %5s %5s  %-24s %4s %4s %4s %4s\n", "rank", "node", "host", "tp", "dp", "ep", "edp");
  for (int r = 0; r < l.world; ++r) {
    const RankCoords c = rank_coords(l, r);
    const int node = r < int(topo.node_of_rank.size()) ? topo.node_of_rank[size_t(r)] : 0;
    const std::string host = node < int(topo.node_host.size()) ? topo.node_host[size_t(node)] : "?";
    s += strf("  %5d %5d  %-24s %4d %4d %4d %4d\n", r, node, host.c_str(), c.tp_idx, c.dp_idx, c.ep_idx,
              c.expert_dp_idx);
  }
  for (GroupKind k : kGroupKinds) {
    if (k == GroupKind::world) continue;
    std::string line = strf("  %-10s", (std::string(group_kind_name(k)) + ":").c_str());
    double worst_cross = 0;
    for (int r = 0; r < l.world; ++r) {
      const std::vector<int> g = k == GroupKind::node ? node_ranks(topo, r) : group_ranks(l, k, r);
      if (g.front() != r) continue;  // each group once, at its lowest rank
      line += " [";
      for (size_t i = 0; i < g.size(); ++i) {
        if (i) line += ' ';
        line += std::to_string(g[i]);
      }
      line += "]";
      if (int(topo.node_of_rank.size()) == l.world) worst_cross = std::max(worst_cross, cross_node_fraction(topo, g));
    }
    if (k != GroupKind::node) line += strf("  (max cross-node share %.0f%%)", 100.0 * worst_cross);
    s += line + "\n";
  }
  return s;
}

}  // namespace monta::comm
