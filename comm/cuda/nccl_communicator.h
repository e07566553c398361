// NcclCommunicator: the Communicator over NCCL, on device buffers, one ncclComm_t per process group. Every
// collective runs on the communicator's own stream, ordered after the caller's compute stream by events, so
// neither the blocking nor the asynchronous forms ever wait on the host (barrier() excepted: it is one).
#pragma once
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/groups.h"
#include "comm/topology.h"

namespace monta::comm {

// Emulated nodes (--comm.emulate_nodes N): gives this rank NCCL_HOSTID=monta-node-<k> for its virtual node k so
// NCCL sends traffic between virtual nodes through its network (socket) transport, and NCCL_SOCKET_IFNAME=lo
// unless already set. Must run before this process's first NCCL call; a no-op for real nodes.
void prepare_nccl_env(const Topology& topo);

class NcclCommunicator final : public Communicator {
 public:
  // Collective over comm (every member calls it, in the same order as any other NCCL communicator): group rank 0
  // creates the unique id, MPI_Bcast hands it to the others, ncclCommInitRank binds the current CUDA device
  // (select it first). comm is used only here, not kept. Host buffers go to host_fallback when one is given
  // (the MPI communicator of the same group: loss sums, signal flags, checkpoint checksums); without one they are
  // an error.
  NcclCommunicator(MPI_Comm comm, std::string name, Communicator* host_fallback = nullptr);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  ncclComm_t handle() const { return comm_; }
  cudaStream_t comm_stream() const { return stream_; }
  // The stream collectives are ordered after and that Request::wait() orders after them; the engine computes on
  // the default stream (nullptr), the default here.
  void set_compute_stream(cudaStream_t s) { compute_ = s; }
  cudaStream_t compute_stream() const { return compute_; }

  // Reductions: f32, f64, i32, i64, bf16. Data movement: any dtype (sent as bytes).
  void all_reduce(Tensor buf, ReduceOp op) override;
  void all_gather(Tensor out, const Tensor& in) override;
  void reduce_scatter(Tensor out, const Tensor& in, ReduceOp op) override;
  void all_to_all(Tensor out, const Tensor& in) override;
  void broadcast(Tensor buf, int root) override;
  // A one-element all-reduce, then the host waits for it: every rank has reached this point and all device work
  // issued before it (compute and communication) has finished.
  void barrier() override;

  // Issued on comm_stream() after the compute stream's work so far; wait() makes the compute stream wait on an
  // event recorded after the collective (no host sync). A Request never waited on does that in its destructor.
  std::unique_ptr<Request> all_reduce_async(Tensor buf, ReduceOp op) override;
  std::unique_ptr<Request> all_gather_async(Tensor out, const Tensor& in) override;
  std::unique_ptr<Request> all_to_all_async(Tensor out, const Tensor& in) override;
  std::unique_ptr<Request> all_to_all_v_async(Tensor out, std::span<const int64_t> recv_counts,
                                              std::span<const int64_t> recv_offsets, const Tensor& in,
                                              std::span<const int64_t> send_counts,
                                              std::span<const int64_t> send_offsets) override;
  std::unique_ptr<Request> reduce_scatter_async(Tensor out, const Tensor& in, ReduceOp op) override;
  // Chained on the device when `after` is an NCCL request: comm_stream() waits for its event.
  std::unique_ptr<Request> all_gather_async_after(Request& after, Tensor out, const Tensor& in) override;

  void set_metering(bool on) override { metering_ = on; }
  double take_metered_ms() override;

  // For a watchdog: fails (NCCL_CHECK path, so the job aborts) if NCCL reported an asynchronous error on this
  // communicator (a peer died, a network error). Cheap; never blocks.
  void check_async_errors() const;

 private:
  template <class Issue>
  std::unique_ptr<Request> issue(Issue&& body);

  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;   // owned: the communication stream
  cudaStream_t compute_ = nullptr;  // borrowed
  cudaEvent_t ready_ = nullptr;     // recorded on compute_, waited on by stream_ before each collective
  int32_t* barrier_buf_ = nullptr;  // one device int for barrier()
  bool metering_ = false;
  std::vector<cudaEvent_t> meter_events_;  // timing events, reused: [2i] before and [2i+1] after collective i
  size_t meter_used_ = 0;
  cudaEvent_t meter_event();  // the next free one (created on first need)
  std::string name_;
  int rank_ = 0, size_ = 1;
  Communicator* host_ = nullptr;
};

// check_async_errors() on every live NcclCommunicator of this process.
void nccl_check_async_errors();

// NCCL communicators for the groups of a ProcessGroups, each falling back to the group's MPI communicator for
// host buffers (so groups must outlive them). Collective over MPI_COMM_WORLD; calls prepare_nccl_env first.
class NcclGroups {
 public:
  explicit NcclGroups(const ProcessGroups& groups);
  NcclCommunicator& world() const { return *world_; }
  NcclCommunicator& tp() const { return *tp_; }
  NcclCommunicator& dp() const { return *dp_; }
  NcclCommunicator& ep() const { return *ep_; }
  NcclCommunicator& expert_dp() const { return *expert_dp_; }
  // world, tp, dp, ep or expert_dp (no NCCL communicator is built for node).
  NcclCommunicator& get(GroupKind k) const;

 private:
  std::unique_ptr<NcclCommunicator> world_, tp_, dp_, ep_, expert_dp_;
};

std::unique_ptr<NcclGroups> make_nccl_groups(const ProcessGroups& groups);

}  // namespace monta::comm
