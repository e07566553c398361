// The `pipelined` token exchange (MoNTA): drop_gather cut into n chunks along the capacity axis, so chunk i's
// all-gather over TP (intra-node) runs while chunk i+1's all-to-all over EP (inter-node) is in flight. Pure data
// movement like the other strategies, so it is bit-identical to `duplicate`; dispatch and combine are each
// other's backward, so both directions of both passes are pipelined.
#include <algorithm>
#include <chrono>
#include <vector>

#include "comm/exchange.h"
#include "comm/shard.h"
#include "comm/exchange_util.h"
#include "engine/check.h"
#include "engine/memory.h"

namespace monta::comm {
namespace {

using engine::DType;
using engine::Device;

using detail::flat;
using detail::n2s;

// One capacity chunk: slots [off, off + size) of C, split again over the t TP ranks (balanced, padded to cp).
struct Chunk {
  int64_t off = 0, size = 0, cp = 0;  // cp = ceil(size / t): the equal-count all-gather block's capacity
  std::vector<Shard> slices;          // (t) slice of each TP rank, offsets relative to the chunk
  int64_t block = 0;                  // elements of one TP rank's gather block: e * E_l * cp * H
  int64_t send_at = 0, gather_at = 0; // element offsets of this chunk's send and gather regions in the arena
};

class PipelinedExchange final : public Exchange {
 public:
  PipelinedExchange(Communicator& tp, Communicator& ep, ExchangeShape shape, DType dtype, Device device)
      : tp_(tp), ep_(ep), E_(shape.experts), C_(shape.capacity), H_(shape.hidden), dtype_(dtype), device_(device) {
    t_ = tp.size();
    e_ = ep.size();
    MONTA_CHECK(E_ > 0 && C_ > 0 && H_ > 0, "exchange shape (E " + n2s(E_) + ", C " + n2s(C_) + ", H " + n2s(H_) +
                                                ") must be positive");
    MONTA_CHECK(E_ % e_ == 0, "exchange: " + n2s(E_) + " experts do not divide over an EP group of " + n2s(e_));
    MONTA_CHECK(shape.chunks > 0, "pipelined exchange: chunks must be positive, not " + n2s(shape.chunks));
    El_ = E_ / e_;
    es_ = int64_t(engine::dtype_size(dtype));
    // More chunks than slots would only add empty collectives: at most C chunks.
    const int n = int(std::min<int64_t>(shape.chunks, C_));
    int64_t send_total = 0, gather_total = 0;
    for (int k = 0; k < n; ++k) {
      const Shard s = shard(C_, n, k, false);
      Chunk c;
      c.off = s.offset;
      c.size = s.size;
      c.cp = (s.size + t_ - 1) / t_;
      for (int r = 0; r < t_; ++r) c.slices.push_back(shard(s.size, t_, r, false));
      c.block = int64_t(e_) * El_ * c.cp * H_;
      c.send_at = send_total;
      c.gather_at = gather_total;
      send_total += c.block;
      gather_total += int64_t(t_) * c.block;
      chunks_.push_back(c);
    }
    // Every chunk has its own regions: all of them may be in flight at once.
    arena_ = engine::Arena("exchange_pipelined", device,
                           {{"send", {send_total}, dtype},        // per chunk (e, E_l, cs, H), this TP rank's slice
                            {"gather", {gather_total}, dtype}});  // per chunk (t, e, E_l, cp, H)
    send_ = arena_.get("send");
    gather_ = arena_.get("gather");
  }
  ExchangeKind kind() const override { return ExchangeKind::pipelined; }
  ExchangeStats last_stats() const override { return stats_; }

  // Slot (expert row, capacity c) of x/out is at (row * C + c) * H; of y/z (local expert j, peer p) at
  // ((j * e*C) + p*C + c) * H. Same layout rules as drop_gather, per chunk.
  void dispatch(Tensor y, const Tensor& x) override {
    const auto t0 = std::chrono::steady_clock::now();
    check_io(y, x, "dispatch");
    run([&](int64_t p, int64_t j) { return (p * El_ + j) * C_; },  // x row of (peer p, local expert j)
        [&](int64_t p, int64_t j) { return j * e_ * C_ + p * C_; }, x, y);
    finish(t0);
  }

  void combine(Tensor out, const Tensor& z) override {
    const auto t0 = std::chrono::steady_clock::now();
    check_io(out, z, "combine");
    run([&](int64_t p, int64_t j) { return j * e_ * C_ + p * C_; },  // z position of (peer p, local expert j)
        [&](int64_t p, int64_t j) { return (p * El_ + j) * C_; }, z, out);
    finish(t0);
  }

 private:
  // The pipeline. src_base(p, j) / dst_base(p, j): slot index (before adding the capacity position) of the
  // (peer p, local expert j) run in src and dst. Schedule, chunk k:
  //   pack k+1, start all-to-all k+1 | wait all-to-all k, start all-gather k | wait all-gather k-1, unpack k-1
  // so an all-gather is always issued while the next chunk's all-to-all is in flight; waits in issue order.
  template <class SrcBase, class DstBase>
  void run(SrcBase src_base, DstBase dst_base, const Tensor& src, Tensor dst) {
    const int n = int(chunks_.size()), me = tp_.rank();
    std::vector<std::unique_ptr<Request>> a2a(static_cast<size_t>(n)), ag(static_cast<size_t>(n));
    auto pack_and_send = [&](int k) {
      const Chunk& c = chunks_[size_t(k)];
      const Shard s = c.slices[size_t(me)];
      const int64_t m = s.size * H_, cnt = int64_t(e_) * El_ * m;
      for (int64_t p = 0; p < e_; ++p)
        for (int64_t j = 0; j < El_; ++j)
          engine::copy(flat(send_, c.send_at + (p * El_ + j) * m, m),
                       flat(src, (src_base(p, j) + c.off + s.offset) * H_, m));
      // Lands directly in this TP rank's block of the chunk's gather region (packed (e, E_l, cs, H)).
      a2a[size_t(k)] = ep_.all_to_all_async(flat(gather_, c.gather_at + me * c.block, cnt), flat(send_, c.send_at, cnt));
    };
    auto gather = [&](int k) {
      const Chunk& c = chunks_[size_t(k)];
      a2a[size_t(k)]->wait();
      if (t_ > 1)
        ag[size_t(k)] = tp_.all_gather_async(flat(gather_, c.gather_at, int64_t(t_) * c.block),
                                             flat(gather_, c.gather_at + me * c.block, c.block));
    };
    auto unpack = [&](int k) {
      const Chunk& c = chunks_[size_t(k)];
      if (ag[size_t(k)]) ag[size_t(k)]->wait();
      for (int r = 0; r < t_; ++r) {
        const Shard s = c.slices[size_t(r)];
        const int64_t m = s.size * H_;
        for (int64_t p = 0; p < e_; ++p)
          for (int64_t j = 0; j < El_; ++j)
            engine::copy(flat(dst, (dst_base(p, j) + c.off + s.offset) * H_, m),
                         flat(gather_, c.gather_at + r * c.block + (p * El_ + j) * m, m));
      }
    };
    pack_and_send(0);
    for (int k = 0; k < n; ++k) {
      if (k + 1 < n) pack_and_send(k + 1);
      gather(k);
      if (k > 0) unpack(k - 1);
    }
    unpack(n - 1);
  }

  void check_io(const Tensor& dst, const Tensor& src, const char* who) const {
    const int64_t n = E_ * C_ * H_;
    for (const Tensor* t : {&dst, &src})
      MONTA_CHECK(t->dtype == dtype_ && t->device == device_,
                  std::string("exchange ") + who + ": " + t->str() + " is not " + engine::dtype_name(dtype_) + "@" +
                      engine::device_name(device_));
    MONTA_CHECK(dst.numel() == n && src.numel() == n, std::string("exchange ") + who + ": expected " + n2s(n) +
                                                          " -> " + n2s(n) + " elements, got " + src.str() + " -> " +
                                                          dst.str());
    MONTA_CHECK(dst.data != src.data, std::string("exchange ") + who + ": output must not alias input");
  }

  void finish(std::chrono::steady_clock::time_point t0) {
    int64_t ep = 0, tp = 0;
    for (const Chunk& c : chunks_) {
      ep += int64_t(e_ - 1) * El_ * c.slices[size_t(tp_.rank())].size * H_ * es_;
      tp += int64_t(t_ - 1) * c.block * es_;
    }
    stats_.ep_bytes = ep;
    stats_.tp_bytes = tp;
    stats_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  Communicator& tp_;
  Communicator& ep_;
  int64_t E_, C_, H_, El_ = 0, es_ = 0;
  int t_ = 1, e_ = 1;
  DType dtype_;
  Device device_;
  std::vector<Chunk> chunks_;
  engine::Arena arena_;
  Tensor send_, gather_;
  ExchangeStats stats_;
};

}  // namespace

std::unique_ptr<Exchange> make_pipelined_exchange(Communicator& tp, Communicator& ep, ExchangeShape shape,
                                                  engine::DType dtype, engine::Device device) {
  return std::make_unique<PipelinedExchange>(tp, ep, shape, dtype, device);
}

}  // namespace monta::comm
