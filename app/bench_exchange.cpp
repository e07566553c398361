// `monta bench exchange`: nccl-tests-style sweep of the MoE token exchange. For each buffer size: the raw
// all-to-all over EP and all-gather over TP of the same groups, then every strategy (pipelined at each chunk
// count), as time / algbw / busbw with nccl-tests' formulas, beside the cost model's prediction. Correctness
// (every strategy's dispatch equals duplicate's, and combine inverts it) is checked outside the timed region.
// Buffers live on the bench device and move only through engine::copy, so a device communicator drops in.
#include <algorithm>
#include <boost/program_options.hpp>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>

#include "app/commands.h"
#include "app/options.h"
#include "app/parallel_setup.h"
#include "comm/calibrate.h"
#include "comm/cost_model.h"
#include "comm/exchange.h"
#include "comm/groups.h"
#include "comm/mpi_communicator.h"
#include "comm/runtime.h"
#include "comm/timing.h"
#include "comm/topology.h"
#include "engine/check.h"
#include "engine/files.h"
#include "engine/parse.h"
#include "engine/log.h"
#include "engine/memory.h"
#ifdef MONTA_WITH_CUDA
#include "comm/cuda/nccl_communicator.h"
#endif

namespace po = boost::program_options;

namespace monta::app {
namespace {

using engine::DType;
using engine::Device;
using engine::Tensor;
using engine::strf;

struct Row {
  std::string op;
  int chunks = 0, group = 1;
  double bytes = 0, us = 0, algbw = 0, busbw = 0, pred_us = 0;
  bool ok = true;
};

std::vector<char> to_host(const Tensor& t) {
  std::vector<char> h(t.bytes());
  engine::copy(engine::make_view(h.data(), {t.numel()}, t.dtype, Device::cpu), t.view({t.numel()}));
  return h;
}

int run(int argc, char** argv) {
  int tp = 1, ep = 1, emulate = 0, iters = 10, warmup = 2, experts_per_rank = 1;
  int64_t min_bytes = 1 << 16, max_bytes = 1 << 24, hidden = 256;
  double factor = 2;
  std::string chunks_s = "2,4", json, cluster, links, device = "cpu";
  po::options_description desc("monta bench exchange options (run under mpirun)");
  desc.add_options()("help,h", "print this help")("tp", po::value(&tp)->default_value(1), "TP size")(
      "ep", po::value(&ep)->default_value(1), "EP size")("emulate-nodes", po::value(&emulate)->default_value(0),
                                                         "virtual nodes of consecutive ranks (0: real nodes)")(
      "min-bytes,b", po::value(&min_bytes)->default_value(1 << 16), "smallest dispatch buffer E*C*H*elem, bytes")(
      "max-bytes,e", po::value(&max_bytes)->default_value(1 << 24), "largest dispatch buffer, bytes")(
      "factor,f", po::value(&factor)->default_value(2.0), "size multiplier between rows")(
      "chunks", po::value(&chunks_s)->default_value("2,4"), "pipelined chunk counts, comma separated")(
      "experts-per-rank", po::value(&experts_per_rank)->default_value(1), "E_l (E = ep * E_l)")(
      "hidden", po::value(&hidden)->default_value(256), "H of the buffer (C follows from the size)")(
      "iters", po::value(&iters)->default_value(10), "timed iterations (median)")(
      "warmup", po::value(&warmup)->default_value(2), "untimed iterations")(
      "cluster", po::value(&cluster), "predict with this cluster's links (file or inline) instead of calibrating")(
      "links", po::value(&links), "predict with this link-model cache (key = value) instead of calibrating")(
      "device", po::value(&device)->default_value("cpu"),
      "cpu (MPI on host buffers, f32) | cuda (NCCL on device buffers, bf16)")(
      "json", po::value(&json), "write the rows as JSON here");
  const po::variables_map vm = parse_command_line(argc, argv, desc, "bench exchange");
  if (vm.count("help")) {
    if (comm::runtime_world_rank() == 0) std::cout << desc << "\n";
    return 0;
  }
  MONTA_USER_CHECK(device == "cpu" || device == "cuda", "--device must be cpu or cuda, not '" + device + "'");
#ifndef MONTA_WITH_CUDA
  MONTA_USER_CHECK(device == "cpu", "--device cuda: this build has no CUDA backend (use --device cpu)");
#endif
  const Device dev = device == "cuda" ? Device::cuda : Device::cpu;
  const DType dt = dev == Device::cpu ? DType::f32 : DType::bf16;
  const int es = int(engine::dtype_size(dt));
  const std::vector<int> chunk_list = engine::parse_int_list(chunks_s, "--chunks");
  if (!json.empty()) engine::check_output_path(json, "--json");
  MONTA_USER_CHECK(iters > 0 && warmup >= 0 && factor > 1 && min_bytes > 0 && max_bytes >= min_bytes && hidden > 0 &&
                       experts_per_rank > 0,
                   "bench exchange: need iters > 0, factor > 1, 0 < min-bytes <= max-bytes, hidden > 0");
  for (int n : chunk_list) MONTA_USER_CHECK(n > 0, "--chunks: every chunk count must be positive");

  const int world = comm::runtime_world_size();
  const int64_t E = int64_t(ep) * experts_per_rank;
  const comm::Layout layout = comm::make_layout(world, tp, ep, true, int(E), tp, tp, tp, tp);
  const comm::Topology topo = comm::discover_topology(emulate);
  comm::ProcessGroups pg(layout, topo);
  engine::log_info(pg.layout_table());
  // The communicators the exchange runs over: MPI on host buffers, or NCCL on device buffers (host buffers given
  // to those still travel over MPI). Calibration gets a node group and a one-rank-per-node group of the same kind.
  comm::Communicator *W = &pg.world(), *TP = &pg.tp(), *EP = &pg.ep(), *NODE = &pg.node();
  auto across = comm::MpiCommunicator::split(MPI_COMM_WORLD, topo.local_rank, topo.world_rank, "inter");
  comm::Communicator* ACROSS = across.get();
#ifdef MONTA_WITH_CUDA
  std::unique_ptr<comm::NcclGroups> ng;
  std::unique_ptr<comm::NcclCommunicator> nccl_node, nccl_across;
  if (dev == Device::cuda) {
    select_gpu(topo, topo.local_rank);
    ng = comm::make_nccl_groups(pg);
    auto* node_mpi = dynamic_cast<comm::MpiCommunicator*>(&pg.node());
    MONTA_CHECK(node_mpi, "bench exchange: the node group is not an MPI communicator");
    nccl_node = std::make_unique<comm::NcclCommunicator>(node_mpi->handle(), "node", node_mpi);
    nccl_across = std::make_unique<comm::NcclCommunicator>(across->handle(), "inter", across.get());
    W = &ng->world();
    TP = &ng->tp();
    EP = &ng->ep();
    NODE = nccl_node.get();
    ACROSS = nccl_across.get();
  }
#endif

  // Where this job's groups sit (the slowest rank's EP group decides), and the links to predict with.
  comm::GroupPlacement g;
  g.t = tp;
  g.e = ep;
  const std::vector<int>& epm = pg.members(comm::GroupKind::ep);
  const std::vector<int>& tpm = pg.members(comm::GroupKind::tp);
  int inter = 0;
  for (int q : epm) inter += topo.same_node(q, topo.world_rank) ? 0 : 1;
  std::vector<int32_t> worst = {inter, topo.same_node(tpm.front(), tpm.back()) ? 0 : 1};
  W->all_reduce(Tensor(worst.data(), {2}, DType::i32), comm::ReduceOp::max);
  g.ep_peers_inter = worst[0];
  g.ep_peers_intra = ep - 1 - worst[0];
  g.tp_spans_nodes = worst[1] != 0;
  g.ep_cross_fraction = ep > 1 ? double(g.ep_peers_inter) / (ep - 1) : 0;

  comm::LinkModel lm;  // starting values; replaced by --cluster, --links or the calibration probe
  lm.intra = comm::link_from(100, 5);
  lm.inter = comm::link_from(10, 10);
  if (!cluster.empty()) lm = load_cluster(cluster).links();
  if (!links.empty()) lm = comm::read_link_model(links, lm);
  if (cluster.empty() && links.empty()) {
    // One rank per node (same local rank) is a pure inter-node group; the node group a pure intra-node one.
    const std::vector<int64_t> sizes = comm::calibration_sizes(max_bytes);  // spans the sweep's buffer sizes
    const comm::Calibration cal = comm::calibrate(NODE->size() > 1 ? NODE : nullptr,
                                                  topo.num_nodes > 1 ? ACROSS : nullptr, lm, sizes,
                                                  std::max(3, iters / 2), dev);
    lm = cal.links;
    engine::log_info("calibration (max over ranks of the median):\n" + comm::format_calibration(cal));
  }

  std::vector<Row> rows;
  const comm::RankCoords co = pg.coords();
  for (double target = double(min_bytes); target <= double(max_bytes) * 1.0001; target *= factor) {
    const int64_t C = std::max<int64_t>(1, int64_t(target) / (E * hidden * es));
    const int64_t n = E * C * hidden;
    const double X = double(n) * es;
    engine::Arena a("bench_exchange", dev, {{"x", {n}, dt}, {"y", {n}, dt}, {"back", {n}, dt}, {"ref", {n}, dt}});
    Tensor x = a.get("x"), y = a.get("y"), back = a.get("back");
    {  // deterministic input, identical on every TP rank (depends on the DP index only)
      std::vector<float> h(static_cast<size_t>(n));
      uint64_t s = 0x9e3779b97f4a7c15ull ^ uint64_t(co.dp_idx + 1) * 0x2545F4914F6CDD1Dull;
      for (auto& v : h) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v = float(double(s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
      }
      if (dt == DType::f32) {
        engine::copy(x, Tensor(h.data(), {n}, DType::f32));
      } else {
        std::vector<engine::bf16_t> b(h.size());
        for (size_t i = 0; i < h.size(); ++i) b[i] = engine::float_to_bf16(h[i]);
        engine::copy(x, Tensor(b.data(), {n}, DType::bf16));
      }
    }
    const Tensor x3 = x.view({E, C, hidden}), y3 = y.view({E / ep, ep * C, hidden}), b3 = back.view({E, C, hidden});
    // Raw collectives of the same groups and sizes.
    if (ep > 1) {
      Row r{"all_to_all(ep)", 0, ep, X};
      r.us = 1e6 * comm::slowest_median_seconds(*W, dev, warmup, iters, [&] { EP->all_to_all(y, x); });
      r.pred_us = 1e6 * comm::all_to_all_time(lm, X, g.ep_peers_intra, g.ep_peers_inter);
      rows.push_back(r);
    }
    if (tp > 1) {
      const int64_t m = n / tp;
      Row r{"all_gather(tp)", 0, tp, double(m * tp) * es};
      Tensor in = engine::make_view(x.data, {m}, dt, dev), out = engine::make_view(y.data, {m * tp}, dt, dev);
      r.us = 1e6 * comm::slowest_median_seconds(*W, dev, warmup, iters, [&] { TP->all_gather(out, in); });
      r.pred_us = 1e6 * comm::all_gather_time(lm, r.bytes, tp, g.tp_spans_nodes);
      rows.push_back(r);
    }
    std::vector<std::pair<comm::ExchangeKind, int>> runs = {{comm::ExchangeKind::duplicate, 1},
                                                            {comm::ExchangeKind::drop_gather, 1}};
    for (int c : chunk_list) runs.push_back({comm::ExchangeKind::pipelined, c});
    std::vector<char> ref, xh = to_host(x);
    for (auto [kind, c] : runs) {
      comm::ExchangeShape shape{E, C, hidden};
      shape.chunks = c;
      auto ex = comm::make_exchange(kind, *TP, *EP, shape, dt, dev);
      // Correctness, untimed: dispatch equals duplicate's; combine(dispatch(x)) == x.
      engine::fill_zero(y);
      ex->dispatch(y3, x3);
      ex->combine(b3, y3);
      engine::sync_device(dev);
      const std::vector<char> yh = to_host(y);
      if (ref.empty()) ref = yh;
      std::vector<int32_t> bad = {yh != ref || to_host(back) != xh ? 1 : 0};
      W->all_reduce(Tensor(bad.data(), {1}, DType::i32), comm::ReduceOp::max);
      Row r{comm::exchange_kind_name(kind), kind == comm::ExchangeKind::pipelined ? c : 0, ep, X};
      r.ok = bad[0] == 0;
      r.us = 1e6 * comm::slowest_median_seconds(*W, dev, warmup, iters, [&] { ex->dispatch(y3, x3); });
      r.pred_us = 1e6 * comm::predict_exchange_shape(kind, c, E, C, hidden, es, g, lm).total;
      rows.push_back(r);
    }
  }
  for (Row& r : rows) {
    r.algbw = r.bytes / (r.us * 1e-6) / 1e9;
    r.busbw = r.algbw * double(r.group - 1) / double(r.group);  // nccl-tests: alltoall and allgather, (n-1)/n
  }
  engine::log_info(strf("monta bench exchange: tp %d ep %d on %d ranks, %d node(s)%s, E %ld, H %ld, %s, median of %d; "
                        "EP peers %d intra / %d inter",
                        tp, ep, world, topo.num_nodes, topo.emulated ? " (emulated)" : "", long(E), long(hidden),
                        engine::dtype_name(dt), iters, g.ep_peers_intra, g.ep_peers_inter));
  engine::log_info("(overlapped moves its bytes as pipelined does; what it gains needs the experts between the "
                   "chunks: see `monta bench layer --tp --ep`)");
  engine::log_info(strf("%12s  %-16s %6s %12s %10s %10s %12s %11s %7s %5s", "size (B)", "op", "chunks", "time (us)",
                        "algbw", "busbw", "pred (us)", "pred err %", "", "ok"));
  for (const Row& r : rows)
    engine::log_info(strf("%12.0f  %-16s %6s %12.1f %10.3f %10.3f %12.1f %11.1f %7s %5s", r.bytes, r.op.c_str(),
                          r.chunks ? std::to_string(r.chunks).c_str() : "-", r.us, r.algbw, r.busbw, r.pred_us,
                          100.0 * (r.us - r.pred_us) / r.pred_us, "", r.ok ? "ok" : "WRONG"));
  bool all_ok = true;
  for (const Row& r : rows) all_ok = all_ok && r.ok;
  if (!json.empty() && comm::runtime_world_rank() == 0) {
    std::ostringstream out;
    out << strf("{\"tp\": %d, \"ep\": %d, \"world\": %d, \"nodes\": %d, \"dtype\": \"%s\", \"iters\": %d, "
                "\"intra_gbps\": %.4f, \"intra_latency_us\": %.3f, \"intra_next_latency_us\": %.3f, "
                "\"inter_gbps\": %.4f, \"inter_latency_us\": %.3f, \"inter_next_latency_us\": %.3f, \"rows\": [\n",
                tp, ep, world, topo.num_nodes, engine::dtype_name(dt), iters, 1e-9 / lm.intra.beta, lm.intra.alpha * 1e6,
                lm.intra.next_alpha() * 1e6, 1e-9 / lm.inter.beta, lm.inter.alpha * 1e6, lm.inter.next_alpha() * 1e6);
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      out << strf("  {\"op\": \"%s\", \"chunks\": %d, \"bytes\": %.0f, \"time_us\": %.3f, \"algbw\": %.4f, "
                  "\"busbw\": %.4f, \"pred_us\": %.3f, \"ok\": %s}%s\n",
                  r.op.c_str(), r.chunks, r.bytes, r.us, r.algbw, r.busbw, r.pred_us, r.ok ? "true" : "false",
                  i + 1 < rows.size() ? "," : "");
    }
    out << "]}\n";
    engine::write_text_file(json, out.str());
    engine::log_info("wrote " + json);
  }
  return all_ok ? 0 : 1;
}

}  // namespace

int cmd_bench_exchange(int argc, char** argv) {
  comm::runtime_init(&argc, &argv);
  const int rc = run(argc, argv);
  comm::runtime_finalize();
  return rc;
}

}  // namespace monta::app
