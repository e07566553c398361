// Named ranges for profilers (Nsight Systems shows them on the timeline): NVTX on CUDA builds, nothing on CPU
// builds. STYLE.md rule 8: every layer, exchange phase and step phase opens one.
#pragma once
#include <string>

#include "engine/cuda_backend.h"

namespace monta::engine {

// Opens a range for the lifetime of the object (ranges nest; close in reverse order, as scopes do).
class TraceRange {
 public:
  explicit TraceRange(const char* name) { cudab::range_push(name); }
  explicit TraceRange(const std::string& name) : TraceRange(name.c_str()) {}
  ~TraceRange() { cudab::range_pop(); }
  TraceRange(const TraceRange&) = delete;
  TraceRange& operator=(const TraceRange&) = delete;
};

}  // namespace monta::engine
