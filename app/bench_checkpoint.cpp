// `monta bench checkpoint`: parses the options (any `monta train` key overrides the config) and runs
// model::bench_checkpoint (model/checkpoint_bench.h).
#include <boost/program_options.hpp>
#include <iostream>

#include "app/commands.h"
#include "app/options.h"
#include "comm/runtime.h"
#include "engine/check.h"
#include "engine/files.h"
#include "model/checkpoint_bench.h"

namespace po = boost::program_options;

namespace monta::app {
namespace {

int run(int argc, char** argv) {
  std::string config, dir, json, async_s;
  po::options_description desc(
      "monta bench checkpoint options (run under mpirun for several ranks; any `monta train` key such as "
      "--model.layers or --train.device overrides the config)");
  desc.add_options()("help,h", "print this help")("config", po::value(&config), "model INI (e.g. configs/layer2x70b.ini)")(
      "dir", po::value(&dir), "directory to write in (created; must be empty or absent; removed afterwards); default "
                              "<train.run_dir>/bench_checkpoint")(
      "json", po::value(&json), "write the results as JSON here");
  po::variables_map vm;
  const std::vector<std::string> rest = parse_command_line_with_overrides(argc, argv, desc, "bench checkpoint", vm);
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  const model::Config c = config_with_overrides("bench checkpoint", config, rest);
  if (!json.empty()) engine::check_output_path(json, "--json");
  model::bench_checkpoint(c, config, config_ini(c), dir, json);
  return 0;
}

}  // namespace

int cmd_bench_checkpoint(int argc, char** argv) {
  comm::runtime_init(&argc, &argv);
  const int rc = run(argc, argv);
  comm::runtime_finalize();
  return rc;
}

}  // namespace monta::app
