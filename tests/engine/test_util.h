// Shared helpers of the engine tests: owning host tensors, seeded random fills, the random linear
// functional L = Σ c⊙out, and the central-difference gradient check every backward is held to.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/memory.h"
#include "engine/tensor.h"
#include "tests/owned_tensor.h"

namespace monta::enginetest {

using engine::DType;
using engine::Device;
using engine::Tensor;

// Owning host tensor, zero-filled.
struct Buf : testing_util::OwnedTensor {
  Buf() = default;
  Buf(std::vector<int64_t> shape, DType dt) : OwnedTensor(std::move(shape), dt, Device::cpu) { engine::fill_zero(t); }
  int64_t numel() const { return t.numel(); }
  double get(int64_t i) const {
    switch (t.dtype) {
      case DType::f32: return t.as<float>()[i];
      case DType::f64: return t.as<double>()[i];
      case DType::i32: return t.as<int32_t>()[i];
      case DType::bf16: return engine::bf16_to_float(t.as<engine::bf16_t>()[i]);
      default: ADD_FAILURE() << "Buf::get: dtype " << engine::dtype_name(t.dtype); return 0;
    }
  }
  void set(int64_t i, double v) {
    switch (t.dtype) {
      case DType::f32: t.as<float>()[i] = float(v); break;
      case DType::f64: t.as<double>()[i] = v; break;
      case DType::i32: t.as<int32_t>()[i] = int32_t(v); break;
      case DType::bf16: t.as<engine::bf16_t>()[i] = engine::float_to_bf16(float(v)); break;
      default: ADD_FAILURE() << "Buf::set: dtype " << engine::dtype_name(t.dtype);
    }
  }
  std::vector<double> values() const {
    std::vector<double> v(static_cast<size_t>(numel()));
    for (int64_t i = 0; i < numel(); ++i) v[size_t(i)] = get(i);
    return v;
  }
  void assign(const std::vector<double>& v) {
    EXPECT_EQ(int64_t(v.size()), numel());
    for (int64_t i = 0; i < numel(); ++i) set(i, v[size_t(i)]);
  }
};

inline std::vector<double> random_values(int64_t n, uint32_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<double> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

inline Buf random_buf(std::vector<int64_t> shape, DType dt, uint32_t seed, double lo = -1.0, double hi = 1.0) {
  Buf b(std::move(shape), dt);
  b.assign(random_values(b.numel(), seed, lo, hi));
  return b;
}

inline Buf filled(std::vector<int64_t> shape, DType dt, double value) {
  Buf b(std::move(shape), dt);
  for (int64_t i = 0; i < b.numel(); ++i) b.set(i, value);
  return b;
}

// L = Σ c⊙out.
inline double dot(const Buf& out, const Buf& c) {
  double s = 0;
  for (int64_t i = 0; i < out.numel(); ++i) s += out.get(i) * c.get(i);
  return s;
}

// Central differences of loss() w.r.t. every element of x (a double tensor the loss reads), against
// `analytic`. Each element must satisfy |analytic − numeric| <= tol · (1 + |numeric|).
inline void expect_grad(const std::string& what, Buf& x, const std::vector<double>& analytic,
                        const std::function<double()>& loss, double tol = 1e-6, double eps = 1e-6) {
  ASSERT_EQ(x.t.dtype, DType::f64) << what;
  ASSERT_EQ(int64_t(analytic.size()), x.numel()) << what;
  int bad = 0;
  double worst = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double x0 = x.get(i);
    x.set(i, x0 + eps);
    const double lp = loss();
    x.set(i, x0 - eps);
    const double lm = loss();
    x.set(i, x0);
    const double num = (lp - lm) / (2 * eps);
    const double err = std::abs(analytic[size_t(i)] - num) / (1 + std::abs(num));
    worst = std::max(worst, err);
    if (err > tol && ++bad <= 5)
      ADD_FAILURE() << what << "[" << i << "]: analytic " << analytic[size_t(i)] << " vs numeric " << num;
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << x.numel() << " elements off, worst rel err " << worst;
}

// a − b elementwise (for gradients that accumulate onto a known start).
inline std::vector<double> minus(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = a[i] - b[i];
  return r;
}

inline double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return a.size() == b.size() ? m : INFINITY;
}

// Tests that check error paths throw instead of aborting.
struct ThrowingHandler : ::testing::Test {
  void SetUp() override { engine::install_throwing_handler(); }
};

// The op throws an engine::Error whose message names `needle`.
#define MONTA_EXPECT_ERROR(stmt, needle)                                                            \
  do {                                                                                              \
    bool monta_thrown_ = false;                                                                     \
    try {                                                                                           \
      stmt;                                                                                         \
    } catch (const ::monta::engine::Error& e) {                                                     \
      monta_thrown_ = true;                                                                         \
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what(); \
    }                                                                                               \
    EXPECT_TRUE(monta_thrown_) << #stmt " did not throw";                                          \
  } while (0)

}  // namespace monta::enginetest
