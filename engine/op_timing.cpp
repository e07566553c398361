// Per-op timing (engine/op_timing.h): the records of the timed op calls (device intervals, engine/timing.h), and
// their sums per op and shape for `monta bench layer --breakdown`.
#include "engine/op_timing.h"

#include <mutex>

#include "engine/memory.h"
#include "engine/timing.h"

namespace monta::engine {
namespace {

struct Record {
  std::string name;
  Device device;
  DeviceInterval interval;
};

std::mutex g_mu;
bool g_on = false;
std::vector<Record> g_records;

}  // namespace

void set_op_timing(bool on) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_on = on;
}

bool op_timing_on() { return g_on; }

void OpScope::begin(const char* name, const Tensor& first, Stream s) {
  std::string key = name;
  for (int i = 0; i < first.ndim; ++i) {
    key += i ? 'x' : ' ';
    key += std::to_string(first.dim(i));
  }
  std::lock_guard<std::mutex> lock(g_mu);
  Record r{std::move(key), first.device, {}};
  r.interval.begin(first.device, s);
  index_ = int(g_records.size());
  g_records.push_back(std::move(r));
}

void OpScope::end() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_records[size_t(index_)].interval.end();
}

std::vector<OpTime> take_op_times() {
  std::lock_guard<std::mutex> lock(g_mu);
  // The step's one sync (the named one, engine/memory.h), so that reading the intervals waits for nothing.
  bool on_cuda = false;
  for (const Record& r : g_records) on_cuda = on_cuda || r.device == Device::cuda;
  if (on_cuda) sync_device(Device::cuda);
  std::vector<OpTime> out;
  for (const Record& r : g_records) {
    if (!r.interval.ended()) continue;  // an op that threw
    const double ms = r.interval.ms();
    auto it = out.begin();
    while (it != out.end() && it->name != r.name) ++it;
    if (it == out.end()) {
      out.push_back({r.name, 0, 0});
      it = out.end() - 1;
    }
    it->calls += 1;
    it->ms += ms;
  }
  g_records.clear();
  recycle_device_intervals();
  return out;
}

}  // namespace monta::engine
