// GPU tests: the CUDA runtime seam (copies, fills, streams), the elementwise/reduction glue and AdamW,
// each against the CPU backend on fresh random inputs.
#include <array>
#include <cstring>
#include <tuple>

#include "engine/cuda_backend.h"
#include "engine/op_timing.h"
#include "engine/ops/adamw.h"
#include "engine/ops/elementwise.h"
#include "gpu_test_util.h"

namespace monta::gputest {
namespace {

TEST(GpuRuntime, CopyRoundTripFillAndStreams) {
  MONTA_REQUIRE_GPU();
  EXPECT_GT(engine::cuda_device_count(), 0);
  std::vector<float> v = random_values(1000);
  Buf a = upload(v, {1000}, DType::f32, Device::cuda);
  Buf b({1000}, DType::f32, Device::cuda);
  engine::copy(b.t, a.t);  // device -> device
  EXPECT_EQ(download(b.t), v);
  engine::Stream s = engine::cudab::stream_create();
  engine::fill_zero(b.t, s);
  engine::sync_device(Device::cuda, s);
  for (float x : download(b.t)) ASSERT_EQ(x, 0.f);
  // A host-involving copy on a stream is complete when copy() returns.
  std::vector<float> back(1000, -1.f);
  engine::copy(Tensor(back.data(), {1000}, DType::f32, Device::cpu), a.t, s);
  EXPECT_EQ(back, v);
  engine::cudab::stream_destroy(s);
}

// Op timing on CUDA ops: device events around each call, on the op's stream; the two adds of ~8 MiB each take a
// measurable time, the events go back to the pool, and a second round works the same.
TEST(GpuRuntime, OpTimingWithEvents) {
  MONTA_REQUIRE_GPU();
  const int64_t n = int64_t(1) << 21;
  Buf a = upload(random_values(n), {n}, DType::f32, Device::cuda);
  Buf out({n}, DType::f32, Device::cuda);
  engine::Stream s = engine::cudab::stream_create();
  for (int round = 0; round < 2; ++round) {
    engine::set_op_timing(true);
    engine::add(out.t, a.t, a.t, s);
    engine::add(out.t, out.t, a.t, s);
    engine::set_op_timing(false);
    const std::vector<engine::OpTime> ops = engine::take_op_times();
    ASSERT_EQ(ops.size(), 1u);
    EXPECT_EQ(ops[0].name, "add " + std::to_string(n));
    EXPECT_EQ(ops[0].calls, 2);
    EXPECT_GT(ops[0].ms, 0.0);
    EXPECT_LT(ops[0].ms, 1000.0);
  }
  engine::cudab::stream_destroy(s);
}

class GpuElementwise : public testing::TestWithParam<DType> {};

TEST_P(GpuElementwise, AddAccumulateScaleCast) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t n = 70001;
  Pair a({n}, dt), b({n}, dt);
  Pair out = output({n}, dt);
  engine::add(out.c(), a.c(), b.c());
  engine::add(out.g(), a.g(), b.g());
  expect_close(out, tol_for(dt), "add");

  // f32 destination accumulating a src of dtype dt (mixed precision gradient accumulation).
  Pair dst({n}, DType::f32);
  engine::accumulate(dst.c(), a.c());
  engine::accumulate(dst.g(), a.g());
  expect_close(dst, 1e-6, "accumulate");

  engine::scale(b.c(), -0.37);
  engine::scale(b.g(), -0.37);
  expect_close(b, tol_for(dt), "scale");

  Pair c32 = output({n}, DType::f32);
  engine::cast(c32.g(), a.g());
  engine::copy(c32.c(), a.c());
  expect_close(c32, 1e-12, "cast to f32");
  Pair cb = output({n}, DType::bf16);
  engine::cast(cb.g(), a.g());
  engine::copy(cb.c(), a.c());
  expect_close(cb, 5e-3, "cast to bf16");
}

// Same-dtype add and accumulate on aligned buffers with n % 8 == 0 take the 16-byte vector kernel, views one
// element in take the scalar one: both must give the CPU's f32 sum rounded once to the dtype (the same bits).
TEST_P(GpuElementwise, AddAccumulateVectorAndScalarPathsGiveCpuBits) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t n = 65536 + 8, m = n - 8;
  for (int64_t off : {int64_t(0), int64_t(1)}) {
    SCOPED_TRACE("offset " + std::to_string(off));
    Pair a({n}, dt), b({n}, dt);
    Pair out = output({n}, dt);
    auto part = [&](const Tensor& t) { return t.rows(off, m); };
    engine::add(part(out.c()), part(a.c()), part(b.c()));
    engine::add(part(out.g()), part(a.g()), part(b.g()));
    EXPECT_EQ(representable(download(part(out.c())), dt), download(part(out.g()))) << "add";
    engine::accumulate(part(a.c()), part(b.c()));
    engine::accumulate(part(a.g()), part(b.g()));
    EXPECT_EQ(representable(download(part(a.c())), dt), download(part(a.g()))) << "accumulate";
  }
}

TEST_P(GpuElementwise, SumSquaresAccumulatesAndSumOverwrites) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t n = 123457;
  Pair x({n}, dt);
  Pair ss({1}, DType::f32, 1.f, 2.f);  // starts non-zero: sum_squares adds
  engine::sum_squares(ss.c(), x.c());
  engine::sum_squares(ss.g(), x.g());
  expect_close(ss, 1e-5, "sum_squares");
  Pair sm = output({1}, DType::f32);
  engine::sum(sm.c(), x.c(), 0.25);
  engine::sum(sm.g(), x.g(), 0.25);
  expect_close(sm, 1e-4, "sum");  // a sum of signed values cancels: allow for summation order
  // Deterministic: the same reduction twice gives the same bits.
  Pair sm2 = output({1}, DType::f32);
  engine::sum(sm2.g(), x.g(), 0.25);
  EXPECT_EQ(download(sm.g()), download(sm2.g()));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GpuElementwise, testing::Values(DType::f32, DType::bf16), dtype_param_name);

TEST(GpuAdamW, StepMatchesCpuWithLowPrecisionCopy) {
  MONTA_REQUIRE_GPU();
  const int64_t n = 50001;
  Pair p({n}, DType::f32), m({n}, DType::f32, -0.1f, 0.1f), v({n}, DType::f32, 0.f, 0.01f), g({n}, DType::f32);
  Buf lowp({n}, DType::bf16, Device::cuda);
  engine::AdamWArgs a;
  a.lr = 3e-3;
  a.weight_decay = 0.1;
  a.step = 7;
  a.grad_scale = 0.5;
  engine::adamw_step(p.c(), m.c(), v.c(), Tensor(), g.c(), a);
  engine::adamw_step(p.g(), m.g(), v.g(), lowp.t, g.g(), a);
  expect_close(p, 1e-5, "param");
  expect_close(m, 1e-5, "m");
  expect_close(v, 1e-5, "v");
  std::vector<float> lp = download(lowp.t), pc = download(p.c());
  EXPECT_LT(rel_err(lp, pc), 5e-3) << "param_lowp";
  // Without the low-precision copy, a second step.
  a.step = 8;
  engine::adamw_step(p.c(), m.c(), v.c(), Tensor(), g.c(), a);
  engine::adamw_step(p.g(), m.g(), v.g(), Tensor(), g.g(), a);
  expect_close(p, 1e-5, "param (step 2)");
}

// bf16 moments (train.optimizer_state = bf16): the CUDA step equals the CPU step bit for bit, the per-tensor and
// the fused kernel alike (both backends compute in f32 without FMA contraction and round the stored moments to
// nearest even); two steps, the second from the rounded moments.
TEST(GpuAdamW, Bf16MomentsEqualCpuBitForBit) {
  MONTA_REQUIRE_GPU();
  const int64_t n = 70001;
  const std::vector<float> pv = random_values(n), gv = random_values(n), mv = random_values(n, -0.1f, 0.1f),
                           vv = random_values(n, 0.f, 0.01f);
  Buf pc = upload(pv, {n}, DType::f32, Device::cpu), pg = upload(pv, {n}, DType::f32, Device::cuda);
  Buf pf = upload(pv, {n}, DType::f32, Device::cuda);
  Buf gc = upload(gv, {n}, DType::f32, Device::cpu), gg = upload(gv, {n}, DType::f32, Device::cuda);
  Buf mc = upload(mv, {n}, DType::bf16, Device::cpu), mg = upload(mv, {n}, DType::bf16, Device::cuda);
  Buf mf = upload(mv, {n}, DType::bf16, Device::cuda);
  Buf vc = upload(vv, {n}, DType::bf16, Device::cpu), vg = upload(vv, {n}, DType::bf16, Device::cuda);
  Buf vf = upload(vv, {n}, DType::bf16, Device::cuda);
  Buf lc({n}, DType::bf16, Device::cpu), lg({n}, DType::bf16, Device::cuda), lf({n}, DType::bf16, Device::cuda);
  engine::AdamWArgs a;
  a.lr = 3e-3;
  a.weight_decay = 0.1;
  a.grad_scale = 0.5;
  for (int64_t step = 7; step <= 8; ++step) {
    a.step = step;
    engine::adamw_step(pc.t, mc.t, vc.t, lc.t, gc.t, a);
    engine::adamw_step(pg.t, mg.t, vg.t, lg.t, gg.t, a);
    const std::vector<engine::AdamWEntry> fused = {{pf.t, mf.t, vf.t, lf.t, gg.t, 0.1}};
    engine::adamw_step_many(fused, a);
  }
  for (auto [name, c, g, f] : {std::tuple{"param", &pc, &pg, &pf}, std::tuple{"m", &mc, &mg, &mf},
                               std::tuple{"v", &vc, &vg, &vf}, std::tuple{"param_lowp", &lc, &lg, &lf}}) {
    Buf host(std::vector<int64_t>{n}, c->t.dtype, Device::cpu), host_f(std::vector<int64_t>{n}, c->t.dtype, Device::cpu);
    engine::copy(host.t, g->t);
    engine::copy(host_f.t, f->t);
    EXPECT_EQ(std::memcmp(host.t.data, c->t.data, c->t.bytes()), 0) << name << ": CUDA adamw_step differs from the CPU";
    EXPECT_EQ(std::memcmp(host_f.t.data, c->t.data, c->t.bytes()), 0) << name << ": CUDA adamw_step_many differs";
  }
}

// The fused step over many tensors (more than one launch's worth, sizes around the block size, some with a bf16
// copy, two decays): bit-identical to adamw_step tensor by tensor on the GPU, close to the CPU.
TEST(GpuAdamW, FusedStepOverManyTensorsEqualsPerTensorSteps) {
  MONTA_REQUIRE_GPU();
  const std::vector<int64_t> sizes = {1, 2047, 2048, 2049, 100003, 7, 4096, 12345};
  struct Set {
    std::vector<Pair> p, m, v, g;
    std::vector<Buf> lowp;
  };
  std::vector<std::array<std::vector<float>, 4>> vals;
  auto make = [&](Set& st, int count) {
    for (int i = 0; i < count; ++i) {
      const int64_t n = sizes[size_t(i) % sizes.size()];
      if (vals.size() <= size_t(i))
        vals.push_back({random_values(n, -1.f, 1.f), random_values(n, -0.1f, 0.1f), random_values(n, 0.f, 0.01f),
                        random_values(n, -1.f, 1.f)});
      const auto& x = vals[size_t(i)];
      st.p.emplace_back(x[0], std::vector<int64_t>{n}, DType::f32);
      st.m.emplace_back(x[1], std::vector<int64_t>{n}, DType::f32);
      st.v.emplace_back(x[2], std::vector<int64_t>{n}, DType::f32);
      st.g.emplace_back(x[3], std::vector<int64_t>{n}, DType::f32);
      st.lowp.emplace_back(std::vector<int64_t>{n}, DType::bf16, Device::cuda);
    }
  };
  const int count = 97;  // three launches of at most 40 tensors
  Set fused, single;
  make(fused, count);
  make(single, count);
  engine::AdamWArgs a;
  a.lr = 3e-3;
  a.step = 5;
  a.grad_scale = 0.7;
  std::vector<engine::AdamWEntry> gpu, cpu;
  for (int i = 0; i < count; ++i) {
    const double wd = i % 3 ? 0.1 : 0.0;
    const Tensor lp = i % 2 ? fused.lowp[size_t(i)].t : Tensor();
    gpu.push_back({fused.p[size_t(i)].g(), fused.m[size_t(i)].g(), fused.v[size_t(i)].g(), lp, fused.g[size_t(i)].g(), wd});
    cpu.push_back({fused.p[size_t(i)].c(), fused.m[size_t(i)].c(), fused.v[size_t(i)].c(), Tensor(), fused.g[size_t(i)].c(), wd});
    engine::AdamWArgs one = a;
    one.weight_decay = wd;
    engine::adamw_step(single.p[size_t(i)].g(), single.m[size_t(i)].g(), single.v[size_t(i)].g(),
                       i % 2 ? single.lowp[size_t(i)].t : Tensor(), single.g[size_t(i)].g(), one);
  }
  engine::adamw_step_many(gpu, a);
  engine::adamw_step_many(cpu, a);
  for (int i = 0; i < count; ++i) {
    const std::string what = "tensor " + std::to_string(i) + " of " + std::to_string(sizes[size_t(i) % sizes.size()]);
    EXPECT_EQ(download(fused.p[size_t(i)].g()), download(single.p[size_t(i)].g())) << what << ": param";
    EXPECT_EQ(download(fused.m[size_t(i)].g()), download(single.m[size_t(i)].g())) << what << ": m";
    EXPECT_EQ(download(fused.v[size_t(i)].g()), download(single.v[size_t(i)].g())) << what << ": v";
    if (i % 2) EXPECT_EQ(download(fused.lowp[size_t(i)].t), download(single.lowp[size_t(i)].t)) << what << ": lowp";
    expect_close(fused.p[size_t(i)], 1e-5, what + ": param against the CPU");
  }
}

}  // namespace
}  // namespace monta::gputest
