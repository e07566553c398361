// Engine-wide implementation choices that leave results' meaning alone but pick the code path: which attention
// kernels run, whether cuBLASLt GEMMs are autotuned. The caller sets them (bench ops compares attention paths,
// GPU tests pin one); the environment gives the start values, read once here and nowhere else:
// MONTA_ATTENTION=flash → AttentionPath::handwritten, MONTA_GEMM_TUNE=1 → gemm_tune.
#pragma once
#include <cstdint>

namespace monta::engine {

enum class AttentionPath : uint8_t {
  automatic,    // cuDNN's fused attention where it supports the case (bf16, D 64 or 128), else the hand-written kernels
  handwritten,  // always the hand-written kernels (the f32 path and the fallback)
};

struct Settings {
  AttentionPath attention = AttentionPath::automatic;
  // Time the heuristic's first candidates once per GEMM shape and keep the fastest (engine/cuda/linear.cu says why
  // it is off by default). Read when a shape is first seen: set it before the first GEMM of a shape.
  bool gemm_tune = false;
  // Threads of the host ops that split their elements over cores (the host AdamW of train.optimizer_offload);
  // 0: one per hardware thread. Results do not depend on it; `bench optimizer` sets it to measure per core.
  int host_threads = 0;
};

// The process's settings, to read or assign; initialised from the environment on first use.
Settings& settings();

}  // namespace monta::engine
