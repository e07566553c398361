// Dropless routing's per-step capacity (model/dropless.h).
#include "model/dropless.h"

#include <algorithm>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/memory.h"

namespace monta::model {

int64_t dropless_step_capacity(int64_t max_load, int64_t tokens) {
  MONTA_CHECK(tokens > 0 && max_load >= 0 && max_load <= tokens,
              "dropless: load " + std::to_string(max_load) + " of " + std::to_string(tokens) + " tokens");
  const int64_t q = std::clamp<int64_t>(tokens / 8, 1, 128);
  return std::min(tokens, std::max<int64_t>(1, (max_load + q - 1) / q * q));
}

int64_t dropless_max_load(const engine::Tensor& counts, engine::Tensor scratch, comm::Communicator* ep) {
  engine::copy(scratch, counts);
  if (ep && ep->size() > 1) ep->all_reduce(scratch, comm::ReduceOp::max);
  std::vector<int32_t> host(size_t(scratch.numel()));
  engine::read_to_host(engine::Tensor(host.data(), {scratch.numel()}, engine::DType::i32), scratch,
                       "dropless expert loads");
  return *std::max_element(host.begin(), host.end());
}

engine::Tensor capacity_view(const engine::Tensor& t, int64_t C) {
  MONTA_CHECK(t.ndim == 3 && C > 0 && C <= t.dim(1), "capacity_view: capacity " + std::to_string(C) + " of " + t.str());
  return engine::make_view(t.data, {t.dim(0), C, t.dim(2)}, t.dtype, t.device);
}

}  // namespace monta::model
