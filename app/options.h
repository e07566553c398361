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

// The command line of a subcommand that also takes `monta train` keys: its own options (desc) are stored in vm, and
// every other word is returned, for config_with_overrides. A bad option of its own is a user error.
std::vector<std::string> parse_command_line_with_overrides(int argc, char** argv,
                                                           const boost::program_options::options_description& desc,
                                                           const std::string& command,
                                                           boost::program_options::variables_map& vm);
// A config through `monta train`'s parser: the INI file (if any), then the overrides, so keys mean the same thing in
// every subcommand.
model::Config config_with_overrides(const std::string& command, const std::string& ini,
                                    const std::vector<std::string>& overrides);

// Parses `monta train` arguments (argv[0] is the subcommand). Bad keys or values: user error.
ParsedConfig parse_train_options(int argc, char** argv);
// The resolved config as (key, value) rows, in section order: printed as a table and saved as INI.
std::vector<std::pair<std::string, std::string>> config_rows(const model::Config& c);
std::string config_table(const model::Config& c);
std::string config_ini(const model::Config& c);

}  // namespace monta::app
