// The planner over a model config: comm::make_plan fed with the trainer's own layout rule (model::layout_problem),
// memory (model::rank_footprint) and FLOPs (model::train_flops_per_token), so `monta plan` never ranks a layout
// `monta train` refuses, and plans with the bytes `train` allocates.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "comm/planner.h"
#include "model/config.h"

namespace monta::model {

comm::Plan plan_layouts(const Config& c, const comm::Cluster& cluster, int max_chunks, bool only_fitting);
// The memory options the planner compares: each a name and the config keys it sets (train.recompute modes, and the
// optimizer's memory options in combination).
struct MemoryOption {
  std::string name;
  std::vector<std::pair<std::string, std::string>> keys;  // config key -> value
};
std::vector<MemoryOption> memory_options();
// One line per memory option applied on top of the config: the best layout that fits (its memory per GPU and
// predicted step) or, when none fits, the least memory per GPU of any layout.
std::string plan_memory_options(const Config& c, const comm::Cluster& cluster, int max_chunks);
// The chosen row (or why there is none) as one line.
std::string plan_pick_line(const comm::Plan& p, const comm::Cluster& cluster);

}  // namespace monta::model
