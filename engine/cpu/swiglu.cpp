// CPU SwiGLU gate: out = silu(gate) · up elementwise, and its backward (both gradients overwritten).
#include <cmath>
#include <cstdint>
#include <string>

#include "engine/check.h"
#include "engine/ops/swiglu.h"

namespace monta::engine::cpu {
namespace {

void need(const char* op, const char* name, const Tensor& t, const Tensor& ref) {
  MONTA_CHECK(t.device == Device::cpu && t.data != nullptr,
              std::string(op) + ": " + name + " must be a non-empty CPU tensor, got " + t.str());
  MONTA_CHECK(ref.dtype == DType::f32 || ref.dtype == DType::f64,
              std::string(op) + ": tensors must be f32 or f64, got " + ref.str());
  MONTA_CHECK(t.dtype == ref.dtype, std::string(op) + ": " + name + " " + t.str() + " must match " + ref.str());
}

template <class T> void fwd(Tensor out, const Tensor& gate, const Tensor& up) {
  const int64_t n = gate.numel();
  const T *g = gate.as<T>(), *u = up.as<T>();
  T* o = out.as<T>();
  for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (T(1) + std::exp(-g[i])) * u[i];
}

// d silu(g)/dg = σ(g)·(1 + g·(1 − σ(g))).
template <class T> void bwd(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up) {
  const int64_t n = gate.numel();
  const T *g = gate.as<T>(), *u = up.as<T>(), *d = dout.as<T>();
  T *dg = dgate.as<T>(), *du = dup.as<T>();
  for (int64_t i = 0; i < n; ++i) {
    const T sig = T(1) / (T(1) + std::exp(-g[i]));
    const T silu = g[i] * sig;
    dg[i] = d[i] * u[i] * sig * (T(1) + g[i] * (T(1) - sig));
    du[i] = d[i] * silu;
  }
}

}  // namespace

void swiglu_forward(Tensor out, const Tensor& gate, const Tensor& up, Stream) {
  const char* op = "swiglu_forward";
  need(op, "gate", gate, gate);
  need(op, "up", up, gate);
  need(op, "out", out, gate);
  if (gate.dtype == DType::f32)
    fwd<float>(out, gate, up);
  else
    fwd<double>(out, gate, up);
}

void swiglu_backward(Tensor dgate, Tensor dup, const Tensor& dout, const Tensor& gate, const Tensor& up, Stream) {
  const char* op = "swiglu_backward";
  need(op, "gate", gate, gate);
  need(op, "up", up, gate);
  need(op, "dout", dout, gate);
  need(op, "dgate", dgate, gate);
  need(op, "dup", dup, gate);
  if (gate.dtype == DType::f32)
    bwd<float>(dgate, dup, dout, gate, up);
  else
    bwd<double>(dgate, dup, dout, gate, up);
}

}  // namespace monta::engine::cpu
