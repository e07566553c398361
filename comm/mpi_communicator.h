// MpiCommunicator: the Communicator over an MPI communicator, on host buffers. Reductions take f32, f64, i32
// and i64; data movement takes any dtype (sent as bytes). Every size is checked before MPI is called.
#pragma once
#include <mpi.h>

#include <memory>
#include <string>

#include "comm/communicator.h"

namespace monta::comm {

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of comm (MPI_Comm_free on destruction) unless it is MPI_COMM_WORLD / MPI_COMM_SELF.
  MpiCommunicator(MPI_Comm comm, std::string name);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  // Collective over parent: ranks with the same color form one group, ordered by key.
  static std::unique_ptr<MpiCommunicator> split(MPI_Comm parent, int color, int key, std::string name);

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  MPI_Comm handle() const { return comm_; }

  void all_reduce(Tensor buf, ReduceOp op) override;
  void all_gather(Tensor out, const Tensor& in) override;
  void reduce_scatter(Tensor out, const Tensor& in, ReduceOp op) override;
  void all_to_all(Tensor out, const Tensor& in) override;
  void broadcast(Tensor buf, int root) override;
  void barrier() override;

  // The returned Request waits in its destructor if wait() was never called (buffers stay valid until then).
  std::unique_ptr<Request> all_reduce_async(Tensor buf, ReduceOp op) override;
  std::unique_ptr<Request> all_gather_async(Tensor out, const Tensor& in) override;
  std::unique_ptr<Request> all_to_all_async(Tensor out, const Tensor& in) override;
  std::unique_ptr<Request> all_to_all_v_async(Tensor out, std::span<const int64_t> recv_counts,
                                              std::span<const int64_t> recv_offsets, const Tensor& in,
                                              std::span<const int64_t> send_counts,
                                              std::span<const int64_t> send_offsets) override;
  std::unique_ptr<Request> reduce_scatter_async(Tensor out, const Tensor& in, ReduceOp op) override;

 private:
  MPI_Comm comm_;
  std::string name_;
  int rank_ = 0, size_ = 1;
  bool owned_ = false;
};

}  // namespace monta::comm
