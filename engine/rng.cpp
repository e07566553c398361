// Philox4x32-10 (Salmon et al., SC'11) and the helpers built on it; the arithmetic is engine/rng_math.h's, shared
// with the device (this file is compiled without FMA contraction, see engine/CMakeLists.txt).
#include "engine/rng.h"

#include "engine/rng_math.h"

#include <cmath>

namespace monta::engine {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  const rngmath::U4 r = rngmath::philox4x32(rngmath::U4{{c[0], c[1], c[2], c[3]}}, k[0], k[1]);
  return {r.v[0], r.v[1], r.v[2], r.v[3]};
}

uint64_t fnv1a64(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (char ch : s) {
    h ^= uint8_t(ch);
    h *= 1099511628211ull;
  }
  return h;
}

namespace {
std::array<uint32_t, 4> block(uint64_t seed, uint64_t stream, uint64_t index) {
  const rngmath::U4 r = rngmath::block(seed, stream, index);
  return {r.v[0], r.v[1], r.v[2], r.v[3]};
}
}  // namespace

double rng_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
  auto r = block(seed, stream, index);
  return rngmath::to_unit(r[0], r[1]);
}

double rng_normal(uint64_t seed, uint64_t stream, uint64_t index) { return rngmath::normal(seed, stream, index); }

uint32_t Philox::next_u32() { return block(seed, stream, counter++)[0]; }
uint64_t Philox::next_u64() {
  auto r = block(seed, stream, counter++);
  return (uint64_t(r[0]) << 32) | r[1];
}
double Philox::uniform() { return rng_uniform(seed, stream, counter++); }
double Philox::normal() { return rng_normal(seed, stream, counter++); }
uint64_t Philox::below(uint64_t n) {
  if (n <= 1) return 0;
  uint64_t limit = ~uint64_t(0) - (~uint64_t(0) % n);
  for (;;) {
    uint64_t x = next_u64();
    if (x < limit) return x % n;
  }
}

}  // namespace monta::engine
