// Tensor view helpers: sizes, names, reshapes and row slices, bf16 conversion on the host.
#include "engine/tensor.h"

#include <cstring>

#include "engine/check.h"

namespace monta::engine {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
    case DType::u16: return 2;
    case DType::u32: return 4;
    case DType::u8: return 1;
    case DType::e4m3: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::u16: return "u16";
    case DType::u32: return "u32";
    case DType::u8: return "u8";
    case DType::e4m3: return "e4m3";
  }
  return "?";
}

const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

Tensor::Tensor(void* p, std::initializer_list<int64_t> dims, DType t, Device d) : data(p), dtype(t), device(d) {
  MONTA_CHECK(dims.size() <= 4, "tensors have at most 4 dimensions");
  for (int64_t v : dims) shape[size_t(ndim++)] = v;
}

int64_t Tensor::numel() const {
  if (ndim == 0) return data ? 1 : 0;
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[size_t(i)];
  return n;
}

int64_t Tensor::row_elems() const {
  int64_t n = 1;
  for (int i = 1; i < ndim; ++i) n *= shape[size_t(i)];
  return n;
}

Tensor Tensor::view(std::initializer_list<int64_t> dims) const {
  Tensor t(data, dims, dtype, device);
  MONTA_CHECK(t.numel() == numel(), "view " + t.str() + " of " + str() + " changes the element count");
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t count) const {
  MONTA_CHECK(ndim >= 1 && begin >= 0 && count >= 0 && begin + count <= shape[0],
              "rows [" + std::to_string(begin) + ", +" + std::to_string(count) + ") out of " + str());
  Tensor t = *this;
  t.data = static_cast<char*>(data) + size_t(begin * row_elems()) * dtype_size(dtype);
  t.shape[0] = count;
  return t;
}

std::string Tensor::str() const {
  std::string s = dtype_name(dtype);
  s += "[";
  for (int i = 0; i < ndim; ++i) s += (i ? "," : "") + std::to_string(shape[size_t(i)]);
  return s + "]@" + device_name(device);
}

bool same_shape(const Tensor& a, const Tensor& b) {
  if (a.ndim != b.ndim) return false;
  for (int i = 0; i < a.ndim; ++i)
    if (a.shape[size_t(i)] != b.shape[size_t(i)]) return false;
  return true;
}

}  // namespace monta::engine
