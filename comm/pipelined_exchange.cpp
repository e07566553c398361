// The capacity-sliced token exchanges: TP rank r sends only its slice of the capacity over EP, an all-gather over
// TP completes it. `drop_gather` does that once; `pipelined` (MoNTA) cuts it into n chunks along capacity, so chunk
// i's all-gather over TP (intra-node) runs while chunk i+1's all-to-all over EP (inter-node) is in flight;
// `overlapped` puts the experts in the pipeline too (dispatch_experts_combine). One class: drop_gather is the
// one-chunk pipeline. Pure data movement, so bit-identical to `duplicate`; dispatch and combine are each other's
// backward, so both directions of both passes are pipelined.
#include <algorithm>
#include <functional>
#include <utility>
#include <vector>

#include "comm/exchange.h"
#include "comm/shard.h"
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

// One capacity chunk: slots [off, off + size) of C, split again over the t TP ranks (balanced, padded to cp).
struct Chunk {
  int64_t off = 0, size = 0, cp = 0;  // cp = ceil(size / t): the equal-count all-gather block's capacity
  std::vector<Shard> slices;          // (t) slice of each TP rank, offsets relative to the chunk
  int64_t block = 0;                  // slots of one TP rank's gather block: e * E_l * cp (times the row width W)
  int64_t send_at = 0, gather_at = 0; // element offsets of this chunk's send and gather regions, sized for W = H
};

// The chunks of capacity C (at most C of them: more would only add empty collectives; drop_gather has one) into
// *out when given; returns the elements of the send and gather regions they need. The one rule of the staging memory:
// the exchange's constructor and exchange_staging_specs (the memory model) both come here.
std::pair<int64_t, int64_t> plan_chunks(int64_t C, int64_t chunks_wanted, int t, int e, int64_t El, int64_t H,
                                        std::vector<Chunk>* out) {
  const int n = int(std::min<int64_t>(chunks_wanted, C));
  int64_t send_total = 0, gather_total = 0;
  if (out) out->clear();
  for (int k = 0; k < n; ++k) {
    const Shard s = shard(C, n, k, false);
    Chunk c;
    c.off = s.offset;
    c.size = s.size;
    c.cp = (s.size + t - 1) / t;
    for (int r = 0; r < t; ++r) c.slices.push_back(shard(s.size, t, r, false));
    c.block = int64_t(e) * El * c.cp;
    c.send_at = send_total;
    c.gather_at = gather_total;
    send_total += c.block * H;
    gather_total += int64_t(t) * c.block * H;
    if (out) out->push_back(c);
  }
  return {send_total, gather_total};
}

}  // namespace

std::vector<engine::TensorSpec> pipelined_staging_specs(ExchangeKind kind, const ExchangeShape& shape, int t, int e,
                                                        DType dtype) {
  const int64_t chunks = kind == ExchangeKind::drop_gather ? 1 : shape.chunks;  // drop_gather: the one-chunk pipeline
  const auto [send, gather] = plan_chunks(shape.capacity, chunks, t, e, shape.experts / e, shape.hidden, nullptr);
  return {{"send", {send}, dtype},      // per chunk (e, E_l, cs, H), this TP rank's slice
          {"gather", {gather}, dtype}};  // per chunk (t, e, E_l, cp, H)
}

namespace {

class PipelinedExchange final : public Exchange {
 public:
  PipelinedExchange(Communicator& tp, Communicator& ep, ExchangeShape shape, DType dtype, Device device, ExchangeKind kind)
      : tp_(tp), ep_(ep), E_(shape.experts), C_(shape.capacity), H_(shape.hidden), dtype_(dtype), device_(device),
        kind_(kind), sp_(shape.sequence_parallel && tp.size() > 1) {
    MONTA_CHECK(kind != ExchangeKind::duplicate, "PipelinedExchange: duplicate has its own class");
    if (kind == ExchangeKind::drop_gather) shape.chunks = 1;  // drop_gather is the one-chunk pipeline
    t_ = tp.size();
    e_ = ep.size();
    MONTA_CHECK(E_ > 0 && C_ > 0 && H_ > 0, "exchange shape (E " + n2s(E_) + ", C " + n2s(C_) + ", H " + n2s(H_) +
                                                ") must be positive");
    MONTA_CHECK(E_ % e_ == 0, "exchange: " + n2s(E_) + " experts do not divide over an EP group of " + n2s(e_));
    MONTA_CHECK(shape.chunks > 0, std::string(exchange_kind_name(kind)) + " exchange: chunks must be positive, not " +
                                      n2s(shape.chunks));
    El_ = E_ / e_;
    es_ = int64_t(engine::dtype_size(dtype));
    chunks_wanted_ = shape.chunks;
    C_max_ = C_;
    plan(C_);  // the largest capacity needs the largest regions (pipelined_staging_specs sizes them)
    // Every chunk has its own regions: all of them may be in flight at once. The overlapped combine of chunk k
    // reuses chunk k's regions: it is packed only after chunk k's dispatch has been unpacked, which orders it
    // after both of that dispatch's collectives. A leg of narrower rows (W < H, the FP8 dispatch) packs its blocks
    // W apart inside the same regions, so the regions of different chunks never overlap whatever the widths.
    arena_ = engine::Arena(std::string("exchange_") + exchange_kind_name(kind), device,
                           pipelined_staging_specs(kind, shape, t_, e_, dtype));
    send_ = arena_.get("send");
    gather_ = arena_.get("gather");
  }
  ExchangeKind kind() const override { return kind_; }
  int64_t staging_bytes() const override { return int64_t(arena_.bytes()); }
  bool overlapped() const { return kind_ == ExchangeKind::overlapped; }
  // A smaller capacity needs no larger regions (every chunk's slices shrink or chunks vanish), checked anyway.
  void set_capacity(int64_t capacity) override {
    MONTA_CHECK(capacity > 0 && capacity <= C_max_, std::string("exchange ") + exchange_kind_name(kind_) +
                                                        ": capacity " + n2s(capacity) + " outside [1, " + n2s(C_max_) +
                                                        "] (the buffers' capacity)");
    loads_.clear();
    if (capacity == C_) return;
    const auto [send_total, gather_total] = plan(capacity);
    MONTA_CHECK(send_total <= send_.numel() && gather_total <= gather_.numel(),
                "exchange: the chunks of capacity " + n2s(capacity) + " do not fit the staging arena");
    C_ = capacity;
  }
  int64_t capacity() const override { return C_; }
  void set_loads(std::span<const int32_t> loads) override {
    detail::check_loads(loads, e_, E_, C_, exchange_kind_name(kind_));
    loads_.assign(loads.begin(), loads.end());
  }
  // Single-chunk strategies: the whole capacity; overlapped: chunk k's slots of every (j, p).
  std::vector<ExpertRun> expert_runs(int k) const override {
    MONTA_CHECK(k >= 0 && k < expert_chunks(), std::string("exchange ") + exchange_kind_name(kind_) +
                                                   ": expert chunk " + n2s(k) + " of " + n2s(expert_chunks()));
    if (!overlapped()) return filled_runs(e_, El_, ep_.rank(), 0, C_, loads_);
    const Chunk& c = chunks_[size_t(k)];
    return filled_runs(e_, El_, ep_.rank(), c.off, c.size, loads_);
  }
  ExchangeStats last_stats() const override { return stats_; }

  // Slot (expert row, capacity c) of x/out is at (row * C + c) * H; of y/z (local expert j, peer p) at
  // ((j * e*C) + p*C + c) * H. Same layout rules as drop_gather, per chunk.
  void dispatch(Tensor y, const Tensor& x) override {
    const engine::TraceRange trace("exchange dispatch");
    const engine::HostTimer t0;
    Leg leg{x, y, token_side(), expert_side(), check_io(y, x, "dispatch")};
    leg.partial_src = sp_;
    run(leg);
    finish(t0, leg.W, 0, leg.W);
  }

  void combine(Tensor out, const Tensor& z) override {
    const engine::TraceRange trace("exchange combine");
    const engine::HostTimer t0;
    Leg leg{z, out, expert_side(), token_side(), check_io(out, z, "combine")};
    run(leg);
    finish(t0, leg.W, 0, 0);
  }

  int expert_chunks() const override { return overlapped() ? int(chunks_.size()) : 1; }
  int pipeline_chunks() const override { return int(chunks_.size()); }

  Tensor expert_chunk(const Tensor& t, int k) const override {
    if (!overlapped()) return Exchange::expert_chunk(t, k);
    MONTA_CHECK(k >= 0 && k < int(chunks_.size()), "exchange overlapped: expert chunk " + n2s(k) + " of " +
                                                       n2s(int64_t(chunks_.size())));
    MONTA_CHECK(t.ndim == 3 && t.dim(0) == El_ && t.dim(1) == e_ * C_,
                "exchange overlapped: expert-side tensor must be (" + n2s(El_) + ", " + n2s(e_ * C_) + ", W), got " +
                    t.str());
    const Chunk& c = chunks_[size_t(k)];
    const int64_t W = t.dim(2);
    return engine::make_view(static_cast<char*>(t.data) + size_t(El_ * e_ * c.off * W) * engine::dtype_size(t.dtype),
                             {El_, e_ * c.size, W}, t.dtype, t.device);
  }

  // Rank-major packing of every slice of the chunk(s) into the gather region (block r: slice r of each (p, j)
  // run, as the all-gather lays it out), reduce-scatter over TP into the send region (this rank's block, summed),
  // and back into this rank's slice rows of z. Both regions are idle here: the chunk's dispatch has been unpacked
  // and its combine is not packed yet.
  bool reduce_tp_partials(Tensor zk, int k) override {
    if (t_ == 1) return true;
    const engine::TraceRange trace("exchange reduce-scatter of TP partials");
    const bool one = overlapped();
    MONTA_CHECK(k >= 0 && k < (one ? int(chunks_.size()) : 1), "exchange: reduce_tp_partials chunk " + n2s(k));
    const Position at = one ? chunk_major() : expert_side();
    const int64_t base = one ? El_ * e_ * chunks_[size_t(k)].off : 0;  // zk's first slot in the whole z
    const int64_t W = H_;                                               // z holds the experts' output rows
    for (int ci = one ? k : 0; ci < (one ? k + 1 : int(chunks_.size())); ++ci) {
      const Chunk& c = chunks_[size_t(ci)];
      const int64_t blk = c.block * W;
      for (int r = 0; r < t_; ++r) move_slice(c, r, W, zk, at, base, gather_, c.gather_at + r * blk, true);
      tp_.reduce_scatter(flat(send_, c.send_at, blk), flat(gather_, c.gather_at, int64_t(t_) * blk), ReduceOp::sum);
      move_slice(c, tp_.rank(), W, zk, at, base, send_, c.send_at, false);
    }
    return true;
  }

  // The overlapped schedule, host order (every call below is asynchronous on NCCL):
  //   pack and start the dispatch all-to-all of every chunk;
  //   for k: start dispatch all-gather k (chained after all-to-all k) | unpack k-1, experts(k-1), pack and start
  //          the combine all-to-all of k-1;
  //   unpack n-1, experts(n-1), start its combine all-to-all; then the combine's all-gathers and unpacks as in
  //   the pipelined schedule.
  // So experts(k) overlaps the dispatch of later chunks and the combine of earlier ones.
  ExchangeStats dispatch_experts_combine(Tensor out, Tensor z, Tensor y, const Tensor& x,
                                         const std::function<void(int)>& experts) override {
    if (!overlapped()) return Exchange::dispatch_experts_combine(out, z, y, x, experts);
    const engine::TraceRange trace("exchange overlapped: dispatch, experts, combine");
    const engine::HostTimer t0;
    const int n = int(chunks_.size());
    Leg d{x, y, token_side(), chunk_major(), check_io(y, x, "dispatch")};
    Leg c{z, out, chunk_major(), token_side(), check_io(out, z, "combine")};
    d.partial_src = sp_;
    double in_experts = 0;
    auto compute = [&](int k) {
      unpack(d, k);
      const engine::HostTimer e0;
      {
        const engine::TraceRange trace("experts chunk " + std::to_string(k));
        experts(k);
      }
      in_experts += e0.seconds();
      pack_and_send(c, k);
    };
    for (int k = 0; k < n; ++k) pack_and_send(d, k);
    for (int k = 0; k < n; ++k) {
      gather(d, k);
      if (k > 0) compute(k - 1);
    }
    compute(n - 1);
    for (int k = 0; k < n; ++k) {
      gather(c, k);
      if (k > 0) unpack(c, k - 1);
    }
    unpack(c, n - 1);
    finish(t0, d.W + c.W, in_experts, d.W);
    return stats_;
  }

 private:
  // The chunks of capacity C (at most C of them: more would only add empty collectives) into chunks_; returns the
  // elements of the send and gather regions they need.
  std::pair<int64_t, int64_t> plan(int64_t C) { return plan_chunks(C, chunks_wanted_, t_, e_, El_, H_, &chunks_); }

  // Where the (peer p, local expert j) run of chunk k starts, as a slot index (times H for elements); the slots of
  // the run are contiguous in every layout, so a TP slice adds its offset within the chunk.
  using Position = std::function<int64_t(const Chunk&, int64_t p, int64_t j)>;
  Position token_side() const {  // x and out: (E, C, H)
    return [this](const Chunk& c, int64_t p, int64_t j) { return (p * El_ + j) * C_ + c.off; };
  }
  Position expert_side() const {  // y and z as dispatch() returns them: (E_l, e*C, H)
    return [this](const Chunk& c, int64_t p, int64_t j) { return j * e_ * C_ + p * C_ + c.off; };
  }
  Position chunk_major() const {  // y and z of the overlapped form: chunk k is (E_l, e*c_k, H) at slot E_l*e*off_k
    return [this](const Chunk& c, int64_t p, int64_t j) { return El_ * e_ * c.off + (j * e_ + p) * c.size; };
  }

  // Copies TP slice r of every (peer p, local expert j) run of chunk c between `side` (rows of W elements, runs placed
  // by `at`, whose slot `base` is side's first) and the packed (e, E_l, slice, W) block at element `packed_at` of
  // `packed`.
  void move_slice(const Chunk& c, int r, int64_t W, const Tensor& side, const Position& at, int64_t base,
                  const Tensor& packed, int64_t packed_at, bool to_packed) const {
    const Shard s = c.slices[size_t(r)];
    const int64_t m = s.size * W;
    for (int64_t p = 0; p < e_; ++p)
      for (int64_t j = 0; j < El_; ++j) {
        const Tensor run = flat(side, (at(c, p, j) - base + s.offset) * W, m);
        const Tensor blk = flat(packed, packed_at + (p * El_ + j) * m, m);
        if (to_packed)
          engine::copy(blk, run);
        else
          engine::copy(run, blk);
      }
  }

  // One direction of the exchange: src -> dst, rows of W elements, with the requests of its chunks.
  struct Leg {
    Tensor src, dst;
    Position src_at, dst_at;
    int64_t W = 0;
    std::vector<std::unique_ptr<Request>> a2a{}, ag{};
    bool partial_src = false;  // src is this TP rank's part of the buffer (sequence parallelism): reduce-scatter it
  };

  void pack_and_send(Leg& leg, int k) {
    const engine::TraceRange trace("exchange pack + all-to-all chunk " + std::to_string(k));
    const Chunk& c = chunks_[size_t(k)];
    const int64_t cnt = int64_t(e_) * El_ * c.slices[size_t(tp_.rank())].size * leg.W;
    if (leg.partial_src) {
      // Sequence parallelism: every slice of this rank's part, rank-major into the chunk's gather region (idle until
      // this chunk's all-to-all lands there), then reduce-scatter: this rank's slice, summed over TP, in the send
      // region. Each slot is non-zero on one TP rank only, so the sum adds zeros: the bytes are the tokens' own.
      const engine::TraceRange rs("exchange reduce-scatter of TP parts (sequence parallel)");
      const int64_t blk = c.block * leg.W;
      for (int r = 0; r < t_; ++r) move_slice(c, r, leg.W, leg.src, leg.src_at, 0, gather_, c.gather_at + r * blk, true);
      tp_.reduce_scatter(flat(send_, c.send_at, blk), flat(gather_, c.gather_at, int64_t(t_) * blk), ReduceOp::sum);
    } else {
      move_slice(c, tp_.rank(), leg.W, leg.src, leg.src_at, 0, send_, c.send_at, true);
    }
    if (leg.a2a.empty()) leg.a2a.resize(chunks_.size());
    // Lands directly in this TP rank's block of the chunk's gather region (packed (e, E_l, cs, W)).
    leg.a2a[size_t(k)] = ep_.all_to_all_async(flat(gather_, c.gather_at + tp_.rank() * c.block * leg.W, cnt),
                                              flat(send_, c.send_at, cnt));
  }
  // Starts chunk k's all-gather once its all-to-all is done; the caller's stream does not wait for the latter.
  void gather(Leg& leg, int k) {
    const Chunk& c = chunks_[size_t(k)];
    if (leg.ag.empty()) leg.ag.resize(chunks_.size());
    const int64_t blk = c.block * leg.W;
    if (t_ > 1)
      leg.ag[size_t(k)] = tp_.all_gather_async_after(*leg.a2a[size_t(k)], flat(gather_, c.gather_at, int64_t(t_) * blk),
                                                     flat(gather_, c.gather_at + tp_.rank() * blk, blk));
    else
      leg.a2a[size_t(k)]->wait();
  }
  void unpack(Leg& leg, int k) {
    const engine::TraceRange trace("exchange unpack chunk " + std::to_string(k));
    const Chunk& c = chunks_[size_t(k)];
    if (leg.ag[size_t(k)]) leg.ag[size_t(k)]->wait();
    for (int r = 0; r < t_; ++r)
      move_slice(c, r, leg.W, leg.dst, leg.dst_at, 0, gather_, c.gather_at + r * c.block * leg.W, false);
  }

  // The pipeline of one direction. Schedule, chunk k:
  //   pack k+1, start all-to-all k+1 | start all-gather k after all-to-all k | unpack k-1
  // so an all-gather is always issued while the next chunk's all-to-all is in flight; waits in issue order.
  void run(Leg& leg) {
    const int n = int(chunks_.size());
    pack_and_send(leg, 0);
    for (int k = 0; k < n; ++k) {
      if (k + 1 < n) pack_and_send(leg, k + 1);
      gather(leg, k);
      if (k > 0) unpack(leg, k - 1);
    }
    unpack(leg, n - 1);
  }

  int64_t check_io(const Tensor& dst, const Tensor& src, const char* who) const {  // -> the row width W
    return detail::exchange_row_width(dst, src, E_ * C_, H_, dtype_, device_, who);
  }

  // widths: the row widths of the directions moved, summed (H for dispatch() or combine() of full rows, the two legs'
  // widths for the overlapped whole); minus_s: time spent outside the exchange; dispatch_widths: the part of widths
  // that dispatches moved (each adds its reduce-scatter over TP under sequence parallelism).
  void finish(const engine::HostTimer& t0, int64_t widths, double minus_s, int64_t dispatch_widths) {
    int64_t ep = 0, tp = 0;  // per unit of row width
    for (const Chunk& c : chunks_) {
      ep += int64_t(e_ - 1) * El_ * c.slices[size_t(tp_.rank())].size * es_;
      tp += int64_t(t_ - 1) * c.block * es_;
    }
    stats_.ep_bytes = ep * widths;
    stats_.tp_bytes = tp * (widths + (sp_ ? dispatch_widths : 0));
    stats_.seconds = t0.seconds() - minus_s;
  }

  Communicator& tp_;
  Communicator& ep_;
  int64_t E_, C_, H_, El_ = 0, es_ = 0;
  int64_t C_max_ = 0, chunks_wanted_ = 1;  // the buffers' capacity (C_ is this step's, set_capacity); shape.chunks
  int t_ = 1, e_ = 1;
  DType dtype_;
  Device device_;
  ExchangeKind kind_;
  bool sp_;  // sequence parallelism: dispatch's x is this TP rank's part (ExchangeShape::sequence_parallel)
  std::vector<Chunk> chunks_;
  std::vector<int32_t> loads_;  // set_loads: (e, E), empty = every slot filled
  engine::Arena arena_;
  Tensor send_, gather_;
  ExchangeStats stats_;
};

}  // namespace

std::unique_ptr<Exchange> make_pipelined_exchange(ExchangeKind kind, Communicator& tp, Communicator& ep,
                                                  ExchangeShape shape, engine::DType dtype, engine::Device device) {
  return std::make_unique<PipelinedExchange>(tp, ep, shape, dtype, device, kind);
}

}  // namespace monta::comm
