// The exchange sweep (comm/exchange_bench.h). Buffers live on the bench device and move only through engine::copy,
// so a device communicator drops in.
#include "comm/exchange_bench.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>

#include "comm/calibrate.h"
#include "comm/exchange.h"
#include "comm/fp8_dispatch.h"
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
  engine::read_to_host(engine::make_view(h.data(), {t.numel()}, t.dtype, Device::cpu), t.view({t.numel()}),
                       "bench exchange check");
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
  const GroupPlacement g = group_placement(pg, W);
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
  engine::BenchSweep sweep(warmup, iters, [&](int w, int n, const std::function<void()>& fn) {
    return slowest_median_seconds(*W, dev, w, n, fn);
  });
  // A row's predicted time, its chunk count (0: not chunked), and for an exchange the bytes this rank sends per call
  // and their ratio to a bf16 dispatch of the same strategy, for the table and the JSON.
  auto with_prediction = [](engine::BenchCase c, int chunks, double pred_s, double sent = 0, double vs_bf16 = 0) {
    c.extra.add("chunks", chunks).add("pred_us", pred_s * 1e6, "%.3f");
    if (sent > 0) c.extra.add("sent_bytes", sent, "%.0f").add("vs_bf16", vs_bf16, "%.4f");
    c.values = {double(chunks), pred_s * 1e6, sent, vs_bf16};
    return c;
  };
  const int64_t Wq = o.dispatch_fp8 ? fp8_dispatch_width(hidden, dt) : 0;  // packed FP8 row, elements of dt
  const RankCoords co = pg.coords();
  ExchangeLoad load;  // of the last size's loads (the filled fraction hardly changes with C)
  for (double target = double(o.min_bytes); target <= double(o.max_bytes) * 1.0001; target *= o.factor) {
    const int64_t C = std::max<int64_t>(1, int64_t(target) / (E * hidden * es));
    const int64_t n = E * C * hidden;
    const double X = double(n) * es;
    engine::Arena a("bench_exchange", dev,
                    {{"x", {n}, dt}, {"y", {n}, dt}, {"back", {n}, dt}, {"ref", {n}, dt},
                     {"xq", {std::max<int64_t>(1, E * C * Wq)}, dt}, {"yq", {std::max<int64_t>(1, E * C * Wq)}, dt}});
    Tensor x = a.get("x"), y = a.get("y"), back = a.get("back");
    engine::fill_pseudo_random(x, uint64_t(co.dp_idx), 1.0);  // identical on every TP rank
    const Tensor x3 = x.view({E, C, hidden}), y3 = y.view({E / ep, ep * C, hidden}), b3 = back.view({E, C, hidden});
    // Raw collectives of the same groups and sizes.
    if (ep > 1) {
      engine::BenchCase c = engine::bench_case("all_to_all(ep)", "", 0, X, [&] { EP->all_to_all(y, x); });
      c.group = ep;
      sweep.run(with_prediction(c, 0, all_to_all_time(lm, X, g.ep_peers_intra, g.ep_peers_inter)));
    }
    if (tp > 1) {
      const int64_t m = n / tp;
      const Tensor in = engine::make_view(x.data, {m}, dt, dev), out = engine::make_view(y.data, {m * tp}, dt, dev);
      engine::BenchCase c = engine::bench_case("all_gather(tp)", "", 0, double(m * tp) * es,
                                               [&, in, out] { TP->all_gather(out, in); });
      c.group = tp;
      sweep.run(with_prediction(c, 0, all_gather_time(lm, c.bytes, tp, g.tp_spans_nodes)));
    }
    std::vector<std::pair<ExchangeKind, int>> runs = {{ExchangeKind::duplicate, 1}, {ExchangeKind::drop_gather, 1}};
    for (int k : o.chunks) runs.push_back({ExchangeKind::pipelined, k});
    std::vector<char> ref, xh = to_host(x);
    const std::vector<int32_t> loads = o.skew > 0 ? skewed_loads(ep, E, C, o.skew) : std::vector<int32_t>{};
    if (!loads.empty()) load = load_of(loads, ep, E, C);
    // combine(dispatch(x)) == x on the filled rows (the others are unspecified with loads).
    auto round_trip_ok = [&](const std::vector<char>& b) {
      if (loads.empty()) return b == xh;
      const size_t row = size_t(hidden) * size_t(es);
      for (int64_t r = 0; r < E; ++r)
        for (int64_t c = 0; c < loads[size_t(co.ep_idx * E + r)]; ++c)
          if (std::memcmp(&b[size_t(r * C + c) * row], &xh[size_t(r * C + c) * row], row)) return false;
      return true;
    };
    for (auto [kind, k] : runs) {
      ExchangeShape shape{E, C, hidden};
      shape.chunks = k;
      auto ex = make_exchange(kind, *TP, *EP, shape, dt, dev);
      if (!loads.empty()) ex->set_loads(loads);
      engine::BenchCase c = engine::bench_case(exchange_kind_name(kind), "", 0, X, [&] { ex->dispatch(y3, x3); });
      c.group = ep;
      c.check = [&] {  // dispatch equals duplicate's; combine(dispatch(x)) == x; on every rank
        engine::fill_zero(y);
        ex->dispatch(y3, x3);
        ex->combine(b3, y3);
        engine::sync_device(dev);
        const std::vector<char> yh = to_host(y);
        if (ref.empty()) ref = yh;
        std::vector<int32_t> bad = {yh != ref || !round_trip_ok(to_host(back)) ? 1 : 0};
        W->all_reduce(Tensor(bad.data(), {1}, DType::i32), ReduceOp::max);
        return bad[0] == 0;
      };
      ex->dispatch(y3, x3);  // once untimed, for the bytes it sends
      const ExchangeStats plain = ex->last_stats();
      const double sent = double(plain.ep_bytes + plain.tp_bytes), bf16_sent = sent * 2 / es;
      const int shown_chunks = kind == ExchangeKind::pipelined ? k : 0;
      sweep.run(with_prediction(c, shown_chunks, predict_exchange_shape(kind, k, E, C, hidden, es, g, lm, load).total,
                                sent, sent / bf16_sent));
      if (!o.dispatch_fp8) continue;
      const Tensor xq = engine::make_view(a.get("xq").data, {E, C, Wq}, dt, dev);
      const Tensor yq = engine::make_view(a.get("yq").data, {E / ep, ep * C, Wq}, dt, dev);
      engine::BenchCase f = engine::bench_case(std::string(exchange_kind_name(kind)) + "+fp8", "", 0,
                                               double(E * C * Wq) * es, [&] { fp8_dispatch(*ex, y3, x3, xq, yq); });
      f.group = ep;
      f.check = [&] {  // equals quantise→dequantise of this strategy's plain dispatch, on every rank
        ex->dispatch(y3, x3);
        fp8_round_trip(y3, engine::make_view(a.get("xq").data, {E / ep, ep * C, Wq}, dt, dev));
        engine::sync_device(dev);
        const std::vector<char> want = to_host(y);
        engine::fill_zero(y);
        fp8_dispatch(*ex, y3, x3, xq, yq);
        engine::sync_device(dev);
        std::vector<int32_t> bad = {to_host(y) != want ? 1 : 0};
        W->all_reduce(Tensor(bad.data(), {1}, DType::i32), ReduceOp::max);
        return bad[0] == 0;
      };
      const ExchangeStats q = fp8_dispatch(*ex, y3, x3, xq, yq);
      const double fsent = double(q.ep_bytes + q.tp_bytes);
      sweep.run(with_prediction(f, shown_chunks, predict_exchange_shape(kind, k, E, C, Wq, es, g, lm, load).total,
                                fsent, fsent / bf16_sent));
    }
  }
  ExchangeBenchResult res;
  res.options = o;
  res.sweep = engine::BenchSweep(warmup, iters, nullptr);  // the rows, without the timer over this call's groups
  for (const engine::BenchRow& r : sweep.rows()) res.sweep.add(r);
  res.links = lm;
  res.placement = g;
  res.load = load;
  res.world = world;
  res.nodes = topo.num_nodes;
  res.emulated = topo.emulated;
  return res;
}

std::string ExchangeBenchResult::table() const {
  const ExchangeBenchOptions& o = options;
  const DType dt = o.device == Device::cpu ? DType::f32 : DType::bf16;
  std::string s = strf("monta bench exchange: tp %d ep %d on %d ranks, %d node(s)%s, E %ld, H %ld, %s, median of %d; "
                       "EP peers %d intra / %d inter\n",
                       o.tp, o.ep, world, nodes, emulated ? " (emulated)" : "", long(int64_t(o.ep) * o.experts_per_rank),
                       long(o.hidden), engine::dtype_name(dt), o.iters, placement.ep_peers_intra, placement.ep_peers_inter);
  if (o.skew > 0)
    s += strf("dropless loads: %.3f of every rank's tokens to expert 0; filled fraction %.4f of the slots, the most "
              "loaded EP rank at %.3fx the mean rows (what pred prices)\n",
              o.skew, load.fill, load.imbalance);
  s += "(overlapped moves its bytes as pipelined does; what it gains needs the experts between the chunks: see `monta "
       "bench layer --tp --ep`)\n";
  using R = engine::BenchRow;
  return s + sweep.table({
                 engine::bench_number_column("size (B)", 12, "%.0f", [](const R& r) { return r.bytes; }),
                 engine::bench_text_column(" op", -16, &R::name),
                 {"chunks", 6, [](const R& r) { return r.values[0] > 0 ? strf("%.0f", r.values[0]) : std::string("-"); }},
                 engine::bench_number_column("time (us)", 12, "%.1f", [](const R& r) { return r.us(); }),
                 engine::bench_number_column("algbw", 10, "%.3f", [](const R& r) { return r.algbw; }),
                 engine::bench_number_column("busbw", 10, "%.3f", [](const R& r) { return r.busbw; }),
                 engine::bench_number_column("pred (us)", 12, "%.1f", [](const R& r) { return r.values[1]; }),
                 engine::bench_number_column("pred err %", 11, "%.1f",
                                             [](const R& r) { return 100.0 * (r.us() - r.values[1]) / r.values[1]; }),
                 {"sent (B)", 12, [](const R& r) { return r.values[2] > 0 ? strf("%.0f", r.values[2]) : std::string("-"); }},
                 {"vs bf16", 8, [](const R& r) { return r.values[2] > 0 ? strf("%.3f", r.values[3]) : std::string("-"); }},
                 {"ok", 13, [](const R& r) { return std::string(r.ok ? "ok" : "WRONG"); }},
             });
}

std::string ExchangeBenchResult::json() const {
  const ExchangeBenchOptions& o = options;
  const DType dt = o.device == Device::cpu ? DType::f32 : DType::bf16;
  const LinkModel& lm = links;
  engine::JsonRecord h;
  h.add("tp", o.tp).add("ep", o.ep).add("world", world).add("nodes", nodes).add("dtype", engine::dtype_name(dt));
  h.add("skew", o.skew, "%.4f").add("filled_fraction", load.fill, "%.6f").add("imbalance", load.imbalance, "%.4f");
  h.add("iters", o.iters).add("intra_gbps", 1e-9 / lm.intra.beta, "%.4f").add("intra_latency_us", lm.intra.alpha * 1e6, "%.3f");
  h.add("intra_next_latency_us", lm.intra.next_alpha() * 1e6, "%.3f").add("inter_gbps", 1e-9 / lm.inter.beta, "%.4f");
  h.add("inter_latency_us", lm.inter.alpha * 1e6, "%.3f").add("inter_next_latency_us", lm.inter.next_alpha() * 1e6, "%.3f");
  return sweep.json(h);
}

}  // namespace monta::comm
