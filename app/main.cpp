// monta: entry point. `monta <subcommand> [options]`; every subcommand is a thin layer over the libraries.
#include <cstdio>
#include <cstring>
#include <string>

#include "app/commands.h"
#include "engine/check.h"

namespace {
void usage() {
  std::printf(
      "usage: monta <command> [options]\n"
      "  train          train a model (see `monta train --help`)\n"
      "  eval           validation loss of a checkpoint on held-out data (see `monta eval --help`)\n"
      "  prepare-data   convert text, raw uint16/uint32 tokens or .npy into an HDF5 token file\n"
      "  export         write one HDF5 file of full tensors from a sharded checkpoint\n"
      "  plan           rank layouts and exchange strategies for a cluster (cost model; no GPUs needed)\n"
      "  bench          benchmarks: `monta bench ops`, `monta bench layer`, `monta bench optimizer`, `monta bench exchange`, `monta bench checkpoint` (tables + JSON)\n"
      "  help           this message\n");
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "help") || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "train") return monta::app::cmd_train(argc - 1, argv + 1);
  if (cmd == "eval") return monta::app::cmd_eval(argc - 1, argv + 1);
  if (cmd == "prepare-data") return monta::app::cmd_prepare_data(argc - 1, argv + 1);
  if (cmd == "export") return monta::app::cmd_export(argc - 1, argv + 1);
  if (cmd == "plan") return monta::app::cmd_plan(argc - 1, argv + 1);
  if (cmd == "bench") return monta::app::cmd_bench(argc - 1, argv + 1);
  std::fprintf(stderr, "monta: error: unknown command '%s' (try `monta help`)\n", cmd.c_str());
  return 2;
}
