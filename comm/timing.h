// Timing a collective piece of work the way every monta measurement does (calibration, auto, benchmarks): the
// engine's measurement loop (engine/timing.h) with a barrier before each timed call; the slowest rank's median is
// the answer.
#pragma once
#include <functional>

#include "comm/communicator.h"

namespace monta::comm {

// Collective over group. Runs fn `warmup` times untimed, then `iters` times timed; returns, on every rank, the
// largest over the group of each rank's median wall time in seconds.
double slowest_median_seconds(Communicator& group, engine::Device device, int warmup, int iters,
                              const std::function<void()>& fn);
// The largest of v over the group, on every rank (reduced in a device buffer, so a device-only communicator serves).
double group_max(Communicator& group, engine::Device device, double v);

}  // namespace monta::comm
