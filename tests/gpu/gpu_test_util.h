// Shared helpers of the GPU tests: paired CPU/CUDA tensors with the same random contents, poisoning of
// CUDA outputs (so an unwritten element shows up as NaN), and the relative-error comparison.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/memory.h"
#include "engine/tensor.h"
#include "tests/owned_tensor.h"

namespace monta::gputest {

using engine::DType;
using engine::Device;
using engine::Tensor;

#define MONTA_REQUIRE_GPU() \
  if (!::monta::engine::cuda_available()) GTEST_SKIP() << "no CUDA device visible"

// Owning buffer on one device.
struct Buf : testing_util::OwnedTensor {
  using OwnedTensor::OwnedTensor;
};

inline std::mt19937& rng() {
  static std::mt19937 g(12345u);
  return g;
}

// Host values -> a tensor of dtype dt on device dev (bf16 rounds to nearest even).
inline Buf upload(const std::vector<float>& v, std::vector<int64_t> shape, DType dt, Device dev) {
  Buf host(shape, dt, Device::cpu);
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::f32)
      host.t.as<float>()[i] = v[i];
    else if (dt == DType::bf16)
      host.t.as<engine::bf16_t>()[i] = engine::float_to_bf16(v[i]);
    else if (dt == DType::i32)
      host.t.as<int32_t>()[i] = int32_t(v[i]);
    else
      ADD_FAILURE() << "upload: unsupported dtype";
  }
  if (dev == Device::cpu) return host;
  Buf d(shape, dt, dev);
  engine::copy(d.t, host.t);
  return d;
}

inline std::vector<float> download(const Tensor& t) {
  Buf host(std::vector<int64_t>(t.shape.begin(), t.shape.begin() + t.ndim), t.dtype, Device::cpu);
  engine::copy(host.t, t);
  engine::sync_device(Device::cuda);
  std::vector<float> v(size_t(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) {
    if (t.dtype == DType::f32)
      v[i] = host.t.as<float>()[i];
    else if (t.dtype == DType::bf16)
      v[i] = engine::bf16_to_float(host.t.as<engine::bf16_t>()[i]);
    else if (t.dtype == DType::i32)
      v[i] = float(host.t.as<int32_t>()[i]);
  }
  return v;
}

inline std::vector<int32_t> download_i32(const Tensor& t) {
  std::vector<int32_t> v(size_t(t.numel()));
  Tensor h(v.data(), {t.numel()}, DType::i32, Device::cpu);
  engine::copy(h, t.view({t.numel()}));
  engine::sync_device(Device::cuda);
  return v;
}

inline std::vector<float> random_values(int64_t n, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng());
  return v;
}

// Round-trip through bf16 when dt is bf16, so the CPU reference (f32) sees exactly the GPU's inputs.
inline std::vector<float> representable(std::vector<float> v, DType dt) {
  if (dt == DType::bf16)
    for (auto& x : v) x = engine::bf16_to_float(engine::float_to_bf16(x));
  return v;
}

// A CPU f32 tensor and a CUDA tensor of dtype dt holding the same values.
struct Pair {
  Buf cpu, gpu;
  std::vector<float> values;
  Pair(std::vector<int64_t> shape, DType dt, float lo = -1.f, float hi = 1.f) {
    int64_t n = 1;
    for (int64_t v : shape) n *= v;
    init(representable(random_values(n, lo, hi), dt), shape, dt);
  }
  Pair(const std::vector<float>& v, std::vector<int64_t> shape, DType dt) { init(representable(v, dt), shape, dt); }
  void init(const std::vector<float>& v, std::vector<int64_t> shape, DType dt) {
    values = v;
    DType cdt = dt == DType::i32 ? DType::i32 : DType::f32;
    cpu = upload(v, shape, cdt, Device::cpu);
    gpu = upload(v, shape, dt, Device::cuda);
  }
  // Fill the CUDA copy with all-ones bytes (NaN in f32 and bf16, -1 in i32).
  void poison() {
    Buf host(std::vector<int64_t>(gpu.t.shape.begin(), gpu.t.shape.begin() + gpu.t.ndim), gpu.t.dtype, Device::cpu);
    std::memset(host.t.data, 0xff, host.t.bytes());
    engine::copy(gpu.t, host.t);
  }
  Tensor c() const { return cpu.t; }
  Tensor g() const { return gpu.t; }
};

// Output pair: random initial contents (outputs that accumulate start from these), poisoned on the GPU
// unless keep_gpu (for accumulating outputs).
inline Pair output(std::vector<int64_t> shape, DType dt, bool accumulates = false) {
  Pair p(shape, dt);
  if (!accumulates) p.poison();
  return p;
}

// ‖out − ref‖ / ‖ref‖; NaN or Inf anywhere in out gives +inf.
inline double rel_err(const std::vector<float>& out, const std::vector<float>& ref) {
  if (out.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) return INFINITY;
    double d = double(out[i]) - double(ref[i]);
    num += d * d;
    den += double(ref[i]) * double(ref[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

inline double tol_for(DType dt) { return dt == DType::bf16 ? 1e-2 : 1e-5; }

// Compare the CUDA tensor of `p` with the CPU one.
inline void expect_close(const Pair& p, double tol, const std::string& what) {
  std::vector<float> out = download(p.g()), ref = download(p.c());
  double e = rel_err(out, ref);
  EXPECT_LT(e, tol) << what << ": relative error " << e;
  if (!(e < tol)) {
    int shown = 0;
    for (size_t i = 0; i < out.size() && shown < 5; ++i)
      if (!(std::fabs(out[i] - ref[i]) <= 1e-3f * (1.f + std::fabs(ref[i])))) {
        ADD_FAILURE() << what << "[" << i << "] gpu " << out[i] << " cpu " << ref[i];
        ++shown;
      }
  }
}

inline void expect_equal_i32(const Tensor& gpu, const Tensor& cpu, const std::string& what) {
  std::vector<int32_t> a = download_i32(gpu), b = download_i32(cpu);
  ASSERT_EQ(a.size(), b.size());
  int shown = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i] && shown++ < 5) ADD_FAILURE() << what << "[" << i << "] gpu " << a[i] << " cpu " << b[i];
  EXPECT_EQ(shown, 0) << what << ": integer outputs differ";
}

inline void expect_bitwise_equal(const Pair& p, const std::string& what) {
  std::vector<float> out = download(p.g()), ref = download(p.c());
  ASSERT_EQ(out.size(), ref.size());
  size_t bad = 0;
  for (size_t i = 0; i < out.size(); ++i)
    if (std::memcmp(&out[i], &ref[i], 4) != 0 && bad++ < 5)
      ADD_FAILURE() << what << "[" << i << "] gpu " << out[i] << " cpu " << ref[i];
  EXPECT_EQ(bad, 0u) << what << ": not bit-identical";
}

inline std::string dtype_param_name(const testing::TestParamInfo<DType>& info) {
  return engine::dtype_name(info.param);
}

}  // namespace monta::gputest
