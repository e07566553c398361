// Philox4x32-10 (Salmon et al., SC'11) and the helpers built on it.
#include "engine/rng.h"

#include <cmath>

namespace monta::engine {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(kM0) * c[0], p1 = uint64_t(kM1) * c[2];
    uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0), hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
    k[0] += kW0;
    k[1] += kW1;
  }
  return c;
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
  std::array<uint32_t, 2> key{uint32_t(seed) ^ uint32_t(stream >> 32), uint32_t(seed >> 32) ^ uint32_t(stream)};
  return philox4x32({uint32_t(index), uint32_t(index >> 32), uint32_t(stream), 0x6d6f6e74u}, key);
}
double to_unit(uint32_t a, uint32_t b) {  // 53-bit uniform in (0, 1)
  uint64_t m = (uint64_t(a) << 21) ^ uint64_t(b >> 11);
  return (double(m & ((1ull << 53) - 1)) + 0.5) / 9007199254740992.0;
}
}  // namespace

double rng_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
  auto r = block(seed, stream, index);
  return to_unit(r[0], r[1]);
}

double rng_normal(uint64_t seed, uint64_t stream, uint64_t index) {
  auto r = block(seed, stream, index);
  double u1 = to_unit(r[0], r[1]), u2 = to_unit(r[2], r[3]);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

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
