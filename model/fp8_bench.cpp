// `monta bench fp8` (model/fp8_bench.h). Timing as `monta bench ops` does it (warm-up, median of timed iterations,
// host clock around a device sync; ceilings: a square GEMM of 8192 and a 1 GiB copy), so the ratios compare. Rows:
// "bf16" the expert_linear ops; "fp8 gemm" fp8_gemm alone on operands quantised beforehand; "fp8 + quantise"
// (model/fp8_experts.h) quantising every operand at each call, weights included; "fp8 + quantise x, cached w" the
// model's path in training, the weights' codes made once per step (model.fp8_wgrad = false: wgrad is the bf16 row).
#include "model/fp8_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <sstream>
#include <vector>

#include "engine/check.h"
#include "engine/files.h"
#include "engine/fp8_math.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/fp8.h"
#include "engine/ops/linear.h"
#include "engine/ops/swiglu.h"
#include "model/fp8_experts.h"

namespace monta::model {

using namespace monta::engine;

namespace {

struct Fp8Row {
  std::string name, shape;
  double ms = 0, tflops = 0, gbps = 0, flops = 0, bytes = 0;
};

double median_ms(Device d, int iters, const std::function<void()>& fn) {
  for (int i = 0; i < 2; ++i) fn();
  sync_device(d);
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    sync_device(d);
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Bench {
  Bench(Device d, int n) : dev(d), iters(n) {}
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;
  Device dev;
  int iters;
  std::vector<Fp8Row> rows;
  std::vector<std::pair<void*, Device>> owned;
  uint64_t seed = 1;
  ~Bench() {
    for (auto& [p, d] : owned) device_free(d, p);
  }
  Tensor make(std::vector<int64_t> shape, DType t, double scale = 1.0) {
    int64_t n = 1;
    for (int64_t v : shape) n *= v;
    void* p = device_alloc(dev, size_t(n) * dtype_size(t));
    owned.push_back({p, dev});
    Tensor x = make_view(p, shape, t, dev);
    if (t == DType::f32 || t == DType::bf16) fill_pseudo_random(x, seed++, scale);
    return x;
  }
  void add(const std::string& name, const std::string& shape, double flops, double bytes,
           const std::function<void()>& fn) {
    Fp8Row r{name, shape};
    r.ms = median_ms(dev, iters, fn);
    r.flops = flops;
    r.bytes = bytes;
    r.tflops = flops / (r.ms * 1e-3) / 1e12;
    r.gbps = bytes / (r.ms * 1e-3) / 1e9;
    rows.push_back(r);
  }
};

// The first n elements of a bf16 or f32 tensor, on the host as f32.
std::vector<float> host_values(const Tensor& t, int64_t n) {
  std::vector<char> raw(static_cast<size_t>(n) * dtype_size(t.dtype));
  copy(Tensor(raw.data(), {n}, t.dtype), t.view({t.numel()}).rows(0, n));
  sync_device(t.device);
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    v[size_t(i)] = t.dtype == DType::bf16 ? bf16_to_float(reinterpret_cast<const bf16_t*>(raw.data())[i])
                                          : reinterpret_cast<const float*>(raw.data())[i];
  return v;
}

// ‖a − b‖ / ‖b‖ over the first n elements.
double rel_err(const Tensor& a, const Tensor& b, int64_t n) {
  const std::vector<float> ha = host_values(a, n), hb = host_values(b, n);
  double num = 0, den = 0;
  for (size_t i = 0; i < ha.size(); ++i) {
    num += (double(ha[i]) - hb[i]) * (double(ha[i]) - hb[i]);
    den += double(hb[i]) * hb[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

int bench_fp8(Device dev, int iters, const std::string& json, int64_t S) {
  const bool gpu = dev == Device::cuda;
  const int64_t H = gpu ? 8192 : 256, F = gpu ? 28672 : 512, E = 2, C = (gpu ? S : std::min<int64_t>(S, 256)) / E;
  const DType act = gpu ? DType::bf16 : DType::f32;
  const double el = double(dtype_size(act));
  Bench b(dev, iters);
  namespace f8 = engine::fp8;
  auto T = [](int64_t n) { return f8::tiles(n); };
  auto L = [](int64_t n) { return f8::block_scale_ld(n); };
  // Ceilings: the square GEMM of `bench ops` in bf16 and in FP8 (1x128 x 128x128 scales, bf16 out), and a copy.
  const int64_t M = gpu ? 8192 : 512;
  {
    Tensor a = b.make({M, M}, act), w = b.make({M, M}, act, 0.01), o = b.make({M, M}, act);
    b.add("ceiling: GEMM bf16", strf("%ldx%ldx%ld", M, M, M), 2.0 * M * M * M, 3.0 * M * M * el,
          [&] { linear_forward(o, a, w); });
    Tensor aq = b.make({1, M, M}, DType::e4m3), as = b.make({1, T(M), M}, DType::f32);
    Tensor wq = b.make({1, M, M}, DType::e4m3), ws = b.make({1, T(M), L(M)}, DType::f32);
    fp8_quantize_rows(aq, as, a.view({1, M, M}));
    fp8_quantize_blocks(wq, ws, Tensor(), Tensor(), w.view({1, M, M}));
    b.add("ceiling: GEMM fp8", strf("%ldx%ldx%ld", M, M, M), 2.0 * M * M * M, 2.0 * M * M + M * M * el,
          [&] { fp8_gemm(o.view({1, M, M}), aq, as, wq, ws, Fp8Scaling::blocks); });
    const int64_t n = gpu ? (int64_t(1) << 29) : (int64_t(1) << 24);
    Tensor src = b.make({n}, DType::bf16), dst = b.make({n}, DType::bf16);
    b.add("ceiling: device copy", strf("%ld MiB", n * 2 >> 20), 0, 4.0 * double(n), [&] { copy(dst, src); });
  }
  // The gate projection's three GEMMs (the up projection is the same; down swaps H and F).
  Tensor x = b.make({E, C, H}, act), g = b.make({E, C, F}, act), dg = b.make({E, C, F}, act, 0.01);
  Tensor dx = b.make({E, C, H}, act), w = b.make({E, F, H}, act, 0.01), dw = b.make({E, F, H}, DType::f32);
  const double gemm = 2.0 * double(E) * C * F * H;
  const std::string fwd_s = strf("E%ld %ldx%ldx%ld", E, C, F, H), dx_s = strf("E%ld %ldx%ldx%ld", E, C, H, F),
                    dw_s = strf("E%ld %ldx%ldx%ld", E, F, H, C);
  b.add("bf16 fwd (gate)", fwd_s, gemm, el * E * (C * H + F * H + C * F), [&] { expert_linear_forward(g, x, w); });
  b.add("bf16 dgrad (gate)", dx_s, gemm, el * E * (C * H + F * H + C * F),
        [&] { expert_linear_backward(dx, Tensor(), dg, x, w); });
  b.add("bf16 wgrad (gate)", dw_s, gemm, el * E * (C * H + C * F) + 8.0 * E * F * H,
        [&] { expert_linear_backward(Tensor(), dw, dg, x, w); });
  // The same on operands quantised once: the GEMMs alone.
  Tensor xq = b.make({E, C, H}, DType::e4m3), xs = b.make({E, T(H), C}, DType::f32);
  Tensor wq = b.make({E, F, H}, DType::e4m3), ws = b.make({E, T(F), L(H)}, DType::f32);
  Tensor wtq = b.make({E, H, F}, DType::e4m3), wts = b.make({E, T(H), L(F)}, DType::f32);
  Tensor dgq = b.make({E, C, F}, DType::e4m3), dgs = b.make({E, T(F), C}, DType::f32);
  Tensor dgt = b.make({E, F, C}, DType::e4m3), dgts = b.make({E, T(C), F}, DType::f32);
  Tensor xt = b.make({E, H, C}, DType::e4m3), xts = b.make({E, T(C), H}, DType::f32);
  fp8_quantize_rows(xq, xs, x);
  fp8_quantize_blocks(wq, ws, wtq, wts, w);
  fp8_quantize_rows(dgq, dgs, dg);
  fp8_quantize_cols(dgt, dgts, dg);
  fp8_quantize_cols(xt, xts, x);
  Tensor g8 = b.make({E, C, F}, act);
  b.add("fp8 gemm fwd (gate)", fwd_s, gemm, E * (C * H + F * H + el * C * F),
        [&] { fp8_gemm(g8, xq, xs, wq, ws, Fp8Scaling::blocks); });
  b.add("fp8 gemm dgrad (gate)", dx_s, gemm, E * (C * F + F * H + el * C * H),
        [&] { fp8_gemm(dx, dgq, dgs, wtq, wts, Fp8Scaling::blocks); });
  b.add("fp8 gemm wgrad (gate)", dw_s, gemm, E * (C * H + C * F) + 8.0 * E * F * H,
        [&] { fp8_gemm(dw, dgt, dgts, xt, xts, Fp8Scaling::tiles, Write::accumulate); });
  // Why wgrad gains least: the same GEMM overwriting, with a bf16 output, with x in 128x128 blocks instead of 1x128
  // tiles, and the forward with the weight in 1x128 tiles (both operands 1-D scaled, as wgrad's are).
  b.add("fp8 gemm wgrad, overwrite", dw_s, gemm, E * (C * H + C * F) + 4.0 * E * F * H,
        [&] { fp8_gemm(dw, dgt, dgts, xt, xts, Fp8Scaling::tiles); });
  {
    Tensor dw16 = b.make({E, F, H}, act);
    b.add("fp8 gemm wgrad, bf16 out", dw_s, gemm, E * (C * H + C * F) + el * E * F * H,
          [&] { fp8_gemm(dw16, dgt, dgts, xt, xts, Fp8Scaling::tiles); });
    Tensor xt16 = b.make({E, H, C}, act), xtb = b.make({E, H, C}, DType::e4m3), xtbs = b.make({E, T(H), L(C)}, DType::f32);
    fp8_quantize_blocks(xtb, xtbs, Tensor(), Tensor(), xt16);
    b.add("fp8 gemm wgrad, x in blocks", dw_s, gemm, E * (C * H + C * F) + 8.0 * E * F * H,
          [&] { fp8_gemm(dw, dgt, dgts, xtb, xtbs, Fp8Scaling::blocks, Write::accumulate); });
    Tensor wrq = b.make({E, F, H}, DType::e4m3), wrs = b.make({E, T(H), F}, DType::f32);
    fp8_quantize_rows(wrq, wrs, w);
    b.add("fp8 gemm fwd, w in 1x128 tiles", fwd_s, gemm, E * (C * H + F * H + el * C * F),
          [&] { fp8_gemm(g8, xq, xs, wrq, wrs, Fp8Scaling::tiles); });
  }
  // The model's path: quantise the operands, then the GEMM.
  const int64_t scratch_bytes = fp8_expert_scratch_bytes(E, C, H, F);
  Tensor scratch = b.make({scratch_bytes}, DType::u8);
  b.add("fp8 + quantise fwd (gate)", fwd_s, gemm, el * E * (C * H + F * H + C * F),
        [&] { fp8_expert_linear_forward(g8, x, w, scratch); });
  b.add("fp8 + quantise dgrad (gate)", dx_s, gemm, el * E * (C * H + F * H + C * F),
        [&] { fp8_expert_linear_backward(dx, Tensor(), dg, x, w, Write::overwrite, Write::accumulate, scratch); });
  b.add("fp8 + quantise wgrad (gate)", dw_s, gemm, el * E * (C * H + C * F) + 8.0 * E * F * H,
        [&] { fp8_expert_linear_backward(Tensor(), dw, dg, x, w, Write::overwrite, Write::accumulate, scratch); });
  // The model's path with the weight codes cached per step (model.fp8 experts/all in training): only the activation
  // operands are quantised at each call.
  const Fp8Weight codes{wq, ws, wtq, wts};
  b.add("fp8 + quantise x, cached w fwd", fwd_s, gemm, el * E * (C * H + C * F) + E * F * H,
        [&] { fp8_expert_linear_forward(g8, x, w, scratch, false, &codes); });
  b.add("fp8 + quantise x, cached w dgrad", dx_s, gemm, el * E * (C * H + C * F) + E * F * H,
        [&] { fp8_expert_linear_backward(dx, Tensor(), dg, x, w, Write::overwrite, Write::accumulate, scratch, &codes); });
  // The quantise ops alone (memory-bound: bytes read + codes and scales written).
  b.add("quantise rows (x)", strf("E%ld C%ld H%ld", E, C, H), 0, double(E * C * H) * (el + 1),
        [&] { fp8_quantize_rows(xq, xs, x); });
  b.add("quantise cols (dout)", strf("E%ld C%ld F%ld", E, C, F), 0, double(E * C * F) * (el + 1),
        [&] { fp8_quantize_cols(dgt, dgts, dg); });
  b.add("quantise rows (dout)", strf("E%ld C%ld F%ld", E, C, F), 0, double(E * C * F) * (el + 1),
        [&] { fp8_quantize_rows(dgq, dgs, dg); });
  {
    Tensor up = b.make({E, C, F}, act), h = b.make({E, C, F}, act);
    b.add("swiglu fwd", strf("E%ld C%ld F%ld", E, C, F), 0, double(E * C * F) * 3 * el,
          [&] { swiglu_forward(h, g, up); });
    b.add("fp8 swiglu fwd (+ quantise)", strf("E%ld C%ld F%ld", E, C, F), 0, double(E * C * F) * (3 * el + 1),
          [&] { fp8_swiglu_forward(h, dgq, dgs, g, up); });
  }
  b.add("quantise blocks + T (w)", strf("E%ld F%ld H%ld", E, F, H), 0, double(E * F * H) * (el + 2),
        [&] { fp8_quantize_blocks(wq, ws, wtq, wts, w); });
  // Correctness outside the timed region: the FP8 forward against bf16 (quantisation bound, docs/fp8.md).
  expert_linear_forward(g, x, w);
  fp8_expert_linear_forward(g8, x, w, scratch);
  const double err = rel_err(g8, g, std::min<int64_t>(g.numel(), int64_t(1) << 22));
  const double bf16_ceiling = b.rows[0].tflops, fp8_ceiling = b.rows[1].tflops, bw = b.rows[2].gbps;
  log_info(strf("monta bench fp8 (%s, median of %d; ceilings: GEMM bf16 %.1f TFLOP/s, GEMM fp8 %.1f TFLOP/s, copy %.1f "
                "GB/s; fp8 fwd vs bf16: relative error %.4f)",
                device_name(dev), iters, bf16_ceiling, fp8_ceiling, bw, err));
  log_info(strf("%-30s %-24s %10s %10s %10s %8s %8s", "op", "shape", "ms", "TFLOP/s", "GB/s", "%bf16", "%fp8"));
  for (const Fp8Row& r : b.rows)
    log_info(strf("%-30s %-24s %10.3f %10.1f %10.1f %8.1f %8.1f", r.name.c_str(), r.shape.c_str(), r.ms, r.tflops,
                  r.gbps, r.flops > 0 ? 100 * r.tflops / bf16_ceiling : 0.0,
                  r.flops > 0 ? 100 * r.tflops / fp8_ceiling : 0.0));
  if (!json.empty()) {
    std::ostringstream out;
    out << strf("{\"device\": \"%s\", \"iters\": %d, \"seq\": %ld, \"gemm_bf16_tflops\": %.3f, \"gemm_fp8_tflops\": %.3f, "
                "\"copy_gbps\": %.3f, \"fp8_fwd_rel_err\": %.6f, \"rows\": [\n",
                device_name(dev), iters, S, bf16_ceiling, fp8_ceiling, bw, err);
    for (size_t i = 0; i < b.rows.size(); ++i) {
      const Fp8Row& r = b.rows[i];
      out << strf("  {\"op\": \"%s\", \"shape\": \"%s\", \"ms\": %.5f, \"tflops\": %.3f, \"gbps\": %.3f, \"flops\": %.6e, "
                  "\"bytes\": %.6e}%s\n",
                  r.name.c_str(), r.shape.c_str(), r.ms, r.tflops, r.gbps, r.flops, r.bytes,
                  i + 1 < b.rows.size() ? "," : "");
    }
    out << "]}\n";
    write_text_file(json, out.str());
    log_info("wrote " + json);
  }
  // Random operands: the FP8 product stays within 0.08 relative of the bf16 one (the CPU test's bound).
  if (!(err < 0.08)) {
    log_info(strf("FAILED: fp8 forward differs from bf16 by %.4f relative (bound 0.08)", err));
    return 1;
  }
  return 0;
}

}  // namespace monta::model
