// The one way to read a number from text (a config value, a command-line list, a manifest field, a
// directory name): the whole string must be the number and it must fit, else a user error naming `what`.
// No std::stoi/atoi anywhere: those throw uncaught or silently return 0.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace monta::engine {

// nullopt when `text` is not wholly a base-10 integer (optional sign) or overflows int64 / int.
std::optional<int64_t> try_parse_int64(std::string_view text);
std::optional<int> try_parse_int(std::string_view text);
// nullopt when `text` is not wholly a base-10 unsigned integer (no sign) or overflows uint64 (seeds, hashes).
std::optional<uint64_t> try_parse_uint64(std::string_view text);
// nullopt when `text` is not wholly a number (strtod syntax); non-finite values parse (callers range-check).
std::optional<double> try_parse_double(std::string_view text);

// The same, failing with "<what> must be an integer (got '<text>')" etc. as a user error.
int64_t parse_int64(std::string_view text, const std::string& what);
int parse_int(std::string_view text, const std::string& what);
double parse_double(std::string_view text, const std::string& what);
// "1,2,4" -> {1, 2, 4}; every item through parse_int.
std::vector<int> parse_int_list(std::string_view text, const std::string& what);

}  // namespace monta::engine
