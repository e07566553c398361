// Topology discovery: real nodes from MPI_COMM_TYPE_SHARED, or virtual nodes of consecutive ranks.
#include "comm/topology.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "comm/runtime.h"
#include "engine/check.h"
#include "engine/log.h"
#include "engine/memory.h"

namespace monta::comm {
namespace {

constexpr int kHostLen = 256;

std::string this_host() {
  char host[kHostLen] = {0};
  if (gethostname(host, kHostLen - 1) != 0) return "unknown";
  return host;
}

void check_emulate(int world_size, int nodes) {
  MONTA_USER_CHECK(nodes >= 0, "--emulate-nodes must be 0 (real nodes) or a positive number of virtual nodes, not " +
                                   std::to_string(nodes) + ".");
  MONTA_USER_CHECK(nodes == 0 || world_size % nodes == 0,
                   "--emulate-nodes " + std::to_string(nodes) + " does not divide the " + std::to_string(world_size) +
                       " ranks of this job; pick a number of virtual nodes that divides the world size.");
}

}  // namespace

bool gpu_per_rank_valid(const Topology& topo, int ranks_on_host, int gpus) {
  if (gpus <= 0) return false;
  return ranks_on_host <= gpus || (topo.emulated && topo.local_size <= gpus);
}

Topology emulated_topology(int world_rank, int world_size, int nodes, const std::string& host) {
  check_emulate(world_size, nodes);
  MONTA_CHECK(nodes > 0 && world_rank >= 0 && world_rank < world_size, "emulated topology: bad rank or node count");
  const int per = world_size / nodes;
  Topology t;
  t.world_rank = world_rank;
  t.world_size = world_size;
  t.node = world_rank / per;
  t.num_nodes = nodes;
  t.local_rank = world_rank % per;
  t.local_size = per;
  t.emulated = true;
  t.node_of_rank.resize(size_t(world_size));
  for (int r = 0; r < world_size; ++r) t.node_of_rank[size_t(r)] = r / per;
  for (int n = 0; n < nodes; ++n) t.node_host.push_back(host + "/v" + std::to_string(n));
  t.host = t.node_host[size_t(t.node)];
  return t;
}

Topology discover_topology(int emulate_nodes) {
  int rank = 0, world = 1;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world));
  check_emulate(world, emulate_nodes);
  const std::string host = this_host();
  if (emulate_nodes > 0) return emulated_topology(rank, world, emulate_nodes, host);

  MPI_Comm shared;
  MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &shared));
  Topology t;
  t.world_rank = rank;
  t.world_size = world;
  t.host = host;
  MPI_CHECK(MPI_Comm_rank(shared, &t.local_rank));
  MPI_CHECK(MPI_Comm_size(shared, &t.local_size));
  int leader = rank;  // lowest world rank on this node names it
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &leader, 1, MPI_INT, MPI_MIN, shared));
  MPI_CHECK(MPI_Comm_free(&shared));

  std::vector<int> leaders(size_t(world), 0);
  MPI_CHECK(MPI_Allgather(&leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, MPI_COMM_WORLD));
  std::vector<char> hosts(size_t(world) * kHostLen, 0);
  char mine[kHostLen] = {0};
  std::strncpy(mine, host.c_str(), kHostLen - 1);
  MPI_CHECK(MPI_Allgather(mine, kHostLen, MPI_CHAR, hosts.data(), kHostLen, MPI_CHAR, MPI_COMM_WORLD));

  std::vector<int> uniq = leaders;
  std::sort(uniq.begin(), uniq.end());
  uniq.erase(std::unique(uniq.begin(), uniq.end()), uniq.end());
  t.num_nodes = int(uniq.size());
  t.node_of_rank.resize(size_t(world));
  for (int r = 0; r < world; ++r)
    t.node_of_rank[size_t(r)] = int(std::lower_bound(uniq.begin(), uniq.end(), leaders[size_t(r)]) - uniq.begin());
  for (int l : uniq) t.node_host.emplace_back(&hosts[size_t(l) * kHostLen]);
  t.node = t.node_of_rank[size_t(rank)];
  t.emulated = false;
  return t;
}

double cross_node_fraction(const Topology& topo, std::span<const int> group_world_ranks) {
  const size_t n = group_world_ranks.size();
  if (n < 2) return 0.0;
  int64_t cross = 0;
  for (size_t a = 0; a < n; ++a)
    for (size_t b = 0; b < n; ++b)
      if (a != b && !topo.same_node(group_world_ranks[a], group_world_ranks[b])) ++cross;
  return double(cross) / double(n * (n - 1));
}

void select_gpu(const comm::Topology& topo, int local_rank) {
  // Before any NCCL call: NCCL binds each communicator to the device current at its creation.
  const int gpus = engine::cuda_device_count(), world = runtime_world_size();
  MONTA_USER_CHECK(gpus > 0, "train.device = cuda but no CUDA device is visible; use --train.device cpu");
  // GPU = local rank modulo the GPU count. Ranks may share a GPU when they sit on different emulated nodes
  // (gpu_per_rank_valid): 2 nodes x 2 ranks run on 2 GPUs, a node per rank on one GPU.
  MONTA_USER_CHECK(gpu_per_rank_valid(topo, local_rank + 1, gpus),
                   "local rank " + std::to_string(local_rank) + " on " + runtime_host() +
                       " has no GPU of its own (" + std::to_string(gpus) +
                       " visible); NCCL needs one GPU per rank of a node: launch at most one rank per GPU, emulate "
                       "nodes of at most " + std::to_string(gpus) + " ranks (--comm.emulate_nodes " +
                       std::to_string((world + gpus - 1) / gpus) + " or more; GPUs then time-shared), or use "
                       "--train.device cpu");
  if (local_rank == gpus)
    engine::log_warn("ranks share GPUs (each GPU holds ranks of different emulated nodes): timings are not per-GPU");
  engine::cuda_set_device(local_rank % gpus);
}

}  // namespace monta::comm
