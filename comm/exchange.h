// The MoE token exchange: moves the (E, C, H) dispatch buffer of one MoE layer to the EP ranks that own each
// expert and back. Strategies differ only in how the bytes travel; all give bit-identical results.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "engine/memory.h"
#include "engine/tensor.h"

namespace monta::comm {

enum class ExchangeKind { duplicate, drop_gather, pipelined, overlapped };
// "duplicate", "drop_gather", "pipelined" or "overlapped"; anything else is a user error listing the valid names.
ExchangeKind parse_exchange_kind(const std::string& name);
const char* exchange_kind_name(ExchangeKind k);

struct ExchangeShape {
  int64_t experts = 0, capacity = 0, hidden = 0;  // E, C, H of the dispatch buffer
  int64_t chunks = 4;  // pipelined and overlapped only: capacity chunks n (uneven when n does not divide C; at most C are used)
  // Sequence parallelism (model parallel.sequence_parallel): each TP rank routes only its own tokens, so the x that
  // dispatch() takes is this TP rank's part of the buffer (its tokens' slots, zeros elsewhere; the parts of the TP
  // ranks sum to the whole (E, C, H) buffer). The capacity-sliced strategies then reduce-scatter it over TP into each
  // rank's capacity slice before the all-to-all, so each token still crosses EP once; `duplicate` (every TP rank
  // sends the whole buffer) has no meaning and is refused. combine() is unchanged: out is whole on every TP rank.
  bool sequence_parallel = false;
  // capacity is the largest C of any call (the buffers' size); Exchange::set_capacity lowers it per step (dropless).
};

// Dropless routing, stage B: a run of filled rows in an expert-side view (E_l, e*c, W) of c capacity slots per
// (local expert j, EP peer p): rows [row, row + count) of expert j's (e*c, W) part hold tokens, the rest of that
// peer's c rows are padding.
struct ExpertRun {
  int64_t j = 0, row = 0, count = 0;
};
// The runs of such a view that covers capacity slots [off, off + c) of every (j, p), when loads[p*E + x] leading
// slots of global expert x are filled on EP rank p (E = e*E_l experts; this rank, ep_rank, owns x = ep_rank*E_l + j):
// one run per (j, p) in view order, count = clamp(load - off, 0, c), empty runs left out. An empty loads: every slot
// is filled (one run of c rows per (j, p)).
std::vector<ExpertRun> filled_runs(int e, int64_t El, int ep_rank, int64_t off, int64_t c,
                                   std::span<const int32_t> loads);

// What the last dispatch/combine cost this rank: bytes it sent to other ranks (its own block excluded; padding slots
// included unless set_loads named the filled ones) over the EP all-to-all and over TP (the all-gathers' equal blocks,
// and the sequence-parallel reduce-scatters), and the wall time of the call.
struct ExchangeStats {
  int64_t ep_bytes = 0, tp_bytes = 0;
  double seconds = 0;
};

// EP group of size e, E_l = E / e local experts; EP rank p owns global experts [p*E_l, (p+1)*E_l).
// Both calls are collective over the TP and EP groups and need every rank of both to call them.
// Rows may be narrower than H: x (E, C, W) -> y (E_l, e*C, W) for any W <= H, the same on every rank of a call (the
// FP8 dispatch moves packed rows of W < H elements this way, comm/fp8_dispatch.h); stats count the W moved.
//
// Gradients: dispatch and combine are inverse permutations of slots, so each is the other's backward:
//   backward of dispatch: dx = combine(dy)       backward of combine: dz = dispatch(dout)
// (activation gradients, overwritten, STYLE.md rule 3). There is no separate backward entry point.
class Exchange {
 public:
  virtual ~Exchange() = default;
  // x (E, C, H), identical on every TP rank -> y (E_l, e*C, H), identical on every TP rank:
  // y[j, p*C + c, :] = x_p[my_ep_rank*E_l + j, c, :], x_p the input of EP peer p. y must not alias x.
  virtual void dispatch(Tensor y, const Tensor& x) = 0;
  // The inverse permutation: z (E_l, e*C, H), identical on every TP rank -> out (E, C, H), identical on every
  // TP rank: out[p*E_l + j, c, :] = z_p[j, my_ep_rank*C + c, :]. out must not alias z.
  virtual void combine(Tensor out, const Tensor& z) = 0;
  virtual ExchangeStats last_stats() const = 0;
  virtual ExchangeKind kind() const = 0;
  // Bytes of the staging buffers allocated at construction (exchange_staging_specs below).
  virtual int64_t staging_bytes() const = 0;
  // Dropless routing (model.capacity_factor = 0): the capacity C of the calls that follow, 1 <= C <= the shape's
  // (the worst case every buffer was sized for); the tensors of those calls are (E, C, H) and (E_l, e*C, H), and the
  // chunks of pipelined and overlapped split this C. Collective in effect: every rank of the TP and EP groups must
  // set the same C before the next call. Nothing is allocated.
  virtual void set_capacity(int64_t capacity) = 0;
  virtual int64_t capacity() const = 0;
  // Dropless routing, stage B: the filled slots of the calls that follow (until the next set_loads or
  // set_capacity). loads has e*E entries, loads[p*E + x] = how many leading slots of global expert x EP rank p's
  // dispatch buffer fills, each <= capacity(); identical on every rank of the TP and EP groups. Empty: every slot is
  // filled (the capacity routing of the default, and what set_capacity resets to). The rows outside the filled slots
  // are padding: dispatch writes them as zeros in y, combine leaves them unspecified in out (no token reads them).
  // Only the filled rows travel (an all-to-all-v); the chunks and the TP split cut the filled rows evenly
  // (docs/exchange.md, "Dropless, stage B"), and the staging of exchange_staging_specs holds any loads.
  virtual void set_loads(std::span<const int32_t> loads) = 0;
  // The filled rows of expert chunk k (the view expert_chunk(t, k) gives), per (local expert, peer) in view order.
  virtual std::vector<ExpertRun> expert_runs(int k) const = 0;

  // Dispatch, the experts and combine as one call, so that a strategy may overlap them:
  //   dispatch(y, x); experts(k) for every expert chunk k; combine(out, z)
  // where experts(k) reads chunk k of y and writes chunk k of z (and of any other expert-side tensor it uses),
  // taking the views from expert_chunk(). Every strategy but `overlapped` has one chunk, the whole buffer, in the
  // layout of dispatch(). `overlapped` has expert_chunks() chunks along capacity and starts combining chunk k
  // while later chunks are still arriving or being computed; its expert-side rows are then chunk-major (chunk k,
  // then local expert j, then peer p, then slot): each chunk is one contiguous (E_l, e*c_k, W) block. The experts
  // are row-wise, so only the order of their rows differs, never a value. With loads (set_loads), (j, p)'s share
  // of chunk k's filled rows sits at the head of its c_k rows: expert_runs(k) names them. Returns the stats of both
  // directions, with the wall time spent in experts() left out.
  virtual int expert_chunks() const { return 1; }
  // Chunks along capacity of the exchange's schedule (pipelined and overlapped; 1 for the others).
  virtual int pipeline_chunks() const { return 1; }
  // Chunk k of an expert-side tensor t (E_l, e*C, W), any width W.
  virtual Tensor expert_chunk(const Tensor& t, int k) const;
  virtual ExchangeStats dispatch_experts_combine(Tensor out, Tensor z, Tensor y, const Tensor& x,
                                                 const std::function<void(int)>& experts);
  // Experts split over TP (expert-TP) leave in z each TP rank's partial sums. Called from experts(k) on chunk k
  // of z (as expert_chunk() gives it) once written, this sums them over TP in the rows that combine() sends from
  // this rank and returns true; false: the caller must all-reduce zk over TP itself (duplicate sends every row).
  // The capacity-sliced strategies reduce-scatter (half an all-reduce's traffic); the rows of the other TP ranks'
  // slices are then left unspecified.
  virtual bool reduce_tp_partials(Tensor /*zk*/, int /*k*/) { return false; }
};

// duplicate:   every TP rank runs the whole all-to-all over EP (the DeepSpeed baseline).
// drop_gather: TP rank r sends only capacity slice r (balanced shard of C over t, padded to ceil(C/t) for the
//              equal-count all-gather; with loads, its even share of each run's filled rows), all-to-all over EP,
//              then all-gather over TP and reorder; combine is the
//              same in reverse (comm/pipelined_exchange.cpp: the one-chunk pipeline). Staging buffers come from one
//              arena allocated at construction, never per call; reorders use engine::copy, so device buffers work
//              with a device communicator.
// pipelined:   drop_gather in shape.chunks chunks along capacity (comm/pipelined_exchange.cpp): chunk i's TP
//              all-gather is issued while chunk i+1's EP all-to-all is in flight (asynchronous forms, waited in
//              order; no host sync besides the waits). Bytes per leg as drop_gather, padding per chunk.
// overlapped:  pipelined, plus dispatch_experts_combine() in shape.chunks expert chunks: the experts of chunk k run
//              while chunk k+1 is still being exchanged, and chunk k's combine starts as soon as its output exists
//              (its plain dispatch() and combine() are pipelined's).
std::unique_ptr<Exchange> make_exchange(ExchangeKind kind, Communicator& tp, Communicator& ep, ExchangeShape shape,
                                        engine::DType dtype, engine::Device device);
// The factory of drop_gather, pipelined and overlapped, one class (comm/pipelined_exchange.cpp; make_exchange calls
// it). drop_gather ignores shape.chunks: it is the one-chunk pipeline.
std::unique_ptr<Exchange> make_pipelined_exchange(ExchangeKind kind, Communicator& tp, Communicator& ep,
                                                  ExchangeShape shape, engine::DType dtype, engine::Device device);

// The staging buffers an exchange of `kind` allocates at construction, for TP group size t and EP group size e: the
// one rule its constructor allocates by and the memory model (model::rank_footprint, engine::Arena::bytes_for) counts.
// duplicate: a reorder stage (e, E_l, C, H) when E_l > 1, else none; the capacity-sliced strategies: a send region
// (this TP rank's slice of every chunk) and a gather region (every TP rank's).
std::vector<engine::TensorSpec> exchange_staging_specs(ExchangeKind kind, const ExchangeShape& shape, int t, int e,
                                                       engine::DType dtype);
// The capacity-sliced strategies' part of it (comm/pipelined_exchange.cpp).
std::vector<engine::TensorSpec> pipelined_staging_specs(ExchangeKind kind, const ExchangeShape& shape, int t, int e,
                                                        engine::DType dtype);

}  // namespace monta::comm
