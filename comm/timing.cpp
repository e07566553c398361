// comm/timing.h: barrier, the engine's measurement loop, maximum over the group.
#include "comm/timing.h"

#include "engine/memory.h"
#include "engine/timing.h"

namespace monta::comm {

double slowest_median_seconds(Communicator& group, engine::Device device, int warmup, int iters,
                              const std::function<void()>& fn) {
  const double med = engine::median_seconds(device, warmup, iters, fn, [&] { group.barrier(); });
  return group_max(group, device, med);
}

double group_max(Communicator& group, engine::Device device, double v) {
  engine::Arena scratch("timing", device, {{"t", {1}, engine::DType::f64}});
  engine::Tensor host(&v, {1}, engine::DType::f64);
  engine::copy(scratch.get("t"), host);
  group.all_reduce(scratch.get("t"), ReduceOp::max);
  engine::read_to_host(host, scratch.get("t"), "group_max");
  return v;
}

}  // namespace monta::comm
