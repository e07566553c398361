// The FP8 recipe of the expert GEMMs (model.fp8 = experts, docs/fp8.md), used with a batch of one for the attention
// projections too (model.fp8 = all): which operand of the forward, dgrad and wgrad GEMMs is quantised how (1x128 tiles
// along the contraction for activations and gradients, 128x128 blocks for weights), the scratch the quantised
// activations live in (one byte buffer carved from the activation arena), and a weight's cached codes.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/memory.h"
#include "engine/tensor.h"

namespace monta::model {

// Bytes of scratch one expert linear out (E, C, O) = x (E, C, I) · w (E, O, I)ᵀ needs, forward or backward.
// weights: room for the weight's codes too (calls without cached codes, Fp8Weight below).
int64_t fp8_expert_scratch_bytes(int64_t E, int64_t C, int64_t I, int64_t O, bool weights = true);

// A weight's FP8 codes as the forward and dgrad read them, fp8_quantize_blocks of w (E, O, I): q (E, O, I) with its
// block scales (E, T(O), Ld(I)), and qt (E, I, O) = qᵀ with (E, T(I), Ld(O)). Computed once per weight update and
// held (the model's fp8 weight arena) instead of at every use.
struct Fp8Weight {
  engine::Tensor q, scale, qt, scale_t;
};
// The four tensors' specs, named <name>.q, .scale, .qt, .scale_t, for an arena; fp8_weight_bind reads them back from
// the arena's tensors first.. first + 3.
std::vector<engine::TensorSpec> fp8_weight_specs(const std::string& name, int64_t E, int64_t O, int64_t I);
Fp8Weight fp8_weight_bind(const engine::Arena& arena, size_t first);
void fp8_weight_quantize(const Fp8Weight& codes, const engine::Tensor& w);  // codes = fp8_quantize_blocks(w)

// out (E, C, O) = q(x) · q(w)ᵀ: x in 1x128 tiles along I, w in 128x128 blocks. x_quantised:
// q(x) is already in the scratch (fp8_expert_input: a previous call on the same x, or a producer that quantised it,
// fp8_swiglu_forward). wq: w's codes (fp8_weight_quantize of this w); null: w is quantised into the scratch.
void fp8_expert_linear_forward(engine::Tensor out, const engine::Tensor& x, const engine::Tensor& w,
                               engine::Tensor scratch, bool x_quantised = false, const Fp8Weight* wq = nullptr);

// Where fp8_expert_linear_forward keeps q(x) of an x (E, C, I) in the scratch: codes (E, C, I), scales (E, T(I), C),
// for a producer to write it there.
struct Fp8Rows {
  engine::Tensor q, scale;
};
Fp8Rows fp8_expert_input(engine::Tensor scratch, const engine::Tensor& x);

// The straight-through backward of the forward above (quantisation counts as the identity):
// dx (E, C, I) = q(dout) · q(w), dout in 1x128 tiles along O and w in the same 128x128 blocks (transposed; wq's qt
// when given), written as dx_write says; dw (E, O, I) = q(doutᵀ) · q(xᵀ)ᵀ, doutᵀ in 1x128 tiles along C (the tokens)
// and xᵀ in 128x128 blocks (the GEMM with 1x128 scales on both operands runs at 1.1x bf16 on an H200, with one operand
// in blocks at 1.6x; with power-of-two scales a value above 1/14336 of its block's maximum keeps its 1x128-tile
// value, docs/fp8.md), or with fp8_wgrad false doutᵀ · x unquantised (expert_linear_backward, model.fp8_wgrad), written as
// dw_write says.
// Either dx or dw may be empty.
void fp8_expert_linear_backward(engine::Tensor dx, engine::Tensor dw, const engine::Tensor& dout,
                                const engine::Tensor& x, const engine::Tensor& w, engine::Write dx_write,
                                engine::Write dw_write, engine::Tensor scratch, const Fp8Weight* wq = nullptr,
                                bool fp8_wgrad = true);

// Test seam of the finite-difference check of the straight-through rule (tests/model/test_fp8_grad.cpp): when set,
// fp8_expert_linear_forward calls it instead of quantising and multiplying; the backward is untouched. Empty: none.
using Fp8ForwardOverride = std::function<void(engine::Tensor out, const engine::Tensor& x, const engine::Tensor& w)>;
void set_fp8_forward_override(Fp8ForwardOverride f);

}  // namespace monta::model
