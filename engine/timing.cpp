// engine/timing.h: the device interval over the backend's event pool, and the measurement loop.
#include "engine/timing.h"

#include <algorithm>
#include <vector>

#include "engine/check.h"
#include "engine/cuda_backend.h"
#include "engine/memory.h"

namespace monta::engine {

void DeviceInterval::begin(Device d, Stream s) {
  device_ = d;
  stream_ = s;
  ended_ = false;
  if (d == Device::cuda)
    e0_ = cudab::timing_event(s);
  else
    host_.restart();
}

void DeviceInterval::end() {
  if (device_ == Device::cuda)
    e1_ = cudab::timing_event(stream_);
  else
    cpu_ms_ = host_.ms();
  ended_ = true;
}

double DeviceInterval::ms() const {
  MONTA_CHECK(ended_, "DeviceInterval::ms: the interval has not ended");
  return device_ == Device::cuda ? cudab::elapsed_ms(e0_, e1_) : cpu_ms_;
}

void recycle_device_intervals() { cudab::recycle_timing_events(); }

double median_seconds(Device d, int warmup, int iters, const std::function<void()>& fn,
                      const std::function<void()>& before_each) {
  MONTA_CHECK(iters > 0 && warmup >= 0, "median_seconds: iters must be positive and warmup not negative");
  for (int i = 0; i < warmup; ++i) fn();
  sync_device(d);
  std::vector<double> ts;
  for (int i = 0; i < iters; ++i) {
    if (before_each) before_each();
    const HostTimer t;
    fn();
    sync_device(d);
    ts.push_back(t.seconds());
  }
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

}  // namespace monta::engine
