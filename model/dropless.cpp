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

std::vector<int32_t> dropless_loads(const engine::Tensor& counts, engine::Tensor table, comm::Communicator* ep) {
  const int e = ep ? ep->size() : 1;
  MONTA_CHECK(table.numel() == int64_t(e) * counts.numel(),
              "dropless_loads: table " + table.str() + " for " + std::to_string(e) + " EP ranks of " + counts.str());
  if (e > 1)
    ep->all_gather(table, counts);  // rank p's counts are row p
  else
    engine::copy(table, counts);
  std::vector<int32_t> host(size_t(table.numel()));
  engine::read_to_host(engine::Tensor(host.data(), {table.numel()}, engine::DType::i32), table,
                       "dropless expert loads");
  return host;
}

std::vector<comm::ExpertRun> dropless_gemm_runs(std::span<const comm::ExpertRun> runs, int64_t rows, int64_t quantum) {
  MONTA_CHECK(quantum > 0 && rows >= 0, "dropless_gemm_runs: quantum " + std::to_string(quantum));
  std::vector<comm::ExpertRun> calls;
  for (size_t i = 0; i < runs.size(); ++i) {
    const comm::ExpertRun& r = runs[i];
    const bool next_same = i + 1 < runs.size() && runs[i + 1].j == r.j;
    const int64_t limit = next_same ? runs[i + 1].row : rows;  // the next run of this expert, or its part's end
    MONTA_CHECK(r.count > 0 && r.row >= 0 && r.row + r.count <= limit &&
                    (i == 0 || runs[i - 1].j < r.j || (runs[i - 1].j == r.j && runs[i - 1].row < r.row)),
                "dropless_gemm_runs: run (expert " + std::to_string(r.j) + ", rows " + std::to_string(r.row) + "+" +
                    std::to_string(r.count) + ") out of order or outside " + std::to_string(rows) + " rows");
    const int64_t end = std::min(limit, r.row + (r.count + quantum - 1) / quantum * quantum);
    if (!calls.empty() && calls.back().j == r.j && calls.back().row + calls.back().count == r.row)
      calls.back().count = end - calls.back().row;  // touches the previous call of this expert: one GEMM
    else
      calls.push_back({r.j, r.row, end - r.row});
  }
  return calls;
}

bool dropless_runs_cover_all(std::span<const comm::ExpertRun> calls, int64_t El, int64_t rows) {
  if (int64_t(calls.size()) != El) return false;
  for (int64_t j = 0; j < El; ++j)
    if (calls[size_t(j)].j != j || calls[size_t(j)].row != 0 || calls[size_t(j)].count != rows) return false;
  return true;
}

engine::Tensor capacity_view(const engine::Tensor& t, int64_t C) {
  MONTA_CHECK(t.ndim == 3 && C > 0 && C <= t.dim(1), "capacity_view: capacity " + std::to_string(C) + " of " + t.str());
  return engine::make_view(t.data, {t.dim(0), C, t.dim(2)}, t.dtype, t.device);
}

}  // namespace monta::model
