// The parallel layout (TP innermost, EP carved out of DP) and the process groups built from it: one
// Communicator per group kind, each group's member world ranks, and the table rank 0 prints at start-up.
#pragma once
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/topology.h"

namespace monta::comm {

// world = tp * dp; experts: ep groups inside dp, each expert replicated expert_dp = dp / ep times.
struct Layout {
  int world = 1, tp = 1, ep = 1, dp = 1, expert_dp = 1;
  bool expert_tp = false;  // experts TP-split as well (expert-TP = TP) or whole on every TP rank
};

// Validates every divisibility before anything is allocated; each failure is a user error naming the numbers.
// n_kv_heads may be fewer than tp when tp % n_kv_heads == 0 (each KV head replicated on tp / n_kv_heads ranks).
Layout make_layout(int world, int tp, int ep, bool expert_tp, int n_experts, int n_heads, int n_kv_heads,
                   int64_t vocab, int64_t ffn);

enum class GroupKind { world, tp, dp, ep, expert_dp, node };
inline constexpr std::array<GroupKind, 6> kGroupKinds = {GroupKind::world, GroupKind::tp,        GroupKind::dp,
                                                         GroupKind::ep,    GroupKind::expert_dp, GroupKind::node};
const char* group_kind_name(GroupKind k);

// Coordinates of a world rank: r = dp_idx * tp + tp_idx.
struct RankCoords {
  int tp_idx = 0, dp_idx = 0;
  int ep_idx = 0;         // rank in the EP group: dp_idx % ep
  int expert_dp_idx = 0;  // rank in the expert-DP group: dp_idx / ep
};
RankCoords rank_coords(const Layout& l, int world_rank);

// World ranks of world_rank's group of kind k, ascending (the position of a rank is its group rank). Pure; for
// GroupKind::node use node_ranks (nodes come from the topology, not the layout).
std::vector<int> group_ranks(const Layout& l, GroupKind k, int world_rank);
std::vector<int> node_ranks(const Topology& topo, int world_rank);

class ProcessGroups {
 public:
  // Collective over MPI_COMM_WORLD: MPI_Comm_split for every kind. layout.world must equal the MPI world size.
  ProcessGroups(const Layout& layout, const Topology& topo);
  ~ProcessGroups();
  ProcessGroups(const ProcessGroups&) = delete;
  ProcessGroups& operator=(const ProcessGroups&) = delete;

  Communicator& world() const { return get(GroupKind::world); }
  Communicator& tp() const { return get(GroupKind::tp); }
  Communicator& dp() const { return get(GroupKind::dp); }
  Communicator& ep() const { return get(GroupKind::ep); }
  Communicator& expert_dp() const { return get(GroupKind::expert_dp); }
  Communicator& node() const { return get(GroupKind::node); }
  Communicator& get(GroupKind k) const;
  // World ranks of this rank's group of kind k, in group-rank order.
  const std::vector<int>& members(GroupKind k) const { return members_[size_t(k)]; }

  const Layout& layout() const { return layout_; }
  const Topology& topology() const { return topo_; }
  RankCoords coords() const { return rank_coords(layout_, topo_.world_rank); }

  // Which ranks form each group and the node of each rank; same text on every rank (rank 0 prints it).
  std::string layout_table() const;

 private:
  Layout layout_;
  Topology topo_;
  std::array<std::unique_ptr<Communicator>, kGroupKinds.size()> comms_;
  std::array<std::vector<int>, kGroupKinds.size()> members_;
};

// layout_table() as a pure function of layout and topology.
std::string format_layout_table(const Layout& l, const Topology& topo);

}  // namespace monta::comm
