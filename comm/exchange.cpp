// Token-exchange strategies: duplicate (full all-to-all on every TP rank) and drop_gather (capacity slice per
// TP rank over EP, then all-gather over TP). Pure data movement, so every strategy is bit-identical.
#include "comm/exchange.h"

#include <chrono>

#include "comm/shard.h"
#include "comm/exchange_util.h"
#include "engine/check.h"
#include "engine/memory.h"
#include "engine/trace.h"

namespace monta::comm {
namespace {

using engine::DType;
using engine::Device;

using detail::flat;
using detail::n2s;

class Timer {
 public:
  Timer() : t0_(std::chrono::steady_clock::now()) {}
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

 private:
  std::chrono::steady_clock::time_point t0_;
};

class ExchangeBase : public Exchange {
 public:
  ExchangeBase(Communicator& tp, Communicator& ep, ExchangeShape shape, DType dtype, Device device)
      : tp_(tp), ep_(ep), E_(shape.experts), C_(shape.capacity), H_(shape.hidden), dtype_(dtype), device_(device) {
    t_ = tp.size();
    e_ = ep.size();
    MONTA_CHECK(E_ > 0 && C_ > 0 && H_ > 0, "exchange shape (E " + n2s(E_) + ", C " + n2s(C_) + ", H " + n2s(H_) +
                                                ") must be positive");
    MONTA_CHECK(E_ % e_ == 0, "exchange: " + n2s(E_) + " experts do not divide over an EP group of " + n2s(e_));
    El_ = E_ / e_;
    es_ = int64_t(engine::dtype_size(dtype));
  }
  ExchangeStats last_stats() const override { return stats_; }

 protected:
  void check_io(const Tensor& dst, int64_t dst_n, const Tensor& src, int64_t src_n, const char* who) const {
    for (const Tensor* t : {&dst, &src})
      MONTA_CHECK(t->dtype == dtype_ && t->device == device_,
                  std::string("exchange ") + who + ": " + t->str() + " is not " + engine::dtype_name(dtype_) + "@" +
                      engine::device_name(device_));
    MONTA_CHECK(dst.numel() == dst_n && src.numel() == src_n,
                std::string("exchange ") + who + ": expected " + n2s(src_n) + " -> " + n2s(dst_n) + " elements, got " +
                    src.str() + " -> " + dst.str());
    MONTA_CHECK(dst.data != src.data, std::string("exchange ") + who + ": output must not alias input");
  }
  // Elements of x (E, C, H) and of y (E_l, e*C, H); both equal E*C*H.
  int64_t x_elems() const { return E_ * C_ * H_; }

  Communicator& tp_;
  Communicator& ep_;
  int64_t E_, C_, H_, El_ = 0, es_ = 0;
  int t_ = 1, e_ = 1;
  DType dtype_;
  Device device_;
  ExchangeStats stats_;
};

// Every TP rank moves the whole buffer over EP. The all-to-all blocks of x are already contiguous (block p =
// experts of peer p); only y's (expert, peer) order needs a reorder, and none when E_l == 1.
class DuplicateExchange final : public ExchangeBase {
 public:
  DuplicateExchange(Communicator& tp, Communicator& ep, ExchangeShape shape, DType dtype, Device device)
      : ExchangeBase(tp, ep, shape, dtype, device) {
    if (El_ > 1) {
      arena_ = engine::Arena("exchange_duplicate", device, {{"stage", {e_ * El_ * C_ * H_}, dtype}});  // (e, E_l, C, H)
      stage_ = arena_.get("stage");
    }
  }
  ExchangeKind kind() const override { return ExchangeKind::duplicate; }

  void dispatch(Tensor y, const Tensor& x) override {
    const engine::TraceRange trace("exchange dispatch");
    Timer tm;
    check_io(y, x_elems(), x, x_elems(), "dispatch");
    const Tensor xf = flat(x, 0, x_elems()), yf = flat(y, 0, x_elems());
    if (El_ == 1) {
      ep_.all_to_all(yf, xf);
    } else {
      ep_.all_to_all(stage_, xf);
      const int64_t row = C_ * H_;
      for (int64_t p = 0; p < e_; ++p)
        for (int64_t j = 0; j < El_; ++j)
          engine::copy(flat(y, (j * e_ + p) * row, row), flat(stage_, (p * El_ + j) * row, row));
    }
    finish(tm);
  }

  void combine(Tensor out, const Tensor& z) override {
    const engine::TraceRange trace("exchange combine");
    Timer tm;
    check_io(out, x_elems(), z, x_elems(), "combine");
    const Tensor zf = flat(z, 0, x_elems()), of = flat(out, 0, x_elems());
    if (El_ == 1) {
      ep_.all_to_all(of, zf);
    } else {
      const int64_t row = C_ * H_;
      for (int64_t p = 0; p < e_; ++p)
        for (int64_t j = 0; j < El_; ++j)
          engine::copy(flat(stage_, (p * El_ + j) * row, row), flat(z, (j * e_ + p) * row, row));
      ep_.all_to_all(of, stage_);
    }
    finish(tm);
  }

 private:
  void finish(const Timer& tm) {
    stats_.ep_bytes = int64_t(e_ - 1) * El_ * C_ * H_ * es_;
    stats_.tp_bytes = 0;
    stats_.seconds = tm.seconds();
  }
  engine::Arena arena_;
  Tensor stage_;
};

// TP rank r owns capacity slice r (balanced, at most Cp = ceil(C/t) slots). Its EP all-to-all lands directly in
// block r of the gather buffer (t blocks of e*E_l*Cp*H, each packed as (e, E_l, cs_r, H)), which an in-place
// all-gather over TP completes; a reorder then scatters every slice to its slots.
class DropGatherExchange final : public ExchangeBase {
 public:
  DropGatherExchange(Communicator& tp, Communicator& ep, ExchangeShape shape, DType dtype, Device device)
      : ExchangeBase(tp, ep, shape, dtype, device) {
    Cp_ = (C_ + t_ - 1) / t_;
    block_ = int64_t(e_) * El_ * Cp_ * H_;
    for (int r = 0; r < t_; ++r) slices_.push_back(shard(C_, t_, r, false));
    mine_ = slices_[size_t(tp.rank())];
    arena_ = engine::Arena("exchange_drop_gather", device,
                           {{"send", {block_}, dtype},          // (e, E_l, cs, H) packed slice of this TP rank
                            {"gather", {t_ * block_}, dtype}});  // (t, e, E_l, Cp, H), slice r packed in block r
    send_ = arena_.get("send");
    gather_ = arena_.get("gather");
  }
  ExchangeKind kind() const override { return ExchangeKind::drop_gather; }

  // Slot (expert row, capacity c) of x/out is at ((expert * C) + c) * H; of y/z at ((j * e*C) + p*C + c) * H.
  void dispatch(Tensor y, const Tensor& x) override {
    const engine::TraceRange trace("exchange dispatch");
    Timer tm;
    check_io(y, x_elems(), x, x_elems(), "dispatch");
    const int64_t cs = mine_.size, n = cs * H_;
    for (int64_t p = 0; p < e_; ++p)
      for (int64_t j = 0; j < El_; ++j)
        engine::copy(flat(send_, (p * El_ + j) * n, n), flat(x, ((p * El_ + j) * C_ + mine_.offset) * H_, n));
    exchange_slices();
    for (int r = 0; r < t_; ++r) {
      const Shard s = slices_[size_t(r)];
      const int64_t m = s.size * H_;
      for (int64_t p = 0; p < e_; ++p)
        for (int64_t j = 0; j < El_; ++j)
          engine::copy(flat(y, (j * e_ * C_ + p * C_ + s.offset) * H_, m), flat(gather_, r * block_ + (p * El_ + j) * m, m));
    }
    finish(tm);
  }

  void combine(Tensor out, const Tensor& z) override {
    const engine::TraceRange trace("exchange combine");
    Timer tm;
    check_io(out, x_elems(), z, x_elems(), "combine");
    const int64_t cs = mine_.size, n = cs * H_;
    for (int64_t p = 0; p < e_; ++p)
      for (int64_t j = 0; j < El_; ++j)
        engine::copy(flat(send_, (p * El_ + j) * n, n), flat(z, (j * e_ * C_ + p * C_ + mine_.offset) * H_, n));
    exchange_slices();
    for (int r = 0; r < t_; ++r) {
      const Shard s = slices_[size_t(r)];
      const int64_t m = s.size * H_;
      for (int64_t p = 0; p < e_; ++p)
        for (int64_t j = 0; j < El_; ++j)
          engine::copy(flat(out, ((p * El_ + j) * C_ + s.offset) * H_, m), flat(gather_, r * block_ + (p * El_ + j) * m, m));
    }
    finish(tm);
  }

 private:
  // send_ (packed slice) -> all-to-all over EP into gather block r -> all-gather over TP.
  void exchange_slices() {
    const int64_t n = int64_t(e_) * El_ * mine_.size * H_;
    const Tensor mine = flat(gather_, tp_.rank() * block_, block_);
    ep_.all_to_all(flat(mine, 0, n), flat(send_, 0, n));
    if (t_ > 1) tp_.all_gather(gather_, mine);
  }
  void finish(const Timer& tm) {
    stats_.ep_bytes = int64_t(e_ - 1) * El_ * mine_.size * H_ * es_;
    stats_.tp_bytes = int64_t(t_ - 1) * block_ * es_;
    stats_.seconds = tm.seconds();
  }
  int64_t Cp_ = 0, block_ = 0;
  std::vector<Shard> slices_;
  Shard mine_;
  engine::Arena arena_;
  Tensor send_, gather_;
};

}  // namespace

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

std::unique_ptr<Exchange> make_exchange(ExchangeKind kind, Communicator& tp, Communicator& ep, ExchangeShape shape,
                                        engine::DType dtype, engine::Device device) {
  switch (kind) {
    case ExchangeKind::duplicate: return std::make_unique<DuplicateExchange>(tp, ep, shape, dtype, device);
    case ExchangeKind::drop_gather: return std::make_unique<DropGatherExchange>(tp, ep, shape, dtype, device);
    case ExchangeKind::pipelined: return make_pipelined_exchange(tp, ep, shape, dtype, device, false);
    case ExchangeKind::overlapped: return make_pipelined_exchange(tp, ep, shape, dtype, device, true);
  }
  MONTA_CHECK(false, "make_exchange: unknown kind");
  return nullptr;
}

}  // namespace monta::comm
