// FP8 token dispatch: packing around any exchange strategy. The packed rows travel as rows of Wq elements of the
// exchange's dtype (its staging is sized for H >= Wq), so every strategy, its TP all-gathers included, moves FP8.
#include "comm/fp8_dispatch.h"

#include <string>

#include "engine/check.h"
#include "engine/fp8_math.h"
#include "engine/memory.h"
#include "engine/ops/fp8.h"

namespace monta::comm {
namespace {

// t (..., W) of any float dtype as rows of W · dtype-size bytes.
engine::Tensor as_byte_rows(const engine::Tensor& t) {
  const int64_t W = t.dim(t.ndim - 1);
  return engine::make_view(t.data, {t.numel() / W, W * int64_t(engine::dtype_size(t.dtype))}, engine::DType::u8,
                           t.device);
}
// t (..., H) as (rows, H).
engine::Tensor as_rows(const engine::Tensor& t) {
  const int64_t H = t.dim(t.ndim - 1);
  return engine::make_view(t.data, {t.numel() / H, H}, t.dtype, t.device);
}

}  // namespace

int64_t fp8_dispatch_width(int64_t H, engine::DType dtype) {
  const int64_t es = int64_t(engine::dtype_size(dtype));
  const int64_t wq = (engine::fp8::packed_row_bytes(H) + es - 1) / es;
  MONTA_CHECK(wq <= H, "comm.dispatch_dtype fp8: a packed row of " + std::to_string(H) + " activations takes " +
                           std::to_string(wq) + " " + engine::dtype_name(dtype) + " elements, no fewer than H");
  return wq;
}

int64_t dispatch_row_bytes(int64_t H, engine::DType dtype, bool dispatch_fp8) {
  return (dispatch_fp8 ? fp8_dispatch_width(H, dtype) : H) * int64_t(engine::dtype_size(dtype));
}

ExchangeStats fp8_dispatch(Exchange& ex, engine::Tensor y, const engine::Tensor& x, engine::Tensor xq,
                           engine::Tensor yq) {
  engine::fp8_pack_rows(as_byte_rows(xq), as_rows(x));
  ex.dispatch(yq, xq);
  engine::fp8_unpack_rows(as_rows(y), as_byte_rows(yq));
  return ex.last_stats();
}

ExchangeStats fp8_dispatch_experts_combine(Exchange& ex, engine::Tensor out, engine::Tensor z, engine::Tensor y,
                                           const engine::Tensor& x, engine::Tensor xq, engine::Tensor yq,
                                           const std::function<void(int)>& experts) {
  engine::fp8_pack_rows(as_byte_rows(xq), as_rows(x));
  return ex.dispatch_experts_combine(out, z, yq, xq, [&](int k) {
    engine::fp8_unpack_rows(as_rows(ex.expert_chunk(y, k)), as_byte_rows(ex.expert_chunk(yq, k)));
    experts(k);
  });
}

void fp8_round_trip(engine::Tensor x, engine::Tensor xq) {
  engine::fp8_pack_rows(as_byte_rows(xq), as_rows(x));
  engine::fp8_unpack_rows(as_rows(x), as_byte_rows(xq));
}

}  // namespace monta::comm
