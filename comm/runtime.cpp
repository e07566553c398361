// MPI bootstrap and the abort hook: the one place that starts and stops MPI for a monta process.
#include "comm/runtime.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdlib>

#include "engine/check.h"
#include "engine/parse.h"
#include "engine/log.h"

namespace monta::comm {
namespace {

bool g_active = false;
bool g_owns_mpi = false;
int g_rank = 0, g_world = 1, g_local = 0;
std::string g_host;

int parse_env_int(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return -1;
  const auto x = engine::try_parse_int(v);
  return x && *x >= 0 ? *x : -1;
}

}  // namespace

void runtime_abort(int code) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (init && !fin && g_world > 1) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

int env_local_rank() {
  int r = parse_env_int("OMPI_COMM_WORLD_LOCAL_RANK");
  if (r < 0) r = parse_env_int("SLURM_LOCALID");
  return r;
}

void runtime_init(int* argc, char*** argv) {
  if (g_active) return;
  int init = 0;
  MPI_CHECK(MPI_Initialized(&init));
  if (!init) {
    int provided = 0;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided));
    g_owns_mpi = true;
    // Collectives are issued by one thread at a time (the step thread); SERIALIZED is what we need.
    if (provided < MPI_THREAD_SERIALIZED) {
      MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
      if (g_rank == 0)
        engine::log_warn("MPI provides thread level " + std::to_string(provided) +
                         ", below MPI_THREAD_SERIALIZED; do not issue collectives from more than one thread");
    }
  }
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &g_rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &g_world));
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  g_host = host;

  MPI_Comm shared;
  MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_rank, MPI_INFO_NULL, &shared));
  int shared_rank = 0, shared_size = 1;
  MPI_CHECK(MPI_Comm_rank(shared, &shared_rank));
  MPI_CHECK(MPI_Comm_size(shared, &shared_size));
  MPI_CHECK(MPI_Comm_free(&shared));
  const int env = env_local_rank();
  g_local = (env >= 0 && env < shared_size) ? env : shared_rank;

  engine::set_abort_hook(runtime_abort);
  engine::set_error_identity(g_rank, g_world, g_host);
  engine::set_log_rank(g_rank, g_world);
  g_active = true;
}

void runtime_finalize() {
  if (!g_active) return;
  g_active = false;
  engine::set_abort_hook(nullptr);
  int fin = 0;
  MPI_Finalized(&fin);
  if (g_owns_mpi && !fin) MPI_CHECK(MPI_Finalize());
  g_owns_mpi = false;
}

bool runtime_active() { return g_active; }
int runtime_world_rank() { return g_rank; }
int runtime_world_size() { return g_world; }
int runtime_local_rank() { return g_local; }
const std::string& runtime_host() { return g_host; }

}  // namespace monta::comm
