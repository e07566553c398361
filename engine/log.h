// Rank-aware logging: log_info prints on rank 0 only, log_all on every rank with a rank prefix.
#pragma once
#include <string>

namespace monta::engine {

void set_log_rank(int rank, int world);
int log_rank();
// printf-style formatting into a std::string.
std::string strf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const std::string& line);
void log_all(const std::string& line);
void log_warn(const std::string& line);  // every rank, to stderr, "warning:" prefixed

// A start-up phase that can take more than a second (allocation, weight init, corpus generation, communicator set-up,
// calibration, checkpoint load): announced when it begins and timed when it ends, on rank 0, flushed at once, so a
// slow start never looks like a hang.
class StartupPhase {
 public:
  explicit StartupPhase(std::string what);
  ~StartupPhase();
  StartupPhase(const StartupPhase&) = delete;
  StartupPhase& operator=(const StartupPhase&) = delete;

 private:
  std::string what_;
  double start_s_;
};
// Seconds since the process started (the first use of the log library's clock, at static initialisation).
double seconds_since_launch();

}  // namespace monta::engine
