// Per-op timing, for `monta bench layer --breakdown`: while it is on, every op entry point (ops/dispatch.cpp)
// times itself as a device interval (engine/timing.h: events on its stream for CUDA ops, the host clock for CPU ops),
// and take_op_times() sums the time per op name and shape of its first tensor argument ("linear_forward
// 8192x1024"), so the projections of different widths stay apart. Off by default: then an op pays one branch.
#pragma once
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace monta::engine {

struct OpTime {
  std::string name;  // op and shape of its first tensor argument
  int calls = 0;
  double ms = 0;
};

void set_op_timing(bool on);
bool op_timing_on();
// Waits for the device, returns the ops timed since the last call (first-seen order, one entry per name) and
// forgets them.
std::vector<OpTime> take_op_times();

// Times one op call for its lifetime (nested scopes are timed each on their own).
class OpScope {
 public:
  OpScope(const char* name, const Tensor& first, Stream s) {
    if (op_timing_on()) begin(name, first, s);
  }
  ~OpScope() {
    if (index_ >= 0) end();
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  void begin(const char* name, const Tensor& first, Stream s);
  void end();
  int index_ = -1;  // this call's record, once timed
};

}  // namespace monta::engine
