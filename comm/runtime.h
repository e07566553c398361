// MPI bootstrap: initialises MPI (thread level SERIALIZED or better), makes every fatal error abort the whole
// job (MPI_Abort) so no rank waits forever in a collective, and tags errors and logs with rank and host.
#pragma once
#include <string>

namespace monta::comm {

// Call once, first thing in main. If MPI is already initialised (by a test harness) it is adopted, not
// re-initialised, and runtime_finalize() then leaves it alone.
void runtime_init(int* argc, char*** argv);
// Finalises MPI if runtime_init started it; a no-op when inactive.
void runtime_finalize();
bool runtime_active();
// The abort hook runtime_init installs: MPI_Abort on a multi-rank job (so no rank waits in a collective), then
// exit. Other hooks (NCCL's) run their own cleanup and chain to it.
[[noreturn]] void runtime_abort(int exit_code);

int runtime_world_rank();
int runtime_world_size();
// Rank among the processes of this host: OMPI_COMM_WORLD_LOCAL_RANK, else SLURM_LOCALID, else the rank in
// MPI_COMM_TYPE_SHARED (the env values are available before MPI_Init and are what launchers pin GPUs by).
int runtime_local_rank();
const std::string& runtime_host();

// Local rank from the launcher's environment, or -1 when neither Open MPI nor Slurm set one. Usable before
// runtime_init (to pick a GPU before MPI touches CUDA).
int env_local_rank();

}  // namespace monta::comm
