// Small helpers shared by the exchange strategies (exchange.cpp, pipelined_exchange.cpp); internal to comm/.
#pragma once
#include <cstdint>
#include <string>

#include "engine/check.h"
#include "engine/memory.h"
#include "engine/tensor.h"

namespace monta::comm::detail {

inline std::string n2s(int64_t v) { return std::to_string(v); }

// The operands of one dispatch or combine: both dtype@device, n elements each (E*C*H on both sides), distinct.
inline void check_exchange_io(const engine::Tensor& dst, const engine::Tensor& src, int64_t n, engine::DType dtype,
                              engine::Device device, const char* who) {
  for (const engine::Tensor* t : {&dst, &src})
    MONTA_CHECK(t->dtype == dtype && t->device == device,
                std::string("exchange ") + who + ": " + t->str() + " is not " + engine::dtype_name(dtype) + "@" +
                    engine::device_name(device));
  MONTA_CHECK(dst.numel() == n && src.numel() == n, std::string("exchange ") + who + ": expected " + n2s(n) + " -> " +
                                                        n2s(n) + " elements, got " + src.str() + " -> " + dst.str());
  MONTA_CHECK(dst.data != src.data, std::string("exchange ") + who + ": output must not alias input");
}

// 1-D view of n elements starting elem_off elements into t.
inline engine::Tensor flat(const engine::Tensor& t, int64_t elem_off, int64_t n) {
  return engine::make_view(static_cast<char*>(t.data) + size_t(elem_off) * engine::dtype_size(t.dtype), {n}, t.dtype,
                           t.device);
}

}  // namespace monta::comm::detail
