// `monta prepare-data`: converts text / raw tokens / .npy into the HDF5 token format of data/.
#include <boost/program_options.hpp>
#include <iostream>

#include "app/commands.h"
#include "app/options.h"
#include "data/prepare.h"
#include "engine/check.h"
#include "model/checkpoint.h"

namespace po = boost::program_options;

namespace monta::app {

int cmd_prepare_data(int argc, char** argv) {
  data::PrepareArgs a;
  po::options_description desc("monta prepare-data options");
  desc.add_options()("help,h", "print this help")("input", po::value<std::string>(&a.input)->required(), "input file")(
      "output", po::value<std::string>(&a.output)->required(), "output HDF5 file")(
      "format", po::value<std::string>(&a.format)->default_value("auto"), "text | raw16 | raw32 | npy | auto (by extension)")(
      "vocab-size", po::value<int64_t>(&a.vocab_size)->default_value(0), "vocabulary size (0: 256 for text, else max id + 1)")(
      "eos-token", po::value<int64_t>(&a.eos_token)->default_value(-1), "end-of-sequence id stored as an attribute")(
      "force", po::bool_switch(&a.force), "replace --output if it exists");
  const po::variables_map vm = parse_command_line(argc, argv, desc, "prepare-data");
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  const std::string inside = model::ckpt_dir_containing(a.output);
  MONTA_USER_CHECK(inside.empty(), "prepare-data --output " + a.output + " lies inside the checkpoint directory " + inside +
                                       "; write it elsewhere");
  data::prepare_data(a);
  return 0;
}

}  // namespace monta::app
