// The α–β cost model of the MoE token exchange (docs/cost_model.md has every formula with its symbols): link
// classes (intra-node, inter-node), collective times, exchange volumes as formulas of the model shape and the
// layout, the EP group's cross-node share, NVLink contention, and the pipeline. Pure functions, no MPI.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "comm/exchange.h"
#include "comm/groups.h"

namespace monta::comm {

enum class LinkClass { intra, inter };

// Time to move b bytes one way over one link class from one GPU: alpha + b * beta.
struct LinkParams {
  double alpha = 0;  // seconds per message (latency)
  double beta = 0;   // seconds per byte (1 / bandwidth per GPU, one direction)
  // Latency of a collective issued right behind another on the same communicator (a pipeline's later chunks),
  // where the calibration measured it; < 0: alpha.
  double alpha_next = -1;
  double time(double bytes) const { return alpha + bytes * beta; }
  double next_alpha() const { return alpha_next >= 0 ? alpha_next : alpha; }
  LinkParams chained() const { return {next_alpha(), beta, alpha_next}; }  // alpha -> the back-to-back latency
};
struct LinkModel {
  LinkParams intra, inter;
  const LinkParams& of(LinkClass c) const { return c == LinkClass::intra ? intra : inter; }
  LinkModel chained() const { return {intra.chained(), inter.chained()}; }
};
// From GB/s (1e9 bytes/s) and microseconds.
LinkParams link_from(double gbps, double latency_us);

// A cluster of `nodes` × `gpus_per_node` GPUs, world ranks consecutive per node (TP innermost).
struct Cluster {
  std::string name;
  int nodes = 1, gpus_per_node = 1;
  double intra_gbps = 0, intra_latency_us = 0;  // NVLink, per GPU, one direction
  double inter_gbps = 0, inter_latency_us = 0;  // network, per GPU (node bandwidth / gpus_per_node), one direction
  double gpu_mem_gib = 0;
  double gpu_tflops = 0;  // achieved bf16 TFLOP/s per GPU, for the step-time estimate (0: not estimated)
  // Achieved FP8 TFLOP/s per GPU of the block-scaled FP8 GEMMs (model.fp8; Hopper), for the FLOPs the model runs in
  // FP8. 0: the cluster gives none, and those FLOPs are priced at gpu_tflops.
  double gpu_fp8_tflops = 0;
  // Host side, for optimizer offload and the checkpoint snapshot: memory per node (0: not checked), the host AdamW
  // rate of a whole node in billions of parameters per second (monta bench optimizer; 0: offload not priced), and
  // the host<->GPU copy rate per GPU in GB/s.
  double host_mem_gib = 0, host_adamw_gparams_s = 0, pcie_gbps = 0;
  int world() const { return nodes * gpus_per_node; }
  LinkModel links() const { return {link_from(intra_gbps, intra_latency_us), link_from(inter_gbps, inter_latency_us)}; }
};

// Collectives over a group of n ranks; M = the per-rank buffer in bytes (all-to-all: in = out = M, n blocks of
// M/n; all-gather: the output, n blocks of M/n; all-reduce: the buffer). `peers_intra` / `peers_inter`: how many of
// the n-1 other ranks sit on this rank's node / on other nodes.
// all-to-all: direct sends, both classes at once: max over classes of (alpha + peers_c * M/n * beta).
double all_to_all_time(const LinkModel& l, double M, int peers_intra, int peers_inter);
// all-gather / all-reduce: ring; the slowest link class in the ring sets the pace (inter if the group spans nodes).
double all_gather_time(const LinkModel& l, double M, int n, bool spans_nodes);
double all_reduce_time(const LinkModel& l, double M, int n, bool spans_nodes);
// Ring reduce-scatter of an M-byte input into n blocks: the all-gather's cost, (n−1)·α + (n−1)/n·M·β.
double reduce_scatter_time(const LinkModel& l, double M, int n, bool spans_nodes);

// Dropless routing, stage B (Exchange::set_loads): only the filled slots travel. fill: the mean share of a rank's
// (E, C) slots that hold a token (1: every slot travels, the capacity path); imbalance: the most loaded EP rank's
// filled rows over the mean (max/mean over the EP ranks of the rows each sends or receives, >= 1). Every collective
// waits for its slowest member, so a call is priced at that rank's volume: every leg's bytes scale by moved() =
// min(1, fill * imbalance) (a rank never sends more than its whole buffer); the messages (alpha terms) stay.
struct ExchangeLoad {
  double fill = 1, imbalance = 1;
  double moved() const;  // checks fill in (0, 1] and imbalance >= 1
};

// The ExchangeLoad of explicit loads (e·E entries as Exchange::set_loads takes them) of capacity C: fill = their sum
// over e·E·C; imbalance = the most rows an EP rank sends or receives over the mean.
// The expected ExchangeLoad of dropless routing at capacity C (dropless_expected_capacity): fill = N·K/(E·C), the
// routed rows over the slots; imbalance 1 (C already carries the largest load's margin). ExchangeVolume::load and
// `auto` (model/parallel_setup.cpp) price dropless with it.
ExchangeLoad dropless_expected_load(int64_t tokens, int64_t top_k, int64_t experts, int64_t capacity);
ExchangeLoad load_of(std::span<const int32_t> loads, int e, int64_t E, int64_t C);
// A step's loads with a share `skew` of every rank's tokens routed to expert 0, which fills its C slots (dropless: C
// is the largest load), the rest spread evenly over the other experts: fill ≈ 1/(skew·E) for skew in [1/E, 1]
// (1/E: balanced, every slot filled). What `bench exchange --skew` runs.
std::vector<int32_t> skewed_loads(int e, int64_t E, int64_t C, double skew);
// Loads with a given ExchangeLoad, near enough to time it: round(fill·C) slots of every expert, EP rank 0's experts
// imbalance times that (at most C). What `auto` measures its candidates with.
std::vector<int32_t> loads_like(int e, int64_t E, int64_t C, const ExchangeLoad& load);

// The numbers of one MoE layer's exchange (comm may not include model/, so these are passed in).
struct ExchangeVolume {
  int64_t B = 1, S = 1, H = 1, K = 1, E = 1, min_capacity = 0;
  double capacity_factor = 1.0;
  int elem_bytes = 2;
  int ep = 1;  // EP size e: dropless (capacity_factor 0) prices the expected largest load over the EP group
  double imbalance = 1.0;  // dropless: the EP ranks' max/mean filled rows (ExchangeLoad)
  int64_t tokens() const { return B * S; }                    // N = B·S
  int64_t capacity() const;                                    // C = max(min_cap, ceil(cf·N·K/E)); dropless: expected
  double dispatch_bytes() const;                               // X = E·C·H·es
  // What travels: every slot with a capacity factor; dropless, the filled ones: fill = N·K / (E·C), each of a
  // rank's N tokens taking K of its E·C slots.
  ExchangeLoad load() const;
};
// Dropless routing's expected step capacity, the number its exchange and expert time are priced with. Every rank of
// the EP group runs at the group's largest per-expert load (the slowest rank is the critical path: the others wait
// for it in the all-to-all), so the price is the expected maximum of the E·e per-(expert, rank) loads. A balanced
// router's loads are Binomial(N·K, 1/E): mean μ = N·K/E, σ² = μ·(1 − 1/E); their maximum is about
// μ + σ·sqrt(2·ln(E·e)) (the Gaussian extreme-value estimate). skew multiplies μ (1: balanced; a measured max/mean load
// such as `bench layer --dropless` prints, for a skewed router). At most N; the 128-row rounding is left out.
int64_t dropless_expected_capacity(int64_t tokens, int64_t top_k, int64_t experts, int ep, double skew = 1.0);
// The same formula as model::expert_capacity (replicated here: comm may not depend on model). capacity_factor 0
// (dropless): `tokens`, the worst case the buffers are sized for.
int64_t capacity_of(int64_t tokens, int64_t top_k, int64_t experts, double capacity_factor, int64_t min_capacity);

// Where one rank's groups sit: t, e, and the EP group's peers per link class, for the bottleneck (worst) rank.
struct GroupPlacement {
  int t = 1, e = 1;
  int ep_peers_intra = 0, ep_peers_inter = 0;  // of the e-1 EP peers
  bool tp_spans_nodes = false;
  double ep_cross_fraction = 0;  // share of the EP all-to-all's off-rank bytes that crosses nodes
};
// The one placement rule: where `rank`'s TP and EP peers (its groups' world ranks) sit on the topology's nodes.
GroupPlacement rank_placement(const Topology& topo, int rank, const std::vector<int>& tp_members,
                              const std::vector<int>& ep_members);
// The slower of two placements: the EP group with more inter-node peers; TP spans nodes if either does.
GroupPlacement slower_placement(const GroupPlacement& a, const GroupPlacement& b);
// This job's placement: this rank's (world null) or, collective over world, the slowest rank's.
GroupPlacement group_placement(const ProcessGroups& groups, Communicator* world = nullptr);
// A planned cluster's: TP innermost, consecutive ranks per node; the slowest rank's placement.
GroupPlacement place_groups(const Cluster& c, int tp, int ep);

// Predicted time of one exchange call (dispatch or combine; they move the same bytes) and its legs.
struct ExchangePrediction {
  double a2a = 0, ag = 0;  // seconds of the EP all-to-all and the TP all-gather (whole call, not per chunk)
  double total = 0;        // seconds of the call (pipelined: fill + (n-1)·max(stage) + drain)
  int chunks = 1;                                  // n actually used (at most C)
  double chunk_a2a = 0, chunk_ag = 0, stage = 0;   // the first chunk's A and G; the later chunks' contended stage
  double next_a2a = 0, next_ag = 0;                // a later chunk's A and G (= the first's unless alpha_next)
  double ep_bytes = 0, tp_bytes = 0, inter_bytes = 0;  // bytes this rank sends per leg, and of them over the network
};
ExchangePrediction predict_exchange(ExchangeKind kind, int chunks, const ExchangeVolume& v, const GroupPlacement& g,
                                    const LinkModel& l);
// The same for an explicit (E, C, H) buffer of elem_bytes elements (what `monta bench exchange` runs).
// load: the filled slots only (dropless stage B), priced at the most loaded rank (ExchangeLoad).
ExchangePrediction predict_exchange_shape(ExchangeKind kind, int chunks, int64_t E, int64_t C, int64_t H, int elem_bytes,
                                          const GroupPlacement& g, const LinkModel& l, const ExchangeLoad& load = {});
// Sequence parallelism (ExchangeShape::sequence_parallel): a dispatch first reduce-scatters this TP rank's part of the
// buffer over TP into the capacity slices, one reduce-scatter per chunk of the all-gather's size (t blocks of cp
// slots of E·H elements), before that chunk's all-to-all. Counted serial with the call (on the TP link it queues
// behind the previous chunk's all-gather): the seconds one dispatch call takes longer. 0 for t = 1; duplicate has no
// sequence-parallel form (refused), so 0 too.
double sp_dispatch_reduce_scatter_time(ExchangeKind kind, int chunks, int64_t E, int64_t C, int64_t H, int elem_bytes,
                                       const GroupPlacement& g, const LinkModel& l, const ExchangeLoad& load = {});
// Dispatch + combine, forward + backward, of one MoE layer: 4 exchange calls.
inline constexpr int kExchangesPerLayer = 4;

// One pass's MoE block, dispatch → experts → combine, when the experts take expert_s seconds run whole (forward:
// X, backward about 2X). Strategies other than overlapped run it in sequence: 2·T_call + X. overlapped with n
// chunks is a pipeline whose chunk k goes a2a → ag → experts → a2a → ag; the links carry both directions of a
// chunk (2·stage) while the GPU computes another (x = X/n):
//   T = (A + G) + x + (n−1)·max(2·stage, x) + (A + G)      (A, G, stage: one chunk's, as in predict_exchange)
// n = 1 gives drop_gather's 2·(A + G) + X.
double predict_moe_block(ExchangeKind kind, int chunks, int64_t E, int64_t C, int64_t H, int elem_bytes,
                         const GroupPlacement& g, const LinkModel& l, double expert_s, const ExchangeLoad& load = {});
// The same when the dispatch moves narrower rows than the combine: Hd elements a slot (the FP8 dispatch's packed
// rows, comm::fp8_dispatch_width; H + 4·H/128 bytes instead of 2H) against the combine's H. Each direction is
// priced on its own bytes: T = T_dispatch + T_combine + X, and for overlapped the stage carries one chunk of each:
//   T = (A_d + G_d) + x + (n−1)·max(stage_d + stage_c, x) + (A_c + G_c)
// Hd = H gives predict_moe_block.
double predict_moe_block_rows(ExchangeKind kind, int chunks, int64_t E, int64_t C, int64_t Hd, int64_t H,
                              int elem_bytes, const GroupPlacement& g, const LinkModel& l, double expert_s,
                              const ExchangeLoad& load = {});

}  // namespace monta::comm
