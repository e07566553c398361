// Philox4x32-10 and the Box-Muller normal, written once for the host and the device. Both compilers are kept from
// fusing a*b+c into an FMA here (host: -ffp-contract=off on the files that include this; device: --fmad=false on
// them), and log/cos are our own polynomials on IEEE add, multiply and divide, which are exactly rounded on both
// sides: so a weight initialised on the GPU has the same bits as one initialised on the CPU.
#pragma once
#include <cmath>
#include <cstdint>

#include "engine/host_device.h"

namespace monta::engine::rngmath {

struct U4 {
  uint32_t v[4];
};

MONTA_HD U4 philox4x32(U4 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = uint64_t(kM0) * c.v[0], p1 = uint64_t(kM1) * c.v[2];
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0), hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    c = U4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    k0 += kW0;
    k1 += kW1;
  }
  return c;
}

// The block of 4 words for (seed, stream, index): monta's one keying of Philox.
MONTA_HD U4 block(uint64_t seed, uint64_t stream, uint64_t index) {
  return philox4x32(U4{{uint32_t(index), uint32_t(index >> 32), uint32_t(stream), 0x6d6f6e74u}},
                    uint32_t(seed) ^ uint32_t(stream >> 32), uint32_t(seed >> 32) ^ uint32_t(stream));
}

MONTA_HD double to_unit(uint32_t a, uint32_t b) {  // 53-bit uniform in (0, 1)
  const uint64_t m = (uint64_t(a) << 21) ^ uint64_t(b >> 11);
  return (double(m & ((1ull << 53) - 1)) + 0.5) / 9007199254740992.0;
}

// log(x) for x > 0 (finite): x = m·2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.172,
// by its series to s^23 (error < 1e-17 relative), plus e·ln 2 in two parts.
MONTA_HD double log_portable(double x) {
  int e = 0;
  double m = frexp(x, &e);
  if (m < 0.70710678118654752440) {
    m = m * 2.0;
    e = e - 1;
  }
  const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
  double p = 1.0 / 23.0;
  p = p * s2 + 1.0 / 21.0;
  p = p * s2 + 1.0 / 19.0;
  p = p * s2 + 1.0 / 17.0;
  p = p * s2 + 1.0 / 15.0;
  p = p * s2 + 1.0 / 13.0;
  p = p * s2 + 1.0 / 11.0;
  p = p * s2 + 1.0 / 9.0;
  p = p * s2 + 1.0 / 7.0;
  p = p * s2 + 1.0 / 5.0;
  p = p * s2 + 1.0 / 3.0;
  p = p * s2 + 1.0;
  const double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
  const double de = double(e);
  return de * kLn2Hi + (de * kLn2Lo + 2.0 * s * p);
}

// cos(2π u) for u in [0, 1): u = q/4 + r with |r| <= 1/8 (exact), a = 2π r in [-π/4, π/4], Taylor series of sin a or
// cos a to a^17 / a^18 by the quadrant q.
MONTA_HD double cos_2pi_portable(double u) {
  const double q = floor(u * 4.0 + 0.5);
  const double r = u - q * 0.25;
  const double a = r * 6.283185307179586, a2 = a * a;
  double c = 1.0 / 6402373705728000.0;  // 1/18!
  c = -c * a2 + 1.0 / 20922789888000.0;
  c = -c * a2 + 1.0 / 87178291200.0;
  c = -c * a2 + 1.0 / 479001600.0;
  c = -c * a2 + 1.0 / 3628800.0;
  c = -c * a2 + 1.0 / 40320.0;
  c = -c * a2 + 1.0 / 720.0;
  c = -c * a2 + 1.0 / 24.0;
  c = -c * a2 + 1.0 / 2.0;
  c = -c * a2 + 1.0;
  double sn = 1.0 / 355687428096000.0;  // 1/17!
  sn = -sn * a2 + 1.0 / 1307674368000.0;
  sn = -sn * a2 + 1.0 / 6227020800.0;
  sn = -sn * a2 + 1.0 / 39916800.0;
  sn = -sn * a2 + 1.0 / 362880.0;
  sn = -sn * a2 + 1.0 / 5040.0;
  sn = -sn * a2 + 1.0 / 120.0;
  sn = -sn * a2 + 1.0 / 6.0;
  sn = -sn * a2 + 1.0;
  sn = sn * a;
  switch (int(q) & 3) {
    case 0: return c;
    case 1: return -sn;
    case 2: return -c;
    default: return sn;
  }
}

// N(0, 1) by Box-Muller from the block of (seed, stream, index).
MONTA_HD double normal(uint64_t seed, uint64_t stream, uint64_t index) {
  const U4 r = block(seed, stream, index);
  const double u1 = to_unit(r.v[0], r.v[1]), u2 = to_unit(r.v[2], r.v[3]);
  return sqrt(-2.0 * log_portable(u1)) * cos_2pi_portable(u2);
}

}  // namespace monta::engine::rngmath
