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

int cmd_bench(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "exchange") return cmd_bench_exchange(argc - 1, argv + 1);
  if (argc > 1 && std::string(argv[1]) == "checkpoint") return cmd_bench_checkpoint(argc - 1, argv + 1);
  std::string what, json, device = "auto";
  int iters = 10;
  int64_t seq = 8192;
  bool small = false;
  model::BenchLayerOptions lo;
  int64_t opt_params = int64_t(1) << 26;
  int opt_threads = 0;
  po::options_description desc("monta bench ops|layer|optimizer options (layer: under mpirun with --tp/--ep for the parallel "
                               "layer, one row per exchange strategy)");
  desc.add_options()("help,h", "print this help")("what", po::value<std::string>(&what), "ops | layer | fp8 | optimizer")(
      "json", po::value<std::string>(&json), "write the results as JSON here")(
      "iters", po::value<int>(&iters)->default_value(10), "timed iterations (median reported)")(
      "seq", po::value<int64_t>(&seq)->default_value(8192), "sequence length (tokens of the micro-batch)")(
      "device", po::value<std::string>(&device)->default_value("auto"), "auto | cpu | cuda")(
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
      "fp8", po::value(&lo.fp8)->default_value(lo.fp8), "layer: none | experts: the expert GEMMs in FP8 (model.fp8)")(
      "small", po::bool_switch(&small), "ops: the op table at test widths instead of 2x70B (a quick run on the CPU)")(
      "params", po::value(&opt_params)->default_value(opt_params), "optimizer: parameters the host AdamW updates")(
      "threads", po::value(&opt_threads)->default_value(0), "optimizer: most threads to sweep to (0: every hardware thread)");
  po::positional_options_description pos;
  pos.add("what", 1);
  const po::variables_map vm = parse_command_line(argc, argv, desc, "bench", &pos);
  if (vm.count("help") || what.empty()) {
    std::cout << desc << "\n";
    return what.empty() && !vm.count("help") ? 2 : 0;
  }
  MONTA_USER_CHECK(iters > 0 && seq > 0, "--iters and --seq must be positive");
  if (!json.empty()) engine::check_output_path(json, "--json");
  Device dev = device == "cpu" ? Device::cpu : (cuda_available() ? Device::cuda : Device::cpu);
  MONTA_USER_CHECK(device != "cuda" || dev == Device::cuda, "--device cuda but no CUDA device is visible");
  if (what == "optimizer") {
    MONTA_USER_CHECK(opt_params > 0 && opt_threads >= 0, "--params must be positive and --threads at least 0");
    return model::bench_optimizer(iters, json, opt_params, opt_threads);
  }
  if (what == "ops") {
    if (dev == Device::cuda) cuda_set_device(0);
    return model::bench_ops(dev, iters, json, seq, small);
  }
  if (what == "fp8") {  // the FP8 expert GEMMs beside bf16 and both GEMM ceilings (model/fp8_bench.h)
    if (dev == Device::cuda) cuda_set_device(0);
    return model::bench_fp8(dev, iters, json, seq);
  }
  MONTA_USER_CHECK(what == "layer", "unknown benchmark '" + what + "' (choose ops, layer, fp8, optimizer, exchange or checkpoint)");
  MONTA_USER_CHECK(dev == Device::cuda || lo.hidden * lo.ffn <= (int64_t(1) << 22),
                   "monta bench layer at these widths needs a GPU (one 2x70B layer holds 2.1 B parameters, ~38 GiB of "
                   "weights, gradients and AdamW state); on the CPU pass small --hidden and --ffn");
  MONTA_USER_CHECK(lo.fp8 == "none" || lo.fp8 == "experts", "--fp8 must be none or experts, got '" + lo.fp8 + "'");
  comm::runtime_init(&argc, &argv);
  const int rc = model::bench_layer(dev, iters, json, seq, lo);
  comm::runtime_finalize();
  return rc;
}

}  // namespace monta::app
