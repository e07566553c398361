// Small helpers shared by the exchange strategies (exchange.cpp, pipelined_exchange.cpp); internal to comm/.
#pragma once
#include <cstdint>
#include <string>

#include "engine/memory.h"
#include "engine/tensor.h"

namespace monta::comm::detail {

inline std::string n2s(int64_t v) { return std::to_string(v); }

// 1-D view of n elements starting elem_off elements into t.
inline engine::Tensor flat(const engine::Tensor& t, int64_t elem_off, int64_t n) {
  return engine::make_view(static_cast<char*>(t.data) + size_t(elem_off) * engine::dtype_size(t.dtype), {n}, t.dtype,
                           t.device);
}

}  // namespace monta::comm::detail
