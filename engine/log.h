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

}  // namespace monta::engine
