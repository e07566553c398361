// CPU FP8 E4M3 quantisation (1x128 tiles along rows or columns, 128x128 blocks) and the FP8 GEMM's reference: both
// operands dequantised exactly, then the float GEMM of engine/cpu/linear.cpp in out's type. Every code and scale comes
// from engine/fp8_math.h, the arithmetic the CUDA kernels share, so both backends quantise to the same bits. f64
// inputs are rounded to f32 first (the CPU model's gradient checks run in f64; FP8 needs no more).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/fp8_math.h"
#include "engine/ops/fp8.h"
#include "engine/ops/linear.h"
#include "engine/ops/swiglu.h"

namespace monta::engine::cpu {
namespace {

using fp8::kTile;

struct D3 {
  int64_t b, r, c;
};
D3 d3(const Tensor& t) { return t.ndim == 2 ? D3{1, t.dim(0), t.dim(1)} : D3{t.dim(0), t.dim(1), t.dim(2)}; }

void need_cpu(const char* op, const char* name, const Tensor& t, DType want) {
  MONTA_CHECK(t.device == Device::cpu && t.data != nullptr,
              std::string(op) + ": " + name + " must be a non-empty CPU tensor, got " + t.str());
  MONTA_CHECK(t.dtype == want, std::string(op) + ": " + name + " must be " + dtype_name(want) + ", got " + t.str());
}
void need_source(const char* op, const char* name, const Tensor& t) {
  MONTA_CHECK(t.device == Device::cpu && t.data != nullptr,
              std::string(op) + ": " + name + " must be a non-empty CPU tensor, got " + t.str());
  MONTA_CHECK(t.dtype == DType::f32 || t.dtype == DType::f64 || t.dtype == DType::bf16,
              std::string(op) + ": " + name + " must be f32, f64 or bf16, got " + t.str());
}

// Element i of a float tensor as f32.
float load(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::f32: return t.as<float>()[i];
    case DType::f64: return float(t.as<double>()[i]);
    default: return bf16_to_float(t.as<bf16_t>()[i]);
  }
}

// Largest magnitude and finiteness of a set of values, then its scale and 1/scale.
struct TileStat {
  float amax = 0.f;
  bool finite = true;
  void add(float v) {
    if (!std::isfinite(v)) finite = false;
    amax = std::max(amax, std::fabs(v));
  }
  float scale() const { return fp8::tile_scale(amax, finite); }
  float inv() const { return finite ? fp8::pow2(-fp8::scale_exponent(amax)) : 1.f; }
};

}  // namespace

void fp8_quantize_rows(Tensor q, Tensor scale, const Tensor& x, Stream) {
  const char* op = "fp8_quantize_rows";
  need_source(op, "x", x);
  need_cpu(op, "q", q, DType::e4m3);
  need_cpu(op, "scale", scale, DType::f32);
  const D3 d = d3(x);
  const int64_t T = fp8::tiles(d.c);
  auto* qc = q.as<uint8_t>();
  float* sc = scale.as<float>();
  for (int64_t b = 0; b < d.b; ++b)
    for (int64_t r = 0; r < d.r; ++r)
      for (int64_t t = 0; t < T; ++t) {
        const int64_t row = (b * d.r + r) * d.c, c0 = t * kTile, c1 = std::min(d.c, c0 + kTile);
        TileStat st;
        for (int64_t c = c0; c < c1; ++c) st.add(load(x, row + c));
        sc[(b * T + t) * d.r + r] = st.scale();
        const float inv = st.inv();
        for (int64_t c = c0; c < c1; ++c) qc[row + c] = fp8::quantize(load(x, row + c), inv, st.finite);
      }
}

void fp8_quantize_cols(Tensor qt, Tensor scale, const Tensor& x, Stream) {
  const char* op = "fp8_quantize_cols";
  need_source(op, "x", x);
  need_cpu(op, "qt", qt, DType::e4m3);
  need_cpu(op, "scale", scale, DType::f32);
  const D3 d = d3(x);
  const int64_t T = fp8::tiles(d.r);
  auto* qc = qt.as<uint8_t>();
  float* sc = scale.as<float>();
  std::vector<TileStat> st(size_t(d.c));
  for (int64_t b = 0; b < d.b; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t r0 = t * kTile, r1 = std::min(d.r, r0 + kTile);
      std::fill(st.begin(), st.end(), TileStat{});
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = 0; c < d.c; ++c) st[size_t(c)].add(load(x, (b * d.r + r) * d.c + c));
      for (int64_t c = 0; c < d.c; ++c) {
        const TileStat& s = st[size_t(c)];
        sc[(b * T + t) * d.c + c] = s.scale();
        const float inv = s.inv();
        for (int64_t r = r0; r < r1; ++r)
          qc[(b * d.c + c) * d.r + r] = fp8::quantize(load(x, (b * d.r + r) * d.c + c), inv, s.finite);
      }
    }
}

void fp8_quantize_blocks(Tensor q, Tensor scale, Tensor qt, Tensor scale_t, const Tensor& w, Stream) {
  const char* op = "fp8_quantize_blocks";
  need_source(op, "w", w);
  if (!q.empty()) {
    need_cpu(op, "q", q, DType::e4m3);
    need_cpu(op, "scale", scale, DType::f32);
  }
  if (!qt.empty()) {
    need_cpu(op, "qt", qt, DType::e4m3);
    need_cpu(op, "scale_t", scale_t, DType::f32);
  }
  const D3 d = d3(w);  // (B, O, I)
  const int64_t TO = fp8::tiles(d.r), TI = fp8::tiles(d.c);
  const int64_t ld = fp8::block_scale_ld(d.c), ld_t = fp8::block_scale_ld(d.r);
  auto* qc = q.empty() ? nullptr : q.as<uint8_t>();
  auto* qtc = qt.empty() ? nullptr : qt.as<uint8_t>();
  float* sc = q.empty() ? nullptr : scale.as<float>();
  float* sct = qt.empty() ? nullptr : scale_t.as<float>();
  for (int64_t b = 0; b < d.b; ++b) {
    if (sc) std::fill(sc + b * TO * ld, sc + (b + 1) * TO * ld, 0.f);  // the padding columns stay 0
    if (sct) std::fill(sct + b * TI * ld_t, sct + (b + 1) * TI * ld_t, 0.f);
    for (int64_t bo = 0; bo < TO; ++bo)
      for (int64_t bi = 0; bi < TI; ++bi) {
        const int64_t o0 = bo * kTile, o1 = std::min(d.r, o0 + kTile), i0 = bi * kTile, i1 = std::min(d.c, i0 + kTile);
        TileStat st;
        for (int64_t o = o0; o < o1; ++o)
          for (int64_t i = i0; i < i1; ++i) st.add(load(w, (b * d.r + o) * d.c + i));
        if (sc) sc[(b * TO + bo) * ld + bi] = st.scale();
        if (sct) sct[(b * TI + bi) * ld_t + bo] = st.scale();
        const float inv = st.inv();
        for (int64_t o = o0; o < o1; ++o)
          for (int64_t i = i0; i < i1; ++i) {
            const uint8_t code = fp8::quantize(load(w, (b * d.r + o) * d.c + i), inv, st.finite);
            if (qc) qc[(b * d.r + o) * d.c + i] = code;
            if (qtc) qtc[(b * d.c + i) * d.r + o] = code;
          }
      }
  }
}

void fp8_pack_rows(Tensor packed, const Tensor& x, Stream) {
  const char* op = "fp8_pack_rows";
  need_source(op, "x", x);
  need_cpu(op, "packed", packed, DType::u8);
  const D3 d = d3(x);
  const int64_t P = packed.dim(packed.ndim - 1), T = fp8::tiles(d.c), at = fp8::packed_scales_at(d.c);
  auto* base = packed.as<uint8_t>();
  for (int64_t r = 0; r < d.b * d.r; ++r) {
    uint8_t* row = base + r * P;
    std::fill(row, row + P, uint8_t(0));
    for (int64_t t = 0; t < T; ++t) {
      const int64_t c0 = t * kTile, c1 = std::min(d.c, c0 + kTile);
      TileStat st;
      for (int64_t c = c0; c < c1; ++c) st.add(load(x, r * d.c + c));
      const float s = st.scale();
      std::memcpy(row + at + 4 * t, &s, 4);
      const float inv = st.inv();
      for (int64_t c = c0; c < c1; ++c) row[c] = fp8::quantize(load(x, r * d.c + c), inv, st.finite);
    }
  }
}

void fp8_unpack_rows(Tensor out, const Tensor& packed, Stream) {
  const char* op = "fp8_unpack_rows";
  need_cpu(op, "packed", packed, DType::u8);
  need_source(op, "out", out);
  const D3 d = d3(out);
  const int64_t P = packed.dim(packed.ndim - 1), at = fp8::packed_scales_at(d.c);
  const auto* base = packed.as<uint8_t>();
  for (int64_t r = 0; r < d.b * d.r; ++r)
    for (int64_t c = 0; c < d.c; ++c) {
      float s;
      std::memcpy(&s, base + r * P + at + 4 * (c / kTile), 4);
      const float v = fp8::e4m3_to_float(base[r * P + c]) * s;  // exact: 4 significant bits times 2^k
      const int64_t i = r * d.c + c;
      switch (out.dtype) {
        case DType::f32: out.as<float>()[i] = v; break;
        case DType::f64: out.as<double>()[i] = double(v); break;
        default: out.as<bf16_t>()[i] = float_to_bf16(v); break;
      }
    }
}

// The reference is the two ops in sequence: the fused CUDA kernel must give these bits.
void fp8_swiglu_forward(Tensor out, Tensor q, Tensor scale, const Tensor& gate, const Tensor& up, Stream s) {
  cpu::swiglu_forward(out, gate, up, s);
  cpu::fp8_quantize_rows(q, scale, out, s);
}

namespace {

// deq (B, R, K) in T: codes · their tile's (1x128 along K, scale (B, T(K), R)) or block's (scale (B, T(R), Ld(K))) scale.
template <class T> std::vector<T> dequantize(const Tensor& q, const Tensor& scale, bool blocks) {
  const D3 d = d3(q);
  const int64_t TK = fp8::tiles(d.c), ld = fp8::block_scale_ld(d.c), TR = fp8::tiles(d.r);
  const auto* qc = q.as<uint8_t>();
  const float* sc = scale.as<float>();
  std::vector<T> out(size_t(d.b * d.r * d.c));
  for (int64_t b = 0; b < d.b; ++b)
    for (int64_t r = 0; r < d.r; ++r)
      for (int64_t c = 0; c < d.c; ++c) {
        const float s = blocks ? sc[(b * TR + r / kTile) * ld + c / kTile] : sc[(b * TK + c / kTile) * d.r + r];
        const int64_t i = (b * d.r + r) * d.c + c;
        out[size_t(i)] = T(fp8::e4m3_to_float(qc[i])) * T(s);  // exact in f32: 4 significant bits times 2^k
      }
  return out;
}

template <class T>
void gemm_typed(Tensor out, const Tensor& a, const Tensor& a_scale, const Tensor& b, const Tensor& b_scale,
                Fp8Scaling b_scaling, Write write) {
  const D3 da = d3(a), db = d3(b);
  const DType dt = out.dtype;
  std::vector<T> ad = dequantize<T>(a, a_scale, false), bd = dequantize<T>(b, b_scale, b_scaling == Fp8Scaling::blocks);
  T* o = out.as<T>();
  for (int64_t e = 0; e < da.b; ++e)
    cpu::linear_forward(Tensor(o + e * da.r * db.r, {da.r, db.r}, dt), Tensor(ad.data() + e * da.r * da.c, {da.r, da.c}, dt),
                        Tensor(bd.data() + e * db.r * db.c, {db.r, db.c}, dt), write);
}

}  // namespace

void fp8_gemm(Tensor out, const Tensor& a, const Tensor& a_scale, const Tensor& b, const Tensor& b_scale,
              Fp8Scaling b_scaling, Write write, Stream) {
  const char* op = "fp8_gemm";
  need_cpu(op, "a", a, DType::e4m3);
  need_cpu(op, "b", b, DType::e4m3);
  need_cpu(op, "a_scale", a_scale, DType::f32);
  need_cpu(op, "b_scale", b_scale, DType::f32);
  MONTA_CHECK(out.device == Device::cpu && out.data != nullptr && (out.dtype == DType::f32 || out.dtype == DType::f64),
              std::string(op) + ": out must be a non-empty f32 or f64 CPU tensor, got " + out.str());
  if (out.dtype == DType::f32)
    gemm_typed<float>(out, a, a_scale, b, b_scale, b_scaling, write);
  else
    gemm_typed<double>(out, a, a_scale, b, b_scale, b_scaling, write);
}

}  // namespace monta::engine::cpu
