// Device memory and arenas: all memory of a run is carved from a few arenas sized up front from spec
// tables (STYLE.md rule 5); copies, fills, the one named device->host read and the one device sync live here too.
#pragma once
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace monta::engine {

bool cuda_available();   // a CUDA device is visible and the CUDA backend is built
int cuda_device_count();
void cuda_set_device(int index);
// Bytes of the current GPU in use (total - free, every allocator and the context included); 0 without CUDA.
size_t cuda_memory_in_use();

void* device_alloc(Device d, size_t bytes);
void device_free(Device d, void* p);
// dst and src must have the same numel and dtype; any pair of devices. Into host memory from a device it is a
// device->host read and goes through read_to_host (named "engine::copy"); new code calls read_to_host itself.
void copy(Tensor dst, const Tensor& src, Stream s = nullptr);
// The one named device->host read: copies src (any device) into the host tensor dst and waits until the bytes are
// there. A profiler shows it as the NVTX range "read_to_host <what>"; host_sync_count() counts it.
void read_to_host(Tensor dst, const Tensor& src, const char* what, Stream s = nullptr);
void fill_zero(Tensor t, Stream s = nullptr);
// A device->host copy started on stream s without waiting for it: the bytes are in dst once the stream is
// synchronised (sync_device(src.device, s)). It overlaps other streams' work only into page-locked host memory. On
// the CPU (src on the host) a plain copy, done on return.
void copy_to_host_async(Tensor dst, const Tensor& src, Stream s);
// Work queued on stream `waiter` from now on starts after the work queued on `signaller` so far (a CUDA event;
// nothing on the CPU). A side stream of the device: stream_create (nullptr on the CPU) and stream_destroy.
void stream_wait(Device d, Stream waiter, Stream signaller);
Stream stream_create(Device d);
void stream_destroy(Device d, Stream s);
// Deterministic pseudo-random values in [-scale, scale) (xorshift64 from `seed`, made on the host), written into t
// (f32, bf16 or f64; any device): the one fill for benchmark inputs and weights, which need repeatability only.
void fill_pseudo_random(Tensor t, uint64_t seed, double scale);
// The one named device->host sync point: waits for all work on the device (or stream) to finish.
void sync_device(Device d, Stream s = nullptr);
// Host waits on the device so far in this process: copies into host memory from a device and sync_device calls on
// a CUDA device (each blocks the host). The trainer reports the count per step (metrics.jsonl host_syncs).
int64_t host_sync_count();

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::f32;
};

// One allocation, many named tensors (256-byte aligned). Not copyable; frees on destruction. `pinned` (host arenas):
// page-locked memory, for copies to and from a GPU at full speed and without staging (plain memory without CUDA);
// a host that cannot pin that much is a user error.
class Arena {
 public:
  Arena() = default;
  Arena(std::string name, Device device, const std::vector<TensorSpec>& specs, bool pinned = false);
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Arena(Arena&& o) noexcept;
  Arena& operator=(Arena&& o) noexcept;

  // Bytes an arena of these specs takes (each tensor padded to 256 bytes): what the constructor allocates.
  static size_t bytes_for(const std::vector<TensorSpec>& specs);
  Tensor get(const std::string& name) const;
  Tensor at(size_t i) const { return tensors_[i]; }
  size_t count() const { return tensors_.size(); }
  const std::string& name_of(size_t i) const { return names_[i]; }
  size_t bytes() const { return bytes_; }
  Tensor whole() const;  // the whole allocation as bytes (u8), padding included
  const std::string& name() const { return name_; }
  Device device() const { return device_; }
  bool pinned() const { return pinned_; }

 private:
  std::string name_;
  Device device_ = Device::cpu;
  bool pinned_ = false;
  void* base_ = nullptr;
  size_t bytes_ = 0;
  std::vector<std::string> names_;
  std::vector<Tensor> tensors_;
  void release();
};

// Tensor from shape vector.
Tensor make_view(void* p, const std::vector<int64_t>& shape, DType t, Device d);

}  // namespace monta::engine
