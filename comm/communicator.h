// Communicator: the collectives monta uses, over one process group, with an MPI backend (host buffers)
// and an NCCL backend (device buffers). Only the exchange strategies and the gradient reducer call these.
#pragma once
#include <memory>
#include <span>
#include <string>

#include "engine/tensor.h"

namespace monta::comm {

using engine::Tensor;

enum class ReduceOp { sum, max };

// A started collective; wait() blocks (MPI) or orders the caller's stream after it (NCCL).
class Request {
 public:
  virtual ~Request() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const std::string& name() const = 0;  // "tp", "ep", ...

  // In place; buf is f32, f64, i32 or i64 (bf16 too on NCCL).
  virtual void all_reduce(Tensor buf, ReduceOp op) = 0;
  // out holds size() blocks of in.numel() elements, in rank order. in may be out's own block rank() (in place).
  virtual void all_gather(Tensor out, const Tensor& in) = 0;
  // in holds size() blocks of out.numel() elements; out = reduction of block rank() over the group.
  virtual void reduce_scatter(Tensor out, const Tensor& in, ReduceOp op) = 0;
  // Block j of in (in.numel()/size() elements) goes to rank j; block i of out comes from rank i.
  virtual void all_to_all(Tensor out, const Tensor& in) = 0;
  // Per-peer element counts; blocks packed in rank order in both buffers. Every backend: all_to_all_v_async at the
  // packed offsets, waited on (communicator.cpp).
  void all_to_all_v(Tensor out, std::span<const int64_t> recv_counts, const Tensor& in,
                    std::span<const int64_t> send_counts);
  // all_to_all_v started now, each peer's block at its own element offset in both buffers (gaps allowed, blocks
  // must not overlap): the dropless exchange sends the filled rows of a padded buffer without packing them first.
  virtual std::unique_ptr<Request> all_to_all_v_async(Tensor out, std::span<const int64_t> recv_counts,
                                                      std::span<const int64_t> recv_offsets, const Tensor& in,
                                                      std::span<const int64_t> send_counts,
                                                      std::span<const int64_t> send_offsets) = 0;
  virtual void broadcast(Tensor buf, int root) = 0;
  virtual void barrier() = 0;

  // Asynchronous forms: start now, wait later (overlap with computation).
  virtual std::unique_ptr<Request> all_reduce_async(Tensor buf, ReduceOp op) = 0;
  virtual std::unique_ptr<Request> all_gather_async(Tensor out, const Tensor& in) = 0;
  virtual std::unique_ptr<Request> all_to_all_async(Tensor out, const Tensor& in) = 0;
  // reduce_scatter, started now (the distributed optimizer's gradient reduction); out must not overlap in.
  virtual std::unique_ptr<Request> reduce_scatter_async(Tensor out, const Tensor& in, ReduceOp op) = 0;
  // all_gather_async that starts once `after` (a request of any communicator) has completed, without making the
  // caller wait for `after` where the backend can chain the two (NCCL: this group's stream waits for it, the
  // compute stream does not). The default waits for `after` here, then starts.
  virtual std::unique_ptr<Request> all_gather_async_after(Request& after, Tensor out, const Tensor& in) {
    after.wait();
    return all_gather_async(out, in);
  }

  // Device time of this group's collectives (the trainer's exchange time): while metering is on, a backend with a
  // communication stream (NCCL) records a pair of CUDA events around each collective it issues there;
  // take_metered_ms() waits for the last of them, returns the summed intervals in milliseconds and forgets them.
  // One stream runs its collectives one after another, so the sum is the time that stream was busy with them. A
  // blocking backend (MPI) has no such stream: nothing is recorded, 0 (its callers time the calls on the host).
  virtual void set_metering(bool) {}
  virtual double take_metered_ms() { return 0; }
};

}  // namespace monta::comm
