// engine/json.h: quoting, numbers, and the ordered record.
#include "engine/json.h"

#include <cmath>
#include <cstdio>

#include "engine/check.h"

namespace monta::engine {

std::string json_quote(const std::string& s) {
  std::string q = "\"";
  for (const char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      q += '\\';
      q += ch;
    } else if (ch == '\n') {
      q += "\\n";
    } else if (ch == '\t') {
      q += "\\t";
    } else if (ch == '\r') {
      q += "\\r";
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", unsigned(u));
      q += buf;
    } else {
      q += ch;
    }
  }
  return q + "\"";
}

std::string json_number(double v, const char* fmt) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

JsonRecord& JsonRecord::put(const std::string& key, std::string json) {
  MONTA_CHECK(!has(key), "JsonRecord: key '" + key + "' added twice");
  fields_.emplace_back(key, std::move(json));
  return *this;
}

JsonRecord& JsonRecord::add(const std::string& key, double v, const char* fmt) { return put(key, json_number(v, fmt)); }
JsonRecord& JsonRecord::add(const std::string& key, int64_t v) { return put(key, std::to_string(v)); }
JsonRecord& JsonRecord::add(const std::string& key, bool v) { return put(key, v ? "true" : "false"); }
JsonRecord& JsonRecord::add(const std::string& key, const std::string& v) { return put(key, json_quote(v)); }
JsonRecord& JsonRecord::add(const std::string& key, const JsonRecord& v) { return put(key, v.line()); }
JsonRecord& JsonRecord::add_null(const std::string& key) { return put(key, "null"); }

JsonRecord& JsonRecord::add(const std::string& key, const std::vector<JsonRecord>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += v[i].line();
  }
  return put(key, s + "]");
}

JsonRecord& JsonRecord::append(const JsonRecord& more) {
  for (const auto& [k, v] : more.fields_) put(k, v);
  return *this;
}

bool JsonRecord::has(const std::string& key) const {
  for (const auto& f : fields_)
    if (f.first == key) return true;
  return false;
}

std::string JsonRecord::line() const {
  std::string s = "{";
  for (size_t i = 0; i < fields_.size(); ++i) {
    if (i) s += ", ";
    s += json_quote(fields_[i].first) + ": " + fields_[i].second;
  }
  return s + "}";
}

}  // namespace monta::engine
