// FP8 E4M3 with fine-grained scaling (DeepSeek-V3's recipe, docs/fp8.md): quantise activations and gradients in 1x128
// tiles along the GEMM's contraction dimension and weights in 128x128 blocks, each with an fp32 power-of-two scale of
// its own; and the GEMM over such operands, fp32 accumulation. Scale tensors are laid out as cuBLASLt reads them.
#pragma once
#include "engine/ops/declare.h"

namespace monta::engine {
// How fp8_gemm's b operand is scaled: 1x128 tiles along K (an activation or gradient), or 128x128 blocks (a weight).
enum class Fp8Scaling : uint8_t { tiles, blocks };
}  // namespace monta::engine

// Shapes: a leading batch dimension B (experts) is optional everywhere (absent = 1); T(n) = ceil(n / 128);
// Ld(n) = T(n) rounded up to a multiple of 4 (fp8::block_scale_ld). q tensors are e4m3, scales f32, x and w f32, f64
// (CPU) or bf16.
// fp8_quantize_rows: x (B, R, K) -> q (B, R, K), scale (B, T(K), R): one scale per 1x128 tile of a row, tile index
//   outermost (cuBLASLt's VEC128 layout). For an operand whose contraction dimension is its last (x in forward,
//   dout in dgrad).
// fp8_quantize_cols: x (B, R, K) -> qt (B, K, R) = the transpose, tiled 1x128 along R; scale (B, T(R), K). For the
//   weight gradient, whose contraction runs over the rows (tokens) of x and dout.
// fp8_quantize_blocks: w (B, O, I) -> q (B, O, I), scale (B, T(O), Ld(I)) one per 128x128 block, row-major; and, when
//   qt is given, qt (B, I, O) = qᵀ (the same codes) with scale_t (B, T(I), Ld(O)): the weight's operand for dgrad.
//   q and scale may be empty when qt is given (dgrad needs only the transpose). Padding columns of a scale row are
//   written as 0.
// fp8_pack_rows: x (B, R, K) -> packed (B, R, P) u8, P >= fp8::packed_row_bytes(K) and a multiple of 4: row r holds the
//   K codes of fp8_quantize_rows, zero bytes up to fp8::packed_scales_at(K), its T(K) fp32 scales, zero bytes up to
//   P. One self-contained row per token, so any permutation of rows (the token exchange) keeps codes and scales
//   together: the FP8 dispatch payload (docs/fp8.md).
// fp8_unpack_rows: packed (B, R, P) -> out (B, R, K) = code · scale (exact in f32 and bf16).
// fp8_swiglu_forward: out = silu(gate) · up (B, R, K), as swiglu_forward writes it, and in the same pass q, scale =
//   fp8_quantize_rows(out) of the values as stored: the SwiGLU output quantised where it is produced (the down
//   projection's FP8 input) instead of in a second pass.
// fp8_gemm: out (B, M, N) = deq(a) (B, M, K) · deq(b) (B, N, K)ᵀ, overwritten or accumulated (write), fp32 accumulate;
//   a is row-tiled (a_scale (B, T(K), M)); b is row-tiled (b_scale (B, T(K), N)) or blocked (b_scale (B, T(N), Ld(K)))
//   as b_scaling says. out: bf16 or f32 on CUDA, f32 or f64 on the CPU (which dequantises and multiplies in out's type).
#define MONTA_OPS_FP8(X)                                                                                              \
  X(fp8_quantize_rows, x, (Tensor q, Tensor scale, const Tensor& x), (q, scale, x))                                  \
  X(fp8_quantize_cols, x, (Tensor qt, Tensor scale, const Tensor& x), (qt, scale, x))                                \
  X(fp8_quantize_blocks, w, (Tensor q, Tensor scale, Tensor qt, Tensor scale_t, const Tensor& w),                    \
    (q, scale, qt, scale_t, w))                                                                                       \
  X(fp8_pack_rows, x, (Tensor packed, const Tensor& x), (packed, x))                                                \
  X(fp8_unpack_rows, out, (Tensor out, const Tensor& packed), (out, packed))                                        \
  X(fp8_swiglu_forward, out, (Tensor out, Tensor q, Tensor scale, const Tensor& gate, const Tensor& up),          \
    (out, q, scale, gate, up))                                                                                      \
  X(fp8_gemm, out,                                                                                                   \
    (Tensor out, const Tensor& a, const Tensor& a_scale, const Tensor& b, const Tensor& b_scale, Fp8Scaling b_scaling, \
     Write write MONTA_OR(Write::overwrite)),                                                                        \
    (out, a, a_scale, b, b_scale, b_scaling, write))

namespace monta::engine {
MONTA_DECLARE_OPS(MONTA_OPS_FP8)
}  // namespace monta::engine
