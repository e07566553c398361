// `monta export`: one HDF5 file of full logical tensors from a sharded checkpoint (any layout).
#include <boost/program_options.hpp>
#include <iostream>

#include "app/commands.h"
#include "app/options.h"
#include "engine/check.h"
#include "engine/log.h"
#include "model/checkpoint.h"

namespace po = boost::program_options;

namespace monta::app {

int cmd_export(int argc, char** argv) {
  std::string dir, out;
  bool force = false;
  po::options_description desc("monta export options");
  desc.add_options()("help,h", "print this help")("checkpoint", po::value<std::string>(&dir)->required(),
                                                  "checkpoint directory (run_dir/checkpoints/step_N)")(
      "out", po::value<std::string>(&out)->required(), "output HDF5 file (not inside a checkpoint directory)")(
      "force", po::bool_switch(&force), "replace --out if it exists");
  const po::variables_map vm = parse_command_line(argc, argv, desc, "export");
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  model::ckpt_export(dir, out, force);
  engine::log_info("wrote " + out);
  return 0;
}

}  // namespace monta::app
