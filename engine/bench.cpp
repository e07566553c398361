// engine/bench.h: check, time, derive; the table and the JSON of a sweep.
#include "engine/bench.h"

#include <algorithm>

#include "engine/check.h"
#include "engine/log.h"
#include "engine/timing.h"

namespace monta::engine {

BenchTimer local_bench_timer(Device d) {
  return [d](int warmup, int iters, const std::function<void()>& fn) { return median_seconds(d, warmup, iters, fn); };
}

BenchCase bench_case(const std::string& name, const std::string& shape, double flops, double bytes,
                     std::function<void()> run) {
  BenchCase c;
  c.name = name;
  c.shape = shape;
  c.bytes = bytes;
  c.flops = flops;
  c.run = std::move(run);
  return c;
}

BenchRow bench_row(const std::string& name, const std::string& shape, double seconds, double bytes, double flops,
                   int group) {
  MONTA_CHECK(group >= 0 && seconds > 0, "bench_row: needs a positive time and a group of 0 (none) or more ranks");
  BenchRow r;
  r.name = name;
  r.shape = shape;
  r.bytes = bytes;
  r.flops = flops;
  r.group = group;
  r.seconds = seconds;
  r.algbw = bytes / seconds / 1e9;
  r.busbw = group > 0 ? r.algbw * double(group - 1) / double(group) : r.algbw;
  r.tflops = flops / seconds / 1e12;
  return r;
}

JsonRecord BenchRow::json() const {
  JsonRecord j;
  j.add("op", name).add("shape", shape).add("ms", ms(), "%.5f").add("time_us", us(), "%.3f");
  j.add("tflops", tflops, "%.3f").add("gbps", algbw, "%.3f").add("algbw", algbw, "%.4f").add("busbw", busbw, "%.4f");
  j.add("flops", flops, "%.6e").add("bytes", bytes, "%.0f").add("group", group).add("ok", ok);
  return j.append(extra);
}

const BenchRow& BenchSweep::run(BenchCase c) {
  MONTA_CHECK(bool(c.run), "bench case '" + c.name + "' has nothing to run");
  const bool ok = c.check ? c.check() : true;
  const BenchTimer& timer = c.timer ? c.timer : timer_;
  const double s = timer(c.warmup >= 0 ? c.warmup : warmup_, c.iters > 0 ? c.iters : iters_, c.run);
  BenchRow r = bench_row(c.name, c.shape, s, c.bytes, c.flops, c.group);
  r.ok = ok;
  r.extra = std::move(c.extra);
  r.values = std::move(c.values);
  rows_.push_back(std::move(r));
  return rows_.back();
}

bool BenchSweep::all_ok() const {
  return std::all_of(rows_.begin(), rows_.end(), [](const BenchRow& r) { return r.ok; });
}

BenchColumn bench_text_column(const std::string& title, int width, std::string BenchRow::*field) {
  return {title, width, [field](const BenchRow& r) { return r.*field; }};
}

BenchColumn bench_number_column(const std::string& title, int width, const char* fmt,
                                const std::function<double(const BenchRow&)>& value) {
  const std::string f = fmt;
  return {title, width, [f, value](const BenchRow& r) { return strf(f.c_str(), value(r)); }};
}

std::string BenchSweep::table(const std::vector<BenchColumn>& columns) const {
  auto line = [&](const std::function<std::string(const BenchColumn&)>& text) {
    std::string s;
    for (size_t i = 0; i < columns.size(); ++i) {
      if (i) s += ' ';
      s += strf("%*s", columns[i].width, text(columns[i]).c_str());
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s + "\n";
  };
  std::string s = line([](const BenchColumn& c) { return c.title; });
  for (const BenchRow& r : rows_) s += line([&](const BenchColumn& c) { return c.cell(r); });
  return s;
}

std::string BenchSweep::json(const JsonRecord& header) const {
  std::vector<JsonRecord> rows;
  for (const BenchRow& r : rows_) rows.push_back(r.json());
  JsonRecord j = header;
  return j.add("rows", rows).line() + "\n";
}

}  // namespace monta::engine
