// Calibration probe, least-squares fit and the key = value cache of the link model.
#include "comm/calibrate.h"
#include "comm/timing.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "engine/check.h"
#include "engine/parse.h"
#include "engine/log.h"
#include "engine/memory.h"

namespace monta::comm {

LinkParams fit_link(std::span<const CalibSample> s) {
  // Minimise sum (alpha·k_i + beta·x_i - T_i)^2: [Skk Skx; Skx Sxx] [alpha beta]' = [SkT SxT]'.
  double kk = 0, kx = 0, xx = 0, kT = 0, xT = 0;
  for (const CalibSample& c : s) {
    const double k = c.latencies(), x = c.bytes();
    kk += k * k;
    kx += k * x;
    xx += x * x;
    kT += k * c.seconds;
    xT += x * c.seconds;
  }
  const double det = kk * xx - kx * kx;
  MONTA_CHECK(s.size() >= 2 && det > 1e-12 * kk * xx, "calibration fit: need samples at two or more sizes");
  LinkParams p;
  p.alpha = (kT * xx - xT * kx) / det;
  p.beta = (kk * xT - kx * kT) / det;
  if (p.alpha < 0) {  // refit beta alone through the origin
    p.alpha = 0;
    p.beta = xT / xx;
  }
  p.beta = std::max(p.beta, 1e-15);
  return p;
}

LinkParams fit_class(LinkClass cls, std::span<const CalibSample> samples) {
  std::vector<CalibSample> single, bursts;
  for (const CalibSample& c : samples) {
    if (c.burst > 1)
      bursts.push_back(c);
    else if (cls == LinkClass::intra || !c.gather)
      single.push_back(c);
  }
  LinkParams p = fit_link(single);
  if (!bursts.empty()) {
    double sum = 0;
    for (const CalibSample& c : bursts)
      sum += (c.seconds - p.alpha - c.burst * p.beta * c.bytes()) / double(c.burst - 1);
    p.alpha_next = std::clamp(sum / double(bursts.size()), 0.0, p.alpha);
  }
  return p;
}

std::vector<CalibSample> calibration_probe(Communicator& comm, LinkClass cls, std::span<const int64_t> sizes, int iters,
                                           engine::Device device) {
  const int n = comm.size();
  std::vector<CalibSample> out;
  if (n < 2) return out;
  int64_t biggest = 0;
  for (int64_t b : sizes) biggest = std::max(biggest, b);
  const int64_t cap = (biggest / 4 / n + 1) * n;  // f32 elements, divisible by n
  engine::Arena arena("calibration", device, {{"in", {cap}, engine::DType::f32}, {"out", {cap}, engine::DType::f32}});
  engine::fill_zero(arena.get("in"));
  for (bool gather : {false, true})
    for (int64_t bytes : sizes) {
      const int64_t elems = std::max<int64_t>(n, bytes / 4 / n * n);
      Tensor in = engine::make_view(arena.get("in").data, {gather ? elems / n : elems}, engine::DType::f32, device);
      Tensor out_t = engine::make_view(arena.get("out").data, {elems}, engine::DType::f32, device);
      auto op = [&] {
        if (gather) comm.all_gather(out_t, in);
        else comm.all_to_all(out_t, in);
      };
      const double med = slowest_median_seconds(comm, device, 1, iters, op);
      out.push_back({cls, gather, n, double(elems) * 4, med});
    }
  // The back-to-back latency: kBurst all-to-alls issued in a row, as a pipeline's chunks are.
  int64_t bytes = 0;
  for (int64_t b : sizes)
    if (b <= (int64_t(1) << 20)) bytes = std::max(bytes, b);
  if (bytes == 0) bytes = *std::min_element(sizes.begin(), sizes.end());
  const int64_t elems = std::max<int64_t>(n, bytes / 4 / n * n);
  Tensor in = engine::make_view(arena.get("in").data, {elems}, engine::DType::f32, device);
  Tensor out_t = engine::make_view(arena.get("out").data, {elems}, engine::DType::f32, device);
  const double med = slowest_median_seconds(comm, device, 1, iters, [&] {
    for (int k = 0; k < kBurst; ++k) comm.all_to_all(out_t, in);
  });
  CalibSample b{cls, false, n, double(elems) * 4, med};
  b.burst = kBurst;
  out.push_back(b);
  return out;
}

std::vector<int64_t> calibration_sizes(int64_t largest) {
  const int64_t top = std::max<int64_t>(largest, int64_t(1) << 22);
  std::vector<int64_t> v;
  for (int64_t b = int64_t(1) << 12; b < top; b *= 4) v.push_back(b);
  v.push_back(top);
  return v;
}

Calibration calibrate(Communicator* intra, Communicator* inter, const LinkModel& start, std::span<const int64_t> sizes,
                      int iters, engine::Device device) {
  Calibration c;
  c.links = start;
  for (auto [comm, cls] : {std::pair{intra, LinkClass::intra}, std::pair{inter, LinkClass::inter}}) {
    if (!comm || comm->size() < 2) continue;
    auto s = calibration_probe(*comm, cls, sizes, iters, device);
    (cls == LinkClass::intra ? c.links.intra : c.links.inter) = fit_class(cls, s);
    (cls == LinkClass::intra ? c.measured_intra : c.measured_inter) = true;
    c.samples.insert(c.samples.end(), s.begin(), s.end());
  }
  return c;
}

std::string format_calibration(const Calibration& c) {
  std::string s = engine::strf("%-6s %-10s %3s %12s %12s %12s %8s\n", "link", "collective", "n", "bytes", "measured us",
                               "fitted us", "err %");
  for (const CalibSample& x : c.samples) {
    const LinkParams& p = c.links.of(x.cls);
    const double fit = x.burst > 1 ? p.alpha + (x.burst - 1) * p.next_alpha() + x.burst * p.beta * x.bytes()
                                   : p.alpha * x.latencies() + p.beta * x.bytes();
    const std::string what = x.gather ? "all_gather" : x.burst > 1 ? engine::strf("a2a x%d", x.burst) : "all_to_all";
    s += engine::strf("%-6s %-10s %3d %12.0f %12.2f %12.2f %8.1f\n", x.cls == LinkClass::intra ? "intra" : "inter",
                      what.c_str(), x.n, x.M, x.seconds * 1e6, fit * 1e6, 100.0 * (x.seconds - fit) / fit);
  }
  for (auto [cls, name, measured] : {std::tuple{LinkClass::intra, "intra", c.measured_intra},
                                     std::tuple{LinkClass::inter, "inter", c.measured_inter}}) {
    const LinkParams& p = c.links.of(cls);
    s += engine::strf("%s: alpha %.2f us (back to back %.2f us), bandwidth %.2f GB/s (%s)\n", name, p.alpha * 1e6,
                      p.next_alpha() * 1e6, 1e-9 / p.beta, measured ? "fitted" : "given");
  }
  return s;
}

LinkModel parse_link_model(const std::string& text, const LinkModel& fallback, const std::string& where) {
  LinkModel l = fallback;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (auto h = line.find('#'); h != std::string::npos) line.erase(h);
    const auto eq = line.find('=');
    auto trim = [](std::string x) {
      x.erase(0, x.find_first_not_of(" \t\r"));
      x.erase(x.find_last_not_of(" \t\r") + 1);
      return x;
    };
    if (trim(line).empty() || trim(line)[0] == '[') continue;
    MONTA_USER_CHECK(eq != std::string::npos, where + ": expected `key = value`, got '" + trim(line) + "'");
    const std::string key = trim(line.substr(0, eq)), val = trim(line.substr(eq + 1));
    const auto parsed = engine::try_parse_double(val);
    MONTA_USER_CHECK(parsed && std::isfinite(*parsed), where + ": '" + key + "' needs a finite number, not '" + val + "'");
    const double v = *parsed;
    MONTA_USER_CHECK(v >= 0, where + ": '" + key + "' must not be negative");
    if (key == "intra_gbps" || key == "inter_gbps") {
      MONTA_USER_CHECK(v > 0, where + ": '" + key + "' must be positive");
      (key == "intra_gbps" ? l.intra : l.inter).beta = 1.0 / (v * 1e9);
    } else if (key == "intra_latency_us" || key == "inter_latency_us") {
      (key == "intra_latency_us" ? l.intra : l.inter).alpha = v * 1e-6;
    } else if (key == "intra_next_latency_us" || key == "inter_next_latency_us") {
      (key == "intra_next_latency_us" ? l.intra : l.inter).alpha_next = v * 1e-6;
    } else {
      engine::fail_user(where + ": unknown key '" + key +
                        "' (valid: intra_gbps, intra_latency_us, intra_next_latency_us, inter_gbps, inter_latency_us, "
                        "inter_next_latency_us)");
    }
  }
  return l;
}

LinkModel read_link_model(const std::string& path, const LinkModel& fallback) {
  std::ifstream in(path);
  MONTA_USER_CHECK(in.good(), "cannot open link-model cache '" + path + "' (check the path)");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_link_model(ss.str(), fallback, path);
}

void write_link_model(const std::string& path, const LinkModel& l) {
  std::ofstream out(path);
  MONTA_USER_CHECK(out.good(), "cannot write link-model cache '" + path + "'");
  out << "# monta link model (α–β per link class), written by the calibration probe\n"
      << engine::strf("intra_gbps = %.6g\nintra_latency_us = %.6g\ninter_gbps = %.6g\ninter_latency_us = %.6g\n",
                      1e-9 / l.intra.beta, l.intra.alpha * 1e6, 1e-9 / l.inter.beta, l.inter.alpha * 1e6);
  for (auto [name, p] : {std::pair{"intra", l.intra}, std::pair{"inter", l.inter}})
    if (p.alpha_next >= 0) out << engine::strf("%s_next_latency_us = %.6g\n", name, p.alpha_next * 1e6);
}

}  // namespace monta::comm
