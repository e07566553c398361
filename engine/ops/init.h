// Weight initialisation as an op: out (the local slice, at `offset` within a logical tensor of shape `full`) gets
// std · N(0, 1) drawn from Philox keyed by (seed, stream, logical flat index), or 1 where std is 0 (norm weights).
// Every layout and both backends produce the same bits (engine/rng_math.h), so a 70B model initialises on the GPU in
// seconds instead of minutes on one host core.
#pragma once
#include <array>
#include <cstdint>

#include "engine/ops/declare.h"

namespace monta::engine {
struct InitNormalArgs {
  uint64_t seed = 0, stream = 0;
  double std = 0;
  std::array<int64_t, 4> full{}, offset{};  // logical shape and this slice's offset, out.ndim entries used
};
}  // namespace monta::engine

// init_normal: f32 or f64 (CPU) out.
#define MONTA_OPS_INIT(X) X(init_normal, out, (Tensor out, const InitNormalArgs& a), (out, a))

namespace monta::engine {
MONTA_DECLARE_OPS(MONTA_OPS_INIT)
}  // namespace monta::engine
