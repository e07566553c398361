// Argument checks shared by the CPU op files: each failure names the op, the argument and the tensor's str().
#pragma once
#include <cstdint>
#include <string>

#include "engine/check.h"
#include "engine/tensor.h"

namespace monta::engine::cpu {

// t is a non-empty CPU tensor of dtype dt.
inline void need(const char* op, const char* name, const Tensor& t, DType dt) {
  MONTA_CHECK(t.device == Device::cpu && t.data != nullptr,
              std::string(op) + ": " + name + " must be a non-empty CPU tensor, got " + t.str());
  MONTA_CHECK(t.dtype == dt, std::string(op) + ": " + name + " must be " + dtype_name(dt) + ", got " + t.str());
}

// ... and holds exactly numel elements.
inline void need(const char* op, const char* name, const Tensor& t, DType dt, int64_t numel) {
  need(op, name, t, dt);
  MONTA_CHECK(t.numel() == numel,
              std::string(op) + ": " + name + " " + t.str() + " must have " + std::to_string(numel) + " elements");
}

}  // namespace monta::engine::cpu
