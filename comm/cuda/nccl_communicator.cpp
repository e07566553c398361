// NCCL backend of Communicator: one ncclComm_t and one communication stream per group, events between the
// compute and communication streams, an abort hook that aborts every live NCCL communicator before MPI_Abort.
#include "comm/cuda/nccl_communicator.h"

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <vector>

#include "comm/mpi_communicator.h"
#include "comm/runtime.h"
#include "engine/check.h"
#include "engine/log.h"

namespace monta::comm {
namespace {

using engine::Device;
using engine::DType;

// ---- live communicators and the abort hook ----------------------------------------------------------------

std::mutex g_live_mutex;
std::vector<NcclCommunicator*> g_live;

// A rank that fails must not leave its peers spinning inside an NCCL kernel: abort every communicator (which
// also stops this process's kernels), then MPI_Abort through the runtime's hook. No lock: the failing thread
// may hold it, and nothing else runs once we are here.
void nccl_abort_hook(int code) {
  for (NcclCommunicator* c : g_live) ncclCommAbort(c->handle());
  g_live.clear();
  runtime_abort(code);
}

void register_live(NcclCommunicator* c) {
  std::lock_guard<std::mutex> lock(g_live_mutex);
  if (g_live.empty()) engine::set_abort_hook(nccl_abort_hook);
  g_live.push_back(c);
}

void unregister_live(NcclCommunicator* c) {
  std::lock_guard<std::mutex> lock(g_live_mutex);
  g_live.erase(std::remove(g_live.begin(), g_live.end(), c), g_live.end());
  if (g_live.empty()) engine::set_abort_hook(runtime_active() ? runtime_abort : nullptr);
}

// ---- argument checks ------------------------------------------------------------------------------------

ncclDataType_t reduce_type(const Tensor& t, const std::string& who) {
  switch (t.dtype) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    default: break;
  }
  MONTA_CHECK(false, who + ": NCCL reductions take f32, f64, bf16, i32 or i64, not " + t.str());
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::sum ? ncclSum : ncclMax; }

void check_device(const Tensor& t, const std::string& who) {
  MONTA_CHECK(t.device == Device::cuda, who + ": the NCCL communicator takes device buffers, not " + t.str());
  MONTA_CHECK(t.data != nullptr || t.numel() == 0, who + ": null buffer " + t.str());
}

void check_same_dtype(const Tensor& a, const Tensor& b, const std::string& who) {
  MONTA_CHECK(a.dtype == b.dtype, who + ": dtypes differ, " + a.str() + " vs " + b.str());
}

void check_gather(const Tensor& out, const Tensor& in, int size, const std::string& who) {
  check_device(out, who);
  check_device(in, who);
  check_same_dtype(out, in, who);
  MONTA_CHECK(out.numel() == int64_t(size) * in.numel(),
              who + ": out " + out.str() + " must hold " + std::to_string(size) + " blocks of in " + in.str());
}

void check_all_to_all(const Tensor& out, const Tensor& in, int size, const std::string& who) {
  check_device(out, who);
  check_device(in, who);
  check_same_dtype(out, in, who);
  MONTA_CHECK(out.numel() == in.numel() && in.numel() % size == 0,
              who + ": in " + in.str() + " and out " + out.str() + " must be equal and divide into " +
                  std::to_string(size) + " blocks");
  MONTA_CHECK(in.data != out.data || in.numel() == 0, who + ": in and out must not alias");
}

const char* byte_ptr(const Tensor& t, size_t off) { return static_cast<const char*>(t.data) + off; }
char* byte_ptr(Tensor& t, size_t off) { return static_cast<char*>(t.data) + off; }

// All-to-all as grouped point-to-point: peer p gets send_bytes[p] from in at send_off[p], and we receive
// recv_bytes[p] from it into out at recv_off[p]. Empty pairs are skipped on both sides (the counts agree).
void send_recv_all(Tensor& out, const Tensor& in, const std::vector<size_t>& send_off,
                   const std::vector<size_t>& send_bytes, const std::vector<size_t>& recv_off,
                   const std::vector<size_t>& recv_bytes, ncclComm_t comm, cudaStream_t s) {
  NCCL_CHECK(ncclGroupStart());
  for (size_t p = 0; p < send_off.size(); ++p) {
    if (send_bytes[p]) NCCL_CHECK(ncclSend(byte_ptr(in, send_off[p]), send_bytes[p], ncclUint8, int(p), comm, s));
    if (recv_bytes[p]) NCCL_CHECK(ncclRecv(byte_ptr(out, recv_off[p]), recv_bytes[p], ncclUint8, int(p), comm, s));
  }
  NCCL_CHECK(ncclGroupEnd());
}

class NcclRequest final : public Request {
 public:
  NcclRequest(cudaEvent_t done, cudaStream_t compute) : done_(done), compute_(compute) {}
  ~NcclRequest() override {
    if (!done_) return;
    cudaStreamWaitEvent(compute_, done_, 0);  // no check: a destructor must not throw
    cudaEventDestroy(done_);
  }
  void wait() override {
    if (!done_) return;
    CUDA_CHECK(cudaStreamWaitEvent(compute_, done_, 0));
    CUDA_CHECK(cudaEventDestroy(done_));
    done_ = nullptr;
  }
  // The event recorded after the collective; null once waited.
  cudaEvent_t done() const { return done_; }

 private:
  cudaEvent_t done_;
  cudaStream_t compute_;
};

}  // namespace

// ---- environment ---------------------------------------------------------------------------------------

void prepare_nccl_env(const Topology& topo) {
  if (!topo.emulated) return;
  const std::string id = "monta-node-" + std::to_string(topo.node);
  const char* old = std::getenv("NCCL_HOSTID");
  if (old && *old && id != old)
    engine::log_warn(std::string("emulated nodes: NCCL_HOSTID=") + old + " replaced by " + id);
  setenv("NCCL_HOSTID", id.c_str(), 1);
  setenv("NCCL_SOCKET_IFNAME", "lo", 0);  // loopback unless the user chose an interface
}

// ---- NcclCommunicator ----------------------------------------------------------------------------------

NcclCommunicator::NcclCommunicator(MPI_Comm comm, std::string name, Communicator* host_fallback)
    : name_(std::move(name)), host_(host_fallback) {
  MPI_CHECK(MPI_Comm_rank(comm, &rank_));
  MPI_CHECK(MPI_Comm_size(comm, &size_));
  MONTA_CHECK(!host_ || (host_->rank() == rank_ && host_->size() == size_),
              name_ + ": host fallback communicator is not of the same group");
  ncclUniqueId id;
  if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_CHECK(MPI_Bcast(&id, int(sizeof(id)), MPI_BYTE, 0, comm));
  NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_));
  int lo = 0, hi = 0;
  CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
  // Non-blocking: no implicit sync with the legacy default stream; highest priority so communication kernels
  // are not starved by compute.
  CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, hi));
  CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
  CUDA_CHECK(cudaMalloc(&barrier_buf_, sizeof(int32_t)));
  register_live(this);
}

NcclCommunicator::~NcclCommunicator() {
  unregister_live(this);
  // Unchecked: a destructor must not throw (tests install a throwing handler), and at exit after an error the
  // context may already be gone.
  cudaStreamSynchronize(stream_);
  ncclCommDestroy(comm_);
  cudaFree(barrier_buf_);
  cudaEventDestroy(ready_);
  for (cudaEvent_t e : meter_events_) cudaEventDestroy(e);
  cudaStreamDestroy(stream_);
}

cudaEvent_t NcclCommunicator::meter_event() {
  if (meter_used_ == meter_events_.size()) {
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreate(&e));
    meter_events_.push_back(e);
  }
  return meter_events_[meter_used_++];
}

double NcclCommunicator::take_metered_ms() {
  double ms = 0;
  for (size_t i = 0; i + 1 < meter_used_; i += 2) {
    CUDA_CHECK(cudaEventSynchronize(meter_events_[i + 1]));
    float t = 0;
    CUDA_CHECK(cudaEventElapsedTime(&t, meter_events_[i], meter_events_[i + 1]));
    ms += double(t);
  }
  meter_used_ = 0;
  return ms;
}

template <class Issue>
std::unique_ptr<Request> NcclCommunicator::issue(Issue&& body) {
  CUDA_CHECK(cudaEventRecord(ready_, compute_));
  CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
  if (metering_) CUDA_CHECK(cudaEventRecord(meter_event(), stream_));
  body(stream_);
  if (metering_) CUDA_CHECK(cudaEventRecord(meter_event(), stream_));
  cudaEvent_t done = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(done, stream_));
  return std::make_unique<NcclRequest>(done, compute_);
}

std::unique_ptr<Request> NcclCommunicator::all_reduce_async(Tensor buf, ReduceOp op) {
  if (host_ && buf.device == Device::cpu) return host_->all_reduce_async(buf, op);
  const std::string who = name_ + " all_reduce";
  check_device(buf, who);
  const ncclDataType_t t = reduce_type(buf, who);
  return issue([&](cudaStream_t s) {
    NCCL_CHECK(ncclAllReduce(buf.data, buf.data, size_t(buf.numel()), t, nccl_op(op), comm_, s));
  });
}

std::unique_ptr<Request> NcclCommunicator::all_gather_async(Tensor out, const Tensor& in) {
  if (host_ && out.device == Device::cpu && in.device == Device::cpu) return host_->all_gather_async(out, in);
  const std::string who = name_ + " all_gather";
  check_gather(out, in, size_, who);
  // NCCL's in-place form is exactly ours: in is out's block rank().
  return issue([&](cudaStream_t s) {
    NCCL_CHECK(ncclAllGather(in.data, out.data, in.bytes(), ncclUint8, comm_, s));
  });
}

std::unique_ptr<Request> NcclCommunicator::all_to_all_async(Tensor out, const Tensor& in) {
  if (host_ && out.device == Device::cpu && in.device == Device::cpu) return host_->all_to_all_async(out, in);
  const std::string who = name_ + " all_to_all";
  check_all_to_all(out, in, size_, who);
  const size_t block = in.bytes() / size_t(size_), n = size_t(size_);
  std::vector<size_t> off(n), bytes(n, block);
  for (size_t p = 0; p < n; ++p) off[p] = p * block;
  return issue([&](cudaStream_t s) { send_recv_all(out, in, off, bytes, off, bytes, comm_, s); });
}

std::unique_ptr<Request> NcclCommunicator::all_gather_async_after(Request& after, Tensor out, const Tensor& in) {
  auto* dev = dynamic_cast<NcclRequest*>(&after);
  if (!dev || !dev->done() || (host_ && out.device == Device::cpu && in.device == Device::cpu))
    return Communicator::all_gather_async_after(after, out, in);
  CUDA_CHECK(cudaStreamWaitEvent(stream_, dev->done(), 0));
  return all_gather_async(out, in);
}

void NcclCommunicator::all_reduce(Tensor buf, ReduceOp op) { all_reduce_async(buf, op)->wait(); }
void NcclCommunicator::all_gather(Tensor out, const Tensor& in) { all_gather_async(out, in)->wait(); }
void NcclCommunicator::all_to_all(Tensor out, const Tensor& in) { all_to_all_async(out, in)->wait(); }

void NcclCommunicator::reduce_scatter(Tensor out, const Tensor& in, ReduceOp op) { reduce_scatter_async(out, in, op)->wait(); }

std::unique_ptr<Request> NcclCommunicator::reduce_scatter_async(Tensor out, const Tensor& in, ReduceOp op) {
  if (host_ && out.device == Device::cpu && in.device == Device::cpu) return host_->reduce_scatter_async(out, in, op);
  const std::string who = name_ + " reduce_scatter";
  check_device(out, who);
  check_device(in, who);
  check_same_dtype(out, in, who);
  MONTA_CHECK(in.numel() == int64_t(size_) * out.numel(),
              who + ": in " + in.str() + " must hold " + std::to_string(size_) + " blocks of out " + out.str());
  const ncclDataType_t t = reduce_type(out, who);
  return issue([&](cudaStream_t s) {
    NCCL_CHECK(ncclReduceScatter(in.data, out.data, size_t(out.numel()), t, nccl_op(op), comm_, s));
  });
}

std::unique_ptr<Request> NcclCommunicator::all_to_all_v_async(Tensor out, std::span<const int64_t> recv_counts,
                                                              std::span<const int64_t> recv_offsets, const Tensor& in,
                                                              std::span<const int64_t> send_counts,
                                                              std::span<const int64_t> send_offsets) {
  if (host_ && out.device == Device::cpu && in.device == Device::cpu)
    return host_->all_to_all_v_async(out, recv_counts, recv_offsets, in, send_counts, send_offsets);
  const std::string who = name_ + " all_to_all_v";
  check_device(out, who);
  check_device(in, who);
  check_same_dtype(out, in, who);
  const size_t es = engine::dtype_size(in.dtype), n = size_t(size_);
  MONTA_CHECK(recv_counts.size() == n && send_counts.size() == n && recv_offsets.size() == n &&
                  send_offsets.size() == n,
              who + ": need " + std::to_string(size_) + " send and receive counts and offsets");
  std::vector<size_t> so(n), sb(n), ro(n), rb(n);
  for (size_t p = 0; p < n; ++p) {
    MONTA_CHECK(send_counts[p] >= 0 && recv_counts[p] >= 0 && send_offsets[p] >= 0 && recv_offsets[p] >= 0,
                who + ": negative count or offset");
    MONTA_CHECK(send_offsets[p] + send_counts[p] <= in.numel() && recv_offsets[p] + recv_counts[p] <= out.numel(),
                who + ": block of peer " + std::to_string(p) + " outside in " + in.str() + " / out " + out.str());
    so[p] = size_t(send_offsets[p]) * es;
    ro[p] = size_t(recv_offsets[p]) * es;
    sb[p] = size_t(send_counts[p]) * es;
    rb[p] = size_t(recv_counts[p]) * es;
  }
  return issue([&](cudaStream_t s) { send_recv_all(out, in, so, sb, ro, rb, comm_, s); });
}

void NcclCommunicator::broadcast(Tensor buf, int root) {
  if (host_ && buf.device == Device::cpu) return host_->broadcast(buf, root);
  const std::string who = name_ + " broadcast";
  check_device(buf, who);
  MONTA_CHECK(root >= 0 && root < size_, who + ": root " + std::to_string(root) + " out of range");
  issue([&](cudaStream_t s) {
    NCCL_CHECK(ncclBroadcast(buf.data, buf.data, buf.bytes(), ncclUint8, root, comm_, s));
  })->wait();
}

void NcclCommunicator::barrier() {
  issue([&](cudaStream_t s) {
    NCCL_CHECK(ncclAllReduce(barrier_buf_, barrier_buf_, 1, ncclInt32, ncclSum, comm_, s));
  })->wait();
  CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void NcclCommunicator::check_async_errors() const {
  ncclResult_t async = ncclSuccess;
  NCCL_CHECK(ncclCommGetAsyncError(comm_, &async));
  if (async != ncclSuccess && async != ncclInProgress)
    engine::fail_check("NCCL", ("asynchronous error on communicator " + name_).c_str(), ncclGetErrorString(async),
                       __FILE__, __LINE__);
}

void nccl_check_async_errors() {
  std::vector<NcclCommunicator*> live;
  {
    std::lock_guard<std::mutex> lock(g_live_mutex);
    live = g_live;
  }
  for (NcclCommunicator* c : live) c->check_async_errors();
}

// ---- groups ----------------------------------------------------------------------------------------------

namespace {

std::unique_ptr<NcclCommunicator> nccl_for(const ProcessGroups& groups, GroupKind k) {
  auto* mpi = dynamic_cast<MpiCommunicator*>(&groups.get(k));
  MONTA_CHECK(mpi, std::string("make_nccl_groups: the ") + group_kind_name(k) + " group is not an MPI communicator");
  return std::make_unique<NcclCommunicator>(mpi->handle(), group_kind_name(k), mpi);
}

}  // namespace

NcclGroups::NcclGroups(const ProcessGroups& groups) {
  prepare_nccl_env(groups.topology());
  // Same order on every rank: each NCCL init pairs with its peers' init of the same kind.
  world_ = nccl_for(groups, GroupKind::world);
  tp_ = nccl_for(groups, GroupKind::tp);
  dp_ = nccl_for(groups, GroupKind::dp);
  ep_ = nccl_for(groups, GroupKind::ep);
  expert_dp_ = nccl_for(groups, GroupKind::expert_dp);
}

NcclCommunicator& NcclGroups::get(GroupKind k) const {
  switch (k) {
    case GroupKind::world: return world();
    case GroupKind::tp: return tp();
    case GroupKind::dp: return dp();
    case GroupKind::ep: return ep();
    case GroupKind::expert_dp: return expert_dp();
    case GroupKind::node: break;
  }
  MONTA_CHECK(false, std::string("NcclGroups: no NCCL communicator for the ") + group_kind_name(k) + " group");
  return world();
}

std::unique_ptr<NcclGroups> make_nccl_groups(const ProcessGroups& groups) {
  return std::make_unique<NcclGroups>(groups);
}

}  // namespace monta::comm
