// init_normal on the CPU: a slice at an offset holds exactly the logical tensor's values there (so every layout
// initialises the same weights), the many-thread split changes nothing, and the values match rng_normal.
#include <gtest/gtest.h>

#include <vector>

#include "engine/ops/init.h"
#include "engine/rng.h"
#include "engine/tensor.h"

using namespace monta::engine;

TEST(InitNormal, SliceEqualsLogicalTensorAndRngNormal) {
  const int64_t R = 600, C = 300;  // 180 000 elements: split over several threads
  InitNormalArgs a;
  a.seed = 7;
  a.stream = fnv1a64("layers.0.wq");
  a.std = 0.02;
  a.full = {R, C, 0, 0};
  std::vector<float> full(size_t(R * C));
  init_normal(Tensor(full.data(), {R, C}, DType::f32), a);
  for (int64_t i : {int64_t(0), int64_t(12345), R * C - 1})
    EXPECT_EQ(full[size_t(i)], float(0.02 * rng_normal(7, a.stream, uint64_t(i))));
  // The lower-right quarter as a shard.
  InitNormalArgs b = a;
  b.offset = {R / 2, C / 2, 0, 0};
  std::vector<float> part(size_t(R / 2 * C / 2));
  init_normal(Tensor(part.data(), {R / 2, C / 2}, DType::f32), b);
  for (int64_t r = 0; r < R / 2; ++r)
    for (int64_t c = 0; c < C / 2; ++c)
      ASSERT_EQ(part[size_t(r * (C / 2) + c)], full[size_t((r + R / 2) * C + c + C / 2)]) << r << "," << c;
  // std 0: ones (norm weights).
  b.std = 0;
  init_normal(Tensor(part.data(), {R / 2, C / 2}, DType::f32), b);
  for (float v : part) ASSERT_EQ(v, 1.f);
}
