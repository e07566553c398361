// Engine basics: tensor views and their errors, arena layout, the counter-based RNG, the LR schedule, op timing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <set>

#include "engine/check.h"
#include "engine/memory.h"
#include "engine/op_timing.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/linear.h"
#include "engine/rng.h"
#include "engine/schedule.h"
#include "engine/tensor.h"
#include "tests/engine/test_util.h"

namespace monta::enginetest {
namespace {

using Basics = ThrowingHandler;

TEST_F(Basics, TensorViewKeepsMemoryAndChecksCount) {
  float storage[24] = {};
  Tensor t(storage, {2, 3, 4}, DType::f32);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.row_elems(), 12);
  Tensor v = t.view({6, 4});
  EXPECT_EQ(v.data, t.data);
  EXPECT_EQ(v.dim(0), 6);
  EXPECT_EQ(v.dim(-1), 4);
  EXPECT_THROW(t.view({5, 5}), engine::Error);
  MONTA_EXPECT_ERROR(t.view({5, 5}), "f32[2,3,4]@cpu");
}

TEST_F(Basics, TensorRowsOffsetsAndBounds) {
  double storage[12];
  for (int i = 0; i < 12; ++i) storage[i] = i;
  Tensor t(storage, {4, 3}, DType::f64);
  Tensor r = t.rows(1, 2);
  EXPECT_EQ(r.dim(0), 2);
  EXPECT_EQ(r.as<double>()[0], 3.0);
  EXPECT_EQ(r.as<double>()[5], 8.0);
  EXPECT_THROW(t.rows(3, 2), engine::Error);
  EXPECT_THROW(t.rows(-1, 1), engine::Error);
  EXPECT_NO_THROW(t.rows(4, 0));
}

TEST_F(Basics, TensorStrAndShapes) {
  int32_t storage[6];
  Tensor t(storage, {2, 3}, DType::i32);
  EXPECT_EQ(t.str(), "i32[2,3]@cpu");
  EXPECT_EQ(Tensor(storage, {6}, DType::bf16).str(), "bf16[6]@cpu");
  EXPECT_TRUE(same_shape(t, t.view({2, 3})));
  EXPECT_FALSE(same_shape(t, t.view({3, 2})));
  EXPECT_TRUE(Tensor().empty());
  EXPECT_THROW(Tensor(storage, {1, 1, 1, 1, 6}, DType::i32), engine::Error);
}

TEST_F(Basics, ArenaOffsetsAreAlignedAndDisjoint) {
  engine::Arena a("test", Device::cpu,
                  {{"a", {3}, DType::f32}, {"b", {5, 7}, DType::f64}, {"c", {1}, DType::bf16}, {"d", {0}, DType::f32}});
  ASSERT_EQ(a.count(), 4u);
  const auto base = reinterpret_cast<uintptr_t>(a.at(0).data);
  EXPECT_EQ(base % 256, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.get("b").data) - base, 256u);       // 12 bytes round up to 256
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.get("c").data) - base, 256u + 512u);  // 280 bytes round up to 512
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.get("d").data) - base, 1024u);
  EXPECT_EQ(a.bytes(), 1024u);
  EXPECT_EQ(a.get("b").str(), "f64[5,7]@cpu");
  EXPECT_EQ(a.name_of(2), "c");
  EXPECT_THROW(a.get("nope"), engine::Error);
  engine::Arena moved = std::move(a);
  EXPECT_EQ(moved.get("b").dim(1), 7);
  EXPECT_EQ(a.bytes(), 0u);
}

TEST_F(Basics, ArenaRejectsNegativeDims) {
  EXPECT_THROW(engine::Arena("bad", Device::cpu, {{"x", {2, -1}, DType::f32}}), engine::Error);
}

TEST(Rng, SameCounterSameValue) {
  for (uint64_t i : {0ull, 1ull, 12345ull, (1ull << 40) + 7}) {
    EXPECT_EQ(engine::rng_uniform(42, 7, i), engine::rng_uniform(42, 7, i));
    EXPECT_EQ(engine::rng_normal(42, 7, i), engine::rng_normal(42, 7, i));
  }
  engine::Philox a{42, 7, 100}, b{42, 7, 100};
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a.next_u64(), b.next_u64());
  engine::Philox c{42, 7, 0};
  for (int i = 0; i < 5; ++i) c.uniform();
  EXPECT_EQ(c.counter, 5u);
  EXPECT_EQ(c.uniform(), engine::rng_uniform(42, 7, 5));
}

TEST(Rng, StreamsAndSeedsDiffer) {
  int same_stream = 0, same_seed = 0;
  for (uint64_t i = 0; i < 1000; ++i) {
    same_stream += engine::rng_uniform(42, 1, i) == engine::rng_uniform(42, 2, i);
    same_seed += engine::rng_uniform(42, 1, i) == engine::rng_uniform(43, 1, i);
  }
  EXPECT_EQ(same_stream, 0);
  EXPECT_EQ(same_seed, 0);
  EXPECT_NE(engine::fnv1a64("layers.0.w"), engine::fnv1a64("layers.1.w"));
}

TEST(Rng, UniformAndNormalMoments) {
  const int n = 100000;
  double su = 0, sn = 0, sn2 = 0, umin = 1, umax = 0;
  for (int i = 0; i < n; ++i) {
    const double u = engine::rng_uniform(7, 3, uint64_t(i));
    umin = std::min(umin, u);
    umax = std::max(umax, u);
    su += u;
    const double z = engine::rng_normal(7, 3, uint64_t(i));
    sn += z;
    sn2 += z * z;
  }
  EXPECT_GT(umin, 0.0);
  EXPECT_LT(umax, 1.0);
  EXPECT_NEAR(su / n, 0.5, 0.005);
  const double mean = sn / n, var = sn2 / n - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.015);  // ~5 standard errors
  EXPECT_NEAR(var, 1.0, 0.03);
}

TEST(Rng, BelowIsInRangeAndCoversIt) {
  engine::Philox p{1, 2, 0};
  std::set<uint64_t> seen;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t x = p.below(7);
    ASSERT_LT(x, 7u);
    seen.insert(x);
  }
  EXPECT_EQ(seen.size(), 7u);
  EXPECT_EQ(p.below(1), 0u);
}

TEST(LrSchedule, WarmupThenCosineToMin) {
  engine::LrSchedule s{1e-3, 1e-4, 10, 110};
  EXPECT_DOUBLE_EQ(engine::lr_at(1, s), 1e-4);
  EXPECT_DOUBLE_EQ(engine::lr_at(5, s), 5e-4);
  EXPECT_DOUBLE_EQ(engine::lr_at(10, s), 1e-3);
  EXPECT_NEAR(engine::lr_at(60, s), 0.5 * (1e-3 + 1e-4), 1e-15);  // half-way down the cosine
  EXPECT_NEAR(engine::lr_at(110, s), 1e-4, 1e-15);
  EXPECT_NEAR(engine::lr_at(1000, s), 1e-4, 1e-15);
  EXPECT_GT(engine::lr_at(30, s), engine::lr_at(31, s));
}

TEST(LrSchedule, NoDecayStaysAtPeak) {
  engine::LrSchedule s{3e-4, 3e-5, 0, 0};
  EXPECT_DOUBLE_EQ(engine::lr_at(1, s), 3e-4);
  EXPECT_DOUBLE_EQ(engine::lr_at(100000, s), 3e-4);
  engine::LrSchedule w{3e-4, 3e-5, 4, 0};
  EXPECT_DOUBLE_EQ(engine::lr_at(2, w), 1.5e-4);
  EXPECT_DOUBLE_EQ(engine::lr_at(50, w), 3e-4);
}

// Op timing counts each entry-point call under its op name and first tensor's shape, in first-seen order, only
// while it is on, and forgets what it handed out.
TEST(OpTiming, CountsCallsPerOpWhileOn) {
  std::vector<float> x(64 * 64, 0.5f), w(64 * 64, 0.25f), y(64 * 64);
  Tensor tx(x.data(), {64, 64}, DType::f32), tw(w.data(), {64, 64}, DType::f32), ty(y.data(), {64, 64}, DType::f32);
  engine::linear_forward(ty, tx, tw);  // not timed: timing is off
  engine::set_op_timing(true);
  engine::linear_forward(ty, tx, tw);
  engine::add(ty, tx, tx);
  engine::linear_forward(ty, tx, tw);
  engine::linear_forward(ty.rows(0, 32), tx.rows(0, 32), tw);  // another shape: its own entry
  engine::set_op_timing(false);
  engine::add(ty, tx, tx);  // off again
  const std::vector<engine::OpTime> ops = engine::take_op_times();
  ASSERT_EQ(ops.size(), 3u);
  EXPECT_EQ(ops[0].name, "linear_forward 64x64");
  EXPECT_EQ(ops[0].calls, 2);
  EXPECT_GT(ops[0].ms, 0.0);
  EXPECT_EQ(ops[1].name, "add 64x64");
  EXPECT_EQ(ops[1].calls, 1);
  EXPECT_GE(ops[1].ms, 0.0);
  EXPECT_EQ(ops[2].name, "linear_forward 32x64");
  EXPECT_EQ(ops[2].calls, 1);
  EXPECT_TRUE(engine::take_op_times().empty());
}

}  // namespace
}  // namespace monta::enginetest
