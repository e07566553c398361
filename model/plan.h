// The planner over a model config: comm::make_plan fed with the trainer's own layout rule (model::layout_problem),
// memory (model::rank_footprint) and FLOPs (model::train_flops_per_token), so `monta plan` never ranks a layout
// `monta train` refuses, and plans with the bytes `train` allocates.
#pragma once
#include "comm/planner.h"
#include "model/config.h"

namespace monta::model {

comm::Plan plan_layouts(const Config& c, const comm::Cluster& cluster, int max_chunks, bool only_fitting);
// The chosen row (or why there is none) as one line.
std::string plan_pick_line(const comm::Plan& p, const comm::Cluster& cluster);

}  // namespace monta::model
