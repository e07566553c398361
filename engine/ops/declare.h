// The one place an op's signature is written. Each engine/ops/<family>.h lists its ops once, as MONTA_OPS_<FAMILY>(X);
// MONTA_DECLARE_OPS expands that list into the public declarations and the cpu:: and cuda:: ones, and
// engine/ops/dispatch.cpp expands it into the public definitions (contract check, then the backend call).
// Gradient outputs say how they are written with engine::Write (engine/tensor.h).
#pragma once
#include "engine/tensor.h"

// One list entry: X(name, on, (params), (args)). `on` is the argument whose device picks the backend (an output
// that may be empty names an input instead). Every op also takes a last `Stream s`, added by the expansions,
// defaulting to nullptr; MONTA_OR(v) in params gives a default argument.
#define MONTA_OR(v) = v
#define MONTA_OP_UNPAREN(...) __VA_ARGS__
#define MONTA_OP_DECLARE(name, on, params, args) void name(MONTA_OP_UNPAREN params, Stream s = nullptr);
// Inside namespace monta::engine: the public entry points and both backends' (same signature, own namespace).
#define MONTA_DECLARE_OPS(LIST)   \
  LIST(MONTA_OP_DECLARE)          \
  namespace cpu {                 \
  LIST(MONTA_OP_DECLARE)          \
  }                               \
  namespace cuda {                \
  LIST(MONTA_OP_DECLARE)          \
  }
