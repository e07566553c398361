// The op, layer and host-optimizer benchmarks behind `monta bench ops|layer|optimizer`: every op at 2x70B widths against the GEMM and copy
// ceilings measured in the same run, and one decoder layer forward + backward (over the ranks of an mpirun job with
// tp/ep, one row per exchange strategy). Results as a table and JSON; never asserted in tests.
#pragma once
#include <cstdint>
#include <string>

#include "engine/tensor.h"

namespace monta::model {

// What `monta bench layer` runs: one decoder layer at 2x70B widths by default; --tp/--ep spread it over the ranks
// of an mpirun job, one row per exchange strategy.
struct BenchLayerOptions {
  int tp = 1, ep = 1, chunks = 4, emulate_nodes = 0;
  bool expert_tp = true, breakdown = false;
  std::string strategies = "duplicate,drop_gather,pipelined,overlapped";
  // model.fp8 of the layer: none | experts | all (docs/fp8.md), experts and all optionally with ":bf16-wgrad"
  // (model.fp8_wgrad = false); or a comma list: one model each
  std::string fp8 = "none";
  // dropless: after the capacity-1.0 rows of each FP8 mode, the same layer with dropless routing
  // (model.capacity_factor = 0), one row per router and strategy, each row with its routed choices, expert load
  // imbalance (max / mean) and time per routed choice.
  bool dropless = false;
  // The routers, a comma list of natural (the benchmark weights' own), balanced (token n's choices are experts n,
  // n+1, ... mod E: equal loads) or skewed (a fraction `skew` of the tokens, spread evenly, pick expert 0 first, the
  // others as balanced): the capacity rows use the first, the dropless rows each in turn.
  std::string router = "natural";
  double skew = 0.75;
  int64_t hidden = 8192, ffn = 28672, heads = 64, kv_heads = 8, experts = 2, top_k = 1, vocab = 32000;
};


// Each returns the process exit code (non-zero when a check failed).
// small: the op table at the GPU parity test's widths (engine::op_dims_parity; S ignored), a quick run on the CPU.
int bench_ops(engine::Device dev, int iters, const std::string& json, int64_t S, bool small = false);
int bench_layer(engine::Device dev, int iters, const std::string& json, int64_t S, const BenchLayerOptions& o);
// `monta bench optimizer`: the host AdamW of train.optimizer_offload over `params` parameters in host memory, for
// fp32 and bf16 moments and 1, 2, 4, ... up to `max_threads` threads (0: every hardware thread): parameters/s, per
// core and the memory traffic it implies (fp32 master, gradient; m, v; a bf16 copy for the upload).
int bench_optimizer(int iters, const std::string& json, int64_t params, int max_threads);

}  // namespace monta::model
