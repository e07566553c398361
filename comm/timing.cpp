// comm/timing.h: barrier, time, sync, median, maximum over the group.
#include "comm/timing.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "engine/check.h"
#include "engine/memory.h"

namespace monta::comm {

double slowest_median_seconds(Communicator& group, engine::Device device, int warmup, int iters,
                              const std::function<void()>& fn) {
  MONTA_CHECK(iters > 0 && warmup >= 0, "slowest_median_seconds: iters must be positive and warmup not negative");
  for (int i = 0; i < warmup; ++i) fn();
  engine::sync_device(device);
  std::vector<double> ts;
  for (int i = 0; i < iters; ++i) {
    group.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    engine::sync_device(device);
    ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ts.begin(), ts.end());
  double med = ts[ts.size() / 2];
  // Reduced in a buffer on the device, so a device-only communicator serves too.
  engine::Arena scratch("timing", device, {{"t", {1}, engine::DType::f64}});
  engine::Tensor host(&med, {1}, engine::DType::f64);
  engine::copy(scratch.get("t"), host);
  group.all_reduce(scratch.get("t"), ReduceOp::max);
  engine::copy(host, scratch.get("t"));
  return med;
}

}  // namespace monta::comm
