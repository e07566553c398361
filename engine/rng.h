// Counter-based RNG (Philox4x32-10): a value is a pure function of (seed, stream, index), so any slice
// of a parameter initialises to the same numbers whatever the parallel layout, and RNG state is a counter.
#pragma once
#include <array>
#include <cstdint>
#include <string_view>

namespace monta::engine {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);
uint64_t fnv1a64(std::string_view s);

// Element `index` of stream `stream` (e.g. fnv1a64 of a parameter name) under `seed`.
double rng_uniform(uint64_t seed, uint64_t stream, uint64_t index);  // in (0, 1)
double rng_normal(uint64_t seed, uint64_t stream, uint64_t index);   // N(0, 1), Box-Muller

// A sequential generator over the same function; its whole state is {seed, stream, counter}.
struct Philox {
  uint64_t seed = 0, stream = 0, counter = 0;
  uint32_t next_u32();
  uint64_t next_u64();
  double uniform();                     // in (0, 1)
  double normal();                      // N(0, 1)
  uint64_t below(uint64_t n);           // uniform integer in [0, n), unbiased
};

}  // namespace monta::engine
