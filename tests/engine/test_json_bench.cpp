// The JSON emitter (engine/json.h), the timing engines (engine/timing.h) and the benchmark sweep (engine/bench.h):
// escaping, number formats and null; intervals that see the work they time; check, time and derive per case.
#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <thread>

#include "engine/bench.h"
#include "engine/json.h"
#include "engine/log.h"
#include "engine/timing.h"
#include "tests/engine/test_util.h"

namespace monta::enginetest {
namespace {

using engine::JsonRecord;

TEST(Json, QuotesEscapesAndControlCharacters) {
  EXPECT_EQ(engine::json_quote("plain"), "\"plain\"");
  EXPECT_EQ(engine::json_quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(engine::json_quote("line\nnext\ttab\r"), "\"line\\nnext\\ttab\\r\"");
  EXPECT_EQ(engine::json_quote(std::string("\x01\x1f", 2)), "\"\\u0001\\u001f\"");
  EXPECT_EQ(engine::json_quote("h\xc3\xa9"), "\"h\xc3\xa9\"");  // UTF-8 passes through
}

TEST(Json, NumbersKeepAllDigitsOrTheirFormatAndNonFiniteIsNull) {
  EXPECT_EQ(engine::json_number(0.1), "0.10000000000000001");  // reads back as the same double
  EXPECT_EQ(std::stod(engine::json_number(1.0 / 3.0)), 1.0 / 3.0);
  EXPECT_EQ(engine::json_number(2.5, "%.3f"), "2.500");
  EXPECT_EQ(engine::json_number(1e-3, "%.6e"), "1.000000e-03");
  EXPECT_EQ(engine::json_number(NAN), "null");
  EXPECT_EQ(engine::json_number(INFINITY, "%.3f"), "null");
  EXPECT_EQ(engine::json_number(-INFINITY), "null");
}

TEST(Json, RecordKeepsOrderNestsAndIsOneLine) {
  JsonRecord inner;
  inner.add("calls", 2).add("ms", 1.25, "%.2f");
  JsonRecord j;
  j.add("step", int64_t(7)).add("loss", NAN).add("ok", true).add("name", "a \"b\"").add("in", inner);
  j.add("rows", std::vector<JsonRecord>{inner, JsonRecord().add_null("x")}).add("empty", std::vector<JsonRecord>{});
  EXPECT_EQ(j.line(), "{\"step\": 7, \"loss\": null, \"ok\": true, \"name\": \"a \\\"b\\\"\", \"in\": {\"calls\": 2, "
                      "\"ms\": 1.25}, \"rows\": [{\"calls\": 2, \"ms\": 1.25}, {\"x\": null}], \"empty\": []}");
  EXPECT_TRUE(j.has("rows"));
  EXPECT_FALSE(j.has("row"));
  EXPECT_EQ(JsonRecord().line(), "{}");
  JsonRecord more;
  more.add("z", 1);
  EXPECT_EQ(JsonRecord().add("a", 0).append(more).line(), "{\"a\": 0, \"z\": 1}");
}

using JsonErrors = ThrowingHandler;
TEST_F(JsonErrors, KeyAddedTwiceIsRefused) {
  JsonRecord j;
  j.add("k", 1);
  MONTA_EXPECT_ERROR(j.add("k", 2), "added twice");
}

TEST(Timing, HostTimerAndCpuIntervalSeeTheWork) {
  const engine::HostTimer t;
  engine::DeviceInterval iv;
  iv.begin(Device::cpu, nullptr);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  iv.end();
  EXPECT_GE(t.ms(), 19.0);
  EXPECT_GE(iv.ms(), 19.0);
  EXPECT_LT(iv.ms(), t.ms() + 1e-9);
}

TEST(Timing, MedianSecondsRunsWarmupAndItersAndTakesTheMedian) {
  int calls = 0, before = 0;
  // Call i (1-based, timed calls 3..7) sleeps 1 ms except the 6th, which sleeps 30: the median stays near 1 ms.
  const double s = engine::median_seconds(Device::cpu, 2, 5, [&] {
    ++calls;
    std::this_thread::sleep_for(std::chrono::milliseconds(calls == 6 ? 30 : 1));
  }, [&] { ++before; });
  EXPECT_EQ(calls, 7);
  EXPECT_EQ(before, 5);
  EXPECT_GE(s, 1e-3);
  EXPECT_LT(s, 20e-3);
}

// A timer that reports what it is told, so the derived figures can be checked exactly.
engine::BenchTimer fixed_timer(double seconds, int* warmups = nullptr, int* iters = nullptr) {
  return [=](int w, int n, const std::function<void()>& fn) {
    if (warmups) *warmups = w;
    if (iters) *iters = n;
    fn();
    return seconds;
  };
}

TEST(BenchSweep, DerivesTimeAlgbwBusbwAndTflops) {
  int w = -1, n = -1;
  engine::BenchSweep sweep(2, 9, fixed_timer(2e-3, &w, &n));
  int ran = 0;
  engine::BenchCase a = engine::bench_case("all_to_all", "E4", 0, 4e6, [&] { ++ran; });
  a.group = 4;
  const engine::BenchRow& r = sweep.run(a);
  EXPECT_EQ(ran, 1);
  EXPECT_EQ(w, 2);
  EXPECT_EQ(n, 9);
  EXPECT_DOUBLE_EQ(r.ms(), 2.0);
  EXPECT_DOUBLE_EQ(r.us(), 2000.0);
  EXPECT_DOUBLE_EQ(r.algbw, 2.0);        // 4 MB in 2 ms
  EXPECT_DOUBLE_EQ(r.busbw, 2.0 * 3 / 4);  // nccl-tests: (n-1)/n
  engine::BenchCase g = engine::bench_case("gemm", "8x8x8", 6e9, 0, [] {});
  g.warmup = 0;
  g.iters = 3;
  const engine::BenchRow& q = sweep.run(g);
  EXPECT_EQ(w, 0);
  EXPECT_EQ(n, 3);
  EXPECT_DOUBLE_EQ(q.tflops, 3.0);  // 6 GFLOP in 2 ms
  EXPECT_DOUBLE_EQ(q.busbw, q.algbw);  // not a collective
  EXPECT_EQ(sweep.rows().size(), 2u);
}

TEST(BenchSweep, CheckRunsUntimedAndMarksRowsWrong) {
  bool timing = false;
  engine::BenchSweep sweep(0, 1, [&](int, int, const std::function<void()>& fn) {
    timing = true;
    fn();
    timing = false;
    return 1.0;
  });
  bool checked_while_timing = true;
  engine::BenchCase good = engine::bench_case("good", "", 0, 1, [] {});
  good.check = [&] {
    checked_while_timing = timing;
    return true;
  };
  engine::BenchCase bad = engine::bench_case("bad", "", 0, 1, [] {});
  bad.check = [] { return false; };
  sweep.run(good);
  EXPECT_FALSE(checked_while_timing);
  EXPECT_TRUE(sweep.all_ok());
  sweep.run(bad);
  EXPECT_FALSE(sweep.all_ok());
  EXPECT_FALSE(sweep.rows()[1].ok);
}

TEST(BenchSweep, TableAndJsonCarryEveryRowAndItsExtras) {
  engine::BenchSweep sweep(0, 1, fixed_timer(1e-3));
  engine::BenchCase c = engine::bench_case("pipelined", "E2", 2e9, 1e6, [] {});
  c.extra.add("chunks", 4);
  c.values = {4};
  sweep.run(c);
  using R = engine::BenchRow;
  const std::string table = sweep.table({engine::bench_text_column("op", -12, &R::name),
                                         {"chunks", 6, [](const R& r) { return engine::strf("%.0f", r.values[0]); }},
                                         engine::bench_number_column("ms", 8, "%.3f", [](const R& r) { return r.ms(); })});
  EXPECT_EQ(table, "op           chunks       ms\npipelined         4    1.000\n");
  const std::string js = sweep.json(JsonRecord().add("device", "cpu"));
  EXPECT_EQ(js.find("{\"device\": \"cpu\", \"rows\": [{\"op\": \"pipelined\", \"shape\": \"E2\", \"ms\": 1.00000"), 0u) << js;
  EXPECT_NE(js.find("\"tflops\": 2.000"), std::string::npos) << js;
  EXPECT_NE(js.find("\"algbw\": 1.0000"), std::string::npos) << js;
  EXPECT_NE(js.find("\"ok\": true, \"chunks\": 4}]}"), std::string::npos) << js;
  EXPECT_EQ(js.back(), '\n');
  EXPECT_EQ(std::count(js.begin(), js.end(), '\n'), 1);
}

}  // namespace
}  // namespace monta::enginetest
