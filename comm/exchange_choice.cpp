// `--comm.exchange auto` (comm/exchange_choice.h): placement, links, the measured expert time, predictions of every
// strategy and chunk count, then the predicted best of each strategy timed on the real groups.
#include "comm/exchange_choice.h"

#include <vector>

#include "comm/calibrate.h"
#include "comm/timing.h"
#include "engine/check.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "engine/ops/linear.h"

namespace monta::comm {
namespace {

using engine::Tensor;

// The rows each rank's experts see: E_l local experts × e·C slots (E_l · e·C = E · C).
struct ExpertShape {
  int64_t El, EC, H, F;
};

// One layer's expert forward on this device, measured: the gate GEMM of this layer's shape (E_l experts, e*C rows,
// H -> F_l) on scratch buffers, the slowest rank's median of 3 after a warm-up, times 3 (gate, up and down have the
// same FLOPs). Collective over world, so every rank predicts with the same number.
// The model's expert GEMM (ExchangeChoiceInput::expert_gemm), or the plain one.
void expert_gemm(const ExchangeChoiceInput& in, Tensor o, const Tensor& y, const Tensor& w) {
  if (in.expert_gemm)
    in.expert_gemm(o, y, w);
  else
    engine::expert_linear_forward(o, y, w);
}

double expert_forward_seconds(Communicator& world, const ExpertShape& s, const ExchangeChoiceInput& in) {
  const engine::DType act = in.dtype;
  engine::Arena scratch("expert_probe", in.device,
                        {{"y", {s.El, s.EC, s.H}, act}, {"w", {s.El, s.F, s.H}, act}, {"o", {s.El, s.EC, s.F}, act}});
  for (const char* n : {"y", "w"}) engine::fill_zero(scratch.get(n));
  const Tensor y = scratch.get("y"), w = scratch.get("w"), o = scratch.get("o");
  return 3 * slowest_median_seconds(world, in.device, 1, 3, [&] { expert_gemm(in, o, y, w); });
}

struct Candidate {
  ExchangeKind kind;
  int chunks;
  double predicted, predicted_fwd, measured;  // seconds: fwd+bwd blocks, forward block; measured forward block
};

// Times each candidate's forward MoE block on scratch buffers: dispatch, then per expert chunk three GEMMs of the
// chunk's rows (gate, up and down have the same FLOPs), then combine. All ranks run every candidate in the same
// order; the slowest rank's median of 3 after a warm-up, so every rank gets the same numbers.
void measure_forward_blocks(Communicator& world, Communicator& tp, Communicator& ep, const ExchangeChoiceInput& in,
                            const ExpertShape& s, std::vector<Candidate>& cands) {
  // The forward dispatch moves rows of Hd elements (the FP8 dispatch's packed rows, or H); pack and unpack are not
  // timed (elementwise, the same for every strategy).
  const int64_t E = in.experts, C = in.capacity, n = E * C * s.H, Hd = in.dispatch_width > 0 ? in.dispatch_width : s.H;
  const engine::DType act = in.dtype;
  engine::Arena scratch("exchange_auto_probe", in.device,
                        {{"x", {n}, act}, {"y", {n}, act}, {"z", {n}, act}, {"out", {n}, act},
                         {"w", {s.El, s.F, s.H}, act}, {"o", {s.El, s.EC, s.F}, act}});
  for (const char* t : {"x", "z", "w"}) engine::fill_zero(scratch.get(t));
  const Tensor x = engine::make_view(scratch.get("x").data, {E, C, Hd}, act, in.device);
  const Tensor y = engine::make_view(scratch.get("y").data, {s.El, s.EC, Hd}, act, in.device);
  const Tensor z = scratch.get("z").view({s.El, s.EC, s.H}), out = scratch.get("out").view({E, C, s.H});
  const Tensor w = scratch.get("w"), o = scratch.get("o"), yfull = scratch.get("y").view({s.El, s.EC, s.H});
  for (Candidate& k : cands) {
    ExchangeShape shape{E, C, s.H};
    shape.chunks = k.chunks;
    shape.sequence_parallel = in.sequence_parallel;
    auto ex = make_exchange(k.kind, tp, ep, shape, act, in.device);
    if (in.load.fill < 1 || in.load.imbalance > 1) ex->set_loads(loads_like(ep.size(), E, C, in.load));
    auto block = [&] {
      ex->dispatch_experts_combine(out, z, y, x, [&](int c) {
        const Tensor yc = ex->expert_chunk(yfull, c), oc = ex->expert_chunk(o, c);
        for (int g = 0; g < 3; ++g) expert_gemm(in, oc, yc, w);
      });
    };
    k.measured = slowest_median_seconds(world, in.device, 1, 3, block);
  }
}

// The fastest by `by`, unless a simpler strategy (earlier in the list) is within 2%.
size_t fastest(const std::vector<Candidate>& v, double Candidate::*by) {
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i].*by < v[best].*by * 0.98) best = i;
  return best;
}

}  // namespace

ExchangeChoice choose_exchange(const ProcessGroups& groups, Communicator& world, Communicator& tp, Communicator& ep,
                               const ExchangeChoiceInput& in) {
  MONTA_CHECK(in.experts > 0 && in.capacity > 0 && in.hidden > 0 && in.ffn_local > 0 && in.experts % ep.size() == 0,
              "choose_exchange: bad layer shape");
  // Where this rank's TP and EP peers sit.
  const GroupPlacement place = group_placement(groups);
  // Link model: given, or a short probe over the very groups the exchange uses.
  LinkModel links{link_from(300, 10), link_from(10, 20)};
  std::string calibration;
  if (in.links) {
    links = *in.links;
  } else {
    Communicator* intra = nullptr;
    Communicator* inter = nullptr;
    if (tp.size() > 1 && !place.tp_spans_nodes) intra = &tp;
    if (place.ep_peers_inter > 0)
      inter = &ep;
    else if (!intra)
      intra = &ep;
    // Up to this layer's own dispatch buffer: a fit over small probes alone misjudges the bandwidth when the
    // latency is large (emulated nodes: ~3 ms per collective), and the exchange moves the big buffer.
    const int64_t buffer = in.experts * in.capacity * in.hidden * int64_t(engine::dtype_size(in.dtype));
    const std::vector<int64_t> sizes = calibration_sizes(std::min<int64_t>(buffer, int64_t(1) << 28));
    const Calibration cal = calibrate(intra, inter, links, sizes, 3, in.device);
    links = cal.links;
    calibration = "exchange auto: link calibration over the exchange's own groups (max over ranks of the median)\n" +
                  format_calibration(cal);
  }
  // Predict every strategy on this layer's (E, C, H) buffer and measured expert time: the forward and backward MoE
  // blocks (dispatch, experts, combine) of one layer.
  const int64_t E = in.experts, C = in.capacity, H = in.hidden, Hd = in.dispatch_width > 0 ? in.dispatch_width : H;
  const ExpertShape xs{E / ep.size(), C * ep.size(), H, in.ffn_local};
  const int es = int(engine::dtype_size(in.dtype));
  const double xf = expert_forward_seconds(world, xs, in);
  ExchangeChoice out;
  const bool loads = in.load.fill < 1 || in.load.imbalance > 1;
  out.table = calibration +
              (loads ? engine::strf("exchange auto: dropless, %.1f%% of the slots filled, the most loaded EP rank at "
                                    "%.2fx the mean rows (priced at that rank)\n",
                                    100 * in.load.fill, in.load.imbalance)
                     : std::string()) +
              engine::strf(
      "exchange auto: predicted MoE blocks of one layer, forward + backward, for (E, C, H) = (%ld, %ld, %ld), experts "
      "measured at %.1f us forward%s (backward taken as 2x)%s\n  %-12s %6s %12s %14s\n",
      long(E), long(C), long(H), xf * 1e6, in.expert_gemm ? " with the model's expert GEMM" : "",
      Hd != H ? engine::strf("; forward dispatch of %ld-element packed FP8 rows", long(Hd)).c_str() : "", "strategy",
      "chunks", "call us", "fwd+bwd us");
  // The predicted best chunk count of every strategy, in order of simplicity.
  std::vector<Candidate> cands;
  for (auto k : {ExchangeKind::duplicate, ExchangeKind::drop_gather, ExchangeKind::pipelined, ExchangeKind::overlapped}) {
    if (in.sequence_parallel && k == ExchangeKind::duplicate) continue;
    const bool chunked = k == ExchangeKind::pipelined || k == ExchangeKind::overlapped;
    for (int n = chunked ? 2 : 1; n <= (chunked ? 8 : 1); ++n) {
      if (in.runnable && !in.runnable(k, n)) continue;
      const auto p = predict_exchange_shape(k, n, E, C, H, es, place, links, in.load);
      // Sequence parallel: one dispatch per block, each with its reduce-scatter over TP.
      const double sp =
          in.sequence_parallel ? sp_dispatch_reduce_scatter_time(k, n, E, C, H, es, place, links, in.load) : 0;
      const double fwd = predict_moe_block_rows(k, n, E, C, Hd, H, es, place, links, xf, in.load) + sp;
      const double t = fwd + predict_moe_block(k, n, E, C, H, es, place, links, 2 * xf, in.load) + sp;
      out.table += engine::strf("  %-12s %6d %12.1f %14.1f\n", exchange_kind_name(k), n, p.total * 1e6, t * 1e6);
      if (cands.empty() || cands.back().kind != k) cands.push_back({k, n, t, fwd, 0});
      else if (t < cands.back().predicted) cands.back() = {k, n, t, fwd, 0};
    }
  }
  MONTA_CHECK(!cands.empty(), "exchange auto: no strategy the model can run");
  size_t pick_i = fastest(cands, &Candidate::predicted);
  if (in.verify) {
    // Ranks may place their groups differently and predict other chunk counts: all measure rank 0's candidates.
    std::vector<int64_t> ks(cands.size());
    for (size_t i = 0; i < cands.size(); ++i) ks[i] = cands[i].chunks;
    world.broadcast(Tensor(ks.data(), {int64_t(ks.size())}, engine::DType::i64), 0);
    for (size_t i = 0; i < cands.size(); ++i) cands[i].chunks = int(ks[i]);
    measure_forward_blocks(world, tp, ep, in, xs, cands);
    out.table += "exchange auto: measured forward MoE block (predicted best chunk count of each strategy)\n";
    for (const Candidate& k : cands)
      out.table += engine::strf("  %-12s %6d  predicted %10.1f us  measured %10.1f us  (%+.0f%%)\n",
                                exchange_kind_name(k.kind), k.chunks, k.predicted_fwd * 1e6, k.measured * 1e6,
                                100.0 * (k.measured - k.predicted_fwd) / k.predicted_fwd);
    const size_t by_measure = fastest(cands, &Candidate::measured);
    if (by_measure != pick_i)
      out.table += engine::strf("exchange auto: measurement overrides the prediction (%s -> %s)\n",
                                exchange_kind_name(cands[pick_i].kind), exchange_kind_name(cands[by_measure].kind));
    pick_i = by_measure;
  }
  // Strategies must agree across the TP and EP groups: rank 0's pick for everyone.
  int64_t pick[2] = {int64_t(cands[pick_i].kind), cands[pick_i].chunks};
  world.broadcast(Tensor(pick, {2}, engine::DType::i64), 0);
  out.kind = ExchangeKind(pick[0]);
  out.chunks = int(pick[1]);
  out.table += engine::strf("exchange auto: chose %s%s", exchange_kind_name(out.kind),
                            out.kind == ExchangeKind::pipelined || out.kind == ExchangeKind::overlapped
                                ? engine::strf(" with %d chunks", out.chunks).c_str()
                                : "");
  return out;
}

}  // namespace monta::comm
