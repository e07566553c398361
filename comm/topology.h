// Topology: which world rank sits on which node, found by a shared-memory split of MPI_COMM_WORLD or
// emulated (--emulate-nodes N: N virtual nodes of consecutive ranks) so one host can test a two-tier cluster.
#pragma once
#include <span>
#include <string>
#include <vector>

namespace monta::comm {

struct Topology {
  int world_rank = 0, world_size = 1;
  int node = 0, num_nodes = 1;        // this rank's node; nodes are numbered by their lowest world rank
  int local_rank = 0, local_size = 1; // place among the ranks of this node
  std::string host;                   // this rank's hostname (emulated: "<host>/v<node>")
  std::vector<int> node_of_rank;      // (world_size) node of every world rank
  std::vector<std::string> node_host; // (num_nodes) hostname of every node (extension: for the layout table)
  bool emulated = false;

  bool same_node(int a, int b) const { return node_of_rank[size_t(a)] == node_of_rank[size_t(b)]; }
};

// Collective over MPI_COMM_WORLD (runtime_init first). emulate_nodes = 0: real nodes. N > 0: N virtual nodes
// of world/N consecutive ranks; world % N != 0 or N < 0 is a user error, raised before any communication.
Topology discover_topology(int emulate_nodes);

// The emulated topology as a pure function (no MPI), for tests and the planner's what-if tables.
Topology emulated_topology(int world_rank, int world_size, int nodes, const std::string& host);

// GPU of a rank: host-local rank modulo the host's GPU count. Whether that is valid for NCCL, which refuses two
// ranks of one host (as it sees hosts) on one GPU: yes when the host has at most `gpus` ranks, or when nodes
// are emulated (each its own NCCL host) and none has more ranks than `gpus`, since a node's ranks are consecutive
// and so land on distinct GPUs. ranks_on_host: the real host's rank count.
bool gpu_per_rank_valid(const Topology& topo, int ranks_on_host, int gpus);
// Selects this rank's GPU, local_rank modulo the GPU count, before any NCCL call. Ranks outnumbering the GPUs of a
// host are a user error unless gpu_per_rank_valid allows the sharing (emulated nodes).
void select_gpu(const Topology& topo, int local_rank);

// Share of ordered pairs (a, b), a != b, of the group whose ranks sit on different nodes; 0 for groups of < 2.
double cross_node_fraction(const Topology& topo, std::span<const int> group_world_ranks);

}  // namespace monta::comm
