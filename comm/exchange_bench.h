// The exchange sweep behind `monta bench exchange`, cases of the benchmark engine (engine/bench.h): for each buffer
// size, the raw all-to-all over EP and all-gather over TP of the same groups, then every strategy (pipelined at each
// chunk count), timed as the slowest rank's median (comm/timing.h), as time / algbw / busbw with nccl-tests'
// formulas, beside the cost model's prediction, and the bytes this rank sends per call (EP + TP) with their ratio to
// a bf16 dispatch. With skew, every exchange moves only the filled slots of skewed loads, the table reporting the
// filled fraction and the imbalance the predictions price. With dispatch_fp8, every strategy also runs as an FP8 dispatch (comm/fp8_dispatch.h: pack,
// exchange, unpack). Correctness (every strategy's dispatch equals duplicate's, and combine inverts it; an FP8
// dispatch equals quantise→dequantise of the plain one) is each case's check, outside the timed region. Collective
// over MPI_COMM_WORLD.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "comm/cost_model.h"
#include "engine/bench.h"
#include "engine/tensor.h"

namespace monta::comm {

struct ExchangeBenchOptions {
  int tp = 1, ep = 1, emulate_nodes = 0, iters = 10, warmup = 2, experts_per_rank = 1;
  int64_t min_bytes = 1 << 16, max_bytes = 1 << 24, hidden = 256;
  double factor = 2;
  std::vector<int> chunks = {2, 4};
  std::optional<LinkModel> links;  // predict with these links; unset: calibrate with a short probe
  engine::Device device = engine::Device::cpu;  // cpu: MPI on f32 host buffers; cuda: NCCL on bf16 device buffers
  bool dispatch_fp8 = false;  // also each strategy with the FP8 dispatch (rows "<strategy>+fp8")
  // Dropless loads (Exchange::set_loads): 0, every slot travels; in (0, 1], that share of every rank's tokens goes to
  // expert 0, which fills its C slots, the rest evenly to the others (comm::skewed_loads), and only filled slots move.
  double skew = 0;
};

struct ExchangeBenchResult {
  ExchangeBenchOptions options;
  // rows: extra "chunks", "pred_us", "sent_bytes", "vs_bf16"; values {chunks, predicted us, bytes this rank sends per
  // call over EP and TP (0: a raw collective), their ratio to the same strategy's bf16 dispatch}
  engine::BenchSweep sweep{0, 1, nullptr};
  LinkModel links;
  GroupPlacement placement;
  ExchangeLoad load;  // of the loads run (--skew; fill 1, imbalance 1 without): the predictions take it
  int world = 1, nodes = 1;
  bool emulated = false;
  bool all_ok() const { return sweep.all_ok(); }
  std::string table() const;  // header lines and one line per row
  std::string json() const;
};

ExchangeBenchResult run_exchange_bench(const ExchangeBenchOptions& o);

}  // namespace monta::comm
