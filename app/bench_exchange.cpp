// `monta bench exchange`: parses the sweep's options and runs comm::run_exchange_bench (comm/exchange_bench.h), the
// nccl-tests-style sweep of the MoE token exchange; prints its table and writes its JSON.
#include <boost/program_options.hpp>
#include <iostream>

#include "app/commands.h"
#include "app/options.h"
#include "comm/calibrate.h"
#include "comm/exchange_bench.h"
#include "comm/runtime.h"
#include "engine/check.h"
#include "engine/files.h"
#include "engine/log.h"
#include "engine/parse.h"

namespace po = boost::program_options;

namespace monta::app {
namespace {

// The sweep's options, straight from the command line; false when only --help was asked for (and printed).
bool parse_options(int argc, char** argv, comm::ExchangeBenchOptions& o, std::string& json) {
  std::string chunks_s = "2,4", cluster, links, device = "cpu", dispatch = "bf16";
  po::options_description desc("monta bench exchange options (run under mpirun)");
  desc.add_options()("help,h", "print this help")("tp", po::value(&o.tp)->default_value(1), "TP size")(
      "ep", po::value(&o.ep)->default_value(1), "EP size")(
      "emulate-nodes", po::value(&o.emulate_nodes)->default_value(0), "virtual nodes of consecutive ranks (0: real nodes)")(
      "min-bytes,b", po::value(&o.min_bytes)->default_value(1 << 16), "smallest dispatch buffer E*C*H*elem, bytes")(
      "max-bytes,e", po::value(&o.max_bytes)->default_value(1 << 24), "largest dispatch buffer, bytes")(
      "factor,f", po::value(&o.factor)->default_value(2.0), "size multiplier between rows")(
      "chunks", po::value(&chunks_s)->default_value("2,4"), "pipelined chunk counts, comma separated")(
      "experts-per-rank", po::value(&o.experts_per_rank)->default_value(1), "E_l (E = ep * E_l)")(
      "hidden", po::value(&o.hidden)->default_value(256), "H of the buffer (C follows from the size)")(
      "iters", po::value(&o.iters)->default_value(10), "timed iterations (median)")(
      "warmup", po::value(&o.warmup)->default_value(2), "untimed iterations")(
      "cluster", po::value(&cluster), "predict with this cluster's links (file or inline) instead of calibrating")(
      "links", po::value(&links), "predict with this link-model cache (key = value) instead of calibrating")(
      "device", po::value(&device)->default_value("cpu"),
      "cpu (MPI on host buffers, f32) | cuda (NCCL on device buffers, bf16)")(
      "dispatch-dtype", po::value(&dispatch)->default_value("bf16"),
      "bf16 | fp8: fp8 adds each strategy with the FP8 dispatch (E4M3 + 1x128 scales; rows <strategy>+fp8)")(
      "skew", po::value(&o.skew)->default_value(0.0),
      "dropless loads: share of every rank's tokens routed to expert 0 (which fills C), the rest even; only filled "
      "slots travel (0: every slot, no loads)")(
      "json", po::value(&json), "write the rows as JSON here");
  const po::variables_map vm = parse_command_line(argc, argv, desc, "bench exchange");
  if (vm.count("help")) {
    if (comm::runtime_world_rank() == 0) std::cout << desc << "\n";
    return false;
  }
  MONTA_USER_CHECK(device == "cpu" || device == "cuda", "--device must be cpu or cuda, not '" + device + "'");
#ifndef MONTA_WITH_CUDA
  MONTA_USER_CHECK(device == "cpu", "--device cuda: this build has no CUDA backend (use --device cpu)");
#endif
  o.device = device == "cuda" ? engine::Device::cuda : engine::Device::cpu;
  MONTA_USER_CHECK(dispatch == "bf16" || dispatch == "fp8", "--dispatch-dtype must be bf16 or fp8, not '" + dispatch + "'");
  o.dispatch_fp8 = dispatch == "fp8";
  o.chunks = engine::parse_int_list(chunks_s, "--chunks");
  if (!json.empty()) engine::check_output_path(json, "--json");
  MONTA_USER_CHECK(o.iters > 0 && o.warmup >= 0 && o.factor > 1 && o.min_bytes > 0 && o.max_bytes >= o.min_bytes &&
                       o.hidden > 0 && o.experts_per_rank > 0,
                   "bench exchange: need iters > 0, factor > 1, 0 < min-bytes <= max-bytes, hidden > 0");
  for (int n : o.chunks) MONTA_USER_CHECK(n > 0, "--chunks: every chunk count must be positive");
  MONTA_USER_CHECK(o.skew >= 0 && o.skew <= 1, "--skew must be in [0, 1] (0: no loads), not " + std::to_string(o.skew));
  if (!cluster.empty() || !links.empty()) {  // predict with given links instead of calibrating
    comm::LinkModel lm;
    lm.intra = comm::link_from(100, 5);
    lm.inter = comm::link_from(10, 10);
    if (!cluster.empty()) lm = load_cluster(cluster).links();
    if (!links.empty()) lm = comm::read_link_model(links, lm);
    o.links = lm;
  }
  return true;
}

int run(int argc, char** argv) {
  comm::ExchangeBenchOptions o;
  std::string json;
  if (!parse_options(argc, argv, o, json)) return 0;
  const comm::ExchangeBenchResult res = comm::run_exchange_bench(o);
  engine::log_info(res.table());
  if (!json.empty() && comm::runtime_world_rank() == 0) {
    engine::write_text_file(json, res.json());
    engine::log_info("wrote " + json);
  }
  return res.all_ok() ? 0 : 1;
}

}  // namespace

int cmd_bench_exchange(int argc, char** argv) {
  comm::runtime_init(&argc, &argv);
  const int rc = run(argc, argv);
  comm::runtime_finalize();
  return rc;
}

}  // namespace monta::app
