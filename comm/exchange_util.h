// Small helpers shared by the exchange strategies (exchange.cpp, pipelined_exchange.cpp); internal to comm/.
#pragma once
#include <cstdint>
#include <span>
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

// The row width W of one dispatch or combine whose operands hold `slots` rows each (E*C): W = numel / slots, at most
// the exchange's H (its staging is sized for H; the FP8 dispatch moves narrower packed rows, comm/fp8_dispatch.h).
inline int64_t exchange_row_width(const engine::Tensor& dst, const engine::Tensor& src, int64_t slots, int64_t H,
                                  engine::DType dtype, engine::Device device, const char* who) {
  const int64_t W = slots > 0 ? src.numel() / slots : 0;
  MONTA_CHECK(W > 0 && W <= H && src.numel() == slots * W,
              std::string("exchange ") + who + ": expected " + n2s(slots) + " rows of at most " + n2s(H) +
                  " elements, got " + src.str());
  check_exchange_io(dst, src, slots * W, dtype, device, who);
  return W;
}

// set_loads' argument: e*E loads, each in [0, C] (an empty span: every slot filled).
inline void check_loads(std::span<const int32_t> loads, int e, int64_t E, int64_t C, const char* who) {
  MONTA_CHECK(loads.empty() || int64_t(loads.size()) == int64_t(e) * E,
              std::string("exchange ") + who + ": " + n2s(int64_t(loads.size())) + " loads, expected " +
                  n2s(int64_t(e) * E) + " (EP ranks x experts)");
  for (const int32_t v : loads)
    MONTA_CHECK(v >= 0 && v <= C, std::string("exchange ") + who + ": load " + n2s(v) + " outside [0, capacity " +
                                      n2s(C) + "]");
}

// 1-D view of n elements starting elem_off elements into t.
inline engine::Tensor flat(const engine::Tensor& t, int64_t elem_off, int64_t n) {
  return engine::make_view(static_cast<char*>(t.data) + size_t(elem_off) * engine::dtype_size(t.dtype), {n}, t.dtype,
                           t.device);
}

}  // namespace monta::comm::detail
