// Calibration of the cost model's α and β per link class: a short probe times all-to-all and all-gather over
// groups whose peers are all of one class, then a least-squares fit; or the values come from a cache file /
// config keys (key = value text). Works with any Communicator and any buffer device.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/cost_model.h"

namespace monta::comm {

// One timing: a collective over n ranks whose peers are all of class cls, per-rank buffer M bytes.
struct CalibSample {
  LinkClass cls = LinkClass::intra;
  bool gather = false;  // all-gather (ring: n-1 latencies) or all-to-all (one)
  int n = 2;
  double M = 0, seconds = 0;
  int burst = 1;  // > 1: that many all-to-alls back to back on one communicator, timed together (alpha_next)
  // The model's regressors: T = alpha * latencies() + beta * bytes() (cost_model.h's formulas, one class).
  double latencies() const { return gather ? double(n - 1) : 1.0; }
  double bytes() const { return double(n - 1) / n * M; }
};

// Least squares of T = alpha·k + beta·x over the samples of one class (2×2 normal equations); negative results
// are clamped to 0 (a latency below the timer's resolution). Fails when the samples cannot separate α from β.
LinkParams fit_link(std::span<const CalibSample> samples);

// The fit for one class from its probe samples: the inter-node class from its all-to-alls alone (the exchange's
// traffic on that class; over emulated nodes a 256 MiB all-gather took 1.6x the all-to-all of the same bytes, and
// one β for both misjudged the exchange by 20-30%), the intra-node class from both collectives. Then alpha_next
// from the burst samples: a burst of k takes alpha + (k-1)·alpha_next + k·beta·x; their mean, kept in [0, alpha]
// (-1 without burst samples).
LinkParams fit_class(LinkClass cls, std::span<const CalibSample> samples);

// Times all-to-all and all-gather over comm (every peer of class cls) at each per-rank size in bytes: warm-up,
// `iters` timed calls, median, max over the group; then a burst of kBurst all-to-alls back to back at the
// largest size up to 1 MiB. Collective over comm.
inline constexpr int kBurst = 4;
std::vector<CalibSample> calibration_probe(Communicator& comm, LinkClass cls, std::span<const int64_t> sizes, int iters,
                                           engine::Device device);

// Probe sizes (per-rank bytes) for predictions up to `largest`: 4 KiB, then ×4 up to max(4 MiB, largest), the
// last one `largest` itself. The fit needs the large sizes: where the latency is milliseconds (sockets), the
// small probes all take about α and leave β to noise.
std::vector<int64_t> calibration_sizes(int64_t largest);

struct Calibration {
  LinkModel links;
  bool measured_intra = false, measured_inter = false;  // false: that class kept the value it started from
  std::vector<CalibSample> samples;
};
// Fits each class for which a group is given (nullptr: keep `start`'s value); collective over the given groups.
Calibration calibrate(Communicator* intra, Communicator* inter, const LinkModel& start, std::span<const int64_t> sizes,
                      int iters, engine::Device device);
// Samples with the fitted prediction beside each, then the fitted α (µs) and bandwidth (GB/s) per class.
std::string format_calibration(const Calibration& c);

// Cache / config text: intra_gbps, intra_latency_us, inter_gbps, inter_latency_us, and optionally
// intra_next_latency_us, inter_next_latency_us (the back-to-back latency) (one `key = value` a line,
// '#' comments). Missing keys keep `fallback`'s values; unknown keys and bad numbers are user errors.
LinkModel read_link_model(const std::string& path, const LinkModel& fallback);
LinkModel parse_link_model(const std::string& text, const LinkModel& fallback, const std::string& where);
void write_link_model(const std::string& path, const LinkModel& l);

}  // namespace monta::comm
