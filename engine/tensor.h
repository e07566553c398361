// Tensor: a non-owning view (pointer, shape, dtype, device) over memory carved from an arena.
// Contiguous, row-major, up to 4 dimensions; every op takes views and dispatches on dtype and device.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>

namespace monta::engine {

// e4m3: FP8 E4M3 codes (OCP "E4M3FN": no infinities, one NaN code per sign), one byte each; engine/fp8_math.h.
enum class DType : uint8_t { f32, f64, bf16, i32, i64, u16, u32, u8, e4m3 };
enum class Device : uint8_t { cpu, cuda };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
const char* device_name(Device d);
// Dtype of saved statistics (rstd, lse, ...) for activations of dtype t: f64 stays f64, all else f32.
inline DType stat_dtype(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

// bf16 on the host: storage and round-to-nearest-even conversion (CPU side of the CUDA path, tests). Inline and
// branch-light so loops over them vectorise (the host AdamW's bf16 moments). A NaN stays a (quiet) NaN.
struct bf16_t {
  uint16_t bits = 0;
};
inline float bf16_to_float(bf16_t v) {
  const uint32_t u = uint32_t(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline bf16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffffu)) return bf16_t{uint16_t((u >> 16) | 0x40)};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{uint16_t(u >> 16)};
}

// How an op writes a gradient output (STYLE.md rule 3): overwrite (=) or accumulate (+=). Call sites say which.
enum class Write : uint8_t { overwrite, accumulate };

// Opaque stream handle (cudaStream_t on the CUDA backend, ignored on the CPU).
using Stream = void*;

struct Tensor {
  void* data = nullptr;
  std::array<int64_t, 4> shape{0, 0, 0, 0};
  int ndim = 0;
  DType dtype = DType::f32;
  Device device = Device::cpu;

  Tensor() = default;
  Tensor(void* p, std::initializer_list<int64_t> dims, DType t, Device d = Device::cpu);

  bool empty() const { return data == nullptr; }
  int64_t numel() const;
  size_t bytes() const { return size_t(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape[size_t(i < 0 ? i + ndim : i)]; }
  // Elements per index of dimension 0 (product of the remaining dims).
  int64_t row_elems() const;
  template <class T> T* as() const { return static_cast<T*>(data); }

  // Same memory, new shape (numel must match).
  Tensor view(std::initializer_list<int64_t> dims) const;
  // Rows [begin, begin+count) of dimension 0.
  Tensor rows(int64_t begin, int64_t count) const;
  std::string str() const;  // "f32[4,8]@cpu"
};

bool same_shape(const Tensor& a, const Tensor& b);

}  // namespace monta::engine
