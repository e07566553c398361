// `monta bench ops|layer|fp8|optimizer|exchange|...`: parses the options and calls the benchmark libraries
// (model/benchmarks.h for ops, layer and the host optimizer, model/fp8_bench.h, comm/exchange_bench.h through
// bench_exchange.cpp). Benchmarks, not tests: they print a table and
// write JSON; correctness lives in the tests.
#include <boost/program_options.hpp>
#include <iostream>
#include <string>

#include "app/commands.h"
#include "app/options.h"
#include "comm/runtime.h"
#include "engine/check.h"
#include "engine/files.h"
#include "engine/memory.h"
#include "model/benchmarks.h"
#include "model/fp8_bench.h"

namespace po = boost::program_options;

namespace monta::app {

using namespace monta::engine;

namespace {

struct BenchArgs {
  std::string what, json, device = "auto";
  int iters = 10;
  int64_t seq = 8192;
  bool small = false;
  model::BenchLayerOptions lo;
  int64_t opt_params = int64_t(1) << 26;
  int opt_threads = 0;
};

po::options_description bench_options(BenchArgs& a) {
  model::BenchLayerOptions& lo = a.lo;
  po::options_description desc("monta bench ops|layer|fp8|optimizer options (layer: under mpirun with --tp/--ep for the "
                               "parallel layer, one row per exchange strategy)");
  desc.add_options()("help,h", "print this help")("what", po::value<std::string>(&a.what), "ops | layer | fp8 | optimizer")(
      "json", po::value<std::string>(&a.json), "write the results as JSON here")(
      "iters", po::value<int>(&a.iters)->default_value(10), "timed iterations (median reported)")(
      "seq", po::value<int64_t>(&a.seq)->default_value(8192), "sequence length (tokens of the micro-batch)")(
      "device", po::value<std::string>(&a.device)->default_value("auto"), "auto | cpu | cuda")(
      "tp", po::value(&lo.tp)->default_value(1), "layer: tensor-parallel size")(
      "ep", po::value(&lo.ep)->default_value(1), "layer: expert-parallel size")(
      "expert-tp", po::value(&lo.expert_tp)->default_value(true), "layer: split expert FFNs over TP")(
      "strategies", po::value(&lo.strategies)->default_value(lo.strategies), "layer: exchange strategies to time (ep > 1; auto: the cost model's pick)")(
      "chunks", po::value(&lo.chunks)->default_value(4), "layer: chunks of pipelined and overlapped")(
      "emulate-nodes", po::value(&lo.emulate_nodes)->default_value(0), "layer: virtual nodes of consecutive ranks")(
      "hidden", po::value(&lo.hidden)->default_value(lo.hidden), "layer: hidden size")(
      "ffn", po::value(&lo.ffn)->default_value(lo.ffn), "layer: expert FFN size")(
      "heads", po::value(&lo.heads)->default_value(lo.heads), "layer: attention heads")(
      "kv-heads", po::value(&lo.kv_heads)->default_value(lo.kv_heads), "layer: key/value heads")(
      "experts", po::value(&lo.experts)->default_value(lo.experts), "layer: experts")(
      "top-k", po::value(&lo.top_k)->default_value(lo.top_k), "layer: experts per token")(
      "vocab", po::value(&lo.vocab)->default_value(lo.vocab), "layer: vocabulary (embedding and LM head around it)")(
      "breakdown", po::bool_switch(&lo.breakdown), "layer: one more step with op timing: time per op and its share")(
      "fp8", po::value(&lo.fp8)->default_value(lo.fp8),
      "layer: none | experts | all (model.fp8), experts and all optionally with :bf16-wgrad (model.fp8_wgrad false); a "
      "comma list (none,experts,experts:bf16-wgrad,all) times each in one run")(
      "dropless", po::bool_switch(&lo.dropless), "layer: also time the layer with dropless routing (model.capacity_factor 0), per strategy")(
      "router", po::value(&lo.router)->default_value(lo.router),
      "layer: natural | balanced | skewed, or a comma list: the capacity rows use the first, the dropless rows each")(
      "skew", po::value(&lo.skew)->default_value(lo.skew), "layer: --router skewed: the fraction of tokens whose first choice is expert 0")(
      "small", po::bool_switch(&a.small), "ops: the op table at test widths instead of 2x70B (a quick run on the CPU)")(
      "params", po::value(&a.opt_params)->default_value(a.opt_params), "optimizer: parameters the host AdamW updates")(
      "threads", po::value(&a.opt_threads)->default_value(0), "optimizer: most threads to sweep to (0: every hardware thread)");
  return desc;
}

}  // namespace

int cmd_bench(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "exchange") return cmd_bench_exchange(argc - 1, argv + 1);
  if (argc > 1 && std::string(argv[1]) == "checkpoint") return cmd_bench_checkpoint(argc - 1, argv + 1);
  BenchArgs a;
  const po::options_description desc = bench_options(a);
  po::positional_options_description pos;
  pos.add("what", 1);
  const po::variables_map vm = parse_command_line(argc, argv, desc, "bench", &pos);
  if (vm.count("help") || a.what.empty()) {
    std::cout << desc << "\n";
    return a.what.empty() && !vm.count("help") ? 2 : 0;
  }
  MONTA_USER_CHECK(a.iters > 0 && a.seq > 0, "--iters and --seq must be positive");
  if (!a.json.empty()) engine::check_output_path(a.json, "--json");
  Device dev = a.device == "cpu" ? Device::cpu : (cuda_available() ? Device::cuda : Device::cpu);
  MONTA_USER_CHECK(a.device != "cuda" || dev == Device::cuda, "--device cuda but no CUDA device is visible");
  if (a.what == "optimizer") {
    MONTA_USER_CHECK(a.opt_params > 0 && a.opt_threads >= 0, "--params must be positive and --threads at least 0");
    return model::bench_optimizer(a.iters, a.json, a.opt_params, a.opt_threads);
  }
  if (a.what == "ops" || a.what == "fp8") {  // one process on GPU 0 (layer picks each rank's GPU itself)
    if (dev == Device::cuda) cuda_set_device(0);
    // fp8: the FP8 expert GEMMs beside bf16 and both GEMM ceilings (model/fp8_bench.h)
    return a.what == "ops" ? model::bench_ops(dev, a.iters, a.json, a.seq, a.small)
                           : model::bench_fp8(dev, a.iters, a.json, a.seq);
  }
  MONTA_USER_CHECK(a.what == "layer",
                   "unknown benchmark '" + a.what + "' (choose ops, layer, fp8, optimizer, exchange or checkpoint)");
  const model::BenchLayerOptions& lo = a.lo;
  MONTA_USER_CHECK(dev == Device::cuda || lo.hidden * lo.ffn <= (int64_t(1) << 22),
                   "monta bench layer at these widths needs a GPU (one 2x70B layer holds 2.1 B parameters, ~38 GiB of "
                   "weights, gradients and AdamW state); on the CPU pass small --hidden and --ffn");
  comm::runtime_init(&argc, &argv);
  const int rc = model::bench_layer(dev, a.iters, a.json, a.seq, lo);
  comm::runtime_finalize();
  return rc;
}

}  // namespace monta::app
