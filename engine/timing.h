// The two ways monta measures time. HostTimer: an interval on the host clock (start-up phases, a step, what the
// host spends inside a call). DeviceInterval: an interval of work on a stream, between two CUDA events, read after
// the step's sync (on the CPU backend the ops run on the host, so there it is the host clock). median_seconds is the
// one measurement loop (warm-up, then timed calls each ended by a device sync, the median) that benchmarks,
// calibration and `auto` share; comm/timing.h adds the barrier and the slowest rank.
#pragma once
#include <chrono>
#include <functional>

#include "engine/tensor.h"

namespace monta::engine {

class HostTimer {
 public:
  HostTimer() : t0_(std::chrono::steady_clock::now()) {}
  void restart() { t0_ = std::chrono::steady_clock::now(); }
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }
  double ms() const { return 1e3 * seconds(); }

 private:
  std::chrono::steady_clock::time_point t0_;
};

// begin() and end() enqueue events on the stream and return at once; ms() is read after the step's sync
// (engine::sync_device), so it waits for nothing. CUDA events come from a pool that recycle_device_intervals()
// hands back (after every interval taken from it has been read).
class DeviceInterval {
 public:
  void begin(Device d, Stream s);
  void end();
  bool ended() const { return ended_; }
  double ms() const;

 private:
  Device device_ = Device::cpu;
  Stream stream_ = nullptr;
  HostTimer host_;     // CPU backend: started at begin()
  double cpu_ms_ = 0;  // and read at end()
  void* e0_ = nullptr;  // CUDA backend: the events
  void* e1_ = nullptr;
  bool ended_ = false;
};
void recycle_device_intervals();

// Runs fn `warmup` times, syncs, then `iters` times, each call after `before_each` (untimed; e.g. a barrier) and
// ended by a device sync; returns the median wall time in seconds.
double median_seconds(Device d, int warmup, int iters, const std::function<void()>& fn,
                      const std::function<void()>& before_each = {});

}  // namespace monta::engine
