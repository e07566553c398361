// FP8 token dispatch (comm.dispatch_dtype = fp8, docs/fp8.md): the dispatch sends each token as one packed row of
// E4M3 codes and fp32 1x128 scales (engine's fp8_pack_rows) instead of H activations; combine stays in the
// activation dtype. Any exchange strategy carries the packed rows unchanged, as narrower rows of its own dtype.
#pragma once
#include <cstdint>
#include <functional>

#include "comm/exchange.h"
#include "engine/tensor.h"

namespace monta::comm {

// Elements of dtype one packed row of H activations takes (fp8::packed_row_bytes(H) rounded up to whole elements):
// the width Wq of fp8_dispatch's xq and yq. For bf16 it is (H + 4·⌈H/128⌉)/2 (H a multiple of 4), so a dispatch
// moves ≈ 0.52 of the bf16 bytes. Refuses H so small that a packed row is wider than H (it would save nothing).
int64_t fp8_dispatch_width(int64_t H, engine::DType dtype);

// Dispatch bytes per token: H · dtype size (dispatch_fp8 false) or fp8_dispatch_width(H) · dtype size; what the
// cost model prices and `bench exchange` reports.
int64_t dispatch_row_bytes(int64_t H, engine::DType dtype, bool dispatch_fp8);

// x (E, C, H) -> xq (E, C, Wq) packed -> dispatch over ex -> yq (E_l, e*C, Wq) -> y (E_l, e*C, H) unpacked.
// y equals quantise→dequantise (fp8_pack_rows, fp8_unpack_rows) of ex.dispatch(x) bit for bit: the exchange only
// moves rows, and each row carries its own scales. Returns the exchange's stats.
ExchangeStats fp8_dispatch(Exchange& ex, engine::Tensor y, const engine::Tensor& x, engine::Tensor xq,
                           engine::Tensor yq);

// ex.dispatch_experts_combine with the dispatch in FP8 as above: experts(k) finds chunk k of y already unpacked
// (each chunk right after it arrives, so `overlapped` still overlaps); combine z -> out in the activation dtype.
ExchangeStats fp8_dispatch_experts_combine(Exchange& ex, engine::Tensor out, engine::Tensor z, engine::Tensor y,
                                           const engine::Tensor& x, engine::Tensor xq, engine::Tensor yq,
                                           const std::function<void(int)>& experts);

// The same rounding without an exchange (one EP rank): x (R, H) = dequantise(quantise(x)) through xq (R, Wq), so a
// model sees the same dispatched values in every layout.
void fp8_round_trip(engine::Tensor x, engine::Tensor xq);

}  // namespace monta::comm
