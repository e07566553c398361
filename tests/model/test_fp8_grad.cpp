// The straight-through rule of model.fp8 = experts (docs/fp8.md, "Backward") by finite differences, in double on the
// CPU. The FP8 forward is a step function of the weights, so its finite differences say nothing; the rule is checked
// against the straight-through surrogate instead: each expert GEMM's quantisation error, taken at the current
// weights and then held fixed, out = (x + δx)·(w + δw)ᵀ with δx = deq(q(x)) − x and δw = deq(q(w)) − w. The surrogate
// equals the FP8 forward at that point, its gradient is the straight-through gradient with exact backward operands,
// and the model's backward differs from it only by quantising dout (dgrad and wgrad) and x along the tokens (wgrad).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "engine/fp8_math.h"
#include "engine/memory.h"
#include "engine/ops/fp8.h"
#include "engine/ops/linear.h"
#include "engine/rng.h"
#include "model/fp8_experts.h"
#include "model/model.h"
#include "model_test_util.h"

using namespace monta;
using namespace monta::model;
using engine::DType;
using engine::Device;
using engine::Tensor;

namespace {

ModelConfig fp8_grad_config() {
  ModelConfig m = testing_model::fp8_test_base(32, 8, 0.1);
  m.fp8 = "experts";
  return m;
}

// deq(q(t)) − t, t (E, R, K) in f64: rows in 1x128 tiles along K (activations), or 128x128 blocks (weights).
std::vector<double> quantisation_error(const Tensor& t, bool blocks) {
  const int64_t E = t.dim(0), R = t.dim(1), K = t.dim(2), n = t.numel();
  std::vector<double> deq(size_t(n), 0.0);
  if (!blocks) {
    const int64_t P = engine::fp8::packed_row_bytes(K);
    std::vector<uint8_t> packed(size_t(E * R * P));
    engine::fp8_pack_rows(Tensor(packed.data(), {E * R, P}, DType::u8), t.view({E * R, K}));
    engine::fp8_unpack_rows(Tensor(deq.data(), {E * R, K}, DType::f64), Tensor(packed.data(), {E * R, P}, DType::u8));
  } else {
    const int64_t TO = engine::fp8::tiles(R), ld = engine::fp8::block_scale_ld(K);
    std::vector<uint8_t> q(static_cast<size_t>(n));
    std::vector<float> s(size_t(E * TO * ld));
    engine::fp8_quantize_blocks(Tensor(q.data(), {E, R, K}, DType::e4m3), Tensor(s.data(), {E, TO, ld}, DType::f32),
                                Tensor(), Tensor(), t);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t k = 0; k < K; ++k) {
          const int64_t i = (e * R + r) * K + k;
          deq[size_t(i)] = double(engine::fp8::e4m3_to_float(q[size_t(i)])) * s[size_t((e * TO + r / 128) * ld + k / 128)];
        }
  }
  for (int64_t i = 0; i < n; ++i) deq[size_t(i)] -= t.as<double>()[i];
  return deq;
}

// The surrogate's expert GEMMs: record δx and δw per call of a forward (in call order), then replay them.
struct Surrogate {
  std::vector<std::vector<double>> dx, dw;
  size_t call = 0;
  bool recording = true;
  void operator()(Tensor out, const Tensor& x, const Tensor& w) {
    if (recording) {
      dx.push_back(quantisation_error(x, false));
      dw.push_back(quantisation_error(w, true));
    }
    ASSERT_LT(call, dx.size());
    std::vector<double> xs(x.as<double>(), x.as<double>() + x.numel()), ws(w.as<double>(), w.as<double>() + w.numel());
    for (size_t i = 0; i < xs.size(); ++i) xs[i] += dx[call][i];
    for (size_t i = 0; i < ws.size(); ++i) ws[i] += dw[call][i];
    ++call;
    engine::expert_linear_forward(out, Tensor(xs.data(), {x.dim(0), x.dim(1), x.dim(2)}, DType::f64),
                                  Tensor(ws.data(), {w.dim(0), w.dim(1), w.dim(2)}, DType::f64));
  }
};

struct OverrideScope {
  explicit OverrideScope(Surrogate& s) {
    set_fp8_forward_override([&s](Tensor out, const Tensor& x, const Tensor& w) { s(out, x, w); });
  }
  ~OverrideScope() { set_fp8_forward_override(nullptr); }
};

}  // namespace

// Bound: per parameter tensor, over 6 sampled elements, ‖backward − fd‖ / ‖fd‖ < 0.1. The gap is the backward's own
// quantisation of dout (E4M3: at most 2^-4 relative per element, little averaging over the few tokens of an expert
// here: measured 0.054, the w_down gradient);
// central differences of the smooth surrogate are exact to ~1e-9. A rule applied wrongly (a missing scale, the
// wrong operand, the non-straight-through zero gradient) gives O(1).
TEST(Fp8Grad, BackwardMatchesFiniteDifferencesOfTheStraightThroughSurrogate) {
  monta::testing_model::GradFixture f(fp8_grad_config());
  const double fp8_loss = f.loss();  // the real FP8 forward, no override
  Surrogate sur;
  OverrideScope scope(sur);
  f.params.zero_grads();
  auto r = f.model.forward_backward(f.tokens.data(), f.targets.data(), f.ce_scale, f.aux_scale);
  const double s0 = training_objective(f.cfg, r.ce_sum, r.aux_sum, r.z_sum, f.ce_scale, f.aux_scale);
  EXPECT_NEAR(s0, fp8_loss, 1e-12 * std::abs(fp8_loss)) << "the surrogate is not the FP8 forward at its point";
  ASSERT_EQ(sur.dx.size(), size_t(3 * f.cfg.layers)) << "expert GEMM calls of one forward";
  sur.recording = false;
  bool quantised = false;
  for (const auto& d : sur.dx)
    for (double v : d) quantised = quantised || v != 0.0;
  ASSERT_TRUE(quantised) << "FP8 changed no activation: the check would see nothing";
  engine::Philox pick{5, 2, 0};
  double worst = 0;
  for (auto& p : f.params.all()) {
    double* w = p.master.as<double>();
    const double* g = p.grad.as<double>();
    const int64_t n = p.master.numel();
    double num = 0, den = 0;
    for (int trial = 0; trial < 6; ++trial) {
      const int64_t i = int64_t(pick.below(uint64_t(n)));
      const double eps = 1e-5, keep = w[i];
      sur.call = 0;
      w[i] = keep + eps;
      const double lp = f.loss();
      sur.call = 0;
      w[i] = keep - eps;
      const double lm = f.loss();
      w[i] = keep;
      const double fd = (lp - lm) / (2 * eps);
      num += (g[i] - fd) * (g[i] - fd);
      den += fd * fd;
    }
    const double rel = std::sqrt(num / std::max(den, 1e-30));
    if (den > 1e-20) {
      EXPECT_LT(rel, 0.1) << p.name;
      worst = std::max(worst, rel);
    }
  }
  std::printf("fp8 straight-through: largest relative gap backward vs surrogate finite differences %.4f\n", worst);
}
