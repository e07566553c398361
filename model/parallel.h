// This rank's place in the parallel layout and the communicators the model calls (all null on one rank).
#pragma once
#include "comm/communicator.h"

namespace monta::comm {
class Exchange;
class ProcessGroups;
}

namespace monta::model {

struct ParallelContext {
  int tp = 1, tp_rank = 0;
  int ep = 1, ep_rank = 0;
  int dp = 1, dp_rank = 0;
  int expert_dp = 1, expert_dp_rank = 0;
  bool expert_tp = true;
  comm::Communicator* world = nullptr;
  comm::Communicator* tp_comm = nullptr;
  comm::Communicator* dp_comm = nullptr;
  comm::Communicator* ep_comm = nullptr;
  comm::Communicator* expert_dp_comm = nullptr;
  comm::Exchange* exchange = nullptr;  // moves the (E, C, H) dispatch buffer over EP (and TP); null when ep == 1
};

// Sizes, ranks and (MPI) communicators of this rank's groups; the exchange is attached separately.
ParallelContext context_from_groups(const comm::ProcessGroups& g, bool expert_tp);

}  // namespace monta::model
