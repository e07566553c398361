// The α–β cost model: collective times per link class, exchange volumes and the pipeline formula. Every formula
// here is written out, with its symbols, in docs/cost_model.md; keep the two in step.
#include "comm/cost_model.h"

#include <algorithm>
#include <cmath>

#include "comm/groups.h"
#include "comm/topology.h"
#include "engine/check.h"

namespace monta::comm {

LinkParams link_from(double gbps, double latency_us) {
  MONTA_CHECK(gbps > 0 && latency_us >= 0, "link parameters: bandwidth must be positive and latency non-negative");
  return {latency_us * 1e-6, 1.0 / (gbps * 1e9)};
}

double all_to_all_time(const LinkModel& l, double M, int peers_intra, int peers_inter) {
  const int n = 1 + peers_intra + peers_inter;
  if (n < 2 || M <= 0) return 0;
  const double block = M / n;
  double t = 0;
  if (peers_intra > 0) t = std::max(t, l.intra.time(peers_intra * block));
  if (peers_inter > 0) t = std::max(t, l.inter.time(peers_inter * block));
  return t;
}

double all_gather_time(const LinkModel& l, double M, int n, bool spans_nodes) {
  if (n < 2 || M <= 0) return 0;
  const LinkParams& p = spans_nodes ? l.inter : l.intra;
  return (n - 1) * p.alpha + double(n - 1) / n * M * p.beta;
}

double reduce_scatter_time(const LinkModel& l, double M, int n, bool spans_nodes) {
  return all_gather_time(l, M, n, spans_nodes);
}

double all_reduce_time(const LinkModel& l, double M, int n, bool spans_nodes) {
  if (n < 2 || M <= 0) return 0;
  const LinkParams& p = spans_nodes ? l.inter : l.intra;
  return 2.0 * (n - 1) * p.alpha + 2.0 * double(n - 1) / n * M * p.beta;
}

int64_t capacity_of(int64_t tokens, int64_t top_k, int64_t experts, double capacity_factor, int64_t min_capacity) {
  // The one capacity rule (model::expert_capacity calls this): max(min_capacity, ceil(cf · tokens · top_k / experts)).
  // capacity_factor 0 is dropless: the buffers' capacity is the worst case, every token to one expert (a token's top_k
  // experts are distinct, so no expert gets more than `tokens` choices); each step then uses its own, smaller one.
  if (capacity_factor == 0) return tokens;
  const int64_t c = int64_t(std::ceil(capacity_factor * double(tokens) * double(top_k) / double(experts)));
  return std::max(min_capacity, c);
}

int64_t dropless_expected_capacity(int64_t tokens, int64_t top_k, int64_t experts, int ep, double skew) {
  const double mu = double(tokens) * double(top_k) / double(experts), sigma = std::sqrt(mu * (1.0 - 1.0 / double(experts)));
  const double loads = double(experts) * double(std::max(ep, 1));
  const double max_load = skew * mu + sigma * std::sqrt(2.0 * std::log(std::max(loads, 1.0)));
  return std::clamp<int64_t>(int64_t(std::ceil(max_load)), 1, tokens);
}

int64_t ExchangeVolume::capacity() const {
  if (capacity_factor == 0) return dropless_expected_capacity(tokens(), K, E, ep);
  return capacity_of(tokens(), K, E, capacity_factor, min_capacity);
}
double ExchangeVolume::dispatch_bytes() const { return double(E) * double(capacity()) * double(H) * elem_bytes; }
ExchangeLoad dropless_expected_load(int64_t tokens, int64_t top_k, int64_t experts, int64_t capacity) {
  return {std::min(1.0, double(tokens) * double(top_k) / (double(experts) * double(capacity))), 1.0};
}
ExchangeLoad ExchangeVolume::load() const {
  if (capacity_factor != 0) return {};
  ExchangeLoad l = dropless_expected_load(tokens(), K, E, capacity());
  l.imbalance = imbalance;
  return l;
}

double ExchangeLoad::moved() const {
  MONTA_CHECK(fill > 0 && fill <= 1 && imbalance >= 1, "exchange load: fill " + std::to_string(fill) +
                                                           " must be in (0, 1] and imbalance " +
                                                           std::to_string(imbalance) + " at least 1");
  return std::min(1.0, fill * imbalance);
}

ExchangeLoad load_of(std::span<const int32_t> loads, int e, int64_t E, int64_t C) {
  MONTA_CHECK(int64_t(loads.size()) == int64_t(e) * E && E % e == 0 && C > 0,
              "load_of: " + std::to_string(loads.size()) + " loads for " + std::to_string(e) + " EP ranks of " +
                  std::to_string(E) + " experts");
  const int64_t El = E / e;
  double total = 0, most = 0;
  for (int q = 0; q < e; ++q) {
    double sent = 0, received = 0;
    for (int64_t x = 0; x < E; ++x) sent += loads[size_t(q * E + x)];
    for (int p = 0; p < e; ++p)
      for (int64_t j = 0; j < El; ++j) received += loads[size_t(p * E + q * El + j)];
    total += sent;
    most = std::max({most, sent, received});
  }
  if (total == 0) return {1e-9, 1};  // nothing travels: the latencies alone
  const double mean = total / e;
  return {std::min(1.0, total / (double(e) * double(E) * double(C))), std::max(1.0, most / mean)};
}

std::vector<int32_t> skewed_loads(int e, int64_t E, int64_t C, double skew) {
  MONTA_CHECK(skew > 0 && skew <= 1, "skewed_loads: skew " + std::to_string(skew) + " outside (0, 1]");
  const double rest = E > 1 ? double(C) * (1 - skew) / (skew * double(E - 1)) : 0;  // tokens per other expert
  std::vector<int32_t> loads(size_t(int64_t(e) * E));
  for (int p = 0; p < e; ++p)
    for (int64_t x = 0; x < E; ++x)
      loads[size_t(p * E + x)] = int32_t(x == 0 ? C : std::min<int64_t>(C, std::llround(rest)));
  return loads;
}

std::vector<int32_t> loads_like(int e, int64_t E, int64_t C, const ExchangeLoad& load) {
  load.moved();  // checks the load
  const int64_t El = E / e, base = std::llround(load.fill * double(C));
  std::vector<int32_t> loads(size_t(int64_t(e) * E));
  for (int p = 0; p < e; ++p)
    for (int64_t x = 0; x < E; ++x)
      loads[size_t(p * E + x)] = int32_t(std::min<int64_t>(C, x < El ? std::llround(double(base) * load.imbalance) : base));
  return loads;
}

GroupPlacement rank_placement(const Topology& topo, int rank, const std::vector<int>& tp_members,
                              const std::vector<int>& ep_members) {
  GroupPlacement g;
  g.t = int(tp_members.size());
  g.e = int(ep_members.size());
  for (int q : ep_members) g.ep_peers_inter += topo.same_node(q, rank) ? 0 : 1;
  g.ep_peers_intra = g.e - 1 - g.ep_peers_inter;
  for (int q : tp_members) g.tp_spans_nodes = g.tp_spans_nodes || !topo.same_node(q, rank);
  g.ep_cross_fraction = g.e > 1 ? double(g.ep_peers_inter) / double(g.e - 1) : 0.0;
  return g;
}

GroupPlacement slower_placement(const GroupPlacement& a, const GroupPlacement& b) {
  GroupPlacement g = b.ep_peers_inter > a.ep_peers_inter ? b : a;
  g.tp_spans_nodes = a.tp_spans_nodes || b.tp_spans_nodes;
  return g;
}

GroupPlacement group_placement(const ProcessGroups& groups, Communicator* world) {
  const Topology& topo = groups.topology();
  GroupPlacement g = rank_placement(topo, topo.world_rank, groups.members(GroupKind::tp), groups.members(GroupKind::ep));
  if (!world) return g;
  std::vector<int32_t> worst = {g.ep_peers_inter, g.tp_spans_nodes ? 1 : 0};
  world->all_reduce(engine::Tensor(worst.data(), {2}, engine::DType::i32), ReduceOp::max);
  g.ep_peers_inter = worst[0];
  g.ep_peers_intra = g.e - 1 - worst[0];
  g.tp_spans_nodes = worst[1] != 0;
  g.ep_cross_fraction = g.e > 1 ? double(g.ep_peers_inter) / double(g.e - 1) : 0.0;
  return g;
}

GroupPlacement place_groups(const Cluster& c, int tp, int ep) {
  const int world = c.world();
  MONTA_CHECK(tp > 0 && ep > 0 && world % (tp * ep) == 0,
              "place_groups: tp " + std::to_string(tp) + " x ep " + std::to_string(ep) + " does not divide " +
                  std::to_string(world) + " GPUs");
  Layout l;
  l.world = world;
  l.tp = tp;
  l.ep = ep;
  l.dp = world / tp;
  l.expert_dp = l.dp / ep;
  const Topology topo = emulated_topology(0, world, c.nodes, "plan");
  GroupPlacement g = rank_placement(topo, 0, group_ranks(l, GroupKind::tp, 0), group_ranks(l, GroupKind::ep, 0));
  for (int r = 1; r < world; ++r)
    g = slower_placement(g, rank_placement(topo, r, group_ranks(l, GroupKind::tp, r), group_ranks(l, GroupKind::ep, r)));
  return g;
}

ExchangePrediction predict_exchange_shape(ExchangeKind kind, int chunks, int64_t E, int64_t C, int64_t H, int elem_bytes,
                                          const GroupPlacement& g, const LinkModel& l, const ExchangeLoad& load) {
  // Bytes of one capacity slot over all experts, times the share the most loaded rank moves (1 without loads).
  const double row = double(E) * double(H) * elem_bytes * load.moved();
  const int t = g.t, e = g.e;
  ExchangePrediction p;
  auto a2a_bytes = [&](double M) {  // per class: what this rank sends to peers of that class
    return std::pair<double, double>{g.ep_peers_intra * M / e, g.ep_peers_inter * M / e};
  };
  if (kind == ExchangeKind::duplicate) {
    const double M = row * double(C);
    p.a2a = all_to_all_time(l, M, g.ep_peers_intra, g.ep_peers_inter);
    p.total = p.a2a;
    p.ep_bytes = double(e - 1) / e * M;
    p.inter_bytes = a2a_bytes(M).second;
    return p;
  }
  // drop_gather = pipelined with one chunk; chunks of ceil(C/n) slots, each split over t as ceil(c/t) (padding).
  const bool chunked = kind == ExchangeKind::pipelined || kind == ExchangeKind::overlapped;
  const int n = chunked ? int(std::clamp<int64_t>(chunks, 1, C)) : 1;
  const int64_t ck = (C + n - 1) / n, cp = (ck + t - 1) / t;
  const double Ma = row * double(cp), Mg = Ma * t;  // per chunk: all-to-all buffer, all-gather output
  const auto [bi, bo] = a2a_bytes(Ma);
  struct Legs {
    double A, G, stage;
  };
  auto legs = [&](const LinkModel& m) {
    const double A_intra = g.ep_peers_intra > 0 ? m.intra.time(bi) : 0;
    const double A_inter = g.ep_peers_inter > 0 ? m.inter.time(bo) : 0;
    const double G = all_gather_time(m, Mg, t, g.tp_spans_nodes);
    // Overlapped stage: the all-gather shares its link class with that class's share of the next all-to-all.
    const double stage = g.tp_spans_nodes ? std::max(A_intra, A_inter + G) : std::max(A_intra + G, A_inter);
    return Legs{std::max(A_intra, A_inter), G, stage};
  };
  // The first chunk's collectives pay alpha; the later ones follow on the same communicators (alpha_next).
  const Legs first = legs(l), later = n > 1 ? legs(l.chained()) : first;
  p.a2a = first.A + (n - 1) * later.A;
  p.ag = first.G + (n - 1) * later.G;
  // fill + (n-1)·max(stage) + drain; n = 1: A + G (drop_gather)
  p.total = n > 1 ? first.A + (n - 1) * later.stage + later.G : first.A + first.G;
  p.chunks = n;
  p.chunk_a2a = first.A;
  p.chunk_ag = first.G;
  p.stage = later.stage;
  p.next_a2a = later.A;
  p.next_ag = later.G;
  p.ep_bytes = n * double(e - 1) / e * Ma;
  p.inter_bytes = n * bo;
  p.tp_bytes = n * double(t - 1) / t * Mg;
  return p;
}

double sp_dispatch_reduce_scatter_time(ExchangeKind kind, int chunks, int64_t E, int64_t C, int64_t H, int elem_bytes,
                                       const GroupPlacement& g, const LinkModel& l, const ExchangeLoad& load) {
  if (kind == ExchangeKind::duplicate || g.t < 2) return 0;
  const bool chunked = kind == ExchangeKind::pipelined || kind == ExchangeKind::overlapped;
  const int n = chunked ? int(std::clamp<int64_t>(chunks, 1, C)) : 1;
  const int64_t ck = (C + n - 1) / n, cp = (ck + g.t - 1) / g.t;  // as predict_exchange_shape's chunks
  const double Mg = double(E) * double(H) * elem_bytes * double(cp) * g.t * load.moved();
  const double first = reduce_scatter_time(l, Mg, g.t, g.tp_spans_nodes);
  return first + (n - 1) * reduce_scatter_time(l.chained(), Mg, g.t, g.tp_spans_nodes);
}

double predict_moe_block(ExchangeKind kind, int chunks, int64_t E, int64_t C, int64_t H, int elem_bytes,
                         const GroupPlacement& g, const LinkModel& l, double expert_s, const ExchangeLoad& load) {
  return predict_moe_block_rows(kind, chunks, E, C, H, H, elem_bytes, g, l, expert_s, load);
}

double predict_moe_block_rows(ExchangeKind kind, int chunks, int64_t E, int64_t C, int64_t Hd, int64_t H,
                              int elem_bytes, const GroupPlacement& g, const LinkModel& l, double expert_s,
                              const ExchangeLoad& load) {
  const ExchangePrediction d = predict_exchange_shape(kind, chunks, E, C, Hd, elem_bytes, g, l, load);
  const ExchangePrediction c = predict_exchange_shape(kind, chunks, E, C, H, elem_bytes, g, l, load);
  if (kind != ExchangeKind::overlapped) return d.total + c.total + expert_s;
  const double x = expert_s / d.chunks, fill = d.chunk_a2a + d.chunk_ag;
  const double drain = c.chunks > 1 ? c.next_a2a + c.next_ag : c.chunk_a2a + c.chunk_ag;  // the last chunk's combine
  return fill + x + (d.chunks - 1) * std::max(d.stage + c.stage, x) + drain;
}

ExchangePrediction predict_exchange(ExchangeKind kind, int chunks, const ExchangeVolume& v, const GroupPlacement& g,
                                    const LinkModel& l) {
  return predict_exchange_shape(kind, chunks, v.E, v.capacity(), v.H, v.elem_bytes, g, l, v.load());
}

}  // namespace monta::comm
