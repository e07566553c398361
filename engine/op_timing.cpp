// Per-op timing (engine/op_timing.h): the records of the timed op calls, and their sums per op and shape for
// `monta bench layer --breakdown`.
#include "engine/op_timing.h"

#include <chrono>
#include <mutex>

#include "engine/cuda_backend.h"

namespace monta::engine {
namespace {

struct Record {
  std::string name;
  Device device;
  Stream stream;
  std::chrono::steady_clock::time_point t0, t1;  // CPU ops
  void* e0 = nullptr;                             // CUDA ops: events from the backend's pool
  void* e1 = nullptr;
  bool closed = false;
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
  Record r{std::move(key), first.device, s, {}, {}};
  if (r.device == Device::cuda)
    r.e0 = cudab::timing_event(s);
  else
    r.t0 = std::chrono::steady_clock::now();
  index_ = int(g_records.size());
  g_records.push_back(r);
}

void OpScope::end() {
  std::lock_guard<std::mutex> lock(g_mu);
  Record& r = g_records[size_t(index_)];
  if (r.device == Device::cuda)
    r.e1 = cudab::timing_event(r.stream);
  else
    r.t1 = std::chrono::steady_clock::now();
  r.closed = true;
}

std::vector<OpTime> take_op_times() {
  std::lock_guard<std::mutex> lock(g_mu);
  std::vector<OpTime> out;
  for (const Record& r : g_records) {
    if (!r.closed) continue;  // an op that threw
    double ms = 0;
    if (r.device == Device::cuda) {
      ms = cudab::elapsed_ms(r.e0, r.e1);
    } else {
      ms = std::chrono::duration<double, std::milli>(r.t1 - r.t0).count();
    }
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
  cudab::recycle_timing_events();
  return out;
}

}  // namespace monta::engine
