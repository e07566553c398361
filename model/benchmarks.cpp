// `monta bench ops|layer` (model/benchmarks.h): deterministic inputs, warm-up, median of timed iterations, FLOP and
// byte counts per op, ceilings measured in the same run.
#include "model/benchmarks.h"

#include <algorithm>
#include <chrono>
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
#include "engine/op_timing.h"
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

struct Row {
  std::string name, shape;
  double ms = 0, tflops = 0, gbps = 0, flops = 0, bytes = 0;
};

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
    fill(x, scale);
    return x;
  }
  void fill(Tensor x, double scale) {
    if (x.dtype == DType::i32) return;  // index tensors are filled by the ops that produce them
    fill_pseudo_random(x, seed_++, scale);
  }

 private:
  Device dev_;
  uint64_t seed_ = 1;
  std::vector<std::pair<void*, Device>> owned_;
};

double time_ms(Device d, int warmup, int iters, const std::function<void()>& fn) {
  for (int i = 0; i < warmup; ++i) fn();
  sync_device(d);
  std::vector<double> samples;
  for (int i = 0; i < iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    sync_device(d);
    samples.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];  // median
}

void print_rows(const std::vector<Row>& rows, const std::string& json_path, const std::string& title,
                const std::string& extra_json) {
  log_info(title);
  log_info(strf("%-28s %-34s %10s %10s %10s", "op", "shape", "ms", "TFLOP/s", "GB/s"));
  for (auto& r : rows)
    log_info(strf("%-28s %-34s %10.3f %10.1f %10.1f", r.name.c_str(), r.shape.c_str(), r.ms, r.tflops, r.gbps));
  if (json_path.empty()) return;
  std::ostringstream out;
  out << "{" << extra_json << "\"rows\": [\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    auto& r = rows[i];
    out << strf("  {\"op\": \"%s\", \"shape\": \"%s\", \"ms\": %.5f, \"tflops\": %.3f, \"gbps\": %.3f, \"flops\": %.6e, "
                "\"bytes\": %.6e}%s\n",
                r.name.c_str(), r.shape.c_str(), r.ms, r.tflops, r.gbps, r.flops, r.bytes, i + 1 < rows.size() ? "," : "");
  }
  out << "]}\n";
  engine::write_text_file(json_path, out.str());
  log_info("wrote " + json_path);
}

Row measure(Device d, int iters, const std::string& name, const std::string& shape, double flops, double bytes,
            const std::function<void()>& fn) {
  Row r{name, shape};
  r.ms = time_ms(d, 2, iters, fn);
  r.flops = flops;
  r.bytes = bytes;
  r.tflops = flops / (r.ms * 1e-3) / 1e12;
  r.gbps = bytes / (r.ms * 1e-3) / 1e9;
  return r;
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
// what no op accounts for (collectives, copies, launch gaps). Returns the ops as a JSON array.
std::string layer_breakdown(Device dev, model::Model& model, const std::string& label, bool print) {
  sync_device(dev);
  set_op_timing(true);
  const auto t0 = std::chrono::steady_clock::now();
  model.bench_layer(0);
  sync_device(dev);
  const double step_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
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
  std::string js = strf("{\"step_ms\": %.4f, \"ops\": [", step_ms);
  for (size_t i = 0; i < ops.size(); ++i)
    js += strf("%s{\"op\": \"%s\", \"calls\": %d, \"ms\": %.4f}", i ? ", " : "", ops[i].name.c_str(), ops[i].calls,
              ops[i].ms);
  return js + "]}";
}


}  // namespace

int bench_ops(Device dev, int iters, const std::string& json, int64_t S) {
  const int64_t H = 8192, A = 64, G = 8, D = 128, F = 28672, E = 2, V = 32000, N = S;
  const int64_t C = N / E;  // top-1, capacity factor 1.0
  const DType act = dev == Device::cuda ? DType::bf16 : DType::f32;
  const double el = double(dtype_size(act));
  Buffers B(dev);
  std::vector<Row> rows;
  // Ceilings: a large GEMM and a large device copy, measured in this run.
  {
    const int64_t M = dev == Device::cuda ? 8192 : 512;
    Tensor a = B.make({M, M}, act), w = B.make({M, M}, act, 0.01), o = B.make({M, M}, act);
    rows.push_back(measure(dev, iters, "ceiling: GEMM", strf("%ldx%ldx%ld", M, M, M), 2.0 * M * M * M, 3.0 * M * M * el,
                           [&] { linear_forward(o, a, w); }));
    const int64_t n = dev == Device::cuda ? (int64_t(1) << 29) : (int64_t(1) << 24);
    Tensor src = B.make({n}, DType::bf16), dst = B.make({n}, DType::bf16);
    rows.push_back(measure(dev, iters, "ceiling: device copy", strf("%ld MiB", n * 2 >> 20), 0, 2.0 * double(n) * 2,
                           [&] { copy(dst, src); }));
  }
  Tensor x = B.make({N, H}, act), y = B.make({N, H}, act), dy = B.make({N, H}, act), dx = B.make({N, H}, act);
  Tensor wn = B.make({H}, act), dwn = B.make({H}, DType::f32), rstd = B.make({N}, DType::f32);
  rows.push_back(measure(dev, iters, "rmsnorm fwd", strf("N%ld H%ld", N, H), 0, 2.0 * N * H * el,
                         [&] { rmsnorm_forward(y, rstd, x, wn, 1e-5f); }));
  rows.push_back(measure(dev, iters, "rmsnorm bwd", strf("N%ld H%ld", N, H), 0, 3.0 * N * H * el,
                         [&] { rmsnorm_backward(dx, dwn, dy, x, wn, rstd); }));
  Tensor wq = B.make({A * D, H}, act, 0.01), dwq = B.make({A * D, H}, DType::f32), q = B.make({N, A * D}, act);
  rows.push_back(measure(dev, iters, "linear fwd (wq)", strf("%ldx%ldx%ld", N, A * D, H), 2.0 * N * A * D * H,
                         el * (N * H + A * D * H + N * A * D), [&] { linear_forward(q, x, wq); }));
  rows.push_back(measure(dev, iters, "linear bwd (wq)", strf("%ldx%ldx%ld", N, A * D, H), 4.0 * N * A * D * H,
                         el * (2 * N * H + A * D * H + N * A * D) + 8.0 * A * D * H,
                         [&] { linear_backward(dx, dwq, q, x, wq); }));
  Tensor k = B.make({N, G * D}, act), v = B.make({N, G * D}, act), o = B.make({N, A * D}, act);
  Tensor lse = B.make({1, A, S}, DType::f32), dq = B.make({N, A * D}, act), dk = B.make({N, G * D}, act),
         dv = B.make({N, G * D}, act), dout = B.make({N, A * D}, act);
  Tensor q4 = q.view({1, S, A, D}), k4 = k.view({1, S, G, D}), v4 = v.view({1, S, G, D}), o4 = o.view({1, S, A, D});
  rows.push_back(measure(dev, iters, "rope fwd (q)", strf("S%ld A%ld D%ld", S, A, D), 0, 2.0 * N * A * D * el,
                         [&] { rope_forward(q4, q4, 10000.f); }));
  const double attn_fwd = 2.0 * double(S) * double(S) * double(A * D);
  auto attn_fwd_run = [&] { attention_forward(o4, lse, q4, k4, v4); };
  auto attn_bwd_run = [&] {
    attention_backward(dq.view({1, S, A, D}), dk.view({1, S, G, D}), dv.view({1, S, G, D}), dout.view({1, S, A, D}), q4,
                       k4, v4, o4, lse);
  };
  const std::string attn_shape = strf("S%ld A%ld G%ld D%ld causal", S, A, G, D);
  const double attn_fwd_bytes = el * (2 * N * A * D + 2 * N * G * D), attn_bwd_bytes = el * (4 * N * A * D + 4 * N * G * D);
  rows.push_back(measure(dev, iters, "attention fwd", attn_shape, attn_fwd, attn_fwd_bytes, attn_fwd_run));
  rows.push_back(measure(dev, iters, "attention bwd", attn_shape, 2.5 * attn_fwd, attn_bwd_bytes, attn_bwd_run));
  if (dev == Device::cuda) {  // the hand-written kernels (the f32 path and fallback) on the same inputs, for the record
    const engine::AttentionPath was = engine::settings().attention;
    engine::settings().attention = engine::AttentionPath::handwritten;
    const int few = std::min(iters, 3);
    rows.push_back(measure(dev, few, "attention fwd (hand-written)", attn_shape, attn_fwd, attn_fwd_bytes, attn_fwd_run));
    rows.push_back(
        measure(dev, few, "attention bwd (hand-written)", attn_shape, 2.5 * attn_fwd, attn_bwd_bytes, attn_bwd_run));
    engine::settings().attention = was;
  }
  // MoE pieces, top-1 of 2 experts.
  Tensor wr = B.make({E, H}, act, 0.01), rl = B.make({N, E}, act), probs = B.make({N, E}, act);
  Tensor idx = B.make({N, 1}, DType::i32), slot = B.make({N, 1}, DType::i32), counts = B.make({E}, DType::i32);
  Tensor wgt = B.make({N, 1}, act);
  linear_forward(rl, x, wr);
  softmax_forward(probs, rl);
  rows.push_back(measure(dev, iters, "router softmax+top-k+capacity", strf("N%ld E%ld C%ld", N, E, C), 0,
                         el * 2 * N * E, [&] {
                           softmax_forward(probs, rl);
                           router_topk_assign(idx, slot, counts, probs, C);
                           topk_weights_forward(wgt, probs, idx);
                         }));
  Tensor buf = B.make({E, C, H}, act), gate = B.make({E, C, F}, act), up = B.make({E, C, F}, act),
         actv = B.make({E, C, F}, act), eo = B.make({E, C, H}, act);
  Tensor wg = B.make({E, F, H}, act, 0.01), wd = B.make({E, H, F}, act, 0.01), dwg = B.make({E, F, H}, DType::f32);
  rows.push_back(measure(dev, iters, "moe dispatch fwd", strf("N%ld -> E%ld C%ld H%ld", N, E, C, H), 0, 2.0 * N * H * el,
                         [&] { moe_dispatch_forward(buf, x, idx, slot); }));
  rows.push_back(measure(dev, iters, "moe combine fwd", strf("E%ld C%ld H%ld -> N%ld", E, C, H, N), 0, 2.0 * N * H * el,
                         [&] { moe_combine_forward(y, eo, wgt, idx, slot); }));
  rows.push_back(measure(dev, iters, "expert gemm fwd (gate)", strf("E%ld %ldx%ldx%ld", E, C, F, H), 2.0 * E * C * F * H,
                         el * E * (C * H + F * H + C * F), [&] { expert_linear_forward(gate, buf, wg); }));
  rows.push_back(measure(dev, iters, "expert gemm bwd (gate)", strf("E%ld %ldx%ldx%ld", E, C, F, H), 4.0 * E * C * F * H,
                         el * E * (2 * C * H + F * H + C * F) + 8.0 * E * F * H,
                         [&] { expert_linear_backward(buf, dwg, gate, buf, wg); }));
  // The two halves of the backward apart: dx (bf16 out) and dw (fp32 out, accumulated: beta 1).
  rows.push_back(measure(dev, iters, "expert gemm bwd dx (gate)", strf("E%ld %ldx%ldx%ld", E, C, H, F), 2.0 * E * C * F * H,
                         el * E * (C * H + F * H + C * F), [&] { expert_linear_backward(buf, Tensor(), gate, buf, wg); }));
  rows.push_back(measure(dev, iters, "expert gemm bwd dw (gate)", strf("E%ld %ldx%ldx%ld", E, F, H, C), 2.0 * E * C * F * H,
                         el * E * (C * H + C * F) + 8.0 * E * F * H,
                         [&] { expert_linear_backward(Tensor(), dwg, gate, buf, wg); }));
  rows.push_back(measure(dev, iters, "expert gemm bwd dw first (gate)", strf("E%ld %ldx%ldx%ld", E, F, H, C),
                         2.0 * E * C * F * H, el * E * (C * H + C * F) + 4.0 * E * F * H,
                         [&] { expert_linear_backward(Tensor(), dwg, gate, buf, wg, Write::overwrite, Write::overwrite); }));  // beta 0
  rows.push_back(measure(dev, iters, "expert gemm fwd (down)", strf("E%ld %ldx%ldx%ld", E, C, H, F), 2.0 * E * C * F * H,
                         el * E * (C * H + F * H + C * F), [&] { expert_linear_forward(eo, actv, wd); }));
  Tensor dwd = B.make({E, H, F}, DType::f32);
  rows.push_back(measure(dev, iters, "expert gemm bwd (down)", strf("E%ld %ldx%ldx%ld", E, C, H, F), 4.0 * E * C * F * H,
                         el * E * (2 * C * F + F * H + C * H) + 8.0 * E * F * H,
                         [&] { expert_linear_backward(actv, dwd, eo, actv, wd); }));
  rows.push_back(measure(dev, iters, "swiglu fwd", strf("E%ld C%ld F%ld", E, C, F), 0, 3.0 * E * C * F * el,
                         [&] { swiglu_forward(actv, gate, up); }));
  rows.push_back(measure(dev, iters, "swiglu bwd", strf("E%ld C%ld F%ld", E, C, F), 0, 5.0 * E * C * F * el,
                         [&] { swiglu_backward(gate, up, actv, gate, up); }));
  // LM head + cross-entropy.
  Tensor logits = B.make({N, V}, act), dlogits = B.make({N, V}, act), tg = B.make({N}, DType::i32);
  {
    std::vector<int32_t> t(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) t[size_t(i)] = int32_t((i * 7919) % V);
    copy(tg, Tensor(t.data(), {N}, DType::i32));
  }
  Tensor rm = B.make({N}, DType::f32), se = B.make({N}, DType::f32), tl = B.make({N}, DType::f32),
         ls = B.make({N}, DType::f32), lo = B.make({N}, DType::f32);
  rows.push_back(measure(dev, iters, "cross-entropy fwd", strf("N%ld V%ld", N, V), 0, 2.0 * N * V * el, [&] {
    logits_rowmax(rm, logits);
    cross_entropy_partial(se, tl, logits, rm, tg, 0);
    cross_entropy_finish(lo, ls, se, rm, tl, tg);
  }));
  rows.push_back(measure(dev, iters, "cross-entropy bwd", strf("N%ld V%ld", N, V), 0, 2.0 * N * V * el,
                         [&] { cross_entropy_backward(dlogits, logits, tg, ls, 0, 1.0f / float(N)); }));
  // AdamW over one FFN weight's worth of parameters (fp32 param, grad, m, v + bf16 copy).
  const int64_t P = F * H;
  Tensor pm = B.make({P}, DType::f32, 0.02), pg = B.make({P}, DType::f32, 1e-3), m1 = B.make({P}, DType::f32, 1e-4),
         m2 = B.make({P}, DType::f32, 1e-8), plp = B.make({P}, DType::bf16);
  fill_zero(m2);
  AdamWArgs aw;
  rows.push_back(measure(dev, iters, "adamw", strf("%ld params", P), 0, double(P) * (4 * 4 + 4 * 3 + 2),
                         [&] { adamw_step(pm, m1, m2, dev == Device::cuda ? plp : Tensor(), pg, aw); }));
  const double gemm = rows[0].tflops, bw = rows[1].gbps;
  print_rows(rows, json, strf("monta bench ops (%s, median of %d; ceilings: GEMM %.1f TFLOP/s, copy %.1f GB/s)",
                              device_name(dev), iters, gemm, bw),
             strf("\"device\": \"%s\", \"gemm_tflops\": %.3f, \"copy_gbps\": %.3f, ", device_name(dev), gemm, bw));
  for (auto& r : rows)
    if (r.name.rfind("ceiling", 0) != 0)
      log_info(strf("  %-28s %5.1f%% of GEMM ceiling, %5.1f%% of copy ceiling", r.name.c_str(),
                    r.flops > 0 ? 100.0 * r.tflops / gemm : 0.0, 100.0 * r.gbps / bw));
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
  std::vector<Row> rows;
  AdamWArgs aw;
  aw.weight_decay = 0.1;
  const int saved = settings().host_threads;
  for (const bool bf16 : {false, true}) {
    const Tensor m = bf16 ? m16 : m32, v = bf16 ? v16 : v32;
    // Bytes moved per parameter: read master, grad, m, v; write master, m, v, the bf16 copy.
    const double bytes = double(P) * (4 + 4 + 2 * double(dtype_size(m.dtype)) + 4 + 2 * double(dtype_size(m.dtype)) + 2);
    for (int t = 1;; t = std::min(2 * t, top)) {
      settings().host_threads = t;
      Row r = measure(Device::cpu, iters, strf("adamw %s moments", bf16 ? "bf16" : "fp32"),
                      strf("%ld params, %d threads", P, t), 0, bytes, [&] { adamw_step(pm, m, v, lowp, g, aw); });
      rows.push_back(r);
      log_info(strf("  %-20s %3d threads: %8.1f M params/s, %7.1f M params/s per thread", r.name.c_str(), t,
                    double(P) / r.ms / 1e3, double(P) / r.ms / 1e3 / t));
      if (t == top) break;
    }
  }
  settings().host_threads = saved;
  print_rows(rows, json,
             strf("monta bench optimizer (host AdamW, %ld parameters, median of %d, %d hardware threads)", P, iters, hw),
             strf("\"device\": \"cpu\", \"params\": %ld, \"hardware_threads\": %d, ", P, hw));
  return 0;
}

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
  const double gemm_ms = time_ms(dev, 2, iters, [&] { linear_forward(out, a, w); });
  const double gemm_tflops = 2.0 * M * M * M / (gemm_ms * 1e-3) / 1e12;
  // FLOPs of one layer's forward + backward on the micro-batch as the kernels execute them (model::FlopCount::executed),
  // and the share each GPU does: the tp ranks of a DP group split one micro-batch.
  const double flops = model::layer_train_flops_per_token(m, model::FlopCount::executed) * double(s.N) / o.tp;
  std::vector<Row> rows;
  rows.push_back({"ceiling: GEMM", strf("%ldx%ldx%ld", M, M, M), gemm_ms, gemm_tflops, 0, 2.0 * M * M * M, 0});
  std::string extra, breakdowns;
  for (const auto& name : strategies) {
    if (o.ep > 1) {
      c.comm.exchange = name;
      model::attach_exchange(ps, c, dev, act);
    }
    model::Model model(m, s, ps.ctx, params, act);
    model.forward(tok.data(), tgt.data());  // real activations for the layer to start from
    const double ms = 1e3 * comm::slowest_median_seconds(*ps.ctx.world, dev, 1, iters, [&] { model.bench_layer(0); });
    // auto: the cost model's pick for this layer (start-up calibration and prediction), timed like the others.
    const std::string kind = o.ep == 1 ? name : comm::exchange_kind_name(ps.exchange->kind());
    const int chunks = o.ep == 1 ? 1 : ps.exchange->pipeline_chunks();
    const std::string label = o.ep == 1 ? std::string("layer fwd+bwd")
                              : name == "auto" ? strf("layer fwd+bwd auto=%s", kind.c_str())
                                               : strf("layer fwd+bwd %s", name.c_str());
    const std::string shape = strf("S%ld H%ld F%ld E%ld top%ld tp%d ep%d%s", long(S), long(m.hidden), long(m.ffn),
                                   long(m.experts), long(m.top_k), o.tp, o.ep,
                                   kind == "pipelined" || kind == "overlapped"
                                       ? strf(" n%d", chunks).c_str()
                                       : "");
    rows.push_back({label, shape, ms, flops / (ms * 1e-3) / 1e12, 0, flops, 0});
    if (world == 1) {  // the forward alone, for where the time goes (FlopCount::forward)
      const double fwd_ms = time_ms(dev, 1, iters, [&] { model.bench_layer(0, false); });
      const double fwd_flops = model::layer_train_flops_per_token(m, model::FlopCount::forward) * double(s.N) / o.tp;
      rows.push_back({"layer fwd only", shape, fwd_ms, fwd_flops / (fwd_ms * 1e-3) / 1e12, 0, fwd_flops, 0});
      // As on a later micro-batch of a step: the weight gradients are added to, not written (GEMMs with beta 1).
      const double acc_ms = time_ms(dev, 1, iters, [&] { model.bench_layer(0, true, true); });
      rows.push_back({"layer fwd+bwd, grads added", shape, acc_ms, flops / (acc_ms * 1e-3) / 1e12, 0, flops, 0});
    }
    if (o.breakdown)
      breakdowns += strf("%s\"%s\": %s", breakdowns.empty() ? "" : ", ", name.c_str(),
                         layer_breakdown(dev, model, label, me == 0).c_str());
  }
  const double best = rows[1].tflops;  // the first strategy's fwd+bwd
  // The same GEMM again, back to back for as long as one layer step takes, measured after the layer: the rate the
  // card holds under sustained load (clocks drop with power), beside the short-burst ceiling above.
  const int reps = std::max(1, int(std::lround(rows[1].ms / gemm_ms)));
  const double sus_ms = time_ms(dev, 1, iters, [&] {
                          for (int r = 0; r < reps; ++r) linear_forward(out, a, w);
                        }) / reps;
  const double sus_tflops = 2.0 * M * M * M / (sus_ms * 1e-3) / 1e12;
  rows.push_back({"ceiling: GEMM sustained", strf("%ldx%ldx%ld x%d", M, M, M, reps), sus_ms, sus_tflops, 0,
                  2.0 * M * M * M, 0});
  std::string title = strf("monta bench layer (%s, %d rank%s, median of %d): %.1f%% of the GEMM ceiling (%.1f%% of the "
                           "sustained GEMM rate)",
                           device_name(dev), world, world > 1 ? "s" : "", iters, 100.0 * best / gemm_tflops,
                           100.0 * best / sus_tflops);
  if (strategies.size() > 1 && world > 1) {
    title += "; time relative to " + strategies[0] + ":";
    for (size_t i = 1; i < strategies.size(); ++i)  // rows[1 + i] is strategy i's (no forward-only rows when world > 1)
      title += strf(" %s %.3f", rows[1 + i].name.substr(std::string("layer fwd+bwd ").size()).c_str(),
                    rows[1 + i].ms / rows[1].ms);
  }
  if (me == 0)
    print_rows(rows, json, title,
               strf("\"device\": \"%s\", \"ranks\": %d, \"tp\": %d, \"ep\": %d, \"emulated_nodes\": %d, "
                    "\"gemm_tflops\": %.3f, \"gemm_sustained_tflops\": %.3f, \"layer_tflops\": %.3f, "
                    "\"fraction_of_gemm\": %.4f, \"fraction_of_sustained_gemm\": %.4f, ",
                    device_name(dev), world, o.tp, o.ep, o.emulate_nodes, gemm_tflops, sus_tflops, best,
                    best / gemm_tflops, best / sus_tflops) +
                   (o.breakdown ? "\"breakdown\": {" + breakdowns + "}, " : std::string()));
  return 0;
}

}  // namespace monta::model
