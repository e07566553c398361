// The capacity-sliced token exchanges: TP rank r sends only its slice of the capacity over EP, an all-gather over
// TP completes it. `drop_gather` does that once; `pipelined` (MoNTA) cuts it into n chunks along capacity, so chunk
// i's all-gather over TP (intra-node) runs while chunk i+1's all-to-all over EP (inter-node) is in flight;
// `overlapped` puts the experts in the pipeline too (dispatch_experts_combine). One class: drop_gather is the
// one-chunk pipeline. Pure data movement, so bit-identical to `duplicate`; dispatch and combine are each other's
// backward, so both directions of both passes are pipelined. Dropless loads (set_loads): the chunks and slices become
// even shares of the filled rows only, moved by all-to-all-v's (route(); docs/exchange.md, "Dropless, stage B").
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

// A run of rows of one side of the exchange: rows [slot, slot + count) of x/out (E*C rows) or y/z (E_l*e*C rows).
struct Piece {
  int64_t slot = 0, count = 0;
};
// One capacity chunk: slots [off, off + size) of C, split again over the t TP ranks (balanced, padded to cp), which
// sizes its staging regions; the rows it really moves are its pieces (PipelinedExchange::route), never more.
struct Chunk {
  int64_t off = 0, size = 0, cp = 0;  // cp = ceil(size / t): the largest TP slice of the chunk
  int64_t block = 0;                  // slots of one TP rank's gather block at most: e * E_l * cp (times the width W)
  int64_t send_at = 0, gather_at = 0; // element offsets of this chunk's send and gather regions, sized for W = H
  // Per TP rank, per EP peer: the runs of rows moved, on the token side (x, out) and on the expert side (y, z).
  // exp_cm: exp in the overlapped chunk-major layout (dispatch_experts_combine; empty for the other strategies).
  std::vector<std::vector<std::vector<Piece>>> tok, exp, exp_cm;
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

// Per TP rank r, per EP peer (rank order): the runs that TP rank moves to or from that peer, in packing order.
using Pieces = std::vector<std::vector<std::vector<Piece>>>;

int64_t rows_of(const std::vector<Piece>& v) {
  int64_t n = 0;
  for (const Piece& q : v) n += q.count;
  return n;
}
int64_t rows_of(const std::vector<std::vector<Piece>>& per_peer) {
  int64_t n = 0;
  for (const auto& v : per_peer) n += rows_of(v);
  return n;
}
int64_t max_rows(const Pieces& pieces) {  // over the TP ranks: the equal block of an all-gather or reduce-scatter
  int64_t m = 0;
  for (const auto& r : pieces) m = std::max(m, rows_of(r));
  return m;
}

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
    // Every chunk has its own regions: all of them may be in flight at once. The overlapped combine of chunk k
    // reuses chunk k's regions: it is packed only after chunk k's dispatch has been unpacked, which orders it
    // after both of that dispatch's collectives. A leg of narrower rows (W < H, the FP8 dispatch) packs its blocks
    // W apart inside the same regions, so the regions of different chunks never overlap whatever the widths.
    arena_ = engine::Arena(std::string("exchange_") + exchange_kind_name(kind), device,
                           pipelined_staging_specs(kind, shape, t_, e_, dtype));
    send_ = arena_.get("send");
    gather_ = arena_.get("gather");
    plan(C_);  // the largest capacity needs the largest regions (pipelined_staging_specs sizes them)
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
    plan(capacity);
  }
  int64_t capacity() const override { return C_; }
  void set_loads(std::span<const int32_t> loads) override {
    detail::check_loads(loads, e_, E_, C_, exchange_kind_name(kind_));
    loads_.assign(loads.begin(), loads.end());
    route();
  }
  // Single-chunk strategies: the filled prefix of every (j, p); overlapped: chunk k's share of it, at the head of
  // each (j, p)'s c_k rows (the rule in route()).
  std::vector<ExpertRun> expert_runs(int k) const override {
    MONTA_CHECK(k >= 0 && k < expert_chunks(), std::string("exchange ") + exchange_kind_name(kind_) +
                                                   ": expert chunk " + n2s(k) + " of " + n2s(expert_chunks()));
    if (!overlapped()) return filled_runs(e_, El_, ep_.rank(), 0, C_, loads_);
    const Chunk& c = chunks_[size_t(k)];
    std::vector<ExpertRun> runs;
    for (int64_t j = 0; j < El_; ++j)
      for (int p = 0; p < e_; ++p) {
        const int64_t n = run_of(p, ep_.rank() * El_ + j, k).size;
        if (n > 0) runs.push_back({j, p * c.size, n});
      }
    return runs;
  }
  ExchangeStats last_stats() const override { return stats_; }

  void dispatch(Tensor y, const Tensor& x) override {
    const engine::TraceRange trace("exchange dispatch");
    const engine::HostTimer t0;
    Leg leg{x, y, true, false, check_io(y, x, "dispatch")};
    leg.partial_src = sp_;
    zero_padding(y, leg.W, false);
    run(leg);
    finish(t0, {&leg}, 0);
  }

  void combine(Tensor out, const Tensor& z) override {
    const engine::TraceRange trace("exchange combine");
    const engine::HostTimer t0;
    Leg leg{z, out, false, false, check_io(out, z, "combine")};
    run(leg);
    finish(t0, {&leg}, 0);
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

  // The pieces of every TP rank that combine sends, rank-major into the gather region (blocks padded to the largest),
  // reduce-scatter over TP into the send region (this rank's pieces, summed), and back into this rank's rows of z.
  // Both regions are idle here: the chunk's dispatch has been unpacked and its combine is not packed yet.
  bool reduce_tp_partials(Tensor zk, int k) override {
    if (t_ == 1) return true;
    const engine::TraceRange trace("exchange reduce-scatter of TP partials");
    const bool one = overlapped();
    MONTA_CHECK(k >= 0 && k < (one ? int(chunks_.size()) : 1), "exchange: reduce_tp_partials chunk " + n2s(k));
    const int64_t base = one ? El_ * e_ * chunks_[size_t(k)].off : 0;  // zk's first slot in the whole z
    const int64_t W = zk.dim(zk.ndim - 1);                              // the experts' output rows (H)
    for (int ci = one ? k : 0; ci < (one ? k + 1 : int(chunks_.size())); ++ci) {
      const Chunk& c = chunks_[size_t(ci)];
      const Pieces& exp = one ? c.exp_cm : c.exp;
      const int64_t blk = max_rows(exp) * W;
      if (blk == 0) continue;  // no rows of this chunk go back from this EP rank (the same on every TP rank)
      for (int r = 0; r < t_; ++r) move(exp[size_t(r)], W, zk, base, gather_, c.gather_at + r * blk, true);
      tp_.reduce_scatter(flat(send_, c.send_at, blk), flat(gather_, c.gather_at, int64_t(t_) * blk), ReduceOp::sum);
      move(exp[size_t(tp_.rank())], W, zk, base, send_, c.send_at, false);
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
    Leg d{x, y, true, true, check_io(y, x, "dispatch")};
    Leg c{z, out, false, true, check_io(out, z, "combine")};
    d.partial_src = sp_;
    zero_padding(y, d.W, true);
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
    finish(t0, {&d, &c}, in_experts);
    return stats_;
  }

 private:
  // The chunks of capacity C into chunks_ (their staging regions), then their pieces.
  void plan(int64_t C) {
    const auto [send_total, gather_total] = plan_chunks(C, chunks_wanted_, t_, e_, El_, H_, &chunks_);
    MONTA_CHECK(send_total <= send_.numel() && gather_total <= gather_.numel(),
                "exchange: the chunks of capacity " + n2s(C) + " do not fit the staging arena");
    C_ = C;
    route();
  }

  int64_t load(int p, int64_t x) const { return loads_.empty() ? C_ : loads_[size_t(int64_t(p) * E_ + x)]; }
  // Chunk k's share of the filled prefix of global expert x on EP rank p: its slots [offset, offset + size). Every
  // prefix is split evenly over the chunks, so each chunk carries about 1/n of the tokens whatever the loads (with
  // every slot filled, this is the capacity chunk [off_k, off_k + c_k)); since the share only grows with the load,
  // it never exceeds c_k, the chunk's slots per (expert, peer).
  Shard run_of(int p, int64_t x, int k) const { return shard(load(p, x), int(chunks_.size()), k, false); }

  // The pieces of every chunk, the one rule of who moves which rows: the share of (p, x) in chunk k is split over
  // the t TP ranks again, evenly (TP rank r: shard(count, t, r)), so the TP ranks send (and receive) equal parts of
  // the filled rows, not capacity slices that padding would leave empty on the higher ranks.
  //   tok[r][q]: this EP rank's rows for peer q's experts x = q*E_l + j, j ascending, in x/out (dispatch sends,
  //              combine receives them);
  //   exp[r][p]: peer p's rows for this rank's experts, j ascending, in y/z (dispatch receives, combine sends them):
  //              at slot p*C + offset of (j, p) in dispatch()'s layout; exp_cm: at the head of (j, p)'s c_k rows
  //              of chunk k in the overlapped chunk-major one.
  void route() {
    const int me = ep_.rank(), n = int(chunks_.size());
    for (int k = 0; k < n; ++k) {
      Chunk& c = chunks_[size_t(k)];
      c.tok.assign(size_t(t_), std::vector<std::vector<Piece>>(size_t(e_)));
      c.exp = c.tok;
      c.exp_cm = overlapped() ? c.tok : Pieces{};
      for (int r = 0; r < t_; ++r)
        for (int q = 0; q < e_; ++q)
          for (int64_t j = 0; j < El_; ++j) {
            const Shard mine = run_of(me, q * El_ + j, k), theirs = run_of(q, me * El_ + j, k);
            const Shard a = shard(mine.size, t_, r, false), b = shard(theirs.size, t_, r, false);
            if (a.size) c.tok[size_t(r)][size_t(q)].push_back({(q * El_ + j) * C_ + mine.offset + a.offset, a.size});
            if (!b.size) continue;
            c.exp[size_t(r)][size_t(q)].push_back({j * e_ * C_ + q * C_ + theirs.offset + b.offset, b.size});
            if (overlapped())
              c.exp_cm[size_t(r)][size_t(q)].push_back({El_ * e_ * c.off + (j * e_ + q) * c.size + b.offset, b.size});
          }
      // The staging rule (plan_chunks) holds for any loads: each piece is at most the capacity slice it replaces.
      MONTA_CHECK(std::max(max_rows(c.tok), max_rows(c.exp)) <= c.block,
                  "exchange: chunk " + n2s(k) + "'s pieces exceed its staging block");
    }
  }

  // y's rows that no piece fills (dispatch writes them as zeros, exchange.h): per (j, p) the slots past its load,
  // past its chunk share in the chunk-major layout.
  void zero_padding(Tensor y, int64_t W, bool chunk_major) const {
    if (loads_.empty()) return;
    const int me = ep_.rank();
    for (int64_t j = 0; j < El_; ++j)
      for (int p = 0; p < e_; ++p) {
        if (!chunk_major) {
          const int64_t n = load(p, me * El_ + j), at = j * e_ * C_ + p * C_;
          if (n < C_) engine::fill_zero(flat(y, (at + n) * W, (C_ - n) * W));
          continue;
        }
        for (int k = 0; k < int(chunks_.size()); ++k) {
          const Chunk& c = chunks_[size_t(k)];
          const int64_t n = run_of(p, me * El_ + j, k).size, at = El_ * e_ * c.off + (j * e_ + p) * c.size;
          if (n < c.size) engine::fill_zero(flat(y, (at + n) * W, (c.size - n) * W));
        }
      }
  }

  // Copies the pieces (per peer, in order) between `side` (rows of W elements, whose slot `base` is side's first)
  // and consecutive rows from element `packed_at` of `packed`; returns the elements moved.
  int64_t move(const std::vector<std::vector<Piece>>& per_peer, int64_t W, const Tensor& side, int64_t base,
               const Tensor& packed, int64_t packed_at, bool to_packed) const {
    int64_t at = packed_at;
    for (const auto& v : per_peer)
      for (const Piece& q : v) {
        const Tensor run = flat(side, (q.slot - base) * W, q.count * W), blk = flat(packed, at, q.count * W);
        if (to_packed)
          engine::copy(blk, run);
        else
          engine::copy(run, blk);
        at += q.count * W;
      }
    return at - packed_at;
  }

  // One direction of the exchange: src -> dst, rows of W elements, with the requests of its chunks and the bytes
  // this rank sent.
  struct Leg {
    Tensor src, dst;
    bool dispatch = true;      // token side -> expert side (pieces tok -> exp); combine the reverse
    bool chunk_major = false;  // the expert side in the overlapped chunk-major layout (exp_cm)
    int64_t W = 0;
    std::vector<std::unique_ptr<Request>> a2a{}, ag{};
    bool partial_src = false;  // src is this TP rank's part of the buffer (sequence parallelism): reduce-scatter it
    int64_t ep_bytes = 0, tp_bytes = 0;
    const Pieces& expert(const Chunk& c) const { return chunk_major ? c.exp_cm : c.exp; }
    const Pieces& from(const Chunk& c) const { return dispatch ? c.tok : expert(c); }
    const Pieces& to(const Chunk& c) const { return dispatch ? expert(c) : c.tok; }
  };

  void pack_and_send(Leg& leg, int k) {
    const engine::TraceRange trace("exchange pack + all-to-all chunk " + std::to_string(k));
    const Chunk& c = chunks_[size_t(k)];
    const int r = tp_.rank();
    const Pieces& from = leg.from(c);
    if (leg.partial_src) {
      // Sequence parallelism: every TP rank's pieces of this rank's part, rank-major into the chunk's gather region
      // (idle until this chunk's all-to-all lands there), then reduce-scatter: this rank's pieces, summed over TP, in
      // the send region. Each slot is non-zero on one TP rank only, so the sum adds zeros: the bytes are the tokens'.
      const engine::TraceRange rs("exchange reduce-scatter of TP parts (sequence parallel)");
      const int64_t blk = max_rows(from) * leg.W;
      for (int q = 0; q < t_; ++q) move(from[size_t(q)], leg.W, leg.src, 0, gather_, c.gather_at + q * blk, true);
      if (blk > 0)
        tp_.reduce_scatter(flat(send_, c.send_at, blk), flat(gather_, c.gather_at, int64_t(t_) * blk), ReduceOp::sum);
      leg.tp_bytes += int64_t(t_ - 1) * blk * es_;
    } else {
      move(from[size_t(r)], leg.W, leg.src, 0, send_, c.send_at, true);
    }
    // Lands directly in this TP rank's block of the chunk's gather region, the peers' pieces in rank order.
    const int64_t recv_at = c.gather_at + r * max_rows(leg.to(c)) * leg.W;
    std::vector<int64_t> sc(size_t(e_), 0), so(size_t(e_), 0), rc(size_t(e_), 0), ro(size_t(e_), 0);
    int64_t s_at = c.send_at, r_at = recv_at;
    for (int p = 0; p < e_; ++p) {
      sc[size_t(p)] = rows_of(from[size_t(r)][size_t(p)]) * leg.W;
      rc[size_t(p)] = rows_of(leg.to(c)[size_t(r)][size_t(p)]) * leg.W;
      so[size_t(p)] = s_at;
      ro[size_t(p)] = r_at;
      s_at += sc[size_t(p)];
      r_at += rc[size_t(p)];
      if (p != ep_.rank()) leg.ep_bytes += sc[size_t(p)] * es_;
    }
    if (leg.a2a.empty()) leg.a2a.resize(chunks_.size());
    leg.a2a[size_t(k)] = ep_.all_to_all_v_async(gather_, rc, ro, send_, sc, so);
  }
  // Starts chunk k's all-gather once its all-to-all is done; the caller's stream does not wait for the latter.
  void gather(Leg& leg, int k) {
    const Chunk& c = chunks_[size_t(k)];
    if (leg.ag.empty()) leg.ag.resize(chunks_.size());
    const int64_t blk = max_rows(leg.to(c)) * leg.W;
    if (t_ > 1 && blk > 0) {  // blk is the same on every TP rank: none of them issues an empty all-gather
      leg.ag[size_t(k)] = tp_.all_gather_async_after(*leg.a2a[size_t(k)], flat(gather_, c.gather_at, int64_t(t_) * blk),
                                                     flat(gather_, c.gather_at + tp_.rank() * blk, blk));
      leg.tp_bytes += int64_t(t_ - 1) * blk * es_;
    } else {
      leg.a2a[size_t(k)]->wait();
    }
  }
  void unpack(Leg& leg, int k) {
    const engine::TraceRange trace("exchange unpack chunk " + std::to_string(k));
    const Chunk& c = chunks_[size_t(k)];
    if (leg.ag[size_t(k)]) leg.ag[size_t(k)]->wait();
    const int64_t blk = max_rows(leg.to(c)) * leg.W;
    for (int r = 0; r < t_; ++r) move(leg.to(c)[size_t(r)], leg.W, leg.dst, 0, gather_, c.gather_at + r * blk, false);
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

  // The bytes the legs sent (counted as their collectives were issued); minus_s: time spent outside the exchange.
  void finish(const engine::HostTimer& t0, std::initializer_list<const Leg*> legs, double minus_s) {
    stats_ = {};
    for (const Leg* l : legs) {
      stats_.ep_bytes += l->ep_bytes;
      stats_.tp_bytes += l->tp_bytes;
    }
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
