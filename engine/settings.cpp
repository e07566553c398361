// The engine settings' one instance and the one place the environment overrides are read (engine/settings.h).
#include "engine/settings.h"

#include <cstdlib>
#include <string>

namespace monta::engine {

Settings& settings() {
  static Settings s = [] {
    Settings d;
    if (const char* e = std::getenv("MONTA_ATTENTION"); e && std::string(e) == "flash")
      d.attention = AttentionPath::handwritten;
    if (const char* e = std::getenv("MONTA_GEMM_TUNE"); e && std::string(e) == "1") d.gemm_tune = true;
    return d;
  }();
  return s;
}

}  // namespace monta::engine
