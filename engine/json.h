// The one JSON emitter: an ordered record of key/value pairs written as one JSON line. metrics.jsonl, every
// `monta bench` result, `monta eval --json` and run_info.json are written through it, so escaping, number
// formatting and non-finite values (null: JSON has no NaN) are decided here once.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace monta::engine {

// "text" with ", \, and control characters escaped (\n, \t, \u00XX); other bytes (UTF-8) pass through.
std::string json_quote(const std::string& s);
// v printed with a printf format (default: all 17 digits, so a number reads back bit for bit); null when v is not
// finite.
std::string json_number(double v, const char* fmt = "%.17g");

// Keys keep the order they were added in; a key added twice is a programming error.
class JsonRecord {
 public:
  JsonRecord& add(const std::string& key, double v, const char* fmt = "%.17g");
  JsonRecord& add(const std::string& key, int64_t v);
  JsonRecord& add(const std::string& key, int v) { return add(key, int64_t(v)); }
  JsonRecord& add(const std::string& key, bool v);
  JsonRecord& add(const std::string& key, const std::string& v);
  JsonRecord& add(const std::string& key, const char* v) { return add(key, std::string(v)); }
  JsonRecord& add(const std::string& key, const JsonRecord& v);               // a nested object
  JsonRecord& add(const std::string& key, const std::vector<JsonRecord>& v);  // an array of objects
  JsonRecord& add_null(const std::string& key);
  // Every field of `more`, after this record's own.
  JsonRecord& append(const JsonRecord& more);

  bool empty() const { return fields_.empty(); }
  bool has(const std::string& key) const;
  // {"key": value, ...} on one line, no newline.
  std::string line() const;

 private:
  JsonRecord& put(const std::string& key, std::string json);
  std::vector<std::pair<std::string, std::string>> fields_;  // key, value already as JSON text
};

}  // namespace monta::engine
