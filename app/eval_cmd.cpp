// `monta eval`: the validation loss of a checkpoint, on the held-out data of its run (or on a given token file), in
// whatever layout this launch's world allows (the checkpoint reshards on load, as on resume); printed, and written
// as JSON with --json. The run's config.ini (saved in every checkpoint) supplies the model and the data.
#include <boost/program_options.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <vector>

#include "app/commands.h"
#include "app/options.h"
#include "model/parallel_setup.h"
#include "app/validation.h"
#include "comm/runtime.h"
#include "engine/check.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "model/checkpoint.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace monta::app {

using engine::log_info;
using engine::strf;

namespace {

struct EvalArgs {
  std::string checkpoint, data_path, json;
  int64_t eval_steps = 0;  // 0: the run's train.eval_steps
  std::vector<std::string> overrides;  // any other `--section.key value`, applied over the checkpoint's config
  bool help = false;
};

EvalArgs parse_eval_args(int argc, char** argv) {
  EvalArgs a;
  po::options_description desc(
      "monta eval options (any `--section.key value` of `monta train` also applies, over the checkpoint's config; "
      "the layout defaults to tp 1, ep 1)");
  desc.add_options()("help,h", "print this help")("checkpoint", po::value<std::string>(&a.checkpoint),
                                                  "checkpoint directory (run_dir/checkpoints/step_N)")(
      "data.path", po::value<std::string>(&a.data_path), "evaluate on this whole token file instead of the run's "
                                                         "held-out data")(
      "eval_steps", po::value<int64_t>(&a.eval_steps), "global batches to evaluate (default: the run's train.eval_steps)")(
      "json", po::value<std::string>(&a.json), "also write the result to this JSON file");
  po::variables_map vm;
  a.overrides = parse_command_line_with_overrides(argc, argv, desc, "eval", vm);
  a.help = vm.count("help") > 0;
  if (a.help) std::cout << desc << "\n";
  MONTA_USER_CHECK(a.help || !a.checkpoint.empty(), "monta eval needs --checkpoint DIR (see `monta eval --help`)");
  return a;
}

bool overridden(const EvalArgs& a, const std::string& key) {
  for (const auto& o : a.overrides)
    if (o == "--" + key || o.rfind("--" + key + "=", 0) == 0) return true;
  return false;
}

// The checkpoint's config.ini under the overrides, with the run directory where the checkpoint lies (the built-in
// corpus is there) and, unless given, the simplest layout: data parallel only.
model::Config eval_config(const EvalArgs& a) {
  const fs::path ini = fs::path(a.checkpoint) / "config.ini";
  MONTA_USER_CHECK(fs::exists(ini), "checkpoint '" + a.checkpoint + "' has no config.ini; give a checkpoint directory "
                                    "(run_dir/checkpoints/step_N) that `monta train` wrote.");
  model::Config c = config_with_overrides("eval", ini.string(), a.overrides);
  c.train.run_dir = fs::absolute(a.checkpoint).parent_path().parent_path().string();
  c.checkpoint.resume.clear();
  if (!overridden(a, "parallel.tp")) c.parallel.tp = 1;
  if (!overridden(a, "parallel.ep")) c.parallel.ep = 1;
  if (!a.data_path.empty()) {
    c.data.valid_path = a.data_path;
    c.data.valid_fraction = 0;
  }
  if (a.eval_steps > 0) c.train.eval_steps = a.eval_steps;
  MONTA_USER_CHECK(c.train.eval_steps >= 1, "monta eval needs --eval_steps >= 1 (the run had train.eval_steps 0)");
  return c;
}

std::string eval_json(const EvalArgs& a, const model::CkptMeta& meta, const model::EvalResult& r,
                      const data::DataSources& src, int world, const model::Config& c) {
  engine::JsonRecord j;
  j.add("checkpoint", a.checkpoint).add("step", int64_t(meta.step)).add("val_loss", r.loss).add("val_ppl", r.ppl);
  j.add("eval_steps", int64_t(r.batches)).add("tokens", int64_t(r.tokens)).add("valid_path", src.valid_path);
  j.add("world", world).add("tp", c.parallel.tp).add("ep", c.parallel.ep).add("exchange", c.comm.exchange);
  return j.line() + "\n";
}

}  // namespace

int cmd_eval(int argc, char** argv) {
  comm::runtime_init(&argc, &argv);
  const EvalArgs a = parse_eval_args(argc, argv);
  if (a.help) {
    comm::runtime_finalize();
    return 0;
  }
  const model::Config c = eval_config(a);
  const engine::Device device = model::pick_device(c.train.device);
  const bool gpu = device == engine::Device::cuda;
  model::ParallelSetup ps = model::setup_parallel(c, device);
  model::attach_exchange(ps, c, device, gpu ? engine::DType::bf16 : engine::DType::f32);
  const int world = ps.ctx.world ? ps.ctx.world->size() : 1, rank = ps.ctx.world ? ps.ctx.world->rank() : 0;
  if (rank == 0) data::write_builtin_corpus(data_spec(c));  // a run from before held-out data lacks the file
  if (ps.ctx.world) ps.ctx.world->barrier();
  const data::DataSources src = data::resolve_data_sources(data_spec(c));
  const Validation v = make_validation(src, c, ps.ctx);
  MONTA_USER_CHECK(v.heldout != nullptr, src.valid_note + "; give --data.path FILE to evaluate on a token file");
  model::Trainer trainer(c, ps.ctx, device);
  const model::CkptMeta meta = model::ckpt_load(a.checkpoint, trainer.params(), model::model_signature(c.model),
                                                model::CkptVerify::while_loading, ps.ctx.world);
  const model::EvalResult r = v.run(trainer);
  log_info(strf("eval %s (step %ld) on %s: val_loss %.6f ppl %.4f over %ld batches, %ld tokens (world %d: tp %d, ep %d)",
                a.checkpoint.c_str(), long(meta.step), src.valid_path.c_str(), r.loss, r.ppl, long(r.batches),
                long(r.tokens), world, c.parallel.tp, c.parallel.ep));
  if (rank == 0 && !a.json.empty()) {
    std::ofstream out(a.json);
    MONTA_USER_CHECK(out.good(), "cannot write '" + a.json + "' (check the path)");
    out << eval_json(a, meta, r, src, world, c);
  }
  comm::runtime_finalize();
  return 0;
}

}  // namespace monta::app
