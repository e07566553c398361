// Rank-aware logging: rank 0 speaks for the job; warnings come from whichever rank sees them.
#include "engine/log.h"

#include <cstdarg>
#include <cstdio>
#include <vector>

#include "engine/timing.h"

namespace monta::engine {
namespace {
int g_rank = 0, g_world = 1;
const HostTimer g_launch;  // started with the process's static initialisation
}

void set_log_rank(int rank, int world) {
  g_rank = rank;
  g_world = world;
}
int log_rank() { return g_rank; }

std::string strf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  va_list ap2;
  va_copy(ap2, ap);
  int n = std::vsnprintf(nullptr, 0, fmt, ap);
  va_end(ap);
  std::vector<char> buf(size_t(n) + 1);
  std::vsnprintf(buf.data(), buf.size(), fmt, ap2);
  va_end(ap2);
  return std::string(buf.data(), size_t(n));
}

void log_info(const std::string& line) {
  if (g_rank != 0) return;
  std::fprintf(stdout, "%s\n", line.c_str());
  std::fflush(stdout);
}

void log_all(const std::string& line) {
  std::fprintf(stdout, "[rank %d] %s\n", g_rank, line.c_str());
  std::fflush(stdout);
}

void log_warn(const std::string& line) {
  if (g_world > 1)
    std::fprintf(stderr, "monta: warning: [rank %d] %s\n", g_rank, line.c_str());
  else
    std::fprintf(stderr, "monta: warning: %s\n", line.c_str());
  std::fflush(stderr);
}

double seconds_since_launch() {
  return g_launch.seconds();
}

StartupPhase::StartupPhase(std::string what) : what_(std::move(what)), start_s_(seconds_since_launch()) {
  log_info("start-up: " + what_ + " ...");
}

StartupPhase::~StartupPhase() {
  log_info(strf("start-up: %s: %.2f s", what_.c_str(), seconds_since_launch() - start_s_));
}

}  // namespace monta::engine
