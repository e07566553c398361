// Option table: one line per config key, shared by the INI parser, the CLI and the resolved-config dump.
#include "app/options.h"

#include <boost/program_options.hpp>
#include <fstream>
#include <iostream>
#include <sstream>

#include "engine/check.h"
#include "engine/log.h"
#include "model/config_keys.h"

namespace po = boost::program_options;

namespace monta::app {

namespace {

template <class T>
std::string to_text(const T& v) {
  std::ostringstream os;
  if constexpr (std::is_same_v<T, bool>)
    os << (v ? "true" : "false");
  else
    os << v;
  return os.str();
}

}  // namespace

// A stray word on the command line (`monta train tiny.ini`) would be ignored by Boost and the defaults would train;
// refuse it, with the likely intent as the hint.
static void refuse_positional(const po::parsed_options& parsed, const std::string& command) {
  for (const auto& o : po::collect_unrecognized(parsed.options, po::include_positional)) {
    const bool ini = o.size() > 4 && o.substr(o.size() - 4) == ".ini";
    engine::fail_user("unexpected argument '" + o + "' for `monta " + command + "`" +
                      (ini ? " (did you mean --config " + o + "?)" : " (options start with --; see `monta " + command + " --help`)"));
  }
}

ParsedConfig parse_train_options(int argc, char** argv) {
  ParsedConfig out;
  model::Config& c = out.config;
  bool markdown = false;
  po::options_description desc("monta train options (each also settable as `key = value` under [section] in --config)");
  desc.add_options()("help,h", "print this help")("help-markdown", po::bool_switch(&markdown),
                                                  "print the key table as Markdown (docs/config.md)")(
      "config", po::value<std::string>(&out.config_path), "INI file")(
      "dry-run", po::bool_switch(&out.dry_run), "validate, print the config, sizes and memory needs, then exit");
  model::visit_config_keys(c, [&](const char* key, auto& field, const char* help, const model::KeyRange& r) {
    using T = std::remove_reference_t<decltype(field)>;
    const std::string text = std::string(help) + (std::is_same_v<T, bool> ? "" : "; valid: " + r.describe());
    desc.add_options()(key, po::value<T>(&field)->default_value(field, to_text(field)), text.c_str());
  });
  po::variables_map vm;
  try {
    const std::string command = argc > 0 ? argv[0] : "train";
    auto parsed = po::command_line_parser(argc, argv).options(desc).run();
    refuse_positional(parsed, command);
    po::store(parsed, vm);
    if (vm.count("help") || vm["help-markdown"].as<bool>()) {
      if (vm["help-markdown"].as<bool>())
        std::cout << model::config_keys_markdown();
      else
        std::cout << desc << "\nEvery key, its default and valid range: docs/config.md\n";
      out.help = true;
      return out;
    }
    if (vm.count("config")) {
      const std::string path = vm["config"].as<std::string>();
      std::ifstream in(path);
      MONTA_USER_CHECK(in.good(), "cannot open config file '" + path + "' (check the path)");
      po::store(po::parse_config_file(in, desc, false), vm);
    }
    po::notify(vm);
  } catch (const po::error& e) {
    engine::fail_user(std::string("bad option: ") + e.what() + " (see `monta train --help`)");
  }
  return out;
}

po::variables_map parse_command_line(int argc, char** argv, const po::options_description& desc,
                                     const std::string& command, const po::positional_options_description* positional) {
  po::variables_map vm;
  try {
    po::command_line_parser parser(argc, argv);
    parser.options(desc);
    if (positional) parser.positional(*positional);
    auto parsed = parser.run();
    if (!positional) refuse_positional(parsed, command);
    po::store(parsed, vm);
    if (!vm.count("help")) po::notify(vm);
  } catch (const po::error& e) {
    engine::fail_user(std::string("bad option: ") + e.what() + " (see `monta " + command + " --help`)");
  }
  return vm;
}

std::vector<std::string> parse_command_line_with_overrides(int argc, char** argv, const po::options_description& desc,
                                                           const std::string& command, po::variables_map& vm) {
  try {
    auto parsed = po::command_line_parser(argc, argv).options(desc).allow_unregistered().run();
    po::store(parsed, vm);
    po::notify(vm);
    return po::collect_unrecognized(parsed.options, po::include_positional);
  } catch (const po::error& e) {
    engine::fail_user(std::string("bad option: ") + e.what() + " (see `monta " + command + " --help`)");
  }
}

model::Config config_with_overrides(const std::string& command, const std::string& ini,
                                    const std::vector<std::string>& overrides) {
  std::vector<std::string> args = {command};
  if (!ini.empty()) args.insert(args.end(), {"--config", ini});
  args.insert(args.end(), overrides.begin(), overrides.end());
  std::vector<char*> av;
  for (auto& a : args) av.push_back(a.data());
  return parse_train_options(int(av.size()), av.data()).config;
}

std::vector<std::pair<std::string, std::string>> config_rows(const model::Config& c) {
  std::vector<std::pair<std::string, std::string>> rows;
  model::visit_config_keys(c, [&](const char* key, const auto& field, const char*, const model::KeyRange&) {
    rows.emplace_back(key, to_text(field));
  });
  return rows;
}

std::string config_table(const model::Config& c) {
  std::string s;
  for (auto& [k, v] : config_rows(c)) s += engine::strf("  %-26s %s\n", k.c_str(), v.c_str());
  return s;
}

std::string config_ini(const model::Config& c) {
  std::string s, section;
  for (auto& [k, v] : config_rows(c)) {
    auto dot = k.find('.');
    std::string sec = k.substr(0, dot);
    if (sec != section) {
      s += (section.empty() ? "[" : "\n[") + sec + "]\n";
      section = sec;
    }
    s += k.substr(dot + 1) + " = " + v + "\n";
  }
  return s;
}

}  // namespace monta::app
