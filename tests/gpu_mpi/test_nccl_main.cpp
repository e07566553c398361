// main() of test_nccl: MPI up through runtime_init, a throwing error handler, one GPU per rank chosen by local
// rank before any NCCL call (or every test skipped, on every rank, when a host has fewer GPUs than ranks, unless
// no emulated node has more ranks than GPUs: then ranks of different nodes share GPUs, local rank modulo the GPU
// count),
// emulated nodes when MONTA_TEST_EMULATE_NODES is set, gtest's progress from rank 0 only, and any rank's
// failure fails every rank (as tests/comm/test_comm_mpi_main.cpp).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "comm/cuda/nccl_communicator.h"
#include "comm/runtime.h"
#include "comm/topology.h"
#include "engine/check.h"
#include "tests/mpi_failure_printer.h"
#include "engine/memory.h"
#include "gpu_mpi_env.h"

namespace monta::test {
namespace {

bool g_usable = false;
std::string g_reason;
int g_emulate = 0;


// Ranks sharing this host, from MPI (not the launcher's env, which a plain ./test_nccl lacks).
int ranks_on_host() {
  MPI_Comm shared;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &shared);
  int n = 1;
  MPI_Comm_size(shared, &n);
  MPI_Comm_free(&shared);
  return n;
}

// One GPU per rank, or emulated nodes of at most as many ranks as GPUs (monta's select_gpu rule): ranks of
// different emulated nodes may share a GPU, since NCCL sees distinct hosts (sockets between them). That lets one
// GPU run the multi-rank tests (a node per rank), and 2 GPUs the 2 nodes x 2 ranks layout.
void decide_usable() {
  const int gpus = engine::cuda_device_count(), here = ranks_on_host();
  const int world = comm::runtime_world_size();
  const comm::Topology topo =
      g_emulate > 0 ? comm::emulated_topology(comm::runtime_world_rank(), world, g_emulate, "test") : comm::Topology{};
  int mine = comm::gpu_per_rank_valid(topo, here, gpus) ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  g_usable = all == 1;
  if (!g_usable)
    g_reason = gpus == 0 ? "no GPU visible"
                         : std::to_string(here) + " ranks on a host with " + std::to_string(gpus) +
                               " GPUs (or fewer elsewhere); NCCL needs one GPU per rank of a node";
  if (g_usable) engine::cuda_set_device(comm::runtime_local_rank() % gpus);
}

}  // namespace

bool nccl_usable() { return g_usable; }
const std::string& nccl_skip_reason() { return g_reason; }
int emulate_nodes() { return g_emulate; }

}  // namespace monta::test

int main(int argc, char** argv) {
  using namespace monta;
  comm::runtime_init(&argc, &argv);
  engine::install_throwing_handler();
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = comm::runtime_world_rank();
  if (const char* e = std::getenv("MONTA_TEST_EMULATE_NODES")) test::g_emulate = std::atoi(e);
  test::decide_usable();
  // NCCL reads its environment at its first call: emulated nodes must be set up before any test runs.
  if (test::g_emulate > 0) comm::prepare_nccl_env(comm::discover_topology(test::g_emulate));
  if (rank == 0 && !test::g_usable) std::fprintf(stderr, "test_nccl: skipping NCCL tests: %s\n", test::g_reason.c_str());
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new test::FailurePrinter(rank));
  }
  const int mine = RUN_ALL_TESTS() != 0 ? 1 : 0;
  test::release_test_comms();
  int failed_ranks = 0;
  MPI_Allreduce(&mine, &failed_ranks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0 && failed_ranks > 0)
    std::fprintf(stderr, "test_nccl: tests failed on %d of %d ranks\n", failed_ranks, comm::runtime_world_size());
  comm::runtime_finalize();
  return failed_ranks > 0 ? 1 : 0;
}
