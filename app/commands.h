// The subcommands; each takes argv with the subcommand name at argv[0] and returns the exit code.
#pragma once
#include <string>

#include "comm/cost_model.h"

namespace monta::app {
int cmd_train(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_prepare_data(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_export(int argc, char** argv);
int cmd_plan(int argc, char** argv);
// `monta bench exchange` (app/bench_exchange.cpp); argv[0] is "exchange".
int cmd_bench_exchange(int argc, char** argv);
// `monta bench checkpoint` (app/bench_checkpoint.cpp); argv[0] is "checkpoint".
int cmd_bench_checkpoint(int argc, char** argv);

// A cluster description from an INI file ([cluster] section) or inline `nodes=2,gpus_per_node=8,...`
// (app/plan_cmd.cpp); `monta plan` and `monta bench exchange` read it.
comm::Cluster load_cluster(const std::string& spec);
}  // namespace monta::app
