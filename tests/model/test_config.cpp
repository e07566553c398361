// Config validation and size arithmetic: each constraint gives its user error; 2x70B has the expected size.
#include <gtest/gtest.h>

#include "engine/check.h"
#include "model/config.h"
#include "model/dropless.h"
#include "model/footprint.h"

using namespace monta;
using namespace monta::model;

namespace {
void expect_user_error(const Config& c, int world, const std::string& phrase) {
  engine::install_throwing_handler();
  try {
    validate(c, world);
    FAIL() << "expected an error containing '" << phrase << "'";
  } catch (const engine::Error& e) {
    EXPECT_TRUE(e.user) << e.what();
    EXPECT_NE(std::string(e.what()).find(phrase), std::string::npos) << e.what();
  }
}
}  // namespace

TEST(Config, DefaultsAreValid) {
  engine::install_throwing_handler();
  Config c;
  EXPECT_NO_THROW(validate(c, 1));
}

TEST(Config, RejectsBadValues) {
  Config c;
  c.model.heads = 5;
  expect_user_error(c, 0, "divisible by model.heads");
  c = Config();
  c.model.kv_heads = 3;
  expect_user_error(c, 0, "model.kv_heads");
  c = Config();
  c.model.top_k = 5;
  expect_user_error(c, 0, "top_k");
  c = Config();
  c.parallel.tp = 8;
  expect_user_error(c, 0, "divisible by parallel.tp");
  c = Config();
  c.parallel.ep = 3;
  expect_user_error(c, 0, "parallel.ep");
  c = Config();
  c.train.device = "tpu";
  expect_user_error(c, 0, "train.device");
  c = Config();
  c.train.global_batch = 6;
  expect_user_error(c, 4, "global_batch");
  c = Config();
  c.parallel.tp = 2;
  expect_user_error(c, 3, "world size 3");
  c = Config();
  c.model.capacity_factor = -1;  // 0 is dropless routing
  expect_user_error(c, 0, "capacity_factor");
  c = Config();
  c.model.capacity_factor = 0;
  c.model.fp8 = "experts";
  c.model.seq_len = 100;
  expect_user_error(c, 0, "multiple of 128");
}

// FP8 experts on a GPU: every expert GEMM's rows and widths must be multiples of 16 (cuBLASLt), checked before the
// run starts, for the layout at hand, and with model.fp8 = all the attention projections' too; FP8 off, or every
// shape a multiple, passes.
TEST(Config, Fp8CudaShapes) {
  Config c;  // the defaults: hidden 64, ffn 128, 4 experts top-2, seq 64, micro-batch 4: N 256, C 160
  EXPECT_EQ(fp8_cuda_shape_problem(c, 1, 1, true), "");  // fp8 off
  c.model.fp8 = "experts";
  EXPECT_EQ(fp8_cuda_shape_problem(c, 1, 1, true), "");
  EXPECT_EQ(fp8_cuda_shape_problem(c, 2, 2, true), "");
  c.model.ffn = 144;  // 72 per rank with expert-TP over 2; whole experts keep 144 = 9 x 16
  EXPECT_NE(fp8_cuda_shape_problem(c, 2, 1, true).find("multiples of 16"), std::string::npos);
  EXPECT_EQ(fp8_cuda_shape_problem(c, 2, 1, false), "");
  c.model.ffn = 128;
  c.model.capacity_factor = 1.26;  // C = ceil(1.26 x 128) = 162 rows: not a multiple of 16
  EXPECT_NE(fp8_cuda_shape_problem(c, 1, 1, true).find("162 rows"), std::string::npos);
  c.model.capacity_factor = 1.25;
  c.comm.exchange = "overlapped";  // C 160 in 3 chunks of 54, 53, 53 slots: 108 rows over ep 2
  c.comm.chunks = 3;
  EXPECT_NE(fp8_cuda_shape_problem(c, 1, 2, true).find("overlapped chunk 0"), std::string::npos);
  c.comm.exchange = "pipelined";  // the experts see the whole 320 rows at once
  EXPECT_EQ(fp8_cuda_shape_problem(c, 1, 2, true), "");
  // model.fp8 = all: the attention projections too (defaults: 4 heads, 2 KV heads of 16: Q 64, K/V 32 wide).
  c.model.fp8 = "all";
  EXPECT_EQ(fp8_cuda_shape_problem(c, 1, 2, true), "");
  EXPECT_EQ(fp8_cuda_shape_problem(c, 2, 2, true), "");  // Q 32, K/V 16 per rank
  c.model.hidden = 96;  // head dim 24: Q 96, K/V 48 on one rank; over tp 2: Q 48, K/V 24
  EXPECT_NE(fp8_cuda_shape_problem(c, 2, 1, false).find("K/V (24)"), std::string::npos);
  c.model.hidden = 64;
  c.model.seq_len = 60;
  c.train.micro_batch = 3;  // 180 tokens per micro-batch
  EXPECT_NE(fp8_cuda_shape_problem(c, 1, 1, true).find("tokens per micro-batch (180)"), std::string::npos);
}

TEST(Config, CapacityFormula) {
  ModelConfig m;
  m.experts = 4;
  m.top_k = 2;
  m.capacity_factor = 1.25;
  m.min_capacity = 4;
  EXPECT_EQ(expert_capacity(m, 256), 160);  // ceil(1.25 * 256 * 2 / 4)
  EXPECT_EQ(expert_capacity(m, 2), 4);      // min capacity
}

// Dropless (capacity factor 0): the buffers' capacity is every token to one expert; a step's capacity is its largest
// load rounded up to 128 rows (N/8 for small micro-batches), never above N.
TEST(Config, DroplessCapacity) {
  ModelConfig m;
  m.capacity_factor = 0;
  m.min_capacity = 4;
  EXPECT_TRUE(m.dropless());
  EXPECT_EQ(expert_capacity(m, 4096), 4096);
  EXPECT_EQ(dropless_step_capacity(1, 4096), 128);
  EXPECT_EQ(dropless_step_capacity(1025, 4096), 1152);
  EXPECT_EQ(dropless_step_capacity(4000, 4096), 4096);  // rounded up past N: capped
  EXPECT_EQ(dropless_step_capacity(0, 4096), 1);         // never 0
  EXPECT_EQ(dropless_step_capacity(5, 32), 8);           // q = 32/8 = 4
  EXPECT_EQ(dropless_step_capacity(5, 7), 5);            // q = 1
}

TEST(Config, Size2x70B) {
  ModelConfig m;
  m.vocab = 32000;
  m.hidden = 8192;
  m.layers = 80;
  m.heads = 64;
  m.kv_heads = 8;
  m.ffn = 28672;
  m.experts = 2;
  m.top_k = 1;
  auto s = model_size(m);
  // Llama-2-70B has 68.98 B parameters; a second expert adds 80 · 3 · 8192 · 28672 = 56.37 B.
  EXPECT_NEAR(double(s.total) / 1e9, 68.98 + 56.37, 0.05);
  EXPECT_NEAR(double(s.active_per_token) / 1e9, 68.98 - 0.26, 0.05);  // one embedding table is a lookup
}

// The FLOPs model.fp8 runs in FP8, by hand at 2x70B widths: the experts' three GEMMs (2·k·3·H·F a token forward),
// with `all` also the Q/K/V/O projections (2·H·(2·A·D + 2·G·D)); 3x for forward + backward; none with fp8 none; a
// share of the whole.
TEST(Config, Fp8FlopsAreTheExpertAndProjectionGemms) {
  ModelConfig m;
  m.vocab = 32000, m.hidden = 8192, m.layers = 4, m.heads = 64, m.kv_heads = 8, m.ffn = 28672, m.experts = 2;
  m.top_k = 1, m.seq_len = 8192;
  const double H = 8192, F = 28672, D = 128, L = 4;
  const double experts = 2 * 3 * H * F, proj = 2 * H * (2 * 64 * D + 2 * 8 * D);
  m.fp8 = "none";
  EXPECT_EQ(fp8_train_flops_per_token(m), 0.0);
  m.fp8 = "experts";
  EXPECT_DOUBLE_EQ(fp8_train_flops_per_token(m), 3 * L * experts);
  EXPECT_DOUBLE_EQ(fp8_train_flops_per_token(m, FlopCount::forward), L * experts);
  m.fp8 = "all";
  EXPECT_DOUBLE_EQ(fp8_train_flops_per_token(m), 3 * L * (experts + proj));
  EXPECT_LT(fp8_train_flops_per_token(m), train_flops_per_token(m));
  // The parts add up to the layer count the trainer's MFU uses: GEMMs 3x, causal attention 3x its forward.
  const double core = 2 * 8192.0 * 64 * D, router = 2 * H * 2;
  EXPECT_DOUBLE_EQ(layer_train_flops_per_token(m, FlopCount::model), 3 * (experts + proj + router) + 3 * core);
}

// Sequence parallelism divides the activations of the norms, the residual stream and the router by tp (the paper's
// layout: tp 8, micro-batch 1 at seq 8192): the footprint the allocator, --dry-run and the planner share says so, and
// full recompute keeps only each layer's N/tp-token input.
TEST(Config, SequenceParallelShrinksTheFootprint) {
  Config c;
  c.model.vocab = 32000;
  c.model.hidden = 8192;
  c.model.layers = 80;
  c.model.heads = 64;
  c.model.kv_heads = 8;
  c.model.ffn = 28672;
  c.model.experts = 2;
  c.model.top_k = 1;
  c.model.seq_len = 8192;
  c.model.capacity_factor = 1.0;
  c.train.micro_batch = 1;
  c.train.global_batch = 16;
  c.comm.exchange = "drop_gather";
  c.parallel.tp = 8;
  c.parallel.ep = 2;
  const RankFootprint off = rank_footprint(c, 8, 2, true, 2, engine::Device::cuda);
  c.parallel.sequence_parallel = true;
  const RankFootprint on = rank_footprint(c, 8, 2, true, 2, engine::Device::cuda);
  EXPECT_EQ(on.state(), off.state());
  EXPECT_LT(on.activations, 0.7 * off.activations);
  // Per layer, x, the attention norm's output, h and the MoE norm's output ((N, H) bf16 each) lose 7/8 of their rows.
  EXPECT_GT(off.activations - on.activations, 80 * 4 * 8192.0 * 8192 * 2 * 7 / 8);
  c.train.recompute = "full";
  const RankFootprint full = rank_footprint(c, 8, 2, true, 2, engine::Device::cuda);
  EXPECT_LT(full.activations, 4.0 * double(1ull << 30));
  EXPECT_EQ(config_problem(c, 16), "");
  c.parallel.tp = 1;
  EXPECT_NE(config_problem(c, 16), "");
}
