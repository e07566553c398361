// The exchange sweep (comm/exchange_bench.h). Buffers live on the bench device and move only through engine::copy,
// so a device communicator drops in.
#include "comm/exchange_bench.h"

#include <algorithm>
#include <memory>

#include "comm/calibrate.h"
#include "comm/exchange.h"
#include "comm/groups.h"
#include "comm/mpi_communicator.h"
#include "comm/runtime.h"
#include "comm/timing.h"
#include "comm/topology.h"
#include "engine/check.h"
#include "engine/log.h"
#include "engine/memory.h"
#ifdef MONTA_WITH_CUDA
#include "comm/cuda/nccl_communicator.h"
#endif

namespace monta::comm {

using engine::DType;
using engine::Device;
using engine::Tensor;
using engine::strf;

namespace {
std::vector<char> to_host(const Tensor& t) {
  std::vector<char> h(t.bytes());
  engine::copy(engine::make_view(h.data(), {t.numel()}, t.dtype, Device::cpu), t.view({t.numel()}));
  return h;
}
}  // namespace

ExchangeBenchResult run_exchange_bench(const ExchangeBenchOptions& o) {
  const int tp = o.tp, ep = o.ep, iters = o.iters, warmup = o.warmup;
  const int64_t hidden = o.hidden;
  const Device dev = o.device;
  const DType dt = dev == Device::cpu ? DType::f32 : DType::bf16;
  const int es = int(engine::dtype_size(dt));
  const int world = runtime_world_size();
  const int64_t E = int64_t(ep) * o.experts_per_rank;
  const Layout layout = make_layout(world, tp, ep, true, int(E), tp, tp, tp, tp);
  const Topology topo = discover_topology(o.emulate_nodes);
  ProcessGroups pg(layout, topo);
  engine::log_info(pg.layout_table());
  // The communicators the exchange runs over: MPI on host buffers, or NCCL on device buffers (host buffers given
  // to those still travel over MPI). Calibration gets a node group and a one-rank-per-node group of the same kind.
  Communicator *W = &pg.world(), *TP = &pg.tp(), *EP = &pg.ep(), *NODE = &pg.node();
  auto across = MpiCommunicator::split(MPI_COMM_WORLD, topo.local_rank, topo.world_rank, "inter");
  Communicator* ACROSS = across.get();
#ifdef MONTA_WITH_CUDA
  std::unique_ptr<NcclGroups> ng;
  std::unique_ptr<NcclCommunicator> nccl_node, nccl_across;
  if (dev == Device::cuda) {
    select_gpu(topo, topo.local_rank);
    ng = make_nccl_groups(pg);
    auto* node_mpi = dynamic_cast<MpiCommunicator*>(&pg.node());
    MONTA_CHECK(node_mpi, "bench exchange: the node group is not an MPI communicator");
    nccl_node = std::make_unique<NcclCommunicator>(node_mpi->handle(), "node", node_mpi);
    nccl_across = std::make_unique<NcclCommunicator>(across->handle(), "inter", across.get());
    W = &ng->world();
    TP = &ng->tp();
    EP = &ng->ep();
    NODE = nccl_node.get();
    ACROSS = nccl_across.get();
  }
#endif

  // Where this job's groups sit (the slowest rank's EP group decides), and the links to predict with.
  GroupPlacement g;
  g.t = tp;
  g.e = ep;
  const std::vector<int>& epm = pg.members(GroupKind::ep);
  const std::vector<int>& tpm = pg.members(GroupKind::tp);
  int inter = 0;
  for (int q : epm) inter += topo.same_node(q, topo.world_rank) ? 0 : 1;
  std::vector<int32_t> worst = {inter, topo.same_node(tpm.front(), tpm.back()) ? 0 : 1};
  W->all_reduce(Tensor(worst.data(), {2}, DType::i32), ReduceOp::max);
  g.ep_peers_inter = worst[0];
  g.ep_peers_intra = ep - 1 - worst[0];
  g.tp_spans_nodes = worst[1] != 0;
  g.ep_cross_fraction = ep > 1 ? double(g.ep_peers_inter) / (ep - 1) : 0;

  LinkModel lm;
  if (o.links) {
    lm = *o.links;
  } else {  // starting values for the fit; one rank per node is a pure inter-node group, the node group intra-node
    lm.intra = link_from(100, 5);
    lm.inter = link_from(10, 10);
    const std::vector<int64_t> sizes = calibration_sizes(o.max_bytes);  // spans the sweep's buffer sizes
    const Calibration cal = calibrate(NODE->size() > 1 ? NODE : nullptr, topo.num_nodes > 1 ? ACROSS : nullptr, lm,
                                      sizes, std::max(3, iters / 2), dev);
    lm = cal.links;
    engine::log_info("calibration (max over ranks of the median):\n" + format_calibration(cal));
  }
  ExchangeBenchResult res;
  res.options = o;
  std::vector<ExchangeBenchRow>& rows = res.rows;
  const RankCoords co = pg.coords();
  for (double target = double(o.min_bytes); target <= double(o.max_bytes) * 1.0001; target *= o.factor) {
    const int64_t C = std::max<int64_t>(1, int64_t(target) / (E * hidden * es));
    const int64_t n = E * C * hidden;
    const double X = double(n) * es;
    engine::Arena a("bench_exchange", dev, {{"x", {n}, dt}, {"y", {n}, dt}, {"back", {n}, dt}, {"ref", {n}, dt}});
    Tensor x = a.get("x"), y = a.get("y"), back = a.get("back");
    engine::fill_pseudo_random(x, uint64_t(co.dp_idx), 1.0);  // identical on every TP rank
    const Tensor x3 = x.view({E, C, hidden}), y3 = y.view({E / ep, ep * C, hidden}), b3 = back.view({E, C, hidden});
    // Raw collectives of the same groups and sizes.
    if (ep > 1) {
      ExchangeBenchRow r{"all_to_all(ep)", 0, ep, X};
      r.us = 1e6 * slowest_median_seconds(*W, dev, warmup, iters, [&] { EP->all_to_all(y, x); });
      r.pred_us = 1e6 * all_to_all_time(lm, X, g.ep_peers_intra, g.ep_peers_inter);
      rows.push_back(r);
    }
    if (tp > 1) {
      const int64_t m = n / tp;
      ExchangeBenchRow r{"all_gather(tp)", 0, tp, double(m * tp) * es};
      Tensor in = engine::make_view(x.data, {m}, dt, dev), out = engine::make_view(y.data, {m * tp}, dt, dev);
      r.us = 1e6 * slowest_median_seconds(*W, dev, warmup, iters, [&] { TP->all_gather(out, in); });
      r.pred_us = 1e6 * all_gather_time(lm, r.bytes, tp, g.tp_spans_nodes);
      rows.push_back(r);
    }
    std::vector<std::pair<ExchangeKind, int>> runs = {{ExchangeKind::duplicate, 1},
                                                            {ExchangeKind::drop_gather, 1}};
    for (int c : o.chunks) runs.push_back({ExchangeKind::pipelined, c});
    std::vector<char> ref, xh = to_host(x);
    for (auto [kind, c] : runs) {
      ExchangeShape shape{E, C, hidden};
      shape.chunks = c;
      auto ex = make_exchange(kind, *TP, *EP, shape, dt, dev);
      // Correctness, untimed: dispatch equals duplicate's; combine(dispatch(x)) == x.
      engine::fill_zero(y);
      ex->dispatch(y3, x3);
      ex->combine(b3, y3);
      engine::sync_device(dev);
      const std::vector<char> yh = to_host(y);
      if (ref.empty()) ref = yh;
      std::vector<int32_t> bad = {yh != ref || to_host(back) != xh ? 1 : 0};
      W->all_reduce(Tensor(bad.data(), {1}, DType::i32), ReduceOp::max);
      ExchangeBenchRow r{exchange_kind_name(kind), kind == ExchangeKind::pipelined ? c : 0, ep, X};
      r.ok = bad[0] == 0;
      r.us = 1e6 * slowest_median_seconds(*W, dev, warmup, iters, [&] { ex->dispatch(y3, x3); });
      r.pred_us = 1e6 * predict_exchange_shape(kind, c, E, C, hidden, es, g, lm).total;
      rows.push_back(r);
    }
  }
  for (ExchangeBenchRow& r : rows) {
    r.algbw = r.bytes / (r.us * 1e-6) / 1e9;
    r.busbw = r.algbw * double(r.group - 1) / double(r.group);  // nccl-tests: alltoall and allgather, (n-1)/n
  }
  res.links = lm;
  res.placement = g;
  res.world = world;
  res.nodes = topo.num_nodes;
  res.emulated = topo.emulated;
  return res;
}

bool ExchangeBenchResult::all_ok() const {
  return std::all_of(rows.begin(), rows.end(), [](const ExchangeBenchRow& r) { return r.ok; });
}

std::string ExchangeBenchResult::table() const {
  const ExchangeBenchOptions& o = options;
  const DType dt = o.device == Device::cpu ? DType::f32 : DType::bf16;
  std::string s = strf("monta bench exchange: tp %d ep %d on %d ranks, %d node(s)%s, E %ld, H %ld, %s, median of %d; "
                       "EP peers %d intra / %d inter\n",
                       o.tp, o.ep, world, nodes, emulated ? " (emulated)" : "", long(int64_t(o.ep) * o.experts_per_rank),
                       long(o.hidden), engine::dtype_name(dt), o.iters, placement.ep_peers_intra, placement.ep_peers_inter);
  s += "(overlapped moves its bytes as pipelined does; what it gains needs the experts between the chunks: see `monta "
       "bench layer --tp --ep`)\n";
  s += strf("%12s  %-16s %6s %12s %10s %10s %12s %11s %7s %5s\n", "size (B)", "op", "chunks", "time (us)", "algbw",
            "busbw", "pred (us)", "pred err %", "", "ok");
  for (const ExchangeBenchRow& r : rows)
    s += strf("%12.0f  %-16s %6s %12.1f %10.3f %10.3f %12.1f %11.1f %7s %5s\n", r.bytes, r.op.c_str(),
              r.chunks ? std::to_string(r.chunks).c_str() : "-", r.us, r.algbw, r.busbw, r.pred_us,
              100.0 * (r.us - r.pred_us) / r.pred_us, "", r.ok ? "ok" : "WRONG");
  return s;
}

std::string ExchangeBenchResult::json() const {
  const ExchangeBenchOptions& o = options;
  const DType dt = o.device == Device::cpu ? DType::f32 : DType::bf16;
  const LinkModel& lm = links;
  std::string s = strf("{\"tp\": %d, \"ep\": %d, \"world\": %d, \"nodes\": %d, \"dtype\": \"%s\", \"iters\": %d, "
                       "\"intra_gbps\": %.4f, \"intra_latency_us\": %.3f, \"intra_next_latency_us\": %.3f, "
                       "\"inter_gbps\": %.4f, \"inter_latency_us\": %.3f, \"inter_next_latency_us\": %.3f, \"rows\": [\n",
                       o.tp, o.ep, world, nodes, engine::dtype_name(dt), o.iters, 1e-9 / lm.intra.beta,
                       lm.intra.alpha * 1e6, lm.intra.next_alpha() * 1e6, 1e-9 / lm.inter.beta, lm.inter.alpha * 1e6,
                       lm.inter.next_alpha() * 1e6);
  for (size_t i = 0; i < rows.size(); ++i) {
    const ExchangeBenchRow& r = rows[i];
    s += strf("  {\"op\": \"%s\", \"chunks\": %d, \"bytes\": %.0f, \"time_us\": %.3f, \"algbw\": %.4f, "
              "\"busbw\": %.4f, \"pred_us\": %.3f, \"ok\": %s}%s\n",
              r.op.c_str(), r.chunks, r.bytes, r.us, r.algbw, r.busbw, r.pred_us, r.ok ? "true" : "false",
              i + 1 < rows.size() ? "," : "");
  }
  return s + "]}\n";
}

}  // namespace monta::comm
