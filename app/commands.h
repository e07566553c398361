// The subcommands; each takes argv with the subcommand name at argv[0] and returns the exit code.
#pragma once

namespace monta::app {
int cmd_train(int argc, char** argv);
int cmd_prepare_data(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_export(int argc, char** argv);
}  // namespace monta::app
