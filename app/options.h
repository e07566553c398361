// Command-line and INI options (Boost.Program_options): every config key is `section.key`, readable from
// the `[section] key = value` INI file given by --config and overridable on the command line.
#pragma once
#include <boost/program_options.hpp>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"

namespace monta::app {

struct ParsedConfig {
  model::Config config;
  std::string config_path;
  bool dry_run = false;
  bool help = false;
};

// The command line of a subcommand (argv[0] is its name) against desc and, if given, positional names. With --help
// present the required options are not enforced (the caller prints desc). A bad option is a user error that points
// at `monta <command> --help`.
boost::program_options::variables_map parse_command_line(
    int argc, char** argv, const boost::program_options::options_description& desc, const std::string& command,
    const boost::program_options::positional_options_description* positional = nullptr);

// Parses `monta train` arguments (argv[0] is the subcommand). Bad keys or values: user error.
ParsedConfig parse_train_options(int argc, char** argv);
// The resolved config as (key, value) rows, in section order: printed as a table and saved as INI.
std::vector<std::pair<std::string, std::string>> config_rows(const model::Config& c);
std::string config_table(const model::Config& c);
std::string config_ini(const model::Config& c);

}  // namespace monta::app
