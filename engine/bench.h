// The one benchmark engine behind every `monta bench` (STYLE.md 11, nccl-tests' shape): a benchmark fills cases
// (name, shape, bytes and FLOPs per call, the ranks of a collective, the timed work, an untimed correctness
// check); the sweep checks each outside the timed region, times it (warm-up, timed iterations, median), derives
// time / algbw / busbw / TFLOP/s, and writes the rows as a table and as JSON. ops and layer (model/benchmarks.cpp)
// and exchange (comm/exchange_bench.cpp) are lists of cases; the timer of a collective case comes from comm/.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "engine/json.h"
#include "engine/tensor.h"

namespace monta::engine {

// Seconds per call of fn: warm-up, then timed iterations, some statistic (the median; over ranks, the slowest).
using BenchTimer = std::function<double(int warmup, int iters, const std::function<void()>& fn)>;
// The local one: median_seconds on this device (engine/timing.h).
BenchTimer local_bench_timer(Device d);

struct BenchCase {
  std::string name, shape;
  double bytes = 0;  // moved per call: algbw = bytes / time
  double flops = 0;  // computed per call: TFLOP/s
  int group = 0;     // ranks of a collective: busbw = algbw · (n − 1) / n (nccl-tests, all-to-all and all-gather);
                     // 0: not a collective, busbw = algbw
  int warmup = -1, iters = -1;         // -1: the sweep's
  std::function<void()> run;           // the timed work
  std::function<bool()> check;         // untimed, before the timing; false marks the row wrong (empty: no check)
  BenchTimer timer;                    // empty: the sweep's
  JsonRecord extra;                    // more fields of the row's JSON (after the standard ones)
  std::vector<double> values;          // more numbers for the table's own columns (see BenchColumn)
};

// A case of name and shape, FLOPs and bytes per call, and its work; the rest as defaults.
BenchCase bench_case(const std::string& name, const std::string& shape, double flops, double bytes,
                     std::function<void()> run);

struct BenchRow {
  std::string name, shape;
  double bytes = 0, flops = 0;
  int group = 0;
  double seconds = 0, algbw = 0, busbw = 0, tflops = 0;  // GB/s, GB/s, TFLOP/s
  bool ok = true;
  JsonRecord extra;
  std::vector<double> values;
  double ms() const { return seconds * 1e3; }
  double us() const { return seconds * 1e6; }
  // op, shape, ms, time_us, tflops, gbps (= algbw), algbw, busbw, flops, bytes, group, ok, then extra.
  JsonRecord json() const;
};

// Derived figures of one timed call (also for rows measured elsewhere, e.g. a breakdown's step).
BenchRow bench_row(const std::string& name, const std::string& shape, double seconds, double bytes, double flops,
                   int group = 0);

// A column of the table: a title, a printf width (negative: left-aligned), and the cell.
struct BenchColumn {
  std::string title;
  int width = 10;
  std::function<std::string(const BenchRow&)> cell;
};
// The usual columns: name and shape left-aligned, numbers with a printf format.
BenchColumn bench_text_column(const std::string& title, int width, std::string BenchRow::*field);
BenchColumn bench_number_column(const std::string& title, int width, const char* fmt,
                                const std::function<double(const BenchRow&)>& value);

class BenchSweep {
 public:
  BenchSweep(int warmup, int iters, BenchTimer timer) : warmup_(warmup), iters_(iters), timer_(std::move(timer)) {}
  // Checks, times and records one case; returns its row (valid until the next run()).
  const BenchRow& run(BenchCase c);
  void add(BenchRow r) { rows_.push_back(std::move(r)); }

  const std::vector<BenchRow>& rows() const { return rows_; }
  bool all_ok() const;
  int iters() const { return iters_; }
  // One header line of column titles, then one line per row.
  std::string table(const std::vector<BenchColumn>& columns) const;
  // header's fields, then "rows": [every row's json()]; one JSON line.
  std::string json(const JsonRecord& header) const;

 private:
  int warmup_, iters_;
  BenchTimer timer_;
  std::vector<BenchRow> rows_;
};

}  // namespace monta::engine
