// An owning tensor for tests: allocated on one device at construction, freed at destruction, movable, and usable
// wherever a Tensor is taken. The engine tests' and the GPU tests' Buf build on it.
#pragma once
#include <cstdint>
#include <utility>
#include <vector>

#include "engine/memory.h"
#include "engine/tensor.h"

namespace monta::testing_util {

struct OwnedTensor {
  engine::Tensor t;
  OwnedTensor() = default;
  OwnedTensor(std::vector<int64_t> shape, engine::DType dt, engine::Device dev) {
    int64_t n = 1;
    for (int64_t v : shape) n *= v;
    void* p = engine::device_alloc(dev, size_t(n) * engine::dtype_size(dt));
    t = engine::make_view(p, shape, dt, dev);
  }
  ~OwnedTensor() {
    if (t.data) engine::device_free(t.device, t.data);
  }
  OwnedTensor(const OwnedTensor&) = delete;
  OwnedTensor& operator=(const OwnedTensor&) = delete;
  OwnedTensor(OwnedTensor&& o) noexcept : t(o.t) { o.t.data = nullptr; }
  OwnedTensor& operator=(OwnedTensor&& o) noexcept {
    std::swap(t, o.t);
    return *this;
  }
  operator engine::Tensor() const { return t; }
};

}  // namespace monta::testing_util
