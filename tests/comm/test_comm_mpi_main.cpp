// main() of test_comm_mpi: MPI up through runtime_init, errors thrown (not aborted) so a test can expect them,
// gtest's progress from rank 0 only, other ranks print just their failures, and any rank's failure fails all.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <string>

#include "comm/runtime.h"
#include "engine/check.h"
#include "tests/mpi_failure_printer.h"

int main(int argc, char** argv) {
  monta::comm::runtime_init(&argc, &argv);
  monta::engine::install_throwing_handler();
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = monta::comm::runtime_world_rank();
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new monta::test::FailurePrinter(rank));
  }
  const int mine = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int failed_ranks = 0;
  MPI_Allreduce(&mine, &failed_ranks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0 && failed_ranks > 0)
    std::fprintf(stderr, "test_comm_mpi: tests failed on %d of %d ranks\n", failed_ranks,
                 monta::comm::runtime_world_size());
  monta::comm::runtime_finalize();
  return failed_ranks > 0 ? 1 : 0;
}
