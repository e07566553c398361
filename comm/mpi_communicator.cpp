// MPI backend of Communicator: host buffers, byte-typed data movement, typed reductions, non-blocking forms.
#include "comm/mpi_communicator.h"

#include <climits>
#include <vector>

#include "engine/check.h"

namespace monta::comm {
namespace {

using engine::DType;

MPI_Datatype reduce_type(const Tensor& t, const std::string& who) {
  switch (t.dtype) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    default: break;
  }
  MONTA_CHECK(false, who + ": MPI reductions take f32, f64, i32 or i64, not " + t.str());
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::sum ? MPI_SUM : MPI_MAX; }

// MPI counts are int; Open MPI 4 has no big-count calls, so a larger message is a loud error, not a wrap.
int as_count(int64_t n, const std::string& who) {
  MONTA_CHECK(n >= 0 && n <= INT_MAX, who + ": count " + std::to_string(n) + " exceeds MPI's int range");
  return int(n);
}

void check_host(const Tensor& t, const std::string& who) {
  MONTA_CHECK(t.device == engine::Device::cpu, who + ": the MPI communicator takes host buffers, not " + t.str());
  MONTA_CHECK(t.data != nullptr || t.numel() == 0, who + ": null buffer " + t.str());
}

void check_same_dtype(const Tensor& a, const Tensor& b, const std::string& who) {
  MONTA_CHECK(a.dtype == b.dtype, who + ": dtypes differ, " + a.str() + " vs " + b.str());
}

class MpiRequest final : public Request {
 public:
  explicit MpiRequest(MPI_Request r) : req_(r) {}
  ~MpiRequest() override {
    if (req_ != MPI_REQUEST_NULL) MPI_Wait(&req_, MPI_STATUS_IGNORE);
  }
  void wait() override {
    if (req_ != MPI_REQUEST_NULL) MPI_CHECK(MPI_Wait(&req_, MPI_STATUS_IGNORE));
  }

 private:
  MPI_Request req_;
};

// A non-blocking all-to-all-v: MPI reads its count and displacement arrays until completion, so they live here.
struct MpiVRequest final : public Request {
  ~MpiVRequest() override {
    if (req != MPI_REQUEST_NULL) MPI_Wait(&req, MPI_STATUS_IGNORE);
  }
  void wait() override {
    if (req != MPI_REQUEST_NULL) MPI_CHECK(MPI_Wait(&req, MPI_STATUS_IGNORE));
  }
  MPI_Request req = MPI_REQUEST_NULL;
  std::vector<int> sc, sd, rc, rd;
};

// In-place all-gather: in is exactly out's own block.
bool gather_in_place(const Tensor& out, const Tensor& in, int rank) {
  return in.data == static_cast<const char*>(out.data) + size_t(rank) * in.bytes();
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name) : comm_(comm), name_(std::move(name)) {
  MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(comm_, &size_));
  int same_world = MPI_UNEQUAL, same_self = MPI_UNEQUAL;
  MPI_Comm_compare(comm_, MPI_COMM_WORLD, &same_world);
  MPI_Comm_compare(comm_, MPI_COMM_SELF, &same_self);
  owned_ = !(same_world == MPI_IDENT || same_self == MPI_IDENT);
}

MpiCommunicator::~MpiCommunicator() {
  int fin = 0;
  MPI_Finalized(&fin);
  if (owned_ && !fin) MPI_Comm_free(&comm_);
}

std::unique_ptr<MpiCommunicator> MpiCommunicator::split(MPI_Comm parent, int color, int key, std::string name) {
  MPI_Comm c;
  MPI_CHECK(MPI_Comm_split(parent, color, key, &c));
  return std::make_unique<MpiCommunicator>(c, std::move(name));
}

void MpiCommunicator::all_reduce(Tensor buf, ReduceOp op) { all_reduce_async(buf, op)->wait(); }

void MpiCommunicator::all_gather(Tensor out, const Tensor& in) { all_gather_async(out, in)->wait(); }

void MpiCommunicator::reduce_scatter(Tensor out, const Tensor& in, ReduceOp op) { reduce_scatter_async(out, in, op)->wait(); }

std::unique_ptr<Request> MpiCommunicator::reduce_scatter_async(Tensor out, const Tensor& in, ReduceOp op) {
  const std::string who = name_ + " reduce_scatter";
  check_host(out, who);
  check_host(in, who);
  check_same_dtype(out, in, who);
  MONTA_CHECK(in.numel() == int64_t(size_) * out.numel(),
              who + ": in " + in.str() + " must hold " + std::to_string(size_) + " blocks of out " + out.str());
  const char* ib = static_cast<const char*>(in.data);
  const char* ob = static_cast<const char*>(out.data);
  MONTA_CHECK(out.numel() == 0 || ob + out.bytes() <= ib || ib + in.bytes() <= ob, who + ": out must not overlap in");
  MPI_Request r;
  MPI_CHECK(MPI_Ireduce_scatter_block(in.data, out.data, as_count(out.numel(), who), reduce_type(out, who), mpi_op(op),
                                      comm_, &r));
  return std::make_unique<MpiRequest>(r);
}

// The blocking forms are the asynchronous ones waited at once: one place validates and issues each collective.
void MpiCommunicator::all_to_all(Tensor out, const Tensor& in) { all_to_all_async(out, in)->wait(); }

std::unique_ptr<Request> MpiCommunicator::all_to_all_v_async(Tensor out, std::span<const int64_t> recv_counts,
                                                             std::span<const int64_t> recv_offsets, const Tensor& in,
                                                             std::span<const int64_t> send_counts,
                                                             std::span<const int64_t> send_offsets) {
  const std::string who = name_ + " all_to_all_v";
  check_host(out, who);
  check_host(in, who);
  check_same_dtype(out, in, who);
  const size_t np = size_t(size_);
  MONTA_CHECK(recv_counts.size() == np && send_counts.size() == np && recv_offsets.size() == np &&
                  send_offsets.size() == np,
              who + ": need " + std::to_string(size_) + " send and receive counts and offsets");
  const int64_t es = int64_t(engine::dtype_size(in.dtype));
  // MPI reads the count and displacement arrays until the request completes: the request owns them.
  auto req = std::make_unique<MpiVRequest>();
  req->sc.resize(np), req->sd.resize(np), req->rc.resize(np), req->rd.resize(np);
  for (size_t i = 0; i < np; ++i) {
    MONTA_CHECK(send_counts[i] >= 0 && recv_counts[i] >= 0 && send_offsets[i] >= 0 && recv_offsets[i] >= 0,
                who + ": negative count or offset");
    MONTA_CHECK(send_offsets[i] + send_counts[i] <= in.numel() && recv_offsets[i] + recv_counts[i] <= out.numel(),
                who + ": block of peer " + std::to_string(i) + " outside in " + in.str() + " / out " + out.str());
    req->sc[i] = as_count(send_counts[i] * es, who);
    req->rc[i] = as_count(recv_counts[i] * es, who);
    req->sd[i] = as_count(send_offsets[i] * es, who);
    req->rd[i] = as_count(recv_offsets[i] * es, who);
  }
  MPI_CHECK(MPI_Ialltoallv(in.data, req->sc.data(), req->sd.data(), MPI_BYTE, out.data, req->rc.data(),
                           req->rd.data(), MPI_BYTE, comm_, &req->req));
  return req;
}

void MpiCommunicator::broadcast(Tensor buf, int root) {
  const std::string who = name_ + " broadcast";
  check_host(buf, who);
  MONTA_CHECK(root >= 0 && root < size_, who + ": root " + std::to_string(root) + " out of range");
  MPI_CHECK(MPI_Bcast(buf.data, as_count(int64_t(buf.bytes()), who), MPI_BYTE, root, comm_));
}

void MpiCommunicator::barrier() { MPI_CHECK(MPI_Barrier(comm_)); }

std::unique_ptr<Request> MpiCommunicator::all_reduce_async(Tensor buf, ReduceOp op) {
  const std::string who = name_ + " all_reduce_async";
  check_host(buf, who);
  MPI_Request r;
  MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf.data, as_count(buf.numel(), who), reduce_type(buf, who), mpi_op(op), comm_,
                           &r));
  return std::make_unique<MpiRequest>(r);
}

std::unique_ptr<Request> MpiCommunicator::all_gather_async(Tensor out, const Tensor& in) {
  const std::string who = name_ + " all_gather_async";
  check_host(out, who);
  check_host(in, who);
  check_same_dtype(out, in, who);
  MONTA_CHECK(out.numel() == int64_t(size_) * in.numel(),
              who + ": out " + out.str() + " must hold " + std::to_string(size_) + " blocks of in " + in.str());
  const int n = as_count(int64_t(in.bytes()), who);
  const void* send = gather_in_place(out, in, rank_) ? MPI_IN_PLACE : in.data;
  MPI_Request r;
  MPI_CHECK(MPI_Iallgather(send, n, MPI_BYTE, out.data, n, MPI_BYTE, comm_, &r));
  return std::make_unique<MpiRequest>(r);
}

std::unique_ptr<Request> MpiCommunicator::all_to_all_async(Tensor out, const Tensor& in) {
  const std::string who = name_ + " all_to_all_async";
  check_host(out, who);
  check_host(in, who);
  check_same_dtype(out, in, who);
  MONTA_CHECK(out.numel() == in.numel() && in.numel() % size_ == 0,
              who + ": in " + in.str() + " and out " + out.str() + " must be equal and divide into " +
                  std::to_string(size_) + " blocks");
  MONTA_CHECK(in.data != out.data || in.numel() == 0, who + ": in and out must not alias");
  const int n = as_count(int64_t(in.bytes()) / size_, who);
  MPI_Request r;
  MPI_CHECK(MPI_Ialltoall(in.data, n, MPI_BYTE, out.data, n, MPI_BYTE, comm_, &r));
  return std::make_unique<MpiRequest>(r);
}

}  // namespace monta::comm
