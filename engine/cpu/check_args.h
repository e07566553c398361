// Argument checks shared by the CPU op files: each failure names the op, the argument and the tensor's str().
// Dtype and device only: shapes are each op's contract, checked once at dispatch (engine/ops/dispatch.cpp).
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

}  // namespace monta::engine::cpu
