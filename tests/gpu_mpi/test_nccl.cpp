// NCCL tests of monta_comm on the ranks mpirun gives (CTest: 1, 2 and 4; with and without emulated nodes): every
// collective of NcclCommunicator on device buffers against hand-computed values, the async forms and their
// ordering against the compute stream, the host fallback, bad arguments, and the MoE exchange over NCCL
// bit-identical to the same exchange over MPI on host copies, for every registered strategy.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "comm/cuda/nccl_communicator.h"
#include "comm/exchange.h"
#include "comm/groups.h"
#include "comm/mpi_communicator.h"
#include "comm/runtime.h"
#include "comm/topology.h"
#include "engine/check.h"
#include "engine/memory.h"
#include "gpu_mpi_env.h"

namespace monta::comm {
namespace {

using engine::Device;
using engine::DType;

int wrank() { return runtime_world_rank(); }
int wsize() { return runtime_world_size(); }

template <class T> Tensor host(std::vector<T>& v, DType dt) {
  return engine::make_view(v.data(), {int64_t(v.size())}, dt, Device::cpu);
}

// A device buffer of n elements, filled from the host or with a byte pattern; read back with get().
class DeviceVec {
 public:
  DeviceVec(int64_t n, DType dt, unsigned char pattern = 0xEE) {
    const size_t bytes = size_t(n) * engine::dtype_size(dt);
    t_ = engine::make_view(engine::device_alloc(Device::cuda, bytes), {n}, dt, Device::cuda);
    std::vector<unsigned char> p(bytes, pattern);
    if (bytes) engine::copy(t_, engine::make_view(p.data(), {n}, dt, Device::cpu));
  }
  template <class T> DeviceVec(const std::vector<T>& v, DType dt) : DeviceVec(int64_t(v.size()), dt) {
    engine::copy(t_, engine::make_view(const_cast<T*>(v.data()), {int64_t(v.size())}, dt, Device::cpu));
  }
  ~DeviceVec() { engine::device_free(Device::cuda, t_.data); }
  DeviceVec(const DeviceVec&) = delete;
  DeviceVec& operator=(const DeviceVec&) = delete;
  const Tensor& t() const { return t_; }
  Tensor block(int64_t i, int64_t n) const {
    Tensor b = t_;
    b.data = static_cast<char*>(t_.data) + size_t(i * n) * engine::dtype_size(t_.dtype);
    b.shape = {n, 0, 0, 0};
    return b;
  }
  template <class T> std::vector<T> get() const {
    std::vector<T> v(size_t(t_.numel()));
    engine::copy(engine::make_view(v.data(), {t_.numel()}, t_.dtype, Device::cpu), t_);
    return v;
  }

 private:
  Tensor t_;
};

// Group shapes as in test_comm_mpi: the world, an uneven split, even/odd ranks, the world reversed (group rank
// != world rank). Built once (NCCL init is slow) and released by main before MPI_Finalize.
struct TestComm {
  std::unique_ptr<MpiCommunicator> mpi;
  std::unique_ptr<NcclCommunicator> nccl;  // no host fallback: host buffers are errors
};
std::vector<TestComm>* g_comms = nullptr;

std::vector<TestComm>& test_comms() {
  if (g_comms) return *g_comms;
  g_comms = new std::vector<TestComm>;
  const int r = wrank(), w = wsize();
  std::vector<std::unique_ptr<MpiCommunicator>> m;
  m.push_back(std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world"));
  m.push_back(MpiCommunicator::split(MPI_COMM_WORLD, r < (w + 1) / 3 ? 0 : 1, r, "uneven"));
  m.push_back(MpiCommunicator::split(MPI_COMM_WORLD, r % 2, r, "parity"));
  m.push_back(MpiCommunicator::split(MPI_COMM_WORLD, 0, w - r, "reversed"));
  for (auto& c : m) {
    TestComm t;
    t.nccl = std::make_unique<NcclCommunicator>(c->handle(), c->name());
    t.mpi = std::move(c);
    g_comms->push_back(std::move(t));
  }
  return *g_comms;
}

class Nccl : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::nccl_usable()) GTEST_SKIP() << test::nccl_skip_reason();
  }
};

const std::vector<int64_t> kCounts = {0, 1, 7, 129};

// ---- collectives --------------------------------------------------------------------------------------------

template <class T> void check_all_reduce(NcclCommunicator& c, DType dt) {
  const int g = c.rank(), s = c.size();
  for (int64_t n : kCounts) {
    std::vector<T> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = T((g + 1) * (i % 7 + 1));
    DeviceVec sum(v, dt), mx(v, dt);
    c.all_reduce(sum.t(), ReduceOp::sum);
    c.all_reduce(mx.t(), ReduceOp::max);
    const auto hs = sum.get<T>(), hm = mx.get<T>();
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(hs[size_t(i)], T((i % 7 + 1) * s * (s + 1) / 2)) << c.name() << " " << engine::dtype_name(dt) << " i " << i;
      EXPECT_EQ(hm[size_t(i)], T((i % 7 + 1) * s)) << c.name() << " " << engine::dtype_name(dt) << " i " << i;
    }
  }
}

void check_all_reduce_bf16(NcclCommunicator& c) {
  const int g = c.rank(), s = c.size();
  const int64_t n = 129;
  std::vector<uint16_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = engine::float_to_bf16(float((g + 1) * (i % 7 + 1))).bits;
  DeviceVec sum(v, DType::bf16), mx(v, DType::bf16);
  c.all_reduce(sum.t(), ReduceOp::sum);
  c.all_reduce(mx.t(), ReduceOp::max);
  const auto hs = sum.get<uint16_t>(), hm = mx.get<uint16_t>();
  for (int64_t i = 0; i < n; ++i) {  // small integers: exact in bf16 whatever the summation order
    EXPECT_EQ(engine::bf16_to_float({hs[size_t(i)]}), float((i % 7 + 1) * s * (s + 1) / 2)) << c.name() << " i " << i;
    EXPECT_EQ(engine::bf16_to_float({hm[size_t(i)]}), float((i % 7 + 1) * s)) << c.name() << " i " << i;
  }
}

TEST_F(Nccl, AllReduceSumMaxEveryDtype) {
  for (auto& tc : test_comms()) {
    check_all_reduce<float>(*tc.nccl, DType::f32);
    check_all_reduce<double>(*tc.nccl, DType::f64);
    check_all_reduce<int32_t>(*tc.nccl, DType::i32);
    check_all_reduce<int64_t>(*tc.nccl, DType::i64);
    check_all_reduce_bf16(*tc.nccl);
  }
}

TEST_F(Nccl, AllGatherAnyDtypeAndInPlace) {
  for (auto& tc : test_comms()) {
    NcclCommunicator& c = *tc.nccl;
    const int g = c.rank(), s = c.size();
    for (int64_t n : kCounts) {
      std::vector<uint16_t> mine(static_cast<size_t>(n));  // u16: movement takes any dtype
      for (int64_t i = 0; i < n; ++i) mine[size_t(i)] = uint16_t(g * 1000 + i);
      DeviceVec in(mine, DType::u16), out(n * s, DType::u16);
      c.all_gather(out.t(), in.t());
      // In place: this rank's block of the output is the input.
      std::vector<uint16_t> seeded(static_cast<size_t>(n * s), 0xFFFF);
      std::copy(mine.begin(), mine.end(), seeded.begin() + g * n);
      DeviceVec inplace(seeded, DType::u16);
      c.all_gather(inplace.t(), inplace.block(g, n));
      const auto ho = out.get<uint16_t>(), hi = inplace.get<uint16_t>();
      for (int b = 0; b < s; ++b)
        for (int64_t i = 0; i < n; ++i) {
          EXPECT_EQ(ho[size_t(b * n + i)], uint16_t(b * 1000 + i)) << c.name() << " n " << n;
          EXPECT_EQ(hi[size_t(b * n + i)], uint16_t(b * 1000 + i)) << c.name() << " in place n " << n;
        }
    }
  }
}

TEST_F(Nccl, ReduceScatterSumMax) {
  for (auto& tc : test_comms()) {
    NcclCommunicator& c = *tc.nccl;
    const int g = c.rank(), s = c.size();
    const int64_t n = 5;
    std::vector<float> in(static_cast<size_t>(n * s));
    for (int b = 0; b < s; ++b)
      for (int64_t i = 0; i < n; ++i) in[size_t(b * n + i)] = float((g + 1) * 100 + b * 10 + i);
    DeviceVec din(in, DType::f32), sum(n, DType::f32), mx(n, DType::f32);
    c.reduce_scatter(sum.t(), din.t(), ReduceOp::sum);
    c.reduce_scatter(mx.t(), din.t(), ReduceOp::max);
    const auto hs = sum.get<float>(), hm = mx.get<float>();
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(hs[size_t(i)], float(100 * s * (s + 1) / 2 + s * (g * 10 + i))) << c.name();
      EXPECT_EQ(hm[size_t(i)], float(s * 100 + g * 10 + i)) << c.name();
    }
  }
}

TEST_F(Nccl, AllToAllAnyDtype) {
  for (auto& tc : test_comms()) {
    NcclCommunicator& c = *tc.nccl;
    const int g = c.rank(), s = c.size();
    for (int64_t n : {int64_t(1), int64_t(33)}) {
      std::vector<int32_t> in(static_cast<size_t>(n * s));
      for (int j = 0; j < s; ++j)
        for (int64_t i = 0; i < n; ++i) in[size_t(j * n + i)] = g * 100000 + j * 1000 + int32_t(i);
      DeviceVec din(in, DType::i32), dout(n * s, DType::i32);
      c.all_to_all(dout.t(), din.t());
      const auto ho = dout.get<int32_t>();
      for (int b = 0; b < s; ++b)
        for (int64_t i = 0; i < n; ++i)
          EXPECT_EQ(ho[size_t(b * n + i)], b * 100000 + g * 1000 + int32_t(i)) << c.name() << " n " << n;
    }
  }
}

TEST_F(Nccl, AllToAllVWithZeroCounts) {
  for (auto& tc : test_comms()) {
    NcclCommunicator& c = *tc.nccl;
    const int g = c.rank(), s = c.size();
    // Rank a sends (a + b) % 3 elements to rank b: zero-count pairs in every group of two or more.
    auto count = [](int a, int b) { return int64_t((a + b) % 3); };
    std::vector<int64_t> sc(static_cast<size_t>(s)), rc(static_cast<size_t>(s));
    std::vector<double> in;
    int64_t rtotal = 0;
    for (int p = 0; p < s; ++p) {
      sc[size_t(p)] = count(g, p);
      rc[size_t(p)] = count(p, g);
      rtotal += rc[size_t(p)];
      for (int64_t i = 0; i < sc[size_t(p)]; ++i) in.push_back(g * 100 + p * 10 + i + 0.5);
    }
    in.push_back(-1);  // never sent: the buffers may be longer than the counts
    DeviceVec din(in, DType::f64), dout(rtotal + 1, DType::f64);
    c.all_to_all_v(dout.t(), rc, din.t(), sc);
    const auto ho = dout.get<double>();
    size_t k = 0;
    for (int p = 0; p < s; ++p)
      for (int64_t i = 0; i < rc[size_t(p)]; ++i) EXPECT_EQ(ho[k++], p * 100 + g * 10 + i + 0.5) << c.name();
  }
}

TEST_F(Nccl, BroadcastFromFirstAndLastRank) {
  for (auto& tc : test_comms()) {
    NcclCommunicator& c = *tc.nccl;
    for (int root : {0, c.size() - 1}) {
      std::vector<int64_t> v(11);
      for (size_t i = 0; i < v.size(); ++i) v[i] = c.rank() == root ? int64_t(root * 100 + i) : -7;
      DeviceVec d(v, DType::i64);
      c.broadcast(d.t(), root);
      const auto h = d.get<int64_t>();
      for (size_t i = 0; i < h.size(); ++i) EXPECT_EQ(h[i], int64_t(root * 100 + i)) << c.name() << " root " << root;
    }
    c.barrier();
  }
}

// Inputs written by the compute stream just before the call (a large device copy, still running when the
// collective is issued), results read by the compute stream right after wait(): the events must order both.
TEST_F(Nccl, AsyncFormsOrderAfterAndBeforeTheComputeStream) {
  for (auto& tc : test_comms()) {
    NcclCommunicator& c = *tc.nccl;
    const int g = c.rank(), s = c.size();
    const int64_t big = int64_t(1) << 22, n = 9;
    DeviceVec red_src(std::vector<float>(size_t(big), float(g + 1)), DType::f32), red(big, DType::f32, 0);
    std::vector<int64_t> mxv(static_cast<size_t>(n), g);
    std::vector<double> gin(static_cast<size_t>(n), g + 0.25);
    std::vector<int32_t> ain(static_cast<size_t>(n * s));
    for (int j = 0; j < s; ++j)
      for (int64_t i = 0; i < n; ++i) ain[size_t(j * n + i)] = g * 1000 + j * 10 + int32_t(i);
    DeviceVec mx(mxv, DType::i64), gi(gin, DType::f64), go(n * s, DType::f64), ai(ain, DType::i32),
        ao(n * s, DType::i32), red_copy(big, DType::f32, 0);
    engine::copy(red.t(), red_src.t());  // device to device: queued on the compute stream, not finished
    // All four in flight at once, waited in a different order than started; the last waits in its destructor.
    auto r1 = c.all_reduce_async(red.t(), ReduceOp::sum);
    auto r2 = c.all_gather_async(go.t(), gi.t());
    auto r3 = c.all_to_all_async(ao.t(), ai.t());
    auto r4 = c.all_reduce_async(mx.t(), ReduceOp::max);
    r3->wait();
    r1->wait();
    r2->wait();
    r2->wait();  // a second wait is harmless
    r4.reset();
    engine::copy(red_copy.t(), red.t());  // compute stream, after wait(): sees the reduced values
    const auto hr = red_copy.get<float>();
    const auto hm = mx.get<int64_t>();
    const auto hg = go.get<double>();
    const auto ha = ao.get<int32_t>();
    int64_t bad = 0;
    for (int64_t i = 0; i < big; ++i) bad += hr[size_t(i)] != float(s * (s + 1) / 2);
    EXPECT_EQ(bad, 0) << c.name() << ": all_reduce_async saw stale input or was read early";
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(hm[size_t(i)], s - 1) << c.name();
    for (int b = 0; b < s; ++b)
      for (int64_t i = 0; i < n; ++i) {
        EXPECT_EQ(hg[size_t(b * n + i)], b + 0.25) << c.name();
        EXPECT_EQ(ha[size_t(b * n + i)], b * 1000 + g * 10 + int32_t(i)) << c.name();
      }
  }
}

// Each fails its MONTA_CHECK before NCCL is called, identically on every rank, so nobody hangs.
// Metering (the trainer's exchange time): collectives issued while it is on are timed on the communication stream,
// those issued while it is off are not, and take_metered_ms() forgets what it returned.
TEST_F(Nccl, MeteringTimesOnlyTheCollectivesIssuedWhileOn) {
  for (auto& tc : test_comms()) {
    NcclCommunicator& c = *tc.nccl;
    DeviceVec big(int64_t(1) << 24, DType::f32, 0);  // 64 MiB of zeros: a collective that takes measurable time
    EXPECT_EQ(c.take_metered_ms(), 0.0) << c.name();
    c.all_reduce(big.t(), ReduceOp::sum);  // not metered
    EXPECT_EQ(c.take_metered_ms(), 0.0) << c.name();
    c.set_metering(true);
    c.all_reduce(big.t(), ReduceOp::sum);
    c.all_reduce(big.t(), ReduceOp::sum);
    c.set_metering(false);
    c.all_reduce(big.t(), ReduceOp::sum);
    const double two = c.take_metered_ms();
    EXPECT_GT(two, 0.0) << c.name();
    EXPECT_EQ(c.take_metered_ms(), 0.0) << c.name();
    c.set_metering(true);
    c.all_reduce(big.t(), ReduceOp::sum);
    c.set_metering(false);
    const double one = c.take_metered_ms();
    EXPECT_GT(one, 0.0) << c.name();
  }
}

TEST_F(Nccl, BadArgumentsFailLoudly) {
  NcclCommunicator& c = *test_comms().front().nccl;
  const int s = c.size();
  DeviceVec a(4, DType::f32), b(4 * s + 1, DType::f32), h(4, DType::u16);
  EXPECT_THROW(c.all_gather(b.t(), a.t()), engine::Error);
  EXPECT_THROW(c.reduce_scatter(a.t(), b.t(), ReduceOp::sum), engine::Error);
  EXPECT_THROW(c.all_to_all(b.t(), b.t()), engine::Error);
  EXPECT_THROW(c.all_reduce(h.t(), ReduceOp::sum), engine::Error);  // u16 is not reducible
  EXPECT_THROW(c.all_gather(b.t(), h.t()), engine::Error);
  // too_many: 5 from every peer overflows a (4 elements) at any group size, one rank included.
  std::vector<int64_t> wrong(static_cast<size_t>(s) + 1, 0), too_many(static_cast<size_t>(s), 5);
  EXPECT_THROW(c.all_to_all_v(a.t(), wrong, a.t(), wrong), engine::Error);
  EXPECT_THROW(c.all_to_all_v(a.t(), too_many, b.t(), too_many), engine::Error);
  EXPECT_THROW(c.broadcast(a.t(), s), engine::Error);
  std::vector<float> hv(4);
  EXPECT_THROW(c.all_reduce(host(hv, DType::f32), ReduceOp::sum), engine::Error);  // host buffer, no fallback
  EXPECT_THROW(c.all_reduce_async(host(hv, DType::f32), ReduceOp::sum), engine::Error);
  c.check_async_errors();
  nccl_check_async_errors();
  c.barrier();
}

// With the group's MPI communicator as fallback, host buffers travel over MPI and device buffers over NCCL.
TEST_F(Nccl, HostBuffersUseTheFallback) {
  TestComm& tc = test_comms().front();
  NcclCommunicator c(tc.mpi->handle(), "world+mpi", tc.mpi.get());
  const int s = c.size(), g = c.rank();
  std::vector<double> sums = {1.0, double(g)};
  c.all_reduce(host(sums, DType::f64), ReduceOp::sum);
  EXPECT_EQ(sums[0], double(s));
  EXPECT_EQ(sums[1], double(s * (s - 1) / 2));
  std::vector<int64_t> pair = {g, 2 * g}, all(static_cast<size_t>(2 * s));
  c.all_gather(host(all, DType::i64), host(pair, DType::i64));
  for (int r = 0; r < s; ++r) EXPECT_EQ(all[size_t(2 * r + 1)], 2 * r);
  DeviceVec d(std::vector<int32_t>{g + 1}, DType::i32);
  c.all_reduce(d.t(), ReduceOp::max);
  EXPECT_EQ(d.get<int32_t>()[0], s);
  c.barrier();
}

// ---- emulated-node environment -----------------------------------------------------------------------------

TEST(NcclEnv, EmulatedNodesGetTheirOwnHostIdAndLoopback) {
  const char* vars[] = {"NCCL_HOSTID", "NCCL_SOCKET_IFNAME"};
  std::string saved[2];
  bool had[2];
  for (int i = 0; i < 2; ++i) {
    const char* v = std::getenv(vars[i]);
    had[i] = v != nullptr;
    saved[i] = v ? v : "";
  }
  unsetenv("NCCL_HOSTID");
  unsetenv("NCCL_SOCKET_IFNAME");
  prepare_nccl_env(emulated_topology(0, 4, 1, "h"));  // one node: still emulated, node 0
  EXPECT_STREQ(std::getenv("NCCL_HOSTID"), "monta-node-0");
  EXPECT_STREQ(std::getenv("NCCL_SOCKET_IFNAME"), "lo");
  setenv("NCCL_SOCKET_IFNAME", "eth7", 1);
  unsetenv("NCCL_HOSTID");
  prepare_nccl_env(emulated_topology(3, 4, 2, "h"));  // rank 3 of 4 on 2 virtual nodes: node 1
  EXPECT_STREQ(std::getenv("NCCL_HOSTID"), "monta-node-1");
  EXPECT_STREQ(std::getenv("NCCL_SOCKET_IFNAME"), "eth7") << "an interface the user chose is kept";
  unsetenv("NCCL_HOSTID");
  Topology real = emulated_topology(0, 1, 1, "h");
  real.emulated = false;
  prepare_nccl_env(real);
  EXPECT_EQ(std::getenv("NCCL_HOSTID"), nullptr) << "real nodes: nothing set";
  for (int i = 0; i < 2; ++i) {
    if (had[i]) setenv(vars[i], saved[i].c_str(), 1);
    else unsetenv(vars[i]);
  }
}

// ---- MoE exchange: NCCL on device == MPI on host ----------------------------------------------------------

std::vector<char> make_input(int64_t n, DType dt, int dp_idx, int salt) {
  const size_t es = engine::dtype_size(dt);
  std::vector<char> b(static_cast<size_t>(n) * es);
  std::mt19937 rng(uint32_t(1000 * dp_idx + salt));
  std::uniform_real_distribution<float> u(-2.f, 2.f);
  for (int64_t i = 0; i < n; ++i) {
    const float v = u(rng);
    if (dt == DType::f32) std::memcpy(&b[size_t(i) * es], &v, es);
    else {
      const engine::bf16_t h = engine::float_to_bf16(v);
      std::memcpy(&b[size_t(i) * es], &h.bits, es);
    }
  }
  return b;
}

// Every strategy this build registers; names it does not know yet are skipped.
std::vector<ExchangeKind> registered_kinds() {
  std::vector<ExchangeKind> v;
  for (const char* name : {"duplicate", "drop_gather", "pipelined", "overlapped"}) {
    try {
      v.push_back(parse_exchange_kind(name));
    } catch (const engine::Error&) {
    }
  }
  return v;
}

Tensor shaped(Tensor t, std::initializer_list<int64_t> dims) { return t.view(dims); }

// n elements of t from element off, as a 1-D view (host or device).
Tensor flat_of(const Tensor& t, int64_t off, int64_t n) {
  return engine::make_view(static_cast<char*>(t.data) + size_t(off) * engine::dtype_size(t.dtype), {n}, t.dtype,
                           t.device);
}

// loads (dropless stage B, Exchange::set_loads): empty, or e*E filled-slot counts; then out's padding rows are
// unspecified and only its filled rows are compared (y's padding is zeros on both).
void run_exchange_case(const ProcessGroups& pg, const NcclGroups& ng, ExchangeKind kind, int64_t E, int64_t C,
                       int64_t H, DType dt, const std::vector<int32_t>& loads = {}) {
  const Layout& l = pg.layout();
  const int e = l.ep;
  const int64_t El = E / e, n = E * C * H;
  const std::string name = std::string(exchange_kind_name(kind)) + " tp " + std::to_string(l.tp) + " ep " +
                           std::to_string(e) + " E " + std::to_string(E) + " C " + std::to_string(C) + " " +
                           engine::dtype_name(dt) + (loads.empty() ? "" : " with loads");
  const size_t rowb = size_t(H) * engine::dtype_size(dt);
  auto same_filled = [&](const std::vector<char>& a, const std::vector<char>& b) {
    if (loads.empty()) return a == b;
    const int me = pg.ep().rank();
    for (int64_t x = 0; x < E; ++x)
      for (int64_t c = 0; c < loads[size_t(me * E + x)]; ++c)
        if (std::memcmp(&a[size_t(x * C + c) * rowb], &b[size_t(x * C + c) * rowb], rowb)) return false;
    return true;
  };
  const int dp_idx = pg.coords().dp_idx;
  std::vector<char> x = make_input(n, dt, dp_idx, 1), z = make_input(n, dt, dp_idx, 2);
  // MPI on host: the reference.
  auto ref = make_exchange(kind, pg.tp(), pg.ep(), ExchangeShape{E, C, H}, dt, Device::cpu);
  std::vector<char> y_ref(x.size()), out_ref(x.size());
  Tensor hx = engine::make_view(x.data(), {E, C, H}, dt, Device::cpu);
  Tensor hz = engine::make_view(z.data(), {El, e * C, H}, dt, Device::cpu);
  if (!loads.empty()) ref->set_loads(loads);
  ref->dispatch(engine::make_view(y_ref.data(), {El, e * C, H}, dt, Device::cpu), hx);
  ref->combine(engine::make_view(out_ref.data(), {E, C, H}, dt, Device::cpu), hz);
  // NCCL on device.
  auto ex = make_exchange(kind, ng.tp(), ng.ep(), ExchangeShape{E, C, H}, dt, Device::cuda);
  if (!loads.empty()) ex->set_loads(loads);
  DeviceVec dx(x, DType::u8), dz(z, DType::u8), dy(int64_t(x.size()), DType::u8), dout(int64_t(x.size()), DType::u8);
  auto as = [&](const DeviceVec& d, std::initializer_list<int64_t> dims) {
    Tensor t = d.t();
    t.dtype = dt;
    t.shape = {int64_t(x.size() / engine::dtype_size(dt)), 0, 0, 0};
    return shaped(t, dims);
  };
  ex->dispatch(as(dy, {El, e * C, H}), as(dx, {E, C, H}));
  ex->combine(as(dout, {E, C, H}), as(dz, {El, e * C, H}));
  EXPECT_TRUE(dy.get<char>() == y_ref) << name << ": NCCL dispatch differs from MPI";
  EXPECT_TRUE(same_filled(dout.get<char>(), out_ref)) << name << ": NCCL combine differs from MPI";

  // dispatch_experts_combine, in 3 chunks where the strategy has them, with "experts" that rotate every row of
  // local expert j by j+1 elements (device copies on NCCL, host copies on MPI): NCCL equals MPI byte for byte.
  ExchangeShape chunked{E, C, H};
  chunked.chunks = 3;
  auto fused = [&](Exchange& xc, Tensor out, Tensor zz, Tensor yy, const Tensor& in) {
    xc.dispatch_experts_combine(out, zz, yy, in, [&](int k) {
      const Tensor yc = xc.expert_chunk(yy, k), zc = xc.expert_chunk(zz, k);
      const int64_t rows = yc.dim(1);
      for (int64_t j = 0; j < El; ++j)
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row = (j * rows + r) * H, sh = (j + 1) % H;
          engine::copy(flat_of(zc, row, H - sh), flat_of(yc, row + sh, H - sh));
          if (sh) engine::copy(flat_of(zc, row + H - sh, sh), flat_of(yc, row, sh));
        }
    });
  };
  auto ref2 = make_exchange(kind, pg.tp(), pg.ep(), chunked, dt, Device::cpu);
  if (!loads.empty()) ref2->set_loads(loads);
  std::vector<char> hy(x.size()), hzz(x.size()), hout(x.size());
  fused(*ref2, engine::make_view(hout.data(), {E, C, H}, dt, Device::cpu),
        engine::make_view(hzz.data(), {El, e * C, H}, dt, Device::cpu),
        engine::make_view(hy.data(), {El, e * C, H}, dt, Device::cpu), hx);
  auto ex2 = make_exchange(kind, ng.tp(), ng.ep(), chunked, dt, Device::cuda);
  if (!loads.empty()) ex2->set_loads(loads);
  DeviceVec dy2(int64_t(x.size()), DType::u8), dz2(int64_t(x.size()), DType::u8), dout2(int64_t(x.size()), DType::u8);
  fused(*ex2, as(dout2, {E, C, H}), as(dz2, {El, e * C, H}), as(dy2, {El, e * C, H}), as(dx, {E, C, H}));
  EXPECT_TRUE(same_filled(dout2.get<char>(), hout)) << name << ": NCCL dispatch, experts, combine differs from MPI";
}

TEST_F(Nccl, ExchangeOverNcclEqualsExchangeOverMpi) {
  const int w = wsize();
  const Topology topo = discover_topology(test::emulate_nodes());
  const auto kinds = registered_kinds();
  ASSERT_FALSE(kinds.empty());
  for (int t : {1, 2, 4})
    for (int e : {1, 2, 4}) {
      if (w % (t * e) != 0) continue;
      ProcessGroups pg(make_layout(w, t, e, true, 8, 8, 4, 64, 32), topo);
      auto ng = make_nccl_groups(pg);
      EXPECT_EQ(ng->tp().size(), t);
      EXPECT_EQ(ng->ep().size(), e);
      EXPECT_EQ(ng->ep().rank(), pg.ep().rank());
      EXPECT_EQ(ng->expert_dp().size(), pg.expert_dp().size());
      EXPECT_EQ(&ng->get(GroupKind::dp), &ng->dp());
      for (ExchangeKind k : kinds) {
        run_exchange_case(pg, *ng, k, 8, 5, 3, DType::f32);
        run_exchange_case(pg, *ng, k, 2 * e, 7, 16, DType::bf16);
        // Dropless stage B: only the filled rows travel (all_to_all_v); loads the same on every rank, some zero.
        std::mt19937 rng(uint32_t(7 * t + e));
        std::vector<int32_t> loads(size_t(e) * 8), loads2(size_t(e) * 2 * e);
        for (auto& v : loads) v = int32_t(rng() % 6);
        for (auto& v : loads2) v = int32_t(rng() % 3 == 0 ? 7 : rng() % 2);
        run_exchange_case(pg, *ng, k, 8, 5, 3, DType::f32, loads);
        run_exchange_case(pg, *ng, k, 2 * e, 7, 16, DType::bf16, loads2);
      }
    }
}

}  // namespace
}  // namespace monta::comm

namespace monta::test {
void release_test_comms() {
  delete comm::g_comms;
  comm::g_comms = nullptr;
}
}  // namespace monta::test
