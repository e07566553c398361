// KeyRange checks and the Markdown form of the key table (docs/config.md).
#include "model/config_keys.h"

#include <cmath>
#include <limits>
#include <sstream>

#include "engine/log.h"
#include "engine/parse.h"

namespace monta::model {

using engine::strf;

bool KeyRange::contains(double v) const {
  if (!std::isfinite(v)) return false;
  if (lo_open ? !(v > lo) : !(v >= lo)) return false;
  if (hi_open ? !(v < hi) : !(v <= hi)) return false;
  return true;
}

bool KeyRange::allows(const std::string& s) const {
  if (nonempty && s.empty()) return false;
  if (!choices) return true;
  std::stringstream ss(choices);
  std::string item;
  while (std::getline(ss, item, '|'))
    if (item == s) return true;
  return false;
}

std::string KeyRange::describe() const {
  if (choices) return choices;
  if (nonempty) return "non-empty";
  if (std::isinf(lo) && std::isinf(hi)) return "any";
  auto num = [](double v) { return std::isinf(v) ? std::string("inf") : strf("%.15g", v); };
  return std::string(lo_open ? "(" : "[") + num(lo) + ", " + num(hi) + (hi_open || std::isinf(hi) ? ")" : "]");
}

std::string config_keys_markdown() {
  std::string s =
      "# Configuration keys\n\n"
      "Generated from the key table in `model/config_keys.h` (`monta train --help-markdown`); a test keeps this file\n"
      "equal to it. Every key is `section.key`: set it in the INI file given by `--config` as `key = value` under\n"
      "`[section]`, or on the command line as `--section.key value` (the command line wins). Values outside the\n"
      "range are refused before anything is allocated or written.\n";
  Config defaults;
  std::string section;
  visit_config_keys(defaults, [&](const char* key, const auto& field, const char* help, const KeyRange& r) {
    std::string k = key;
    std::string sec = k.substr(0, k.find('.'));
    if (sec != section) {
      s += "\n## [" + sec + "]\n\n| key | default | valid | meaning |\n|---|---|---|---|\n";
      section = sec;
    }
    std::ostringstream def;
    using T = std::decay_t<decltype(field)>;
    if constexpr (std::is_same_v<T, bool>) {
      def << (field ? "true" : "false");
    } else if constexpr (std::is_same_v<T, std::string>) {
      def << (field.empty() ? "\"\"" : field);
    } else {
      def << field;
    }
    const std::string valid = std::is_same_v<T, bool> ? std::string("true, false") : r.describe();
    s += "| `" + k + "` | " + def.str() + " | " + valid + " | " + help + " |\n";
  });
  return s;
}

std::string set_config_key(Config& c, const std::string& key, const std::string& value) {
  std::string problem = "unknown config key " + key;
  visit_config_keys(c, [&](const char* k, auto& field, const char*, const KeyRange&) {
    if (key != k) return;
    using T = std::decay_t<decltype(field)>;
    problem.clear();
    if constexpr (std::is_same_v<T, bool>) {
      if (value == "true" || value == "false")
        field = value == "true";
      else
        problem = key + ": expected true or false, got " + value;
    } else if constexpr (std::is_same_v<T, std::string>) {
      field = value;
    } else if constexpr (std::is_floating_point_v<T>) {
      const auto v = engine::try_parse_double(value);
      if (v) field = T(*v); else problem = key + ": expected a number, got " + value;
    } else if constexpr (std::is_same_v<T, uint64_t>) {
      const auto v = engine::try_parse_uint64(value);
      if (v) field = *v; else problem = key + ": expected an unsigned integer, got " + value;
    } else {
      const auto v = engine::try_parse_int64(value);
      if (v && *v >= int64_t(std::numeric_limits<T>::min()) && *v <= int64_t(std::numeric_limits<T>::max()))
        field = T(*v);
      else
        problem = key + ": expected an integer, got " + value;
    }
  });
  return problem;
}

}  // namespace monta::model
