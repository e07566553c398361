// What test_nccl's main found out before any test ran: whether NCCL can run here (one GPU per rank on every
// host, the same answer on every rank) and whether the run emulates nodes (NCCL over sockets between them).
#pragma once
#include <string>

namespace monta::test {

bool nccl_usable();                   // identical on every rank, so all skip or none does
const std::string& nccl_skip_reason();
int emulate_nodes();                  // MONTA_TEST_EMULATE_NODES, 0 when unset
void release_test_comms();            // frees cached communicators before MPI_Finalize (test_nccl.cpp)

}  // namespace monta::test
