// Checked number parsing (engine/parse.h): std::from_chars for integers (no exceptions, no locale, overflow
// reported), strtod for reals, and the whole string must be consumed.
#include "engine/parse.h"

#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdlib>

#include "engine/check.h"

namespace monta::engine {

std::optional<int64_t> try_parse_int64(std::string_view text) {
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  if (text.empty()) return std::nullopt;
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return v;
}

std::optional<int> try_parse_int(std::string_view text) {
  auto v = try_parse_int64(text);
  if (!v || *v < INT_MIN || *v > INT_MAX) return std::nullopt;
  return int(*v);
}

std::optional<uint64_t> try_parse_uint64(std::string_view text) {
  if (text.empty()) return std::nullopt;
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return v;
}

std::optional<double> try_parse_double(std::string_view text) {
  if (text.empty()) return std::nullopt;
  std::string s(text);
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || s.find_first_of(" \t\n") != std::string::npos) return std::nullopt;
  if (errno == ERANGE && v != 0.0) return std::nullopt;  // overflow; underflow to a denormal/0 is fine
  return v;
}

int64_t parse_int64(std::string_view text, const std::string& what) {
  auto v = try_parse_int64(text);
  if (!v) fail_user(what + " must be an integer that fits in 64 bits (got '" + std::string(text) + "')");
  return *v;
}

int parse_int(std::string_view text, const std::string& what) {
  auto v = try_parse_int(text);
  if (!v) fail_user(what + " must be an integer that fits in 32 bits (got '" + std::string(text) + "')");
  return *v;
}

double parse_double(std::string_view text, const std::string& what) {
  auto v = try_parse_double(text);
  if (!v) fail_user(what + " must be a number (got '" + std::string(text) + "')");
  return *v;
}

std::vector<int> parse_int_list(std::string_view text, const std::string& what) {
  std::vector<int> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string_view::npos) comma = text.size();
    out.push_back(parse_int(text.substr(start, comma - start), what));
    start = comma + 1;
  }
  return out;
}

}  // namespace monta::engine
