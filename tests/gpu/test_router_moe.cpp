// GPU tests: router pieces (softmax, top-k + capacity with and without the balancing bias, top-k weights raw and
// renormalised, load-balancing and z losses), the MoE dispatch/combine permutation and the vocabulary-parallel
// cross-entropy, CUDA vs CPU. Integer outputs and the pure permutations must match exactly.
#include "engine/ops/cross_entropy.h"
#include "engine/ops/moe_permute.h"
#include "engine/ops/router.h"
#include "engine/ops/router_sp.h"
#include "gpu_test_util.h"

namespace monta::gputest {
namespace {

class GpuRouter : public testing::TestWithParam<DType> {};

TEST_P(GpuRouter, SoftmaxForwardBackward) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t N = 300, E = 40;
  Pair logits({N, E}, dt, -3.f, 3.f), dprobs({N, E}, dt);
  Pair probs = output({N, E}, dt);
  engine::softmax_forward(probs.c(), logits.c());
  engine::softmax_forward(probs.g(), logits.g());
  expect_close(probs, tol_for(dt), "probs");
  Pair pin({N, E}, dt, 0.f, 1.f);  // backward on given probs, identical on both sides
  Pair dlogits = output({N, E}, dt);
  engine::softmax_backward(dlogits.c(), dprobs.c(), pin.c());
  engine::softmax_backward(dlogits.g(), dprobs.g(), pin.g());
  expect_close(dlogits, tol_for(dt), "dlogits");
}

// Ties (probabilities quantised to a few levels) and a capacity that drops tokens.
TEST_P(GpuRouter, TopkAssignExact) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  for (int64_t K : {1, 2, 3}) {
    for (int64_t capacity : {int64_t(0), int64_t(23), int64_t(70), int64_t(1000)}) {
      const int64_t N = 300, E = 8;
      std::vector<float> p = random_values(N * E, 0.f, 1.f);
      for (auto& x : p) x = std::floor(x * 6.f) / 8.f;  // many ties; exact in bf16
      Pair probs(p, {N, E}, dt);
      Pair idx = output({N, K}, DType::i32), slot = output({N, K}, DType::i32), counts = output({E}, DType::i32);
      engine::router_topk_assign(idx.c(), slot.c(), counts.c(), probs.c(), capacity);
      engine::router_topk_assign(idx.g(), slot.g(), counts.g(), probs.g(), capacity);
      std::string tag = " K=" + std::to_string(K) + " capacity=" + std::to_string(capacity);
      expect_equal_i32(idx.g(), idx.c(), "expert_idx" + tag);
      expect_equal_i32(slot.g(), slot.c(), "slot" + tag);
      expect_equal_i32(counts.g(), counts.c(), "counts" + tag);
    }
  }
}

// The balancing bias (model.router_bias_update): scores probs + bias with many ties (both on a 1/16 grid, so the f32
// sums are exact on both sides) and a skew that moves choices; then random values (sums rounded alike in f32).
TEST_P(GpuRouter, TopkAssignBiasedExact) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t N = 300, E = 8;
  for (bool grid : {true, false}) {
    std::vector<float> p = random_values(N * E, 0.f, 1.f), b = random_values(E, -0.3f, 0.3f);
    if (grid) {
      for (auto& x : p) x = std::floor(x * 6.f) / 8.f;
      for (auto& x : b) x = std::floor(x * 16.f) / 16.f;
      b[0] = 0.5f;  // expert 0 wins most first choices
    }
    Pair probs(p, {N, E}, dt), bias(b, {E}, dt);
    for (int64_t K : {1, 2, 3}) {
      for (int64_t capacity : {int64_t(23), int64_t(1000)}) {
        Pair idx = output({N, K}, DType::i32), slot = output({N, K}, DType::i32), counts = output({E}, DType::i32);
        engine::router_topk_assign_biased(idx.c(), slot.c(), counts.c(), probs.c(), bias.c(), capacity);
        engine::router_topk_assign_biased(idx.g(), slot.g(), counts.g(), probs.g(), bias.g(), capacity);
        std::string tag = std::string(grid ? " grid" : " random") + " K=" + std::to_string(K) +
                          " capacity=" + std::to_string(capacity);
        expect_equal_i32(idx.g(), idx.c(), "expert_idx" + tag);
        expect_equal_i32(slot.g(), slot.c(), "slot" + tag);
        expect_equal_i32(counts.g(), counts.c(), "counts" + tag);
      }
    }
  }
}

// Renormalised top-k weights (model.router_norm_topk), forward and backward (which accumulates into dprobs).
TEST_P(GpuRouter, TopkWeightsNormalised) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t N = 300, E = 8;
  Pair probs({N, E}, dt, 0.01f, 1.f);
  for (int64_t K : {1, 2, 4}) {
    Pair idx = output({N, K}, DType::i32), slot = output({N, K}, DType::i32), counts = output({E}, DType::i32);
    engine::router_topk_assign(idx.c(), slot.c(), counts.c(), probs.c(), N);
    engine::copy(idx.g(), idx.c());
    const std::string tag = " K=" + std::to_string(K);
    Pair w = output({N, K}, dt);
    engine::topk_weights_norm_forward(w.c(), probs.c(), idx.c());
    engine::topk_weights_norm_forward(w.g(), probs.g(), idx.g());
    expect_close(w, dt == DType::bf16 ? 1e-2 : 1e-6, "normalised weights" + tag);
    Pair dw({N, K}, dt);
    Pair dprobs({N, E}, DType::f32);  // accumulates
    engine::topk_weights_norm_backward(dprobs.c(), dw.c(), probs.c(), idx.c());
    engine::topk_weights_norm_backward(dprobs.g(), dw.g(), probs.g(), idx.g());
    expect_close(dprobs, 1e-5, "normalised weights backward" + tag);
  }
}

TEST_P(GpuRouter, TopkWeightsAndAuxLosses) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t N = 300, E = 8, K = 2;
  Pair logits({N, E}, dt, -3.f, 3.f);
  Pair probs({N, E}, dt, 0.f, 1.f);
  Pair idx = output({N, K}, DType::i32), slot = output({N, K}, DType::i32), counts = output({E}, DType::i32);
  engine::router_topk_assign(idx.c(), slot.c(), counts.c(), probs.c(), 90);
  engine::copy(idx.g(), idx.c());
  engine::copy(counts.g(), counts.c());

  Pair w = output({N, K}, dt);
  engine::topk_weights_forward(w.c(), probs.c(), idx.c());
  engine::topk_weights_forward(w.g(), probs.g(), idx.g());
  expect_close(w, 1e-12, "topk weights");
  Pair dw({N, K}, dt);
  Pair dprobs({N, E}, DType::f32);  // accumulates
  engine::topk_weights_backward(dprobs.c(), dw.c(), idx.c());
  engine::topk_weights_backward(dprobs.g(), dw.g(), idx.g());
  expect_close(dprobs, 1e-6, "topk weights backward");

  Pair lb = output({1}, DType::f32);
  engine::load_balance_loss_forward(lb.c(), probs.c(), counts.c(), K);
  engine::load_balance_loss_forward(lb.g(), probs.g(), counts.g(), K);
  expect_close(lb, 1e-5, "load-balance loss");
  engine::load_balance_loss_backward(dprobs.c(), counts.c(), K, 0.7f);
  engine::load_balance_loss_backward(dprobs.g(), counts.g(), K, 0.7f);
  expect_close(dprobs, 1e-6, "load-balance backward");

  Pair z = output({1}, DType::f32), lse = output({N}, DType::f32);
  engine::router_z_loss_forward(z.c(), lse.c(), logits.c());
  engine::router_z_loss_forward(z.g(), lse.g(), logits.g());
  expect_close(z, 1e-5, "z-loss");
  expect_close(lse, 1e-5, "z-loss lse");
  Pair dlogits({N, E}, DType::f32);  // accumulates
  engine::router_z_loss_backward(dlogits.c(), lse.c(), probs.c(), 0.3f);
  engine::router_z_loss_backward(dlogits.g(), lse.g(), probs.g(), 0.3f);
  expect_close(dlogits, 1e-5, "z-loss backward");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GpuRouter, testing::Values(DType::f32, DType::bf16), dtype_param_name);

// Sequence parallelism's capacity (engine/ops/router_sp.h) on t = 3 emulated TP ranks of one device: each rank's
// top-k with room for every choice, its per-(choice, expert) counts, then the global slots. CUDA = CPU exactly, and both
// equal the slots and counts router_topk_assign gives the three ranks' tokens routed as one batch (ties, drops).
TEST_P(GpuRouter, RouterSpSlotsEqualWholeBatch) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t t = 3, Nl = 100, E = 8, K = 2, capacity = 40;
  std::vector<float> p = random_values(t * Nl * E, 0.f, 1.f);
  for (auto& x : p) x = std::floor(x * 6.f) / 8.f;  // many ties; exact in bf16
  Pair whole(p, {t * Nl, E}, dt);
  Pair widx = output({t * Nl, K}, DType::i32), wslot = output({t * Nl, K}, DType::i32), wcounts = output({E}, DType::i32);
  engine::router_topk_assign(widx.c(), wslot.c(), wcounts.c(), whole.c(), capacity);
  Pair all = output({t, K, E}, DType::i32);
  std::vector<Pair> idx, slot;
  for (int64_t r = 0; r < t; ++r) {
    Pair probs(std::vector<float>(p.begin() + r * Nl * E, p.begin() + (r + 1) * Nl * E), {Nl, E}, dt);
    idx.push_back(output({Nl, K}, DType::i32));
    slot.push_back(output({Nl, K}, DType::i32));
    Pair counts = output({E}, DType::i32);
    engine::router_topk_assign(idx[r].c(), slot[r].c(), counts.c(), probs.c(), Nl * K);
    engine::router_topk_assign(idx[r].g(), slot[r].g(), counts.g(), probs.g(), Nl * K);
    engine::router_choice_counts(all.c().rows(r, 1).view({K, E}), idx[r].c());
    engine::router_choice_counts(all.g().rows(r, 1).view({K, E}), idx[r].g());
  }
  expect_equal_i32(all.g(), all.c(), "choice counts");
  const std::vector<int32_t> ws = download_i32(wslot.c()), wc = download_i32(wcounts.c());
  for (int64_t r = 0; r < t; ++r) {
    Pair counts = output({E}, DType::i32);
    engine::router_sp_slots(slot[r].c(), counts.c(), idx[r].c(), all.c(), r, capacity);
    engine::router_sp_slots(slot[r].g(), counts.g(), idx[r].g(), all.g(), r, capacity);
    expect_equal_i32(slot[r].g(), slot[r].c(), "slots of rank " + std::to_string(r));
    expect_equal_i32(counts.g(), counts.c(), "counts of rank " + std::to_string(r));
    const std::vector<int32_t> s = download_i32(slot[r].g()), c = download_i32(counts.g());
    EXPECT_TRUE(std::equal(s.begin(), s.end(), ws.begin() + r * Nl * K)) << "rank " << r << ": not the whole batch's slots";
    EXPECT_EQ(c, wc) << "rank " << r << ": not the whole batch's counts";
  }
}

class GpuMoePermute : public testing::TestWithParam<DType> {};

TEST_P(GpuMoePermute, DispatchCombineForwardBackward) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t N = 300, E = 6, K = 2, C = 80, H = 72;
  Pair probs({N, E}, DType::f32, 0.f, 1.f);
  Pair idx = output({N, K}, DType::i32), slot = output({N, K}, DType::i32), counts = output({E}, DType::i32);
  engine::router_topk_assign(idx.c(), slot.c(), counts.c(), probs.c(), C);  // some tokens dropped
  engine::copy(idx.g(), idx.c());
  engine::copy(slot.g(), slot.c());
  bool dropped = false;
  for (int32_t s : download_i32(slot.c())) dropped |= s < 0;
  EXPECT_TRUE(dropped) << "the test should exercise dropping";

  Pair x({N, H}, dt), weight({N, K}, DType::f32, 0.f, 1.f), dy({N, H}, dt), ebuf({E, C, H}, dt), dbuf({E, C, H}, dt);
  Pair buf = output({E, C, H}, dt);
  engine::moe_dispatch_forward(buf.c(), x.c(), idx.c(), slot.c());
  engine::moe_dispatch_forward(buf.g(), x.g(), idx.g(), slot.g());
  expect_bitwise_equal(buf, "dispatch");
  Pair dx = output({N, H}, dt);
  engine::moe_dispatch_backward(dx.c(), dbuf.c(), idx.c(), slot.c());
  engine::moe_dispatch_backward(dx.g(), dbuf.g(), idx.g(), slot.g());
  if (dt == DType::f32)
    expect_bitwise_equal(dx, "dispatch backward");
  else
    expect_close(dx, tol_for(dt), "dispatch backward");

  Pair y = output({N, H}, dt);
  engine::moe_combine_forward(y.c(), ebuf.c(), weight.c(), idx.c(), slot.c());
  engine::moe_combine_forward(y.g(), ebuf.g(), weight.g(), idx.g(), slot.g());
  expect_close(y, dt == DType::f32 ? 1e-6 : tol_for(dt), "combine");  // FMA contraction may differ
  Pair res({N, H}, dt);
  engine::moe_combine_forward(y.c(), ebuf.c(), weight.c(), idx.c(), slot.c(), res.c());
  engine::moe_combine_forward(y.g(), ebuf.g(), weight.g(), idx.g(), slot.g(), res.g());
  expect_close(y, dt == DType::f32 ? 1e-6 : tol_for(dt), "combine + residual");
  Pair debuf = output({E, C, H}, dt), dweight = output({N, K}, DType::f32);
  engine::moe_combine_backward(debuf.c(), dweight.c(), dy.c(), ebuf.c(), weight.c(), idx.c(), slot.c());
  engine::moe_combine_backward(debuf.g(), dweight.g(), dy.g(), ebuf.g(), weight.g(), idx.g(), slot.g());
  expect_close(debuf, dt == DType::f32 ? 1e-6 : tol_for(dt), "combine backward debuf");
  expect_close(dweight, dt == DType::f32 ? 1e-5 : tol_for(dt), "combine backward dweight");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GpuMoePermute, testing::Values(DType::f32, DType::bf16), dtype_param_name);

class GpuCrossEntropy : public testing::TestWithParam<DType> {};

TEST_P(GpuCrossEntropy, ShardedForwardBackward) {
  MONTA_REQUIRE_GPU();
  DType dt = GetParam();
  const int64_t N = 300, V = 500, vocab_begin = 250;
  std::vector<float> t(N);
  std::uniform_int_distribution<int> d(0, 999);
  for (auto& x : t) x = float(d(rng()));
  for (int64_t n = 0; n < N; n += 17) t[size_t(n)] = -1.f;  // ignored
  Pair targets(t, {N}, DType::i32);
  Pair logits({N, V}, dt, -5.f, 5.f);
  Pair rowmax = output({N}, DType::f32), sumexp = output({N}, DType::f32), tl = output({N}, DType::f32);
  engine::logits_rowmax(rowmax.c(), logits.c());
  engine::logits_rowmax(rowmax.g(), logits.g());
  expect_close(rowmax, 1e-12, "rowmax");
  engine::cross_entropy_partial(sumexp.c(), tl.c(), logits.c(), rowmax.c(), targets.c(), vocab_begin);
  engine::cross_entropy_partial(sumexp.g(), tl.g(), logits.g(), rowmax.g(), targets.g(), vocab_begin);
  expect_close(sumexp, 1e-5, "sumexp");
  expect_close(tl, 1e-12, "target_logit");
  Pair losses = output({N}, DType::f32), lse = output({N}, DType::f32);
  engine::cross_entropy_finish(losses.c(), lse.c(), sumexp.c(), rowmax.c(), tl.c(), targets.c());
  engine::cross_entropy_finish(losses.g(), lse.g(), sumexp.g(), rowmax.g(), tl.g(), targets.g());
  expect_close(losses, 1e-5, "losses");
  expect_close(lse, 1e-5, "lse");
  Pair dlogits = output({N, V}, dt);
  engine::cross_entropy_backward(dlogits.c(), logits.c(), targets.c(), lse.c(), vocab_begin, 1.f / 300.f);
  engine::cross_entropy_backward(dlogits.g(), logits.g(), targets.g(), lse.g(), vocab_begin, 1.f / 300.f);
  expect_close(dlogits, tol_for(dt), "dlogits");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GpuCrossEntropy, testing::Values(DType::f32, DType::bf16), dtype_param_name);

}  // namespace
}  // namespace monta::gputest
