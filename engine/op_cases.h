// The one table of op cases (ggml's test-backend-ops): each entry names an op, the tensors it reads and writes as
// functions of the model's widths (STYLE.md 4 letters), its forward, its backward and its FLOPs and bytes. Three
// users instantiate it: finite-difference gradient checks in double (tests/engine/test_op_cases.cpp), CUDA against
// the CPU (tests/gpu/test_op_cases.cpp), and `monta bench ops` at 2x70B widths (model/benchmarks.cpp). Adding an op
// is one function in op_cases.cpp and one line in its table.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/memory.h"
#include "engine/tensor.h"

namespace monta::engine {

struct OpDims {
  int64_t B = 1, S = 8, H = 16, A = 4, G = 2, D = 4, F = 24, E = 2, K = 1, C = 4, V = 32;
  int64_t N() const { return B * S; }
};
OpDims op_dims_gradcheck();            // small: every element is perturbed twice
OpDims op_dims_parity();               // GPU tile sizes and a partial tile
OpDims op_dims_2x70b(int64_t S);       // the paper's layer, one sequence of S tokens, top-1 of 2 experts

// A tensor's dtype class: by its kind (saved statistics in the statistics' dtype, indices i32, the rest in the
// activations'), or stated: act (a saved softmax that feeds a backward as an activation), stat (a loss).
enum class OpDtype { by_kind, act, stat };

// What a tensor of a case is. input and param are differentiated: the backward writes d<name> (an input's gradient
// overwritten, a param's accumulated). An output's d<name> is what the backward reads (the cotangent c of
// L = Σ c⊙out). saved: a statistic the forward keeps for the backward (f32 on devices). index: i32, filled by the
// case's `indices`.
enum class OpArgKind { input, param, output, saved, index };

struct OpArg {
  std::string name;
  std::vector<int64_t> shape;
  OpArgKind kind = OpArgKind::input;
  double scale = 1.0;  // inputs and params are uniform in [-scale, scale)
  OpDtype dtype = OpDtype::by_kind;
  // An output whose backward takes its cotangent as a constant (cross-entropy's scale): L adds cotangent·Σ out and
  // there is no d<name>. NaN: the backward reads d<name>.
  double cotangent = NAN;
};

// The dtypes of one instantiation: activations (inputs, params, outputs and their gradients), parameter gradients,
// saved statistics.
struct OpPrecision {
  DType act = DType::f32, param_grad = DType::f32, saved = DType::f32;
};
OpPrecision op_precision_double();          // CPU, all f64: gradient checks
OpPrecision op_precision_for(DType act);    // a device's: act activations, f32 parameter gradients and statistics

using OpFn = std::function<void(const Arena& t)>;  // reads and writes the case's tensors by name

struct OpCase {
  std::string name;   // the op ("rmsnorm"); a test's name
  std::string shape;  // in the shape letters, for tables
  std::vector<OpArg> args;
  OpFn indices;   // fills the index tensors (host values copied in; same on every device); may be empty
  OpFn forward;
  OpFn backward;  // empty: a forward-only case (no gradient check)
  double flops_fwd = 0, flops_bwd = 0, bytes_fwd = 0, bytes_bwd = 0;  // per call
  bool parity = true;  // false: compared against the CPU by its own test in tests/gpu (reason in the case)
};

// The table, built for widths d with activations of act_bytes bytes an element (the bytes columns).
std::vector<OpCase> op_cases(const OpDims& d, double act_bytes);

// The tensors of a case on one device: every arg, and d<name> for every input, param and output.
Arena op_case_arena(const OpCase& c, Device dev, const OpPrecision& p);
// Deterministic contents: inputs, params and output gradients pseudo-random from seed; outputs, saved statistics and
// input/param gradients zero; then the case's indices.
void op_case_fill(const OpCase& c, const Arena& t, uint64_t seed);
// Sets the gradients (of inputs and params) to zero, so accumulating and overwriting backwards compare alike.
void op_case_zero_grads(const OpCase& c, const Arena& t);
// i32 host values written into t (any device).
void write_indices(Tensor t, const std::function<int32_t(int64_t)>& value);

}  // namespace monta::engine
