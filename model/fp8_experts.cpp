// FP8 expert GEMMs: quantise the activation operands into scratch, then fp8_gemm (engine/ops/fp8.h). Activations and
// gradients are quantised from the bf16 (f32 on the CPU) tensors at each use; the weights' codes come cached from the
// caller (once per weight update, model/model.cpp) or are quantised here too. Master weights, gradient accumulation
// and the optimizer stay as they are.
#include "model/fp8_experts.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>

#include "engine/check.h"
#include "engine/fp8_math.h"
#include "engine/ops/fp8.h"
#include "engine/ops/linear.h"

namespace monta::model {

using engine::DType;
using engine::Tensor;
namespace fp8 = engine::fp8;

namespace {

constexpr int64_t kAlign = 256;
Fp8ForwardOverride g_forward_override;  // tests only (set_fp8_forward_override)

// Hands out consecutive aligned pieces of the scratch bytes; sizing with a null base counts them.
struct Carver {
  char* base = nullptr;
  int64_t cap = 0, used = 0;
  engine::Device dev = engine::Device::cpu;
  Tensor take(std::initializer_list<int64_t> shape, DType dt) {
    int64_t n = 1;
    for (int64_t v : shape) n *= v;
    const int64_t off = (used + kAlign - 1) / kAlign * kAlign;
    used = off + n * int64_t(engine::dtype_size(dt));
    if (!base) return Tensor();
    MONTA_CHECK(used <= cap, "fp8 experts: scratch of " + std::to_string(cap) + " bytes is too small");
    return Tensor(base + off, shape, dt, dev);
  }
};
Carver carver(const Tensor& scratch) {
  const auto p = reinterpret_cast<uintptr_t>(scratch.data);
  const int64_t skip = int64_t((kAlign - p % kAlign) % kAlign);  // every piece starts kAlign-aligned
  return Carver{static_cast<char*>(scratch.data) + skip, int64_t(scratch.bytes()) - skip, 0, scratch.device};
}

}  // namespace

// The three phases' operands, as the functions below take them; each phase starts over at the scratch's beginning,
// the weight's pieces last.
int64_t fp8_expert_scratch_bytes(int64_t E, int64_t C, int64_t I, int64_t O, bool weights) {
  Carver f, g, w;
  f.take({E, C, I}, DType::e4m3);  // forward: x tiles along I, w blocks
  f.take({E, fp8::tiles(I), C}, DType::f32);
  if (weights) {
    f.take({E, O, I}, DType::e4m3);
    f.take({E, fp8::tiles(O), fp8::block_scale_ld(I)}, DType::f32);
  }
  g.take({E, C, O}, DType::e4m3);  // dgrad: dout tiles along O, wᵀ blocks
  g.take({E, fp8::tiles(O), C}, DType::f32);
  if (weights) {
    g.take({E, I, O}, DType::e4m3);
    g.take({E, fp8::tiles(I), fp8::block_scale_ld(O)}, DType::f32);
  }
  w.take({E, O, C}, DType::e4m3);  // wgrad: doutᵀ in tiles along C, xᵀ in 128x128 blocks
  w.take({E, fp8::tiles(C), O}, DType::f32);
  w.take({E, I, C}, DType::e4m3);
  w.take({E, fp8::tiles(I), fp8::block_scale_ld(C)}, DType::f32);
  return std::max({f.used, g.used, w.used}) + kAlign;  // + kAlign: the scratch's own start may be unaligned
}

std::vector<engine::TensorSpec> fp8_weight_specs(const std::string& name, int64_t E, int64_t O, int64_t I) {
  return {{name + ".q", {E, O, I}, DType::e4m3},
          {name + ".scale", {E, fp8::tiles(O), fp8::block_scale_ld(I)}, DType::f32},
          {name + ".qt", {E, I, O}, DType::e4m3},
          {name + ".scale_t", {E, fp8::tiles(I), fp8::block_scale_ld(O)}, DType::f32}};
}

Fp8Weight fp8_weight_bind(const engine::Arena& arena, size_t first) {
  return {arena.at(first), arena.at(first + 1), arena.at(first + 2), arena.at(first + 3)};
}

void fp8_weight_quantize(const Fp8Weight& codes, const Tensor& w) {
  engine::fp8_quantize_blocks(codes.q, codes.scale, codes.qt, codes.scale_t, w);
}

void set_fp8_forward_override(Fp8ForwardOverride f) { g_forward_override = std::move(f); }

Fp8Rows fp8_expert_input(Tensor scratch, const Tensor& x) {
  const int64_t E = x.dim(0), C = x.dim(1), I = x.dim(2);
  Carver c = carver(scratch);  // the forward's first two pieces, as below
  Tensor xq = c.take({E, C, I}, DType::e4m3), xs = c.take({E, fp8::tiles(I), C}, DType::f32);
  return {xq, xs};
}

void fp8_expert_linear_forward(Tensor out, const Tensor& x, const Tensor& w, Tensor scratch, bool x_quantised,
                               const Fp8Weight* wq) {
  if (g_forward_override) return g_forward_override(out, x, w);
  const int64_t E = x.dim(0), C = x.dim(1), I = x.dim(2), O = w.dim(1);
  Carver c = carver(scratch);
  Tensor xq = c.take({E, C, I}, DType::e4m3), xs = c.take({E, fp8::tiles(I), C}, DType::f32);
  if (!x_quantised) engine::fp8_quantize_rows(xq, xs, x);
  if (wq) return engine::fp8_gemm(out, xq, xs, wq->q, wq->scale, engine::Fp8Scaling::blocks);
  Tensor q = c.take({E, O, I}, DType::e4m3), s = c.take({E, fp8::tiles(O), fp8::block_scale_ld(I)}, DType::f32);
  engine::fp8_quantize_blocks(q, s, Tensor(), Tensor(), w);
  engine::fp8_gemm(out, xq, xs, q, s, engine::Fp8Scaling::blocks);
}

void fp8_expert_linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                                engine::Write dx_write, engine::Write dw_write, Tensor scratch, const Fp8Weight* wq,
                                bool fp8_wgrad) {
  const int64_t E = x.dim(0), C = x.dim(1), I = x.dim(2), O = w.dim(1);
  if (!dx.empty()) {
    Carver c = carver(scratch);
    Tensor dq = c.take({E, C, O}, DType::e4m3), ds = c.take({E, fp8::tiles(O), C}, DType::f32);
    engine::fp8_quantize_rows(dq, ds, dout);
    if (wq) {
      engine::fp8_gemm(dx, dq, ds, wq->qt, wq->scale_t, engine::Fp8Scaling::blocks, dx_write);
    } else {
      Tensor wtq = c.take({E, I, O}, DType::e4m3);
      Tensor wts = c.take({E, fp8::tiles(I), fp8::block_scale_ld(O)}, DType::f32);
      engine::fp8_quantize_blocks(Tensor(), Tensor(), wtq, wts, w);
      engine::fp8_gemm(dx, dq, ds, wtq, wts, engine::Fp8Scaling::blocks, dx_write);
    }
  }
  if (!dw.empty() && !fp8_wgrad) {  // the weight gradient from the unquantised operands (model.fp8_wgrad = false)
    engine::expert_linear_backward(Tensor(), dw, dout, x, w, engine::Write::overwrite, dw_write);
    return;
  }
  if (!dw.empty()) {
    Carver c = carver(scratch);
    Tensor dt = c.take({E, O, C}, DType::e4m3), dts = c.take({E, fp8::tiles(C), O}, DType::f32);
    Tensor xt = c.take({E, I, C}, DType::e4m3), xts = c.take({E, fp8::tiles(I), fp8::block_scale_ld(C)}, DType::f32);
    engine::fp8_quantize_cols(dt, dts, dout);
    engine::fp8_quantize_blocks(Tensor(), Tensor(), xt, xts, x);  // xᵀ: the transposed codes of x's blocks
    engine::fp8_gemm(dw, dt, dts, xt, xts, engine::Fp8Scaling::blocks, dw_write);
  }
}

}  // namespace monta::model
