// Timing a collective piece of work the way every monta measurement does (calibration, auto, benchmarks): each
// timed call starts after a barrier and ends with the device synced; the slowest rank's median is the answer.
#pragma once
#include <functional>

#include "comm/communicator.h"

namespace monta::comm {

// Collective over group. Runs fn `warmup` times untimed, then `iters` times timed; returns, on every rank, the
// largest over the group of each rank's median wall time in seconds.
double slowest_median_seconds(Communicator& group, engine::Device device, int warmup, int iters,
                              const std::function<void()>& fn);

}  // namespace monta::comm
