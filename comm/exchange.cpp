// The exchange interface's shared parts (names, the one-chunk dispatch_experts_combine, the factory) and the
// `duplicate` strategy (full all-to-all on every TP rank); the capacity-sliced ones are in pipelined_exchange.cpp.
#include "comm/exchange.h"

#include <algorithm>

#include "comm/exchange_util.h"
#include "engine/check.h"
#include "engine/memory.h"
#include "engine/timing.h"
#include "engine/trace.h"

namespace monta::comm {
namespace {

using engine::DType;
using engine::Device;

using detail::flat;
using detail::n2s;

// Every TP rank moves the whole buffer over EP. The all-to-all blocks of x are already contiguous (block p =
// experts of peer p); only y's (expert, peer) order needs a reorder, and none when E_l == 1.
class DuplicateExchange final : public Exchange {
 public:
  DuplicateExchange(Communicator& ep, ExchangeShape shape, DType dtype, Device device)
      : ep_(ep), E_(shape.experts), C_(shape.capacity), C_max_(shape.capacity), H_(shape.hidden), dtype_(dtype),
        device_(device) {
    e_ = ep.size();
    MONTA_CHECK(E_ > 0 && C_ > 0 && H_ > 0, "exchange shape (E " + n2s(E_) + ", C " + n2s(C_) + ", H " + n2s(H_) +
                                                ") must be positive");
    MONTA_CHECK(E_ % e_ == 0, "exchange: " + n2s(E_) + " experts do not divide over an EP group of " + n2s(e_));
    El_ = E_ / e_;
    es_ = int64_t(engine::dtype_size(dtype));
    const auto specs = exchange_staging_specs(ExchangeKind::duplicate, shape, 1, e_, dtype);
    if (!specs.empty()) {
      arena_ = engine::Arena("exchange_duplicate", device, specs);
      stage_ = arena_.get("stage");
    }
  }
  ExchangeKind kind() const override { return ExchangeKind::duplicate; }
  int64_t staging_bytes() const override { return int64_t(arena_.bytes()); }
  void set_capacity(int64_t capacity) override {
    MONTA_CHECK(capacity > 0 && capacity <= C_max_, "exchange duplicate: capacity " + n2s(capacity) +
                                                        " outside [1, " + n2s(C_max_) + "] (the buffers' capacity)");
    C_ = capacity;
    loads_.clear();
  }
  int64_t capacity() const override { return C_; }
  void set_loads(std::span<const int32_t> loads) override {
    detail::check_loads(loads, e_, E_, C_, "duplicate");
    loads_.assign(loads.begin(), loads.end());
  }
  std::vector<ExpertRun> expert_runs(int k) const override {
    MONTA_CHECK(k == 0, "exchange duplicate: expert chunk " + n2s(k) + " of a single-chunk strategy");
    return filled_runs(e_, El_, ep_.rank(), 0, C_, loads_);
  }
  ExchangeStats last_stats() const override { return stats_; }

  void dispatch(Tensor y, const Tensor& x) override {
    const engine::TraceRange trace("exchange dispatch");
    const engine::HostTimer tm;
    const int64_t W = detail::exchange_row_width(y, x, E_ * C_, H_, dtype_, device_, "dispatch");
    const int64_t n = E_ * C_ * W;
    const Tensor xf = flat(x, 0, n), yf = flat(y, 0, n);
    if (!loads_.empty()) {
      move_filled(y, x, W, true);
    } else if (El_ == 1) {
      ep_.all_to_all(yf, xf);
    } else {
      ep_.all_to_all(flat(stage_, 0, n), xf);
      const int64_t row = C_ * W;
      for (int64_t p = 0; p < e_; ++p)
        for (int64_t j = 0; j < El_; ++j)
          engine::copy(flat(y, (j * e_ + p) * row, row), flat(stage_, (p * El_ + j) * row, row));
    }
    finish(tm, W, true);
  }

  void combine(Tensor out, const Tensor& z) override {
    const engine::TraceRange trace("exchange combine");
    const engine::HostTimer tm;
    const int64_t W = detail::exchange_row_width(out, z, E_ * C_, H_, dtype_, device_, "combine");
    const int64_t n = E_ * C_ * W;
    const Tensor zf = flat(z, 0, n), of = flat(out, 0, n);
    if (!loads_.empty()) {
      move_filled(out, z, W, false);
    } else if (El_ == 1) {
      ep_.all_to_all(of, zf);
    } else {
      const int64_t row = C_ * W;
      for (int64_t p = 0; p < e_; ++p)
        for (int64_t j = 0; j < El_; ++j)
          engine::copy(flat(stage_, (p * El_ + j) * row, row), flat(z, (j * e_ + p) * row, row));
      ep_.all_to_all(of, flat(stage_, 0, n));
    }
    finish(tm, W, false);
  }

 private:
  int64_t load(int64_t p, int64_t x) const { return loads_.empty() ? C_ : loads_[size_t(p * E_ + x)]; }
  // Rows of the (p, j) run: global expert p*E_l + j of this rank to peer p (token side), or this rank's expert j
  // from peer p (expert side). With loads, only these travel.
  int64_t sent(int64_t p, int64_t j, bool dispatch) const {
    const int me = ep_.rank();
    return dispatch ? load(me, p * El_ + j) : load(p, me * El_ + j);
  }

  // The all-to-all-v of the filled rows only (set_loads). One local expert: each peer's rows are one run in both
  // buffers, sent and received in place (offsets, no copy). Several: the runs are packed into dst first (free until
  // now: dst never aliases src), exchanged into the stage, and unpacked into dst. Dispatch then zeroes y's padding.
  void move_filled(Tensor dst, const Tensor& src, int64_t W, bool dispatch) {
    const int me = ep_.rank();
    std::vector<int64_t> sc(size_t(e_), 0), so(size_t(e_), 0), rc(size_t(e_), 0), ro(size_t(e_), 0);
    // Token side (E, C): run (p, j) at row (p*E_l + j)*C; expert side (E_l, e*C): at row j*e*C + p*C.
    auto tok = [&](int64_t p, int64_t j) { return (p * El_ + j) * C_; };
    auto exp = [&](int64_t p, int64_t j) { return j * e_ * C_ + p * C_; };
    auto src_at = [&](int64_t p, int64_t j) { return dispatch ? tok(p, j) : exp(p, j); };
    auto dst_at = [&](int64_t p, int64_t j) { return dispatch ? exp(p, j) : tok(p, j); };
    for (int64_t p = 0; p < e_; ++p) {
      for (int64_t j = 0; j < El_; ++j) {
        sc[size_t(p)] += sent(p, j, dispatch) * W;
        rc[size_t(p)] += sent(p, j, !dispatch) * W;
      }
      if (El_ == 1) {
        so[size_t(p)] = src_at(p, 0) * W;
        ro[size_t(p)] = dst_at(p, 0) * W;
      } else if (p > 0) {
        so[size_t(p)] = so[size_t(p - 1)] + sc[size_t(p - 1)];
        ro[size_t(p)] = ro[size_t(p - 1)] + rc[size_t(p - 1)];
      }
    }
    if (El_ == 1) {
      ep_.all_to_all_v_async(dst, rc, ro, src, sc, so)->wait();
    } else {
      int64_t at = 0;
      for (int64_t p = 0; p < e_; ++p)
        for (int64_t j = 0; j < El_; ++j) {
          const int64_t m = sent(p, j, dispatch) * W;
          if (m) engine::copy(flat(dst, at, m), flat(src, src_at(p, j) * W, m));
          at += m;
        }
      ep_.all_to_all_v_async(stage_, rc, ro, dst, sc, so)->wait();
      at = 0;
      for (int64_t p = 0; p < e_; ++p)
        for (int64_t j = 0; j < El_; ++j) {
          const int64_t m = sent(p, j, !dispatch) * W;
          if (m) engine::copy(flat(dst, dst_at(p, j) * W, m), flat(stage_, at, m));
          at += m;
        }
    }
    if (dispatch)
      for (int64_t p = 0; p < e_; ++p)
        for (int64_t j = 0; j < El_; ++j) {
          const int64_t m = load(p, me * El_ + j);
          if (m < C_) engine::fill_zero(flat(dst, (exp(p, j) + m) * W, (C_ - m) * W));
        }
  }

  // The bytes this rank sent to other ranks: every row of its peers' runs, or with loads the filled ones.
  void finish(const engine::HostTimer& tm, int64_t W, bool dispatch) {  // W: the row width moved
    int64_t rows = 0;
    for (int64_t p = 0; p < e_; ++p)
      for (int64_t j = 0; j < El_; ++j)
        if (p != ep_.rank()) rows += sent(p, j, dispatch);
    stats_.ep_bytes = rows * W * es_;
    stats_.tp_bytes = 0;
    stats_.seconds = tm.seconds();
  }
  Communicator& ep_;
  int64_t E_, C_, C_max_, H_, El_ = 0, es_ = 0;  // C_: this step's capacity; C_max_: the buffers'
  int e_ = 1;
  DType dtype_;
  Device device_;
  ExchangeStats stats_;
  engine::Arena arena_;
  Tensor stage_;
  std::vector<int32_t> loads_;  // set_loads: (e, E), empty = every slot filled
};

}  // namespace

std::vector<ExpertRun> filled_runs(int e, int64_t El, int ep_rank, int64_t off, int64_t c,
                                   std::span<const int32_t> loads) {
  MONTA_CHECK(loads.empty() || int64_t(loads.size()) == int64_t(e) * e * El,
              "filled_runs: " + n2s(int64_t(loads.size())) + " loads for an EP group of " + n2s(e) + " and " +
                  n2s(e * El) + " experts");
  std::vector<ExpertRun> runs;
  for (int64_t j = 0; j < El; ++j)
    for (int p = 0; p < e; ++p) {
      const int64_t load = loads.empty() ? off + c : loads[size_t(int64_t(p) * e * El + ep_rank * El + j)];
      const int64_t n = std::clamp<int64_t>(load - off, 0, c);
      if (n > 0) runs.push_back({j, p * c, n});
    }
  return runs;
}

Tensor Exchange::expert_chunk(const Tensor& t, int k) const {
  MONTA_CHECK(k == 0, "exchange " + std::string(exchange_kind_name(kind())) + ": expert chunk " + n2s(k) +
                          " of a single-chunk strategy");
  return t;
}

ExchangeStats Exchange::dispatch_experts_combine(Tensor out, Tensor z, Tensor y, const Tensor& x,
                                                 const std::function<void(int)>& experts) {
  dispatch(y, x);
  const ExchangeStats d = last_stats();
  experts(0);
  combine(out, z);
  const ExchangeStats c = last_stats();
  return {d.ep_bytes + c.ep_bytes, d.tp_bytes + c.tp_bytes, d.seconds + c.seconds};
}

ExchangeKind parse_exchange_kind(const std::string& name) {
  if (name == "duplicate") return ExchangeKind::duplicate;
  if (name == "drop_gather") return ExchangeKind::drop_gather;
  if (name == "pipelined") return ExchangeKind::pipelined;
  if (name == "overlapped") return ExchangeKind::overlapped;
  engine::fail_user("unknown exchange strategy '" + name +
                    "'; valid names: duplicate, drop_gather, pipelined, overlapped.");
}

const char* exchange_kind_name(ExchangeKind k) {
  switch (k) {
    case ExchangeKind::duplicate: return "duplicate";
    case ExchangeKind::drop_gather: return "drop_gather";
    case ExchangeKind::pipelined: return "pipelined";
    case ExchangeKind::overlapped: return "overlapped";
  }
  return "?";
}

std::vector<engine::TensorSpec> exchange_staging_specs(ExchangeKind kind, const ExchangeShape& shape, int t, int e,
                                                       engine::DType dtype) {
  if (kind != ExchangeKind::duplicate) return pipelined_staging_specs(kind, shape, t, e, dtype);
  const int64_t El = shape.experts / e;
  if (El <= 1) return {};  // one local expert: the all-to-all lands in y's order already
  return {{"stage", {int64_t(e) * El * shape.capacity * shape.hidden}, dtype}};  // (e, E_l, C, H)
}

std::unique_ptr<Exchange> make_exchange(ExchangeKind kind, Communicator& tp, Communicator& ep, ExchangeShape shape,
                                        engine::DType dtype, engine::Device device) {
  switch (kind) {
    case ExchangeKind::duplicate:
      MONTA_USER_CHECK(!shape.sequence_parallel,
                       "comm.exchange duplicate has no meaning with parallel.sequence_parallel (no token is duplicated "
                       "over TP); use drop_gather, pipelined, overlapped or auto");
      return std::make_unique<DuplicateExchange>(ep, shape, dtype, device);
    case ExchangeKind::drop_gather:
    case ExchangeKind::pipelined:
    case ExchangeKind::overlapped: return make_pipelined_exchange(kind, tp, ep, shape, dtype, device);
  }
  MONTA_CHECK(false, "make_exchange: unknown kind");
  return nullptr;
}

}  // namespace monta::comm
