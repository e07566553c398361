// MPI tests of monta_comm on the ranks mpirun gives (CTest: 2, 4 and 8): every collective of MpiCommunicator
// against hand-computed results on several group shapes, topology discovery, process groups against the pure
// layout, and every token-exchange strategy (pipelined with 1..5 chunks) against a reference built from every
// rank's input.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <cstring>
#include <random>
#include <vector>

#include "comm/exchange.h"
#include "comm/exchange_choice.h"
#include "comm/fp8_dispatch.h"
#include "comm/groups.h"
#include "comm/mpi_communicator.h"
#include "comm/runtime.h"
#include "comm/shard.h"
#include "comm/topology.h"
#include "engine/check.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "engine/ops/linear.h"

namespace monta::comm {
namespace {

using engine::DType;
using engine::Device;

int wrank() { return runtime_world_rank(); }
int wsize() { return runtime_world_size(); }

template <class T> Tensor tens(std::vector<T>& v, DType dt) {
  return engine::make_view(v.data(), {int64_t(v.size())}, dt, Device::cpu);
}

// Group shapes: the world, halves split unevenly (sizes 1/1, 1/3, 3/5), even/odd ranks, and the world in
// reverse order (group rank != world rank).
std::vector<std::unique_ptr<MpiCommunicator>> test_comms() {
  std::vector<std::unique_ptr<MpiCommunicator>> c;
  const int r = wrank(), w = wsize();
  c.push_back(std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world"));
  c.push_back(MpiCommunicator::split(MPI_COMM_WORLD, r < (w + 1) / 3 ? 0 : 1, r, "uneven"));
  c.push_back(MpiCommunicator::split(MPI_COMM_WORLD, r % 2, r, "parity"));
  c.push_back(MpiCommunicator::split(MPI_COMM_WORLD, 0, w - r, "reversed"));
  return c;
}

const std::vector<int64_t> kCounts = {0, 1, 7, 129};

// ---- collectives --------------------------------------------------------------------------------------------

template <class T> void check_all_reduce(Communicator& c, DType dt) {
  const int g = c.rank(), s = c.size();
  for (int64_t n : kCounts) {
    std::vector<T> sum(static_cast<size_t>(n)), mx(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) sum[size_t(i)] = mx[size_t(i)] = T((g + 1) * (i % 7 + 1));
    c.all_reduce(tens(sum, dt), ReduceOp::sum);
    c.all_reduce(tens(mx, dt), ReduceOp::max);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(sum[size_t(i)], T((i % 7 + 1) * s * (s + 1) / 2)) << c.name() << " " << engine::dtype_name(dt) << " i " << i;
      EXPECT_EQ(mx[size_t(i)], T((i % 7 + 1) * s)) << c.name() << " " << engine::dtype_name(dt) << " i " << i;
    }
  }
}

TEST(Collectives, AllReduceSumMaxEveryDtype) {
  for (auto& owned : test_comms()) {
    Communicator& c = *owned;
    check_all_reduce<float>(c, DType::f32);
    check_all_reduce<double>(c, DType::f64);
    check_all_reduce<int32_t>(c, DType::i32);
    check_all_reduce<int64_t>(c, DType::i64);
  }
}

template <class T> T code(int a, int b, int64_t i) { return T((a * 61 + b * 13 + i * 7 + 1) % 251); }

template <class T> void check_all_gather(Communicator& c, DType dt) {
  const int g = c.rank(), s = c.size();
  for (int64_t n : kCounts) {
    std::vector<T> in(static_cast<size_t>(n)), out(static_cast<size_t>(n * s), T(0));
    for (int64_t i = 0; i < n; ++i) in[size_t(i)] = code<T>(g, 0, i);
    c.all_gather(tens(out, dt), tens(in, dt));
    for (int b = 0; b < s; ++b)
      for (int64_t i = 0; i < n; ++i)
        EXPECT_EQ(out[size_t(b * n + i)], code<T>(b, 0, i)) << c.name() << " " << engine::dtype_name(dt);
    // In place: in is out's own block.
    std::vector<T> inplace(static_cast<size_t>(n * s), T(0));
    for (int64_t i = 0; i < n; ++i) inplace[size_t(g * n + i)] = code<T>(g, 1, i);
    Tensor all = tens(inplace, dt);
    c.all_gather(all, engine::make_view(inplace.data() + g * n, {n}, dt, Device::cpu));
    for (int b = 0; b < s; ++b)
      for (int64_t i = 0; i < n; ++i) EXPECT_EQ(inplace[size_t(b * n + i)], code<T>(b, 1, i)) << c.name() << " in place";
  }
}

TEST(Collectives, AllGatherAnyDtypeAndInPlace) {
  for (auto& owned : test_comms()) {
    Communicator& c = *owned;
    check_all_gather<float>(c, DType::f32);
    check_all_gather<uint16_t>(c, DType::bf16);
    check_all_gather<uint8_t>(c, DType::u8);
    check_all_gather<int64_t>(c, DType::i64);
  }
}

template <class T> void check_reduce_scatter(Communicator& c, DType dt) {
  const int g = c.rank(), s = c.size();
  for (int64_t n : kCounts) {
    std::vector<T> in(static_cast<size_t>(n * s)), sum(static_cast<size_t>(n)), mx(static_cast<size_t>(n));
    for (int b = 0; b < s; ++b)
      for (int64_t i = 0; i < n; ++i) in[size_t(b * n + i)] = T((g + 1) + b * 10 + i);
    c.reduce_scatter(tens(sum, dt), tens(in, dt), ReduceOp::sum);
    c.reduce_scatter(tens(mx, dt), tens(in, dt), ReduceOp::max);
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(sum[size_t(i)], T(s * (s + 1) / 2 + s * (g * 10 + i))) << c.name() << " " << engine::dtype_name(dt);
      EXPECT_EQ(mx[size_t(i)], T(s + g * 10 + i)) << c.name() << " " << engine::dtype_name(dt);
    }
  }
}

TEST(Collectives, ReduceScatterSumMax) {
  for (auto& owned : test_comms()) {
    Communicator& c = *owned;
    check_reduce_scatter<float>(c, DType::f32);
    check_reduce_scatter<double>(c, DType::f64);
    check_reduce_scatter<int32_t>(c, DType::i32);
    check_reduce_scatter<int64_t>(c, DType::i64);
  }
}

// The asynchronous form as the distributed optimizer uses it: several started before any is waited, each the
// blocking result.
TEST(Collectives, ReduceScatterAsyncManyInFlight) {
  for (auto& owned : test_comms()) {
    Communicator& c = *owned;
    const int g = c.rank(), s = c.size();
    std::vector<std::vector<float>> in(3), out(3);
    std::vector<std::unique_ptr<comm::Request>> reqs;
    for (int k = 0; k < 3; ++k) {
      const int64_t n = 5 + 64 * k;
      in[size_t(k)].resize(size_t(n * s));
      out[size_t(k)].assign(size_t(n), -1.f);
      for (int64_t i = 0; i < n * s; ++i) in[size_t(k)][size_t(i)] = float((g + 1) * (k + 1)) + float(i);
      reqs.push_back(c.reduce_scatter_async(tens(out[size_t(k)], DType::f32), tens(in[size_t(k)], DType::f32), ReduceOp::sum));
    }
    for (auto& r : reqs) r->wait();
    for (int k = 0; k < 3; ++k) {
      const int64_t n = 5 + 64 * k;
      for (int64_t i = 0; i < n; ++i)
        EXPECT_EQ(out[size_t(k)][size_t(i)], float((k + 1) * s * (s + 1) / 2) + float(s) * float(g * n + i)) << c.name();
    }
    std::vector<float> same(size_t(4 * s));
    EXPECT_THROW(c.reduce_scatter_async(tens(same, DType::f32).rows(0, 4), tens(same, DType::f32), ReduceOp::sum),
                 engine::Error);
  }
}

template <class T> void check_all_to_all(Communicator& c, DType dt) {
  const int g = c.rank(), s = c.size();
  for (int64_t n : kCounts) {
    std::vector<T> in(static_cast<size_t>(n * s)), out(static_cast<size_t>(n * s), T(0));
    for (int j = 0; j < s; ++j)
      for (int64_t i = 0; i < n; ++i) in[size_t(j * n + i)] = code<T>(g, j, i);  // block j goes to rank j
    c.all_to_all(tens(out, dt), tens(in, dt));
    for (int src = 0; src < s; ++src)
      for (int64_t i = 0; i < n; ++i)
        EXPECT_EQ(out[size_t(src * n + i)], code<T>(src, g, i)) << c.name() << " " << engine::dtype_name(dt);
  }
}

TEST(Collectives, AllToAllAnyDtype) {
  for (auto& owned : test_comms()) {
    Communicator& c = *owned;
    check_all_to_all<uint16_t>(c, DType::bf16);
    check_all_to_all<double>(c, DType::f64);
    check_all_to_all<uint8_t>(c, DType::u8);
  }
}

TEST(Collectives, AllToAllVWithZeroCounts) {
  for (auto& owned : test_comms()) {
    Communicator& c = *owned;
    const int g = c.rank(), s = c.size();
    // Rank a sends (a + 2b) % 3 elements to rank b: zero for some pairs, uneven for the rest.
    auto count = [](int a, int b) { return int64_t((a + 2 * b) % 3); };
    std::vector<int64_t> sc(static_cast<size_t>(s)), rc(static_cast<size_t>(s));
    int64_t ns = 0, nr = 0;
    for (int j = 0; j < s; ++j) {
      sc[size_t(j)] = count(g, j);
      rc[size_t(j)] = count(j, g);
      ns += sc[size_t(j)];
      nr += rc[size_t(j)];
    }
    std::vector<int32_t> in, out(static_cast<size_t>(nr) + 3, -1);  // extra room must stay untouched
    for (int j = 0; j < s; ++j)
      for (int64_t k = 0; k < sc[size_t(j)]; ++k) in.push_back(g * 100 + j * 10 + int32_t(k));
    in.reserve(1);
    Tensor tin = engine::make_view(in.empty() ? out.data() + nr : in.data(), {ns}, DType::i32, Device::cpu);
    c.all_to_all_v(tens(out, DType::i32), rc, tin, sc);
    size_t at = 0;
    for (int src = 0; src < s; ++src)
      for (int64_t k = 0; k < rc[size_t(src)]; ++k, ++at)
        EXPECT_EQ(out[at], src * 100 + g * 10 + int32_t(k)) << c.name() << " from " << src;
    for (; at < out.size(); ++at) EXPECT_EQ(out[at], -1) << c.name() << " wrote past the counts";
  }
}

TEST(Collectives, BroadcastFromLastRank) {
  for (auto& owned : test_comms()) {
    Communicator& c = *owned;
    const int root = c.size() - 1;
    std::vector<int64_t> a(11, -1);
    std::vector<uint16_t> b(5, 0);
    if (c.rank() == root) {
      for (size_t i = 0; i < a.size(); ++i) a[i] = int64_t(i) * 1000003 + 7;
      for (size_t i = 0; i < b.size(); ++i) b[i] = engine::float_to_bf16(float(i) + 0.5f).bits;
    }
    c.broadcast(tens(a, DType::i64), root);
    c.broadcast(tens(b, DType::bf16), root);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], int64_t(i) * 1000003 + 7) << c.name();
    for (size_t i = 0; i < b.size(); ++i) EXPECT_EQ(engine::bf16_to_float({b[i]}), float(i) + 0.5f) << c.name();
    c.barrier();
  }
}

TEST(Collectives, AsyncFormsOverlapAndWait) {
  for (auto& owned : test_comms()) {
    Communicator& c = *owned;
    const int g = c.rank(), s = c.size();
    const int64_t n = 9;
    std::vector<float> red(static_cast<size_t>(n), float(g + 1));
    std::vector<int64_t> mx(static_cast<size_t>(n), g);
    std::vector<double> gin(static_cast<size_t>(n), g + 0.25), gout(static_cast<size_t>(n * s), 0);
    std::vector<int32_t> ain(static_cast<size_t>(n * s)), aout(static_cast<size_t>(n * s), 0);
    for (int j = 0; j < s; ++j)
      for (int64_t i = 0; i < n; ++i) ain[size_t(j * n + i)] = g * 1000 + j * 10 + int32_t(i);
    // All four in flight at once, waited in a different order than started; the last waits in its destructor.
    auto r1 = c.all_reduce_async(tens(red, DType::f32), ReduceOp::sum);
    auto r2 = c.all_gather_async(tens(gout, DType::f64), tens(gin, DType::f64));
    auto r3 = c.all_to_all_async(tens(aout, DType::i32), tens(ain, DType::i32));
    auto r4 = c.all_reduce_async(tens(mx, DType::i64), ReduceOp::max);
    r3->wait();
    r1->wait();
    r2->wait();
    r2->wait();  // a second wait is harmless
    r4.reset();
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(red[size_t(i)], float(s * (s + 1) / 2)) << c.name();
      EXPECT_EQ(mx[size_t(i)], s - 1) << c.name();
    }
    for (int b = 0; b < s; ++b)
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_EQ(gout[size_t(b * n + i)], b + 0.25) << c.name();
        EXPECT_EQ(aout[size_t(b * n + i)], b * 1000 + g * 10 + int32_t(i)) << c.name();
      }
  }
}

// Each of these fails its MONTA_CHECK before MPI is called, identically on every rank, so nobody hangs.
TEST(Collectives, BadArgumentsFailLoudly) {
  MpiCommunicator c(MPI_COMM_WORLD, "world");
  const int s = c.size();
  std::vector<float> a(4), b(size_t(4 * s) + 1);
  std::vector<uint16_t> h(4);
  EXPECT_THROW(c.all_gather(tens(b, DType::f32), tens(a, DType::f32)), engine::Error);
  EXPECT_THROW(c.reduce_scatter(tens(a, DType::f32), tens(b, DType::f32), ReduceOp::sum), engine::Error);
  EXPECT_THROW(c.all_to_all(tens(b, DType::f32), tens(b, DType::f32)), engine::Error);
  EXPECT_THROW(c.all_reduce(tens(h, DType::bf16), ReduceOp::sum), engine::Error);
  EXPECT_THROW(c.all_gather(tens(b, DType::f32), tens(h, DType::bf16)), engine::Error);
  std::vector<int64_t> wrong(static_cast<size_t>(s) + 1, 0);
  EXPECT_THROW(c.all_to_all_v(tens(a, DType::f32), wrong, tens(a, DType::f32), wrong), engine::Error);
  std::vector<int64_t> too_many(static_cast<size_t>(s), 4);
  EXPECT_THROW(c.all_to_all_v(tens(a, DType::f32), too_many, tens(a, DType::f32), too_many), engine::Error);
  Tensor dev = tens(a, DType::f32);
  dev.device = Device::cuda;
  EXPECT_THROW(c.all_reduce(dev, ReduceOp::sum), engine::Error);
  EXPECT_THROW(c.broadcast(tens(a, DType::f32), s), engine::Error);
  c.barrier();
}

// ---- runtime and topology -----------------------------------------------------------------------------------

TEST(Runtime, ActiveWithRankAndHost) {
  EXPECT_TRUE(runtime_active());
  int r = -1, w = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  MPI_Comm_size(MPI_COMM_WORLD, &w);
  EXPECT_EQ(runtime_world_rank(), r);
  EXPECT_EQ(runtime_world_size(), w);
  EXPECT_FALSE(runtime_host().empty());
  EXPECT_EQ(runtime_local_rank(), r) << "one host: local rank = world rank";
  EXPECT_EQ(engine::log_rank(), r);
}

TEST(Topology, RealNodesOnOneHost) {
  Topology t = discover_topology(0);
  EXPECT_FALSE(t.emulated);
  EXPECT_EQ(t.world_rank, wrank());
  EXPECT_EQ(t.world_size, wsize());
  EXPECT_EQ(t.num_nodes, 1);
  EXPECT_EQ(t.node, 0);
  EXPECT_EQ(t.local_rank, wrank());
  EXPECT_EQ(t.local_size, wsize());
  EXPECT_EQ(t.node_of_rank, std::vector<int>(static_cast<size_t>(wsize()), 0));
  ASSERT_EQ(t.node_host.size(), 1u);
  EXPECT_EQ(t.node_host[0], t.host);
}

TEST(Topology, EmulatedNodes) {
  const int w = wsize();
  for (int nodes : {1, 2, w}) {
    if (w % nodes) continue;
    Topology t = discover_topology(nodes);
    const int per = w / nodes;
    EXPECT_TRUE(t.emulated);
    EXPECT_EQ(t.num_nodes, nodes);
    EXPECT_EQ(t.node, wrank() / per);
    EXPECT_EQ(t.local_rank, wrank() % per);
    EXPECT_EQ(t.local_size, per);
    for (int r = 0; r < w; ++r) EXPECT_EQ(t.node_of_rank[size_t(r)], r / per);
    EXPECT_TRUE(t.same_node(0, per - 1));
    if (nodes > 1) EXPECT_FALSE(t.same_node(0, per));
    std::vector<int> all(static_cast<size_t>(w));
    for (int r = 0; r < w; ++r) all[size_t(r)] = r;
    EXPECT_DOUBLE_EQ(cross_node_fraction(t, all), double(w - per) / double(w - 1));
  }
}

TEST(Topology, EmulatedNodesMustDivideWorld) {
  const int w = wsize();
  const int bad = w % 3 ? 3 : 5;
  try {
    discover_topology(bad);
    ADD_FAILURE() << "no error for --emulate-nodes " << bad << " on " << w << " ranks";
  } catch (const engine::Error& e) {
    EXPECT_TRUE(e.user);
    const std::string m = e.what();
    EXPECT_NE(m.find("--emulate-nodes " + std::to_string(bad)), std::string::npos) << m;
    EXPECT_NE(m.find(std::to_string(w) + " ranks"), std::string::npos) << m;
  }
}

// ---- process groups -----------------------------------------------------------------------------------------

std::vector<std::pair<int, int>> layouts_for(int world) {  // (tp, ep), t and e in {1, 2, 4}
  std::vector<std::pair<int, int>> v;
  for (int t : {1, 2, 4})
    for (int e : {1, 2, 4})
      if (world % (t * e) == 0) v.push_back({t, e});
  return v;
}

Layout test_layout(int t, int e) { return make_layout(wsize(), t, e, true, 8, 8, 4, 64, 32); }

TEST(ProcessGroups, SizesRanksAndMembersMatchTheLayout) {
  const int w = wsize(), me = wrank();
  const Topology topo = discover_topology(w >= 4 ? 2 : 1);
  for (auto [t, e] : layouts_for(w)) {
    const Layout l = test_layout(t, e);
    ProcessGroups pg(l, topo);
    const RankCoords c = pg.coords();
    EXPECT_EQ(pg.world().size(), w);
    EXPECT_EQ(pg.world().rank(), me);
    EXPECT_EQ(pg.tp().size(), t);
    EXPECT_EQ(pg.tp().rank(), c.tp_idx);
    EXPECT_EQ(pg.dp().size(), l.dp);
    EXPECT_EQ(pg.dp().rank(), c.dp_idx);
    EXPECT_EQ(pg.ep().size(), e);
    EXPECT_EQ(pg.ep().rank(), c.dp_idx % e);
    EXPECT_EQ(pg.expert_dp().size(), l.dp / e);
    EXPECT_EQ(pg.expert_dp().rank(), c.dp_idx / e);
    EXPECT_EQ(pg.node().size(), topo.local_size);
    EXPECT_EQ(pg.node().rank(), topo.local_rank);
    for (GroupKind k : kGroupKinds) {
      const auto want = k == GroupKind::node ? node_ranks(topo, me) : group_ranks(l, k, me);
      EXPECT_EQ(pg.members(k), want) << group_kind_name(k);
      EXPECT_EQ(pg.get(k).name(), group_kind_name(k));
      // The MPI group really holds those ranks, in that order: gather world ranks over it.
      std::vector<int32_t> mine = {me}, got(static_cast<size_t>(pg.get(k).size()), -1);
      pg.get(k).all_gather(tens(got, DType::i32), tens(mine, DType::i32));
      EXPECT_EQ(std::vector<int>(got.begin(), got.end()), want) << group_kind_name(k) << " tp " << t << " ep " << e;
    }
    EXPECT_EQ(pg.layout_table(), format_layout_table(l, topo));
    if (t == 2 && e == 2) engine::log_info(pg.layout_table());
  }
}

// ---- token exchange -----------------------------------------------------------------------------------------

struct ExchangeCase {
  int64_t E, C, H;
  DType dtype;
};

// x of one rank: depends only on the DP index (so identical on every TP rank) and the salt; expert
// dp_idx % E is all zeros.
std::vector<char> make_input(const ExchangeCase& k, int dp_idx, int salt) {
  const size_t es = engine::dtype_size(k.dtype);
  const int64_t n = k.E * k.C * k.H;
  std::vector<char> b(static_cast<size_t>(n) * es);
  std::mt19937 rng(uint32_t(1000 * dp_idx + salt));
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  for (int64_t i = 0; i < n; ++i) {
    const bool zero = (i / (k.C * k.H)) == dp_idx % k.E;
    const float v = zero ? 0.f : u(rng);
    if (k.dtype == DType::f32) std::memcpy(&b[size_t(i) * es], &v, es);
    else {
      const engine::bf16_t h = engine::float_to_bf16(v);
      std::memcpy(&b[size_t(i) * es], &h.bits, es);
    }
  }
  return b;
}

std::vector<char> gather_world(const std::vector<char>& mine) {
  std::vector<char> all(mine.size() * size_t(wsize()));
  MPI_Allgather(mine.data(), int(mine.size()), MPI_BYTE, all.data(), int(mine.size()), MPI_BYTE, MPI_COMM_WORLD);
  return all;
}

Tensor view_of(std::vector<char>& b, std::initializer_list<int64_t> dims, DType dt) {
  return Tensor(b.data(), dims, dt, Device::cpu);
}

// dst (El, rows, H) = src with the elements of every row of local expert j rotated by j+1 (es bytes each).
void rotate_rows(std::vector<char>& dst, const std::vector<char>& src, int64_t El, int64_t rows, int64_t H, size_t es) {
  for (int64_t j = 0; j < El; ++j)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t h = 0; h < H; ++h)
        std::memcpy(&dst[size_t((j * rows + r) * H + h) * es], &src[size_t((j * rows + r) * H + (h + j + 1) % H) * es],
                    es);
}

void run_exchange_case(ProcessGroups& pg, const ExchangeCase& k) {
  const Layout& l = pg.layout();
  const int me = wrank(), e = l.ep, t = l.tp;
  const RankCoords co = pg.coords();
  const int64_t E = k.E, C = k.C, H = k.H, El = E / e;
  const size_t es = engine::dtype_size(k.dtype), slot = size_t(H) * es, bytes = size_t(E * C * H) * es;
  const std::string what = "tp " + std::to_string(t) + " ep " + std::to_string(e) + " E " + std::to_string(E) + " C " +
                           std::to_string(C) + " " + engine::dtype_name(k.dtype);
  const std::vector<int> peers = pg.members(GroupKind::ep);

  std::vector<char> x = make_input(k, co.dp_idx, 1), z = make_input(k, co.dp_idx, 2);
  const std::vector<char> all_x = gather_world(x), all_z = gather_world(z);
  // References from the formulas: y[j, p*C + c] = x_p[me*E_l + j, c]; out[p*E_l + j, c] = z_p[j, me*C + c].
  std::vector<char> y_ref(bytes), out_ref(bytes);
  for (int p = 0; p < e; ++p)
    for (int64_t j = 0; j < El; ++j)
      for (int64_t c = 0; c < C; ++c) {
        const size_t peer = size_t(peers[size_t(p)]) * bytes;
        std::memcpy(&y_ref[size_t(j * e * C + p * C + c) * slot],
                    &all_x[peer + size_t((co.ep_idx * El + j) * C + c) * slot], slot);
        std::memcpy(&out_ref[size_t((p * El + j) * C + c) * slot],
                    &all_z[peer + size_t(j * e * C + co.ep_idx * C + c) * slot], slot);
      }

  std::vector<std::vector<char>> ys;
  // duplicate first (the baseline every other strategy must equal), then drop_gather, then pipelined with
  // 1..5 chunks (uneven when the count does not divide C; more chunks than slots are clamped to C).
  std::vector<std::pair<ExchangeKind, int64_t>> runs = {{ExchangeKind::duplicate, 4}, {ExchangeKind::drop_gather, 4}};
  for (int64_t n = 1; n <= 5; ++n) runs.push_back({ExchangeKind::pipelined, n});
  for (int64_t n : {1, 3, 5}) runs.push_back({ExchangeKind::overlapped, n});
  auto chunked = [](ExchangeKind k) { return k == ExchangeKind::pipelined || k == ExchangeKind::overlapped; };
  for (auto [kind, chunks] : runs) {
    const std::string name =
        what + " " + exchange_kind_name(kind) + (chunked(kind) ? " chunks " + std::to_string(chunks) : "");
    ExchangeShape shape{E, C, H};
    shape.chunks = chunks;
    auto ex = make_exchange(kind, pg.tp(), pg.ep(), shape, k.dtype, Device::cpu);
    EXPECT_EQ(ex->kind(), kind);
    std::vector<char> y(bytes, char(0xAB)), back(bytes, char(0xCD)), out(bytes, char(0xEF));
    ex->dispatch(view_of(y, {El, e * C, H}, k.dtype), view_of(x, {E, C, H}, k.dtype));
    const ExchangeStats st = ex->last_stats();
    ex->combine(view_of(back, {E, C, H}, k.dtype), view_of(y, {El, e * C, H}, k.dtype));
    ex->combine(view_of(out, {E, C, H}, k.dtype), view_of(z, {El, e * C, H}, k.dtype));
    EXPECT_TRUE(y == y_ref) << name << ": dispatch differs from the reference";
    EXPECT_TRUE(back == x) << name << ": combine(dispatch(x)) != x";
    EXPECT_TRUE(out == out_ref) << name << ": combine differs from the reference";
    ys.push_back(y);

    if (kind == ExchangeKind::duplicate) {
      EXPECT_EQ(st.ep_bytes, int64_t((e - 1) * El * C * H) * int64_t(es)) << name;
      EXPECT_EQ(st.tp_bytes, 0) << name;
    } else if (chunked(kind)) {
      // Per chunk k of C (balanced over min(n, C) chunks): this TP rank's slice of it over EP, padded blocks of
      // ceil(cs_k / t) slots over TP.
      const int nc = int(std::min<int64_t>(chunks, C));
      int64_t ep_slots = 0, tp_slots = 0;
      for (int c = 0; c < nc; ++c) {
        const int64_t cs = shard(C, nc, c, false).size;
        ep_slots += shard(cs, t, co.tp_idx, false).size;
        tp_slots += (cs + t - 1) / t;
      }
      EXPECT_EQ(st.ep_bytes, int64_t((e - 1) * El * ep_slots * H) * int64_t(es)) << name;
      EXPECT_EQ(st.tp_bytes, int64_t((t - 1) * e * El * tp_slots * H) * int64_t(es)) << name;
      std::vector<int64_t> sum = {st.ep_bytes};
      pg.tp().all_reduce(tens(sum, DType::i64), ReduceOp::sum);
      EXPECT_EQ(sum[0], int64_t((e - 1) * El * C * H) * int64_t(es)) << name;
    } else {
      const Shard s = shard(C, t, co.tp_idx, false);
      const int64_t cp = (C + t - 1) / t;
      EXPECT_EQ(st.ep_bytes, int64_t((e - 1) * El * s.size * H) * int64_t(es)) << name;
      EXPECT_EQ(st.tp_bytes, int64_t((t - 1) * e * El * cp * H) * int64_t(es)) << name;
      // The TP ranks together send exactly what one duplicate rank sends over EP.
      std::vector<int64_t> sum = {st.ep_bytes};
      pg.tp().all_reduce(tens(sum, DType::i64), ReduceOp::sum);
      EXPECT_EQ(sum[0], int64_t((e - 1) * El * C * H) * int64_t(es)) << name;
    }
    EXPECT_GE(st.seconds, 0.0);
  }
  for (size_t i = 1; i < ys.size(); ++i)
    EXPECT_TRUE(ys[0] == ys[i]) << what << ": duplicate and run " << i << " (" << exchange_kind_name(runs[i].first)
                                << ", chunks " << runs[i].second << ") differ";

  // dispatch_experts_combine with "experts" that rotate the elements of every row by j+1 (j the local expert), so a
  // row computed under the wrong expert or written to the wrong place shows. Reference: duplicate's dispatch, the
  // rotation on the whole buffer, its combine.
  std::vector<char> out_f(bytes);
  {
    std::vector<char> y(bytes), zf(bytes);
    auto ex = make_exchange(ExchangeKind::duplicate, pg.tp(), pg.ep(), ExchangeShape{E, C, H}, k.dtype, Device::cpu);
    ex->dispatch(view_of(y, {El, e * C, H}, k.dtype), view_of(x, {E, C, H}, k.dtype));
    rotate_rows(zf, y, El, e * C, H, es);
    ex->combine(view_of(out_f, {E, C, H}, k.dtype), view_of(zf, {El, e * C, H}, k.dtype));
  }
  for (auto [kind, chunks] : runs) {
    const std::string name = what + " " + exchange_kind_name(kind) + " chunks " + std::to_string(chunks) + " fused";
    ExchangeShape shape{E, C, H};
    shape.chunks = chunks;
    auto ex = make_exchange(kind, pg.tp(), pg.ep(), shape, k.dtype, Device::cpu);
    const int n = ex->expert_chunks();
    EXPECT_EQ(n, kind == ExchangeKind::overlapped ? int(std::min<int64_t>(chunks, C)) : 1) << name;
    std::vector<char> y(bytes, char(0xAB)), zb(bytes, char(0xCD)), out(bytes, char(0xEF));
    const Tensor yt = view_of(y, {El, e * C, H}, k.dtype), zt = view_of(zb, {El, e * C, H}, k.dtype);
    std::vector<int> seen;
    int64_t rows = 0;
    const ExchangeStats st = ex->dispatch_experts_combine(
        view_of(out, {E, C, H}, k.dtype), zt, yt, view_of(x, {E, C, H}, k.dtype), [&](int c) {
          seen.push_back(c);
          const Tensor yc = ex->expert_chunk(yt, c), zc = ex->expert_chunk(zt, c);
          ASSERT_EQ(yc.dim(0), El);
          ASSERT_EQ(yc.dim(2), H);
          rows += yc.dim(1);
          // This chunk only: rotate its rows from y's bytes into z's bytes at the same offset.
          const size_t at = size_t(static_cast<char*>(yc.data) - y.data()), len = size_t(yc.numel()) * es;
          std::vector<char> ychunk(y.begin() + ptrdiff_t(at), y.begin() + ptrdiff_t(at + len)), zchunk(len);
          rotate_rows(zchunk, ychunk, El, yc.dim(1), H, es);
          std::memcpy(static_cast<char*>(zc.data), zchunk.data(), len);
        });
    std::vector<int> want(static_cast<size_t>(n));
    for (int c = 0; c < n; ++c) want[size_t(c)] = c;
    EXPECT_EQ(seen, want) << name << ": expert chunks not called once each, in order";
    EXPECT_EQ(rows, e * C) << name << ": expert chunks do not tile the buffer";
    EXPECT_TRUE(out == out_f) << name << ": dispatch, experts, combine differs from duplicate's";
    ex->dispatch(view_of(y, {El, e * C, H}, k.dtype), view_of(x, {E, C, H}, k.dtype));
    const ExchangeStats one = ex->last_stats();
    EXPECT_EQ(st.ep_bytes, 2 * one.ep_bytes) << name;
    EXPECT_EQ(st.tp_bytes, 2 * one.tp_bytes) << name;
  }

  // Experts split over TP write partial sums: here the last TP rank the rotated rows, the others zeros (exact in
  // any summation order). reduce_tp_partials must sum them where combine reads; duplicate leaves it to the caller's
  // all-reduce. The result must be the fused reference above. (MPI reduces f32 only: the bf16 cases skip this.)
  if (k.dtype != DType::f32) return;
  for (auto [kind, chunks] : runs) {
    const std::string name = what + " " + exchange_kind_name(kind) + " chunks " + std::to_string(chunks) + " TP partials";
    ExchangeShape shape{E, C, H};
    shape.chunks = chunks;
    auto ex = make_exchange(kind, pg.tp(), pg.ep(), shape, k.dtype, Device::cpu);
    std::vector<char> y(bytes, char(0xAB)), zb(bytes, char(0xCD)), out(bytes, char(0xEF));
    const Tensor yt = view_of(y, {El, e * C, H}, k.dtype), zt = view_of(zb, {El, e * C, H}, k.dtype);
    bool reduced_here = false;
    ex->dispatch_experts_combine(view_of(out, {E, C, H}, k.dtype), zt, yt, view_of(x, {E, C, H}, k.dtype), [&](int c) {
      const Tensor yc = ex->expert_chunk(yt, c), zc = ex->expert_chunk(zt, c);
      const size_t at = size_t(static_cast<char*>(yc.data) - y.data()), len = size_t(yc.numel()) * es;
      std::vector<char> ychunk(y.begin() + ptrdiff_t(at), y.begin() + ptrdiff_t(at + len)), zchunk(len, 0);
      if (co.tp_idx == t - 1) rotate_rows(zchunk, ychunk, El, yc.dim(1), H, es);
      std::memcpy(static_cast<char*>(zc.data), zchunk.data(), len);
      reduced_here = ex->reduce_tp_partials(zc, c);
      if (!reduced_here) pg.tp().all_reduce(zc, ReduceOp::sum);
    });
    EXPECT_EQ(reduced_here, kind != ExchangeKind::duplicate) << name;
    EXPECT_TRUE(out == out_f) << name << ": the TP sum of partial expert outputs, combined, differs from duplicate's";
  }

  // Sequence parallelism: each TP rank passes only its part of x (slot s of the (E, C) grid kept on TP rank s % t,
  // zero elsewhere; the parts sum to x). Every capacity-sliced strategy must dispatch the whole x's rows, bit for bit,
  // over the fused path too, with one reduce-scatter per chunk more over TP; duplicate is refused.
  std::vector<char> part(bytes, 0);
  for (int64_t sl = 0; sl < E * C; ++sl)
    if (sl % t == co.tp_idx) std::memcpy(&part[size_t(sl) * slot], &x[size_t(sl) * slot], slot);
  for (auto [kind, chunks] : runs) {
    const std::string name = what + " " + exchange_kind_name(kind) + " chunks " + std::to_string(chunks) + " SP";
    ExchangeShape shape{E, C, H};
    shape.chunks = chunks;
    shape.sequence_parallel = true;
    if (kind == ExchangeKind::duplicate) {
      EXPECT_ANY_THROW(make_exchange(kind, pg.tp(), pg.ep(), shape, k.dtype, Device::cpu)) << name;
      continue;
    }
    ExchangeShape plain_shape = shape;
    plain_shape.sequence_parallel = false;
    auto ex = make_exchange(kind, pg.tp(), pg.ep(), shape, k.dtype, Device::cpu);
    auto plain = make_exchange(kind, pg.tp(), pg.ep(), plain_shape, k.dtype, Device::cpu);
    std::vector<char> y(bytes, char(0xAB)), out(bytes, char(0xEF)), zb(bytes, char(0xCD));
    ex->dispatch(view_of(y, {El, e * C, H}, k.dtype), view_of(part, {E, C, H}, k.dtype));
    EXPECT_TRUE(y == y_ref) << name << ": dispatch of the TP parts differs from the whole buffer's";
    const ExchangeStats st = ex->last_stats();
    plain->dispatch(view_of(y, {El, e * C, H}, k.dtype), view_of(x, {E, C, H}, k.dtype));
    const ExchangeStats pst = plain->last_stats();
    EXPECT_EQ(st.ep_bytes, pst.ep_bytes) << name << ": each token must cross EP once";
    EXPECT_EQ(st.tp_bytes, t > 1 ? 2 * pst.tp_bytes : pst.tp_bytes) << name << ": one reduce-scatter per all-gather";
    const Tensor yt = view_of(y, {El, e * C, H}, k.dtype), zt = view_of(zb, {El, e * C, H}, k.dtype);
    ex->dispatch_experts_combine(view_of(out, {E, C, H}, k.dtype), zt, yt, view_of(part, {E, C, H}, k.dtype),
                                 [&](int c) {
                                   const Tensor yc = ex->expert_chunk(yt, c), zc = ex->expert_chunk(zt, c);
                                   const size_t at = size_t(static_cast<char*>(yc.data) - y.data());
                                   const size_t len = size_t(yc.numel()) * es;
                                   std::vector<char> ychunk(y.begin() + ptrdiff_t(at), y.begin() + ptrdiff_t(at + len));
                                   std::vector<char> zchunk(len);
                                   rotate_rows(zchunk, ychunk, El, yc.dim(1), H, es);
                                   std::memcpy(static_cast<char*>(zc.data), zchunk.data(), len);
                                 });
    EXPECT_TRUE(out == out_f) << name << ": dispatch, experts, combine of the TP parts differs from duplicate's";
  }
}

TEST(Exchange, MatchesReferenceAndInvertsForEveryLayout) {
  const Topology topo = discover_topology(0);
  int cases = 0;
  for (auto [t, e] : layouts_for(wsize())) {
    ProcessGroups pg(test_layout(t, e), topo);
    // C = 5, 3 and 11 divide by neither 2 nor 4 (3 < 4 leaves a TP rank with an empty slice) nor by most chunk
    // counts (11 in 4 chunks: 3,3,3,2, each split again over t); E_l = 1 and 2.
    for (int64_t E : {int64_t(e), int64_t(2 * e)})
      for (int64_t C : {5, 3, 11})
        for (DType dt : {DType::f32, DType::bf16}) {
          run_exchange_case(pg, {E, C, 3, dt});
          ++cases;
        }
  }
  EXPECT_GE(cases, 24);
}

// ---- dropless routing, stage B: only the filled slots travel (Exchange::set_loads) ---------------------------

// The loads of one case, identical on every rank (seeded by the case only): loads[p*E + x] filled leading slots of
// expert x on EP rank p. Skewed: expert 0 full everywhere, the others one slot or none.
std::vector<int32_t> make_loads(int e, int64_t E, int64_t C, bool skewed, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> loads(size_t(int64_t(e) * E));
  for (int p = 0; p < e; ++p)
    for (int64_t x = 0; x < E; ++x) {
      int32_t& l = loads[size_t(p * E + x)];
      l = skewed ? (x == 0 ? int32_t(C) : int32_t(rng() % 2) * int32_t(x % 3 != 0)) : int32_t(rng() % uint32_t(C + 1));
    }
  return loads;
}

// Every strategy with loads against duplicate's plain (no-loads) result: rows of W = k.H elements through exchanges
// sized for Hx >= W (the FP8 dispatch's narrower rows), built for capacity C + 1 and set to C as a dropless step does.
void run_loads_case(ProcessGroups& pg, const ExchangeCase& k, int64_t Hx, bool skewed) {
  const Layout& l = pg.layout();
  const int e = l.ep, t = l.tp;
  const RankCoords co = pg.coords();
  const int me = co.ep_idx;
  const int64_t E = k.E, C = k.C, H = k.H, El = E / e;
  const size_t es = engine::dtype_size(k.dtype), slot = size_t(H) * es, bytes = size_t(E * C * H) * es;
  const std::string what = std::string(skewed ? "skewed" : "random") + " loads tp " + std::to_string(t) + " ep " +
                           std::to_string(e) + " E " + std::to_string(E) + " C " + std::to_string(C) + " W " +
                           std::to_string(H) + " H " + std::to_string(Hx) + " " + engine::dtype_name(k.dtype);
  const std::vector<int32_t> L = make_loads(e, E, C, skewed, uint32_t(E * 131 + C * 7 + e + (skewed ? 1 : 0)));
  auto load = [&](int p, int64_t x) { return int64_t(L[size_t(p * E + x)]); };
  // Whether y/z row (j, p, c) and x/out row (x, c) hold a token.
  auto exp_filled = [&](int64_t j, int64_t p, int64_t c) { return c < load(int(p), me * El + j); };
  auto tok_filled = [&](int64_t x, int64_t c) { return c < load(me, x); };
  int64_t sent_d = 0, sent_c = 0, received = 0;  // filled rows: dispatched and combined to other ranks, received
  for (int p = 0; p < e; ++p)
    for (int64_t j = 0; j < El; ++j) {
      if (p != me) sent_d += load(me, p * El + j), sent_c += load(p, me * El + j);
      received += load(p, me * El + j);
    }
  // x and z with random padding rows too: they must not travel.
  std::vector<char> x = make_input(k, co.dp_idx, 1), z = make_input(k, co.dp_idx, 2);
  const Tensor xt = view_of(x, {E, C, H}, k.dtype), zt = view_of(z, {El, e * C, H}, k.dtype);
  std::vector<char> y_plain(bytes), out_plain(bytes), out_f(bytes), zr(bytes);
  {
    auto dup = make_exchange(ExchangeKind::duplicate, pg.tp(), pg.ep(), ExchangeShape{E, C, H}, k.dtype, Device::cpu);
    dup->dispatch(view_of(y_plain, {El, e * C, H}, k.dtype), xt);
    dup->combine(view_of(out_plain, {E, C, H}, k.dtype), zt);
    rotate_rows(zr, y_plain, El, e * C, H, es);
    dup->combine(view_of(out_f, {E, C, H}, k.dtype), view_of(zr, {El, e * C, H}, k.dtype));
  }
  const std::vector<char> zero_row(slot, 0);
  auto row = [&](const std::vector<char>& b, int64_t i) { return b.data() + size_t(i) * slot; };
  // Filled rows of y equal want's, the others are zeros; filled rows of out equal want's.
  auto check_y = [&](const std::vector<char>& y, const std::vector<char>& want, const std::string& name) {
    int bad = 0;
    for (int64_t j = 0; j < El; ++j)
      for (int64_t p = 0; p < e; ++p)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = j * e * C + p * C + c;
          const bool ok = exp_filled(j, p, c) ? !std::memcmp(row(y, i), row(want, i), slot)
                                              : !std::memcmp(row(y, i), zero_row.data(), slot);
          if (!ok && bad++ < 3)
            ADD_FAILURE() << name << ": y row (j " << j << ", p " << p << ", c " << c << ") "
                          << (exp_filled(j, p, c) ? "differs" : "is padding, not zero");
        }
  };
  auto check_out = [&](const std::vector<char>& out, const std::vector<char>& want, const std::string& name) {
    int bad = 0;
    for (int64_t xr = 0; xr < E; ++xr)
      for (int64_t c = 0; c < C; ++c)
        if (tok_filled(xr, c) && std::memcmp(row(out, xr * C + c), row(want, xr * C + c), slot) && bad++ < 3)
          ADD_FAILURE() << name << ": out row (x " << xr << ", c " << c << ") differs";
  };
  auto tp_sum_max_min = [&](int64_t v) {
    std::vector<int64_t> s = {v}, mx = {v}, mn = {-v};
    pg.tp().all_reduce(tens(s, DType::i64), ReduceOp::sum);
    pg.tp().all_reduce(tens(mx, DType::i64), ReduceOp::max);
    pg.tp().all_reduce(tens(mn, DType::i64), ReduceOp::max);
    return std::array<int64_t, 3>{s[0], mx[0], -mn[0]};
  };
  const int64_t rowb = H * int64_t(es);

  std::vector<std::pair<ExchangeKind, int64_t>> runs = {{ExchangeKind::duplicate, 1}, {ExchangeKind::drop_gather, 1}};
  for (int64_t n : {1, 2, 3, 5}) runs.push_back({ExchangeKind::pipelined, n});
  for (int64_t n : {1, 2, 3, 5}) runs.push_back({ExchangeKind::overlapped, n});
  for (auto [kind, chunks] : runs) {
    const std::string name = what + " " + exchange_kind_name(kind) + " chunks " + std::to_string(chunks);
    ExchangeShape shape{E, C + 1, Hx};
    shape.chunks = chunks;
    auto ex = make_exchange(kind, pg.tp(), pg.ep(), shape, k.dtype, Device::cpu);
    ex->set_capacity(C);
    ex->set_loads(L);
    const int nc = int(std::min<int64_t>(kind == ExchangeKind::overlapped ? chunks : 1, C));
    std::vector<char> y(bytes, char(0xAB)), out(bytes, char(0xEF)), back(bytes, char(0xCD));
    const Tensor yt = view_of(y, {El, e * C, H}, k.dtype);
    ex->dispatch(yt, xt);
    const ExchangeStats sd = ex->last_stats();
    ex->combine(view_of(out, {E, C, H}, k.dtype), zt);
    const ExchangeStats sc = ex->last_stats();
    ex->combine(view_of(back, {E, C, H}, k.dtype), yt);
    check_y(y, y_plain, name + " dispatch");
    check_out(out, out_plain, name + " combine");
    check_out(back, x, name + " combine(dispatch(x))");
    // Bytes: exactly the filled rows sent to other ranks; the TP ranks of a capacity-sliced strategy share them,
    // each (expert, peer, chunk) run split evenly, so they differ by at most a row per run.
    if (kind == ExchangeKind::duplicate) {
      EXPECT_EQ(sd.ep_bytes, sent_d * rowb) << name;
      EXPECT_EQ(sc.ep_bytes, sent_c * rowb) << name;
      EXPECT_EQ(sd.tp_bytes + sc.tp_bytes, 0) << name;
    } else {
      const int pc = ex->pipeline_chunks();
      for (auto [st, sent, recv] : {std::tuple{sd, sent_d, received}, std::tuple{sc, sent_c, int64_t(-1)}}) {
        const auto [sum, mx, mn] = tp_sum_max_min(st.ep_bytes);
        EXPECT_EQ(sum, sent * rowb) << name;
        EXPECT_LE(mx - mn, int64_t(pc) * (e - 1) * El * rowb) << name << ": the TP ranks' EP traffic is unbalanced";
        if (recv >= 0) {  // the all-gather of the received rows: at least their share, at most a row a run more
          EXPECT_GE(t * st.tp_bytes, (t - 1) * recv * rowb) << name;
          EXPECT_LE(t * st.tp_bytes, (t - 1) * (recv + int64_t(t) * pc * e * El) * rowb) << name;
        }
      }
    }

    // Fused, experts rotating only the runs expert_runs names: the runs cover the received filled rows once, the
    // rows outside them are zero, and the combined result is the plain one's on the filled rows.
    std::fill(y.begin(), y.end(), char(0xAB));
    std::fill(out.begin(), out.end(), char(0xEF));
    std::vector<char> zb(bytes, char(0xCD));
    const Tensor zbt = view_of(zb, {El, e * C, H}, k.dtype);
    int64_t covered = 0;
    std::vector<int> seen;
    auto experts = [&](int c, bool partial) {
      seen.push_back(c);
      const Tensor yc = ex->expert_chunk(yt, c), zc = ex->expert_chunk(zbt, c);
      const int64_t rows = yc.dim(1);
      char* yb = static_cast<char*>(yc.data);
      char* zcb = static_cast<char*>(zc.data);
      std::vector<char> mark(size_t(El * rows), 0);
      for (const ExpertRun& r : ex->expert_runs(c)) {
        ASSERT_TRUE(r.j >= 0 && r.j < El && r.row >= 0 && r.count > 0 && r.row + r.count <= rows) << name;
        for (int64_t i = r.row; i < r.row + r.count; ++i) {
          EXPECT_EQ(mark[size_t(r.j * rows + i)]++, 0) << name << ": row covered twice";
          ++covered;
        }
        std::vector<char> src(yb + size_t((r.j * rows + r.row) * H) * es,
                              yb + size_t((r.j * rows + r.row + r.count) * H) * es),
            dst(src.size(), 0);
        if (!partial || co.tp_idx == t - 1) {
          // rotate_rows on one expert's run: shift by j + 1 as the whole-buffer reference does.
          for (int64_t i = 0; i < r.count; ++i)
            for (int64_t h = 0; h < H; ++h)
              std::memcpy(&dst[size_t(i * H + h) * es], &src[size_t(i * H + (h + r.j + 1) % H) * es], es);
        }
        std::memcpy(zcb + size_t((r.j * rows + r.row) * H) * es, dst.data(), dst.size());
      }
      for (int64_t i = 0; i < El * rows; ++i)
        if (!mark[size_t(i)])
          EXPECT_EQ(std::memcmp(yb + size_t(i) * slot, zero_row.data(), slot), 0) << name << ": padding row not zero";
      if (partial && !ex->reduce_tp_partials(zc, c)) pg.tp().all_reduce(zc, ReduceOp::sum);
    };
    ex->dispatch_experts_combine(view_of(out, {E, C, H}, k.dtype), zbt, yt, xt, [&](int c) { experts(c, false); });
    EXPECT_EQ(covered, received) << name << ": expert runs do not cover the filled rows";
    EXPECT_EQ(int(seen.size()), nc) << name;
    check_out(out, out_f, name + " fused");
    if (k.dtype == DType::f32) {  // expert-TP partial sums (MPI reduces f32 only)
      std::fill(out.begin(), out.end(), char(0xEF));
      std::fill(zb.begin(), zb.end(), char(0));
      ex->dispatch_experts_combine(view_of(out, {E, C, H}, k.dtype), zbt, yt, xt, [&](int c) { experts(c, true); });
      check_out(out, out_f, name + " TP partials");
    }
    // set_capacity resets the loads: every slot travels again.
    ex->set_capacity(C);
    ex->dispatch(yt, xt);
    EXPECT_TRUE(y == y_plain) << name << ": set_capacity did not reset the loads";

    if (kind == ExchangeKind::duplicate || k.dtype != DType::f32) continue;  // MPI reduce-scatters f32 only
    // Sequence parallelism: TP rank s % t holds slot s of x (padding included), the others zeros.
    std::vector<char> part(bytes, 0);
    for (int64_t sl = 0; sl < E * C; ++sl)
      if (sl % t == co.tp_idx) std::memcpy(&part[size_t(sl) * slot], &x[size_t(sl) * slot], slot);
    shape.sequence_parallel = true;
    auto sp = make_exchange(kind, pg.tp(), pg.ep(), shape, k.dtype, Device::cpu);
    sp->set_capacity(C);
    sp->set_loads(L);
    std::fill(y.begin(), y.end(), char(0xAB));
    sp->dispatch(yt, view_of(part, {E, C, H}, k.dtype));
    check_y(y, y_plain, name + " SP dispatch");
    EXPECT_EQ(sp->last_stats().ep_bytes, sd.ep_bytes) << name << " SP: each filled row must cross EP once";
  }
}

TEST(Exchange, DroplessLoadsMoveOnlyFilledRowsInEveryStrategy) {
  const Topology topo = discover_topology(0);
  int cases = 0;
  for (auto [t, e] : layouts_for(wsize())) {
    ProcessGroups pg(test_layout(t, e), topo);
    for (int64_t E : {int64_t(e), int64_t(2 * e)})
      for (int64_t C : {5, 11})
        for (DType dt : {DType::f32, DType::bf16})
          for (bool skewed : {false, true}) {
            run_loads_case(pg, {E, C, 3, dt}, C == 5 ? 5 : 3, skewed);
            ++cases;
          }
  }
  EXPECT_GE(cases, 32);
}

// FP8 dispatch (comm/fp8_dispatch.h) through every strategy equals quantise→dequantise of duplicate's plain dispatch,
// bit for bit, in the fused form too (experts rotate rows; combine stays in the activation dtype), and moves
// Wq/H of the plain dispatch's bytes over EP and TP.
void run_fp8_dispatch_case(ProcessGroups& pg, const ExchangeCase& k) {
  const Layout& l = pg.layout();
  const int e = l.ep;
  const int64_t E = k.E, C = k.C, H = k.H, El = E / e, Wq = fp8_dispatch_width(H, k.dtype);
  const size_t es = engine::dtype_size(k.dtype), bytes = size_t(E * C * H) * es, qbytes = size_t(E * C * Wq) * es;
  const std::string what = "fp8 dispatch tp " + std::to_string(l.tp) + " ep " + std::to_string(e) + " E " +
                           std::to_string(E) + " C " + std::to_string(C) + " " + engine::dtype_name(k.dtype);
  // x depends on the DP index only (equal on the TP ranks); magnitudes spread over binades, so tiles get different
  // scales and a scale applied to the wrong row shows.
  std::vector<char> x(bytes);
  std::mt19937 rng(uint32_t(77 + pg.coords().dp_idx));
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  for (int64_t i = 0; i < E * C * H; ++i) {
    const float v = std::ldexp(u(rng), int((i / 128 + i / H) % 9) - 4);
    if (k.dtype == DType::f32) reinterpret_cast<float*>(x.data())[i] = v;
    else reinterpret_cast<engine::bf16_t*>(x.data())[i] = engine::float_to_bf16(v);
  }
  const Tensor xt = view_of(x, {E, C, H}, k.dtype);
  // Reference: duplicate's plain dispatch, rounded through FP8 row by row; the fused reference combines its rotation.
  std::vector<char> y_ref(bytes), scratch(qbytes), z_ref(bytes), out_ref(bytes);
  auto dup = make_exchange(ExchangeKind::duplicate, pg.tp(), pg.ep(), ExchangeShape{E, C, H}, k.dtype, Device::cpu);
  dup->dispatch(view_of(y_ref, {El, e * C, H}, k.dtype), xt);
  const ExchangeStats plain = dup->last_stats();
  fp8_round_trip(view_of(y_ref, {El * e * C, H}, k.dtype), view_of(scratch, {El * e * C, Wq}, k.dtype));
  rotate_rows(z_ref, y_ref, El, e * C, H, es);
  dup->combine(view_of(out_ref, {E, C, H}, k.dtype), view_of(z_ref, {El, e * C, H}, k.dtype));
  bool some_rounded = false;
  {
    std::vector<char> y_plain(bytes);
    dup->dispatch(view_of(y_plain, {El, e * C, H}, k.dtype), xt);
    some_rounded = y_plain != y_ref;
  }
  EXPECT_TRUE(some_rounded) << what << ": FP8 rounding changed nothing; the test would not see a missing quantisation";

  std::vector<std::pair<ExchangeKind, int64_t>> runs = {{ExchangeKind::duplicate, 1}, {ExchangeKind::drop_gather, 1}};
  for (int64_t n : {1, 2, 5}) runs.push_back({ExchangeKind::pipelined, n});
  for (int64_t n : {1, 3, 5}) runs.push_back({ExchangeKind::overlapped, n});
  for (auto [kind, chunks] : runs) {
    const std::string name = what + " " + exchange_kind_name(kind) + " chunks " + std::to_string(chunks);
    ExchangeShape shape{E, C, H};
    shape.chunks = chunks;
    auto ex = make_exchange(kind, pg.tp(), pg.ep(), shape, k.dtype, Device::cpu);
    std::vector<char> y(bytes, char(0xAB)), xq(qbytes, char(0x11)), yq(qbytes, char(0x22));
    const Tensor yt = view_of(y, {El, e * C, H}, k.dtype);
    const Tensor xqt = view_of(xq, {E, C, Wq}, k.dtype), yqt = view_of(yq, {El, e * C, Wq}, k.dtype);
    const ExchangeStats st = fp8_dispatch(*ex, yt, xt, xqt, yqt);
    EXPECT_TRUE(y == y_ref) << name << ": differs from quantise→dequantise of the plain dispatch";
    // Bytes: the plain dispatch's (for duplicate; per-rank slices for the others), scaled by Wq/H exactly.
    ex->dispatch(view_of(z_ref, {El, e * C, H}, k.dtype), xt);  // z_ref is free again: a plain dispatch's stats
    const ExchangeStats full = ex->last_stats();
    EXPECT_EQ(st.ep_bytes * H, full.ep_bytes * Wq) << name;
    EXPECT_EQ(st.tp_bytes * H, full.tp_bytes * Wq) << name;
    if (kind == ExchangeKind::duplicate) EXPECT_EQ(full.ep_bytes, plain.ep_bytes) << name;

    // Fused: experts rotate the (unpacked) rows of their chunk.
    std::vector<char> zb(bytes, char(0xCD)), out(bytes, char(0xEF));
    std::fill(y.begin(), y.end(), char(0xAB));
    const Tensor zt = view_of(zb, {El, e * C, H}, k.dtype);
    ex->dispatch(yt, xt);  // y now holds unrounded rows: each chunk must be overwritten by its unpacked FP8 rows
    fp8_dispatch_experts_combine(*ex, view_of(out, {E, C, H}, k.dtype), zt, yt, xt, xqt, yqt, [&](int c) {
      const Tensor yc = ex->expert_chunk(yt, c), zc = ex->expert_chunk(zt, c);
      const size_t at = size_t(static_cast<char*>(yc.data) - y.data()), len = size_t(yc.numel()) * es;
      std::vector<char> ychunk(y.begin() + ptrdiff_t(at), y.begin() + ptrdiff_t(at + len)), zchunk(len);
      rotate_rows(zchunk, ychunk, El, yc.dim(1), H, es);
      std::memcpy(static_cast<char*>(zc.data), zchunk.data(), len);
    });
    EXPECT_TRUE(out == out_ref) << name << ": fused FP8 dispatch, experts, combine differs from the reference";

    // Dropless (set_loads): only the filled slots' packed rows travel; y's filled rows as above, its padding zeros
    // (zero codes and zero scales unpack to zeros), and the EP bytes are the filled rows' Wq elements.
    const int me = pg.coords().ep_idx;
    const std::vector<int32_t> L = make_loads(e, E, C, chunks == 2, uint32_t(E + C + chunks));
    ex->set_loads(L);
    std::fill(y.begin(), y.end(), char(0xAB));
    const ExchangeStats sl = fp8_dispatch(*ex, yt, xt, xqt, yqt);
    int64_t sent = 0;
    bool rows_ok = true;
    for (int p = 0; p < e; ++p)
      for (int64_t j = 0; j < El; ++j) {
        if (p != me) sent += L[size_t(me * E + p * El + j)];
        for (int64_t c = 0; c < C; ++c) {
          const size_t at = size_t(j * e * C + p * C + c) * size_t(H) * es;
          const bool filled = c < L[size_t(p * E + me * El + j)];
          for (size_t b = 0; b < size_t(H) * es; ++b) rows_ok &= y[at + b] == (filled ? y_ref[at + b] : char(0));
        }
      }
    EXPECT_TRUE(rows_ok) << name << " with loads: filled rows differ or padding is not zero";
    std::vector<int64_t> ep_sum = {sl.ep_bytes};
    pg.tp().all_reduce(tens(ep_sum, DType::i64), ReduceOp::sum);
    EXPECT_EQ(kind == ExchangeKind::duplicate ? sl.ep_bytes : ep_sum[0], sent * Wq * int64_t(es)) << name;
  }
}

TEST(Exchange, Fp8DispatchEqualsRoundedPlainDispatchForEveryStrategy) {
  const Topology topo = discover_topology(0);
  int cases = 0;
  for (auto [t, e] : layouts_for(wsize())) {
    ProcessGroups pg(test_layout(t, e), topo);
    // H = 300: three 1x128 tiles, the last ragged; C = 5 and 3 split unevenly over TP and chunks.
    for (int64_t E : {int64_t(e), int64_t(2 * e)})
      for (int64_t C : {5, 3})
        for (DType dt : {DType::f32, DType::bf16}) {
          run_fp8_dispatch_case(pg, {E, C, 300, dt});
          ++cases;
        }
  }
  EXPECT_GE(cases, 8);
}

// --comm.exchange auto on tp 2 x ep 2, two ranks a node (each TP pair on a node, each EP pair across nodes): every
// rank gets the same pick; a slow network
// steers away from duplicate (it sends t times the inter-node bytes), pure latency steers to it (one collective
// per call); with verification on, the table shows the measurements and the pick is still common to all ranks.
TEST(ExchangeChoice, FollowsTheLinksAndAllRanksAgree) {
  if (wsize() % 4) GTEST_SKIP() << "needs a multiple of 4 ranks";
  ProcessGroups pg(test_layout(2, 2), discover_topology(wsize() / 2));
  ExchangeChoiceInput in;
  in.experts = 4;
  in.capacity = 64;
  in.hidden = 32;
  in.ffn_local = 16;
  in.verify = false;
  auto agree = [&](const ExchangeChoice& c, const std::string& what) {
    std::vector<int64_t> lo = {int64_t(c.kind), c.chunks}, hi = lo;
    pg.world().all_reduce(tens(lo, DType::i64), ReduceOp::sum);
    for (auto& v : hi) v *= wsize();
    EXPECT_EQ(lo, hi) << what << ": ranks picked differently";
  };
  in.links = LinkModel{link_from(1000, 1), link_from(0.01, 1)};  // NVLink-like and a very slow network
  const ExchangeChoice slow = choose_exchange(pg, pg.world(), pg.tp(), pg.ep(), in);
  EXPECT_NE(slow.kind, ExchangeKind::duplicate) << slow.table;
  EXPECT_NE(slow.table.find("exchange auto: chose"), std::string::npos);
  agree(slow, "slow network");
  in.links = LinkModel{link_from(1e6, 10000), link_from(1e6, 10000)};  // 10 ms a message, bandwidth free
  const ExchangeChoice latency = choose_exchange(pg, pg.world(), pg.tp(), pg.ep(), in);
  EXPECT_EQ(latency.kind, ExchangeKind::duplicate) << latency.table;
  agree(latency, "latency-bound");
  in.verify = true;
  const ExchangeChoice measured = choose_exchange(pg, pg.world(), pg.tp(), pg.ep(), in);
  EXPECT_NE(measured.table.find("measured forward MoE block"), std::string::npos) << measured.table;
  agree(measured, "verified");
  // Dropless stage B: priced at the most loaded rank, measured with loads like it.
  in.load = {0.5, 1.5};
  const ExchangeChoice dropless = choose_exchange(pg, pg.world(), pg.tp(), pg.ep(), in);
  EXPECT_NE(dropless.table.find("50.0% of the slots filled"), std::string::npos) << dropless.table;
  agree(dropless, "dropless loads");
  // The model's expert GEMM (FP8 experts) is what gets timed, and only the strategies it can run are candidates.
  in.load = {};
  int gemms = 0;
  in.expert_gemm = [&](Tensor o, const Tensor& y, const Tensor& w) {
    ++gemms;
    engine::expert_linear_forward(o, y, w);
  };
  in.runnable = [](ExchangeKind k, int n) { return k != ExchangeKind::overlapped || n == 3; };
  const ExchangeChoice model_gemm = choose_exchange(pg, pg.world(), pg.tp(), pg.ep(), in);
  EXPECT_GT(gemms, 0);
  EXPECT_NE(model_gemm.table.find("with the model's expert GEMM"), std::string::npos) << model_gemm.table;
  EXPECT_NE(model_gemm.table.find("  overlapped        3"), std::string::npos) << model_gemm.table;
  EXPECT_EQ(model_gemm.table.find("  overlapped        2"), std::string::npos) << model_gemm.table;
  EXPECT_NE(model_gemm.table.find("  pipelined         2"), std::string::npos) << model_gemm.table;
  EXPECT_TRUE(model_gemm.kind != ExchangeKind::overlapped || model_gemm.chunks == 3) << model_gemm.table;
  agree(model_gemm, "model's GEMM, runnable candidates");
}

TEST(Exchange, WrongBuffersFailLoudly) {
  const Topology topo = discover_topology(0);
  ProcessGroups pg(test_layout(1, wsize() % 2 ? 1 : 2), topo);
  const int e = pg.ep().size();
  auto ex = make_exchange(ExchangeKind::drop_gather, pg.tp(), pg.ep(), {2 * e, 4, 2}, DType::f32, Device::cpu);
  std::vector<float> x(static_cast<size_t>(2 * e * 4 * 2)), y(x.size() + 1);
  EXPECT_THROW(ex->dispatch(tens(y, DType::f32), tens(x, DType::f32)), engine::Error);
  EXPECT_THROW(ex->dispatch(tens(x, DType::f32), tens(x, DType::f32)), engine::Error);  // aliasing
  EXPECT_THROW(ex->combine(tens(x, DType::f64), tens(x, DType::f32)), engine::Error);
  if (e > 1)
    EXPECT_THROW(make_exchange(ExchangeKind::duplicate, pg.tp(), pg.ep(), {2 * e + 1, 4, 2}, DType::f32, Device::cpu),
                 engine::Error);
  pg.world().barrier();
}

}  // namespace
}  // namespace monta::comm
