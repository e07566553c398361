// Option table: one line per config key, shared by the INI parser, the CLI and the resolved-config dump.
#include "app/options.h"

#include <boost/program_options.hpp>
#include <fstream>
#include <iostream>
#include <sstream>

#include "engine/check.h"
#include "engine/log.h"

namespace po = boost::program_options;

namespace monta::app {

namespace {

// Visits every key with a reference to its field, so parsing and printing cannot drift apart.
template <class F>
void visit(model::Config& c, F&& f) {
  auto& m = c.model;
  f("model.vocab", m.vocab);
  f("model.hidden", m.hidden);
  f("model.layers", m.layers);
  f("model.heads", m.heads);
  f("model.kv_heads", m.kv_heads);
  f("model.ffn", m.ffn);
  f("model.experts", m.experts);
  f("model.top_k", m.top_k);
  f("model.seq_len", m.seq_len);
  f("model.capacity_factor", m.capacity_factor);
  f("model.min_capacity", m.min_capacity);
  f("model.rope_theta", m.rope_theta);
  f("model.norm_eps", m.norm_eps);
  f("model.init_std", m.init_std);
  f("model.aux_loss_coef", m.aux_loss_coef);
  f("model.z_loss_coef", m.z_loss_coef);
  auto& t = c.train;
  f("train.steps", t.steps);
  f("train.micro_batch", t.micro_batch);
  f("train.global_batch", t.global_batch);
  f("train.lr", t.lr);
  f("train.min_lr", t.min_lr);
  f("train.warmup_steps", t.warmup_steps);
  f("train.decay_steps", t.decay_steps);
  f("train.beta1", t.beta1);
  f("train.beta2", t.beta2);
  f("train.adam_eps", t.adam_eps);
  f("train.weight_decay", t.weight_decay);
  f("train.grad_clip", t.grad_clip);
  f("train.seed", t.seed);
  f("train.run_dir", t.run_dir);
  f("train.device", t.device);
  f("train.log_interval", t.log_interval);
  f("train.max_skipped", t.max_skipped);
  f("train.step_timeout_s", t.step_timeout_s);
  f("train.peak_tflops", t.peak_tflops);
  f("parallel.tp", c.parallel.tp);
  f("parallel.ep", c.parallel.ep);
  f("parallel.expert_tp", c.parallel.expert_tp);
  f("data.path", c.data.path);
  f("data.builtin_tokens", c.data.builtin_tokens);
  f("checkpoint.interval", c.checkpoint.interval);
  f("checkpoint.keep", c.checkpoint.keep);
  f("checkpoint.resume", c.checkpoint.resume);
  f("checkpoint.overwrite", c.checkpoint.overwrite);
  f("comm.exchange", c.comm.exchange);
  f("comm.chunks", c.comm.chunks);
  f("comm.emulate_nodes", c.comm.emulate_nodes);
  f("comm.links", c.comm.links);
  f("comm.auto_verify", c.comm.auto_verify);
}

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

ParsedConfig parse_train_options(int argc, char** argv) {
  ParsedConfig out;
  model::Config& c = out.config;
  po::options_description desc("monta train options (each also settable as `key = value` under [section] in --config)");
  desc.add_options()("help,h", "print this help")("config", po::value<std::string>(&out.config_path), "INI file")(
      "dry-run", po::bool_switch(&out.dry_run), "validate, print the config, sizes and memory needs, then exit");
  visit(c, [&](const char* key, auto& field) {
    using T = std::remove_reference_t<decltype(field)>;
    desc.add_options()(key, po::value<T>(&field)->default_value(field, to_text(field)), "");
  });
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    if (vm.count("help")) {
      std::cout << desc << "\n";
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
    po::store(parser.run(), vm);
    if (!vm.count("help")) po::notify(vm);
  } catch (const po::error& e) {
    engine::fail_user(std::string("bad option: ") + e.what() + " (see `monta " + command + " --help`)");
  }
  return vm;
}

std::vector<std::pair<std::string, std::string>> config_rows(const model::Config& c) {
  std::vector<std::pair<std::string, std::string>> rows;
  model::Config copy = c;
  visit(copy, [&](const char* key, auto& field) { rows.emplace_back(key, to_text(field)); });
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
