// Builds this rank's parallel context from the config: topology, validated layout, process groups and the
// MoE token exchange. Owns the communicators the model borrows.
#pragma once
#include <memory>
#include <string>

#include "comm/exchange.h"
#include "comm/groups.h"
#include "model/config.h"
#include "model/parallel.h"

namespace monta::app {

struct ParallelSetup {
  model::ParallelContext ctx;
  std::unique_ptr<comm::ProcessGroups> groups;
  std::unique_ptr<comm::Exchange> exchange;
  std::string layout_table;
  int local_rank = 0;
};

// Validates c against the world size (user errors before anything is allocated), then builds the groups.
ParallelSetup setup_parallel(const model::Config& c);
// Builds the MoE token exchange of the configured strategy (when ep > 1) for activations of dtype act.
void attach_exchange(ParallelSetup& ps, const model::Config& c, engine::Device device, engine::DType act);

}  // namespace monta::app
