// `monta bench fp8`: the FP8 expert GEMMs (forward, dgrad, wgrad) at 2x70B shapes next to the bf16 ones and next to
// bf16 and FP8 GEMM ceilings measured the same way in the same run, plus the quantise ops against the copy ceiling.
#pragma once
#include <cstdint>
#include <string>

#include "engine/tensor.h"

namespace monta::model {

// Returns the process exit code (non-zero when the FP8 output strays from the bf16 one beyond the stated bound).
int bench_fp8(engine::Device dev, int iters, const std::string& json, int64_t S);

}  // namespace monta::model
