// `monta bench ops|layer` (model/benchmarks.h): deterministic inputs, warm-up, median of timed iterations, FLOP and
// byte counts per op, ceilings measured in the same run.
#include "model/benchmarks.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>
#include <functional>
#include <iostream>
#include <vector>

#include "comm/runtime.h"
#include "comm/timing.h"
#include "engine/check.h"
#include "engine/files.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "engine/bench.h"
#include "engine/json.h"
#include "engine/op_cases.h"
#include "engine/op_timing.h"
#include "engine/timing.h"
#include "engine/settings.h"
#include "engine/ops/adamw.h"
#include "engine/ops/attention.h"
#include "engine/ops/cross_entropy.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/linear.h"
#include "engine/ops/moe_permute.h"
#include "engine/ops/rmsnorm.h"
#include "engine/ops/rope.h"
#include "engine/ops/router.h"
#include "engine/ops/swiglu.h"
#include "model/config.h"
#include "model/model.h"
#include "model/params.h"
#include "model/shapes.h"

#include "model/parallel_setup.h"

namespace monta::model {

using namespace monta::engine;

namespace {

// Owns device buffers for the benchmark; fills them with deterministic pseudo-random values (never zeros).
class Buffers {
 public:
  explicit Buffers(Device d) : dev_(d) {}
  ~Buffers() {
    for (auto& [p, d] : owned_) device_free(d, p);
  }
  Tensor make(std::vector<int64_t> shape, DType t, double scale = 1.0) {
    Tensor x = make_view(nullptr, shape, t, dev_);
    x.data = device_alloc(dev_, x.bytes());
    owned_.push_back({x.data, dev_});
    if (t != DType::i32) fill_pseudo_random(x, seed_++, scale);  // index tensors are filled by the ops
    return x;
  }

 private:
  Device dev_;
  uint64_t seed_ = 1;
  std::vector<std::pair<void*, Device>> owned_;
};

// op, shape, ms, TFLOP/s, GB/s: the table of `bench ops` and `bench layer`.
std::string op_table(const BenchSweep& sweep) {
  using R = BenchRow;
  return sweep.table({bench_text_column("op", -28, &R::name), bench_text_column("shape", -34, &R::shape),
                      bench_number_column("ms", 10, "%.3f", [](const R& r) { return r.ms(); }),
                      bench_number_column("TFLOP/s", 10, "%.1f", [](const R& r) { return r.tflops; }),
                      bench_number_column("GB/s", 10, "%.1f", [](const R& r) { return r.algbw; })});
}

void report(const BenchSweep& sweep, const std::string& json_path, const std::string& title, const JsonRecord& header) {
  log_info(title);
  log_info(op_table(sweep));
  if (json_path.empty()) return;
  write_text_file(json_path, sweep.json(header));
  log_info("wrote " + json_path);
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> v;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t end = std::min(s.find(',', at), s.size());
    if (end > at) v.push_back(s.substr(at, end - at));
    at = end + 1;
  }
  return v;
}

// One more layer step with op timing on (engine/op_timing.h): this rank's time per op, its share of that step, and
// what no op accounts for (collectives, copies, launch gaps). Returns the ops as a JSON record.
JsonRecord layer_breakdown(Device dev, model::Model& model, const std::string& label, bool print) {
  sync_device(dev);
  set_op_timing(true);
  const HostTimer timer;
  model.bench_layer(0);
  sync_device(dev);
  const double step_ms = timer.ms();
  set_op_timing(false);
  std::vector<OpTime> ops = take_op_times();
  std::stable_sort(ops.begin(), ops.end(), [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; });
  double sum = 0;
  for (const auto& op : ops) sum += op.ms;
  if (print) {
    log_info(strf("breakdown of one %s step (op timing on): %.3f ms", label.c_str(), step_ms));
    log_info(strf("  %-44s %6s %10s %8s", "op and shape of its first tensor", "calls", "ms", "share"));
    for (const auto& op : ops)
      log_info(strf("  %-44s %6d %10.3f %7.1f%%", op.name.c_str(), op.calls, op.ms, 100.0 * op.ms / step_ms));
    log_info(strf("  %-44s %6s %10.3f %7.1f%%", "(no op: comm, copies, gaps)", "", step_ms - sum,
                  100.0 * (step_ms - sum) / step_ms));
  }
  std::vector<JsonRecord> rows;
  for (const auto& op : ops) rows.push_back(JsonRecord().add("op", op.name).add("calls", op.calls).add("ms", op.ms, "%.4f"));
  return JsonRecord().add("step_ms", step_ms, "%.4f").add("ops", rows);
}

// Variants of a table case that only the benchmark times: the hand-written attention kernels (the f32 path and the
// fallback) on the same inputs, and the expert GEMM's backward halves (dx; dw accumulated, beta 1; dw first, beta 0).
void bench_variants(BenchSweep& sweep, const OpCase& c, const Arena& t, Device dev, const OpDims& d, double el) {
  if (c.name == "attention" && dev == Device::cuda) {
    const AttentionPath was = settings().attention;
    settings().attention = AttentionPath::handwritten;
    BenchCase f = bench_case("attention fwd (hand-written)", c.shape, c.flops_fwd, c.bytes_fwd, [&] { c.forward(t); });
    BenchCase b = bench_case("attention bwd (hand-written)", c.shape, c.flops_bwd, c.bytes_bwd, [&] { c.backward(t); });
    f.iters = b.iters = std::min(sweep.iters(), 3);
    sweep.run(f);
    sweep.run(b);
    settings().attention = was;
  }
  if (c.name == "expert_linear") {
    const int64_t E = d.E, C = d.C, H = d.H, F = d.F;
    const Tensor dx = t.get("dx"), dw = t.get("dw"), dout = t.get("dout"), x = t.get("x"), w = t.get("w");
    const double flops = 2.0 * E * C * F * H;
    sweep.run(bench_case("expert_linear bwd dx", strf("E%ld %ldx%ldx%ld", E, C, H, F), flops,
                         el * E * (C * H + F * H + C * F), [=] { expert_linear_backward(dx, Tensor(), dout, x, w); }));
    sweep.run(bench_case("expert_linear bwd dw", strf("E%ld %ldx%ldx%ld", E, F, H, C), flops,
                         el * E * (C * H + C * F) + 8.0 * E * F * H,
                         [=] { expert_linear_backward(Tensor(), dw, dout, x, w); }));
    sweep.run(bench_case("expert_linear bwd dw first", strf("E%ld %ldx%ldx%ld", E, F, H, C), flops,
                         el * E * (C * H + C * F) + 4.0 * E * F * H,
                         [=] { expert_linear_backward(Tensor(), dw, dout, x, w, Write::overwrite, Write::overwrite); }));
  }
}

}  // namespace

int bench_ops(Device dev, int iters, const std::string& json, int64_t S, bool small) {
  const DType act = dev == Device::cuda ? DType::bf16 : DType::f32;
  const double el = double(dtype_size(act));
  BenchSweep sweep(2, iters, local_bench_timer(dev));
  {  // Ceilings: a large GEMM and a large device copy, measured in this run.
    Buffers B(dev);
    const int64_t M = dev == Device::cuda ? 8192 : 512;
    Tensor a = B.make({M, M}, act), w = B.make({M, M}, act, 0.01), o = B.make({M, M}, act);
    sweep.run(bench_case("ceiling: GEMM", strf("%ldx%ldx%ld", M, M, M), 2.0 * M * M * M, 3.0 * M * M * el,
                         [&] { linear_forward(o, a, w); }));
    const int64_t n = dev == Device::cuda ? (int64_t(1) << 29) : (int64_t(1) << 24);
    Tensor src = B.make({n}, DType::bf16), dst = B.make({n}, DType::bf16);
    sweep.run(bench_case("ceiling: device copy", strf("%ld MiB", n * 2 >> 20), 0, 2.0 * double(n) * 2,
                         [&] { copy(dst, src); }));
  }
  // Every case of the op table (engine/op_cases.h) at 2x70B widths: its forward, then its backward.
  const OpDims d = small ? op_dims_parity() : op_dims_2x70b(S);
  for (const OpCase& c : op_cases(d, el)) {
    const Arena t = op_case_arena(c, dev, op_precision_for(act));
    op_case_fill(c, t, 1);
    sweep.run(bench_case(c.name + " fwd", c.shape, c.flops_fwd, c.bytes_fwd, [&] { c.forward(t); }));
    if (c.backward)
      sweep.run(bench_case(c.name + " bwd", c.shape, c.flops_bwd, c.bytes_bwd, [&] { c.backward(t); }));
    bench_variants(sweep, c, t, dev, d, el);
  }
  {  // Not in the table (no gradient to check): the router's assignment and the optimizer step.
    Buffers B(dev);
    const int64_t N = d.N(), E = d.E, C = d.C, P = d.F * d.H;
    Tensor rl = B.make({N, E}, act), probs = B.make({N, E}, act), wgt = B.make({N, 1}, act);
    Tensor idx = B.make({N, 1}, DType::i32), slot = B.make({N, 1}, DType::i32), counts = B.make({E}, DType::i32);
    sweep.run(bench_case("router softmax+top-k+capacity", strf("N%ld E%ld C%ld", N, E, C), 0, el * 2 * N * E, [&] {
      softmax_forward(probs, rl);
      router_topk_assign(idx, slot, counts, probs, C);
      topk_weights_forward(wgt, probs, idx);
    }));
    // AdamW over one FFN weight's worth of parameters (fp32 param, grad, m, v + bf16 copy).
    Tensor pm = B.make({P}, DType::f32, 0.02), pg = B.make({P}, DType::f32, 1e-3), m1 = B.make({P}, DType::f32, 1e-4),
           m2 = B.make({P}, DType::f32, 1e-8), plp = B.make({P}, DType::bf16);
    fill_zero(m2);
    AdamWArgs aw;
    sweep.run(bench_case("adamw", strf("%ld params", P), 0, double(P) * (4 * 4 + 4 * 3 + 2),
                         [&] { adamw_step(pm, m1, m2, dev == Device::cuda ? plp : Tensor(), pg, aw); }));
  }
  const double gemm = sweep.rows()[0].tflops, bw = sweep.rows()[1].algbw;
  report(sweep, json,
         strf("monta bench ops (%s, median of %d; ceilings: GEMM %.1f TFLOP/s, copy %.1f GB/s)", device_name(dev), iters,
              gemm, bw),
         JsonRecord().add("device", device_name(dev)).add("gemm_tflops", gemm, "%.3f").add("copy_gbps", bw, "%.3f"));
  for (const BenchRow& r : sweep.rows())
    if (r.name.rfind("ceiling", 0) != 0)
      log_info(strf("  %-28s %5.1f%% of GEMM ceiling, %5.1f%% of copy ceiling", r.name.c_str(),
                    r.flops > 0 ? 100.0 * r.tflops / gemm : 0.0, 100.0 * r.algbw / bw));
  return 0;
}

int bench_optimizer(int iters, const std::string& json, int64_t params, int max_threads) {
  const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
  const int top = max_threads > 0 ? max_threads : hw;
  const int64_t P = params;
  // Host memory as offload holds it (plain here: the host step does not care whether it is pinned).
  Buffers B(Device::cpu);
  Tensor pm = B.make({P}, DType::f32, 0.02), g = B.make({P}, DType::f32, 1e-3), lowp = B.make({P}, DType::bf16);
  Tensor m32 = B.make({P}, DType::f32, 1e-4), v32 = B.make({P}, DType::f32, 1e-8);
  Tensor m16 = B.make({P}, DType::bf16, 1e-4), v16 = B.make({P}, DType::bf16, 1e-8);
  fill_zero(v32);  // second moments start non-negative
  fill_zero(v16);
  BenchSweep sweep(2, iters, local_bench_timer(Device::cpu));
  AdamWArgs aw;
  aw.weight_decay = 0.1;
  const int saved = settings().host_threads;
  for (const bool bf16 : {false, true}) {
    const Tensor m = bf16 ? m16 : m32, v = bf16 ? v16 : v32;
    // Bytes moved per parameter: read master, grad, m, v; write master, m, v, the bf16 copy.
    const double bytes = double(P) * (4 + 4 + 2 * double(dtype_size(m.dtype)) + 4 + 2 * double(dtype_size(m.dtype)) + 2);
    for (int t = 1;; t = std::min(2 * t, top)) {
      settings().host_threads = t;
      BenchCase c = bench_case(strf("adamw %s moments", bf16 ? "bf16" : "fp32"), strf("%ld params, %d threads", P, t), 0,
                               bytes, [&] { adamw_step(pm, m, v, lowp, g, aw); });
      c.extra.add("threads", t);
      const BenchRow& r = sweep.run(std::move(c));
      log_info(strf("  %-20s %3d threads: %8.1f M params/s, %7.1f M params/s per thread", r.name.c_str(), t,
                    double(P) / r.seconds / 1e6, double(P) / r.seconds / 1e6 / t));
      if (t == top) break;
    }
  }
  settings().host_threads = saved;
  report(sweep, json,
         strf("monta bench optimizer (host AdamW, %ld parameters, median of %d, %d hardware threads)", P, iters, hw),
         JsonRecord().add("device", "cpu").add("params", P).add("hardware_threads", hw));
  return 0;
}

namespace {

// The router logits (N, E) of --router balanced or skewed (empty for natural), in `act` on dev: token n ranks
// experts r, r+1, ... mod E, with r = n (balanced) or, skewed, r = 0 for a fraction `skew` of the tokens spread
// evenly (token n when floor((n+1)·skew) > floor(n·skew): 3 in 4 for 0.75) and r = n for the others.
Tensor router_pattern(Buffers& B, const std::string& router, double skew, int64_t N, int64_t E, DType act) {
  MONTA_USER_CHECK(router == "natural" || router == "balanced" || router == "skewed",
                   "--router must be natural, balanced or skewed (or a comma list of them), got '" + router + "'");
  MONTA_USER_CHECK(skew >= 0 && skew <= 1, strf("--skew must be a fraction in [0, 1], got %g", skew));
  if (router == "natural") return Tensor();
  std::vector<float> host(size_t(N * E));
  int64_t rest = 0;  // the tokens not sent to expert 0 so far: they cycle over the experts on their own count
  for (int64_t n = 0; n < N; ++n) {
    const bool to_0 = router == "skewed" && std::floor(double(n + 1) * skew) > std::floor(double(n) * skew);
    const int64_t r = to_0 ? 0 : rest++ % E;
    for (int64_t e = 0; e < E; ++e) host[size_t(n * E + e)] = -float((e - r + E) % E);
  }
  Tensor f32 = B.make({N, E}, DType::f32), out = B.make({N, E}, act);
  copy(f32, Tensor(host.data(), {N, E}, DType::f32));
  cast(out, f32);
  return out;
}

// Routing of layer 0's last forward: choices routed to experts (N·K), those an expert processed (less the dropped),
// and the load imbalance max_e load / mean load on this rank.
struct RoutedLoad {
  int64_t routed = 0, processed = 0;
  double imbalance = 0;
};
RoutedLoad routed_load(const Model& model, const MicroResult& r) {
  const Tensor c = model.counts();
  const int64_t E = c.dim(1);
  std::vector<int32_t> host(static_cast<size_t>(E), 0);
  read_to_host(Tensor(host.data(), {E}, DType::i32), c.rows(0, 1).view({E}), "bench layer expert loads");
  RoutedLoad l;
  for (int32_t v : host) l.routed += v;
  l.processed = l.routed - r.dropped;
  l.imbalance = double(*std::max_element(host.begin(), host.end())) / (double(l.routed) / double(E));
  return l;
}

}  // namespace

int bench_layer(Device dev, int iters, const std::string& json, int64_t S, const BenchLayerOptions& o) {
  model::Config c;
  model::ModelConfig& m = c.model;
  m.vocab = o.vocab;
  m.hidden = o.hidden;
  m.layers = 1;
  m.heads = o.heads;
  m.kv_heads = o.kv_heads;
  m.ffn = o.ffn;
  m.experts = o.experts;
  m.top_k = o.top_k;
  m.seq_len = S;
  m.capacity_factor = 1.0;
  const std::vector<std::string> fp8_modes = split_list(o.fp8);
  MONTA_USER_CHECK(!fp8_modes.empty(), "bench layer: --fp8 lists no mode");
  // A mode is model.fp8, with ":bf16-wgrad" for model.fp8_wgrad = false (e.g. experts:bf16-wgrad).
  const auto fp8_mode_of = [](const std::string& f) { return f.substr(0, f.find(':')); };
  for (const auto& f : fp8_modes) {
    const std::string mode = fp8_mode_of(f), suffix = f.size() > mode.size() ? f.substr(mode.size()) : "";
    MONTA_USER_CHECK((mode == "none" || mode == "experts" || mode == "all") &&
                         (suffix.empty() || (suffix == ":bf16-wgrad" && mode != "none")),
                     "bench layer: --fp8 takes none, experts or all, the last two optionally with :bf16-wgrad (or a "
                     "comma list), not '" + f + "'");
  }
  const int world = comm::runtime_world_size(), me = comm::runtime_world_rank();
  MONTA_USER_CHECK(o.tp > 0 && o.ep > 0 && world % o.tp == 0,
                   strf("bench layer: --tp %d must divide the %d ranks, --ep must be positive", o.tp, world));
  const int dp = world / o.tp;
  c.parallel.tp = o.tp;
  c.parallel.ep = o.ep;
  c.parallel.expert_tp = o.expert_tp;
  c.train.micro_batch = 1;
  c.train.global_batch = dp;  // one sequence per DP rank
  c.data.builtin_tokens = std::max<int64_t>(c.data.builtin_tokens, 2 * S);
  c.comm.emulate_nodes = o.emulate_nodes;
  c.comm.chunks = o.chunks;
  std::vector<std::string> strategies = o.ep > 1 ? split_list(o.strategies) : std::vector<std::string>{"none"};
  MONTA_USER_CHECK(!strategies.empty(), "bench layer: --strategies lists no strategy");
  if (o.ep > 1)
    for (const auto& k : strategies)
      if (k != "auto") comm::parse_exchange_kind(k);  // a user error names the valid ones
  model::ParallelSetup ps = model::setup_parallel(c, dev);  // validates the layout against the world (user errors)
  if (me == 0 && world > 1) log_info(ps.layout_table);
  const DType act = dev == Device::cuda ? DType::bf16 : DType::f32;
  model::ParamStore params(m, ps.ctx, dev, DType::f32, act);
  params.init_for_benchmark();
  const model::Shapes s = model::Shapes::make(m, 1, o.tp, o.ep, dp, o.expert_tp);
  const int dp_idx = ps.groups->coords().dp_idx;
  std::vector<int32_t> tok(static_cast<size_t>(s.N)), tgt(static_cast<size_t>(s.N));
  for (int64_t i = 0; i < s.N; ++i) {
    tok[size_t(i)] = int32_t((i * 7919 + 13 + 101 * dp_idx) % m.vocab);
    tgt[size_t(i)] = int32_t((i * 104729 + 7 + 31 * dp_idx) % m.vocab);
  }
  // Ceiling measured in the same run.
  Buffers B(dev);
  const int64_t M = dev == Device::cuda ? 8192 : 512;
  Tensor a = B.make({M, M}, act), w = B.make({M, M}, act, 0.01), out = B.make({M, M}, act);
  BenchSweep sweep(1, iters, local_bench_timer(dev));
  const BenchTimer over_ranks = [&](int warmup, int n, const std::function<void()>& fn) {
    return comm::slowest_median_seconds(*ps.ctx.world, dev, warmup, n, fn);
  };
  BenchCase ceiling = bench_case("ceiling: GEMM", strf("%ldx%ldx%ld", M, M, M), 2.0 * M * M * M, 0,
                                 [&] { linear_forward(out, a, w); });
  ceiling.warmup = 2;
  const double gemm_ms = sweep.run(ceiling).ms(), gemm_tflops = sweep.rows()[0].tflops;
  // FLOPs of one layer's forward + backward on the micro-batch as the kernels execute them (model::FlopCount::executed)
  // with the (token, choice) rows the experts processed (the routed ones less the dropped; never the padding), and the
  // share each GPU does: the tp ranks of a DP group split one micro-batch.
  const auto layer_flops = [&](const RoutedLoad& l, model::FlopCount count) {
    return model::layer_train_flops_per_token(m, count, double(l.processed) / double(s.N)) * double(s.N) / o.tp;
  };
  JsonRecord breakdowns;
  const std::vector<std::string> routers = split_list(o.router);
  MONTA_USER_CHECK(!routers.empty(), "bench layer: --router lists no router");
  std::vector<Tensor> patterns;  // per router
  for (const auto& name : routers) patterns.push_back(router_pattern(B, name, o.skew, s.N, m.experts, act));
  const auto set_router = [&](Model& model, size_t router) {
    if (patterns[router].data)
      model.on_router_logits = [&pattern = patterns[router]](int, Tensor logits) { copy(logits, pattern); };
  };
  // The routing figures of a layer row (JSON fields), and its FLOPs from the processed rows.
  const auto add_routing = [&](BenchCase& layer, const Model& model, const MicroResult& r) {
    const RoutedLoad l = routed_load(model, r);
    layer.extra.add("routed", l.routed).add("processed", l.processed).add("capacity", model.capacity(0));
    layer.extra.add("imbalance", l.imbalance, "%.4f");
    layer.flops = layer_flops(l, model::FlopCount::executed);
    return l;
  };
  std::vector<std::pair<std::string, RoutedLoad>> per_token;  // label, loads: for the ns per routed choice
  for (const auto& fp8_mode : fp8_modes) {
    m.fp8 = fp8_mode_of(fp8_mode);
    m.fp8_wgrad = fp8_mode.find(":bf16-wgrad") == std::string::npos;
    const std::string fp8_label = fp8_modes.size() > 1 || fp8_mode != "none" ? " fp8=" + fp8_mode : "";
    for (const auto& name : strategies) {
      if (o.ep > 1) {
        c.comm.exchange = name;
        model::attach_exchange(ps, c, dev, act);
      }
      model::Model model(m, s, ps.ctx, params, act);
      set_router(model, 0);
      const MicroResult r0 = model.forward(tok.data(), tgt.data());  // real activations for the layer to start from
      // auto: the cost model's pick for this layer (start-up calibration and prediction), timed like the others.
      const std::string kind = o.ep == 1 ? name : comm::exchange_kind_name(ps.exchange->kind());
      const int chunks = o.ep == 1 ? 1 : ps.exchange->pipeline_chunks();
      const std::string label = (o.ep == 1 ? std::string("layer fwd+bwd")
                                 : name == "auto" ? strf("layer fwd+bwd auto=%s", kind.c_str())
                                                  : strf("layer fwd+bwd %s", name.c_str())) +
                                fp8_label;
      const std::string shape = strf("S%ld H%ld F%ld E%ld top%ld tp%d ep%d%s", long(S), long(m.hidden), long(m.ffn),
                                     long(m.experts), long(m.top_k), o.tp, o.ep,
                                     kind == "pipelined" || kind == "overlapped"
                                         ? strf(" n%d", chunks).c_str()
                                         : "");
      BenchCase layer = bench_case(label, shape, 0, 0, [&] { model.bench_layer(0); });
      layer.timer = over_ranks;
      const RoutedLoad l0 = add_routing(layer, model, r0);
      per_token.push_back({label, l0});
      sweep.run(layer);
      if (world == 1) {  // the forward alone, for where the time goes (FlopCount::forward)
        sweep.run(bench_case("layer fwd only" + fp8_label, shape, layer_flops(l0, model::FlopCount::forward), 0,
                             [&] { model.bench_layer(0, false); }));
        // As on a later micro-batch of a step: the weight gradients are added to, not written (GEMMs with beta 1).
        sweep.run(bench_case("layer fwd+bwd, grads added" + fp8_label, shape, layer.flops, 0,
                             [&] { model.bench_layer(0, true, true); }));
      }
      if (o.breakdown) breakdowns.add(name + fp8_label, layer_breakdown(dev, model, label, me == 0));
    }
    if (!o.dropless) continue;
    // The same layer, parameters and tokens with dropless routing, once per router: buffers for the worst case
    // (C = N), each step at its own capacity and the expert GEMMs over the filled rows. FLOPs count the routed
    // choices, as for the capacity rows: the padding is not work.
    model::Config cd = c;
    cd.model.capacity_factor = 0;
    cd.model.fp8 = m.fp8;
    cd.model.fp8_wgrad = m.fp8_wgrad;
    const model::Shapes sd = model::Shapes::make(cd.model, 1, o.tp, o.ep, dp, o.expert_tp);
    for (size_t ri = 0; ri < routers.size(); ++ri) {
      for (const auto& name : strategies) {
        if (o.ep > 1) {
          cd.comm.exchange = name;
          model::attach_exchange(ps, cd, dev, act);
        }
        model::Model model(cd.model, sd, ps.ctx, params, act);
        set_router(model, ri);
        const MicroResult r0 = model.forward(tok.data(), tgt.data());
        const std::string router_label = routers.size() > 1 ? " " + routers[ri] : "";
        const std::string label = (o.ep == 1 ? std::string("layer fwd+bwd dropless")
                                             : strf("layer fwd+bwd dropless %s", name.c_str())) +
                                  router_label + fp8_label;
        BenchCase layer = bench_case(label, strf("S%ld E%ld top%ld C%ld", long(S), long(m.experts), long(m.top_k),
                                                 long(model.capacity(0))),
                                     0, 0, [&] { model.bench_layer(0); });
        layer.timer = over_ranks;
        per_token.push_back({label, add_routing(layer, model, r0)});
        if (o.breakdown) breakdowns.add(label, layer_breakdown(dev, model, label, me == 0));
        sweep.run(layer);
      }
    }
  }
  const std::vector<BenchRow>& rows = sweep.rows();
  const double best = rows[1].tflops, layer_ms = rows[1].ms();  // the first strategy's fwd+bwd
  // Time per processed (token, choice) of every layer row: capacity rows process the routed choices less the dropped,
  // dropless rows all of them; the yardstick compares the two under a balanced router.
  JsonRecord routing;
  for (const auto& [label, l] : per_token) {
    const auto row = std::find_if(rows.begin(), rows.end(), [&](const BenchRow& b) { return b.name == label; });
    if (row == rows.end() || l.processed <= 0) continue;
    const double ns = row->seconds / double(l.processed) * 1e9;
    routing.add(label, JsonRecord()
                           .add("ms", row->ms(), "%.4f")
                           .add("routed", l.routed)
                           .add("processed", l.processed)
                           .add("imbalance", l.imbalance, "%.4f")
                           .add("ns_per_processed_choice", ns, "%.4f"));
    if (me == 0)
      log_info(strf("  %-48s %9.3f ms  %8ld routed  %8ld processed  imbalance %.3f  %.3f ns per processed choice",
                    label.c_str(), row->ms(), long(l.routed), long(l.processed), l.imbalance, ns));
  }
  // The same GEMM again, back to back for as long as one layer step takes, measured after the layer: the rate the
  // card holds under sustained load (clocks drop with power), beside the short-burst ceiling above. One row per
  // GEMM-sized call: the case runs `reps` GEMMs, the row reports one.
  const int reps = std::max(1, int(std::lround(layer_ms / gemm_ms)));
  const double sus_ms = sweep.run(bench_case("", "", 0, 0, [&] {
                                   for (int r = 0; r < reps; ++r) linear_forward(out, a, w);
                                 })).ms() / reps;
  BenchSweep shown(1, iters, nullptr);  // the rows as reported: the sustained GEMM per call
  for (size_t i = 0; i + 1 < rows.size(); ++i) shown.add(rows[i]);
  shown.add(bench_row("ceiling: GEMM sustained", strf("%ldx%ldx%ld x%d", M, M, M, reps), sus_ms * 1e-3, 0,
                      2.0 * M * M * M));
  const double sus_tflops = shown.rows().back().tflops;
  std::string title = strf("monta bench layer (%s, %d rank%s, median of %d): %.1f%% of the GEMM ceiling (%.1f%% of the "
                           "sustained GEMM rate)",
                           device_name(dev), world, world > 1 ? "s" : "", iters, 100.0 * best / gemm_tflops,
                           100.0 * best / sus_tflops);
  if (strategies.size() > 1 && world > 1) {
    title += "; time relative to " + strategies[0] + ":";
    for (size_t i = 1; i < strategies.size(); ++i)  // rows[1 + i] is strategy i's (no forward-only rows when world > 1)
      title += strf(" %s %.3f", rows[1 + i].name.substr(std::string("layer fwd+bwd ").size()).c_str(),
                    rows[1 + i].ms() / layer_ms);
  }
  if (me == 0) {
    JsonRecord header;
    header.add("device", device_name(dev)).add("ranks", world).add("tp", o.tp).add("ep", o.ep);
    header.add("emulated_nodes", o.emulate_nodes).add("gemm_tflops", gemm_tflops, "%.3f");
    header.add("gemm_sustained_tflops", sus_tflops, "%.3f").add("layer_tflops", best, "%.3f");
    header.add("fraction_of_gemm", best / gemm_tflops, "%.4f").add("fraction_of_sustained_gemm", best / sus_tflops, "%.4f");
    if (o.breakdown) header.add("breakdown", breakdowns);
    header.add("router", o.router).add("skew", o.skew, "%.4f").add("routing", routing);
    report(shown, json, title, header);
  }
  return 0;
}

}  // namespace monta::model
