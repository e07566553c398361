// Host side of memory.h: arenas, and copies/fills that dispatch to the CUDA backend for device tensors.
#include "engine/memory.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "engine/check.h"
#include "engine/log.h"
#include "engine/cuda_backend.h"
#include "engine/trace.h"

namespace monta::engine {

namespace {
std::atomic<int64_t> g_host_syncs{0};
}  // namespace

bool cuda_available() { return cudab::device_count() > 0; }
int cuda_device_count() { return cudab::device_count(); }
void cuda_set_device(int index) { cudab::set_device(index); }
size_t cuda_memory_in_use() { return cudab::device_memory_in_use(); }

void* device_alloc(Device d, size_t bytes) {
  if (bytes == 0) bytes = 256;
  if (d == Device::cuda) return cudab::alloc(bytes);
  // Linux overcommits, so a too-large request would "succeed" and be killed later: compare with the machine first.
  const double phys = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGESIZE));
  MONTA_USER_CHECK(phys <= 0 || double(bytes) <= phys,
                   strf("out of host memory: asked for %.1f GiB, the machine has %.1f GiB; use a smaller model or "
                        "micro-batch, more ranks, or train on a GPU", double(bytes) / (1u << 30), phys / (1u << 30)));
  void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  MONTA_USER_CHECK(p, strf("out of host memory: allocating %.1f GiB failed; use a smaller model or micro-batch, more "
                           "ranks, or train on a GPU", double(bytes) / (1u << 30)));
  return p;
}

void device_free(Device d, void* p) {
  if (!p) return;
  if (d == Device::cuda)
    cudab::free(p);
  else
    std::free(p);
}

void copy(Tensor dst, const Tensor& src, Stream s) {
  MONTA_CHECK(dst.numel() == src.numel() && dst.dtype == src.dtype,
              "copy " + src.str() + " -> " + dst.str() + ": sizes or dtypes differ");
  if (dst.device == Device::cpu && src.device == Device::cpu) {
    if (dst.data != src.data) std::memmove(dst.data, src.data, src.bytes());
    return;
  }
  if (dst.device == Device::cpu) return read_to_host(dst, src, "engine::copy", s);
  cudab::copy(dst.data, true, src.data, src.device == Device::cuda, src.bytes(), s);
}

void read_to_host(Tensor dst, const Tensor& src, const char* what, Stream s) {
  MONTA_CHECK(dst.device == Device::cpu && dst.numel() == src.numel() && dst.dtype == src.dtype,
              std::string("read_to_host (") + what + ") " + src.str() + " -> " + dst.str() +
                  ": the destination must be host memory of the same size and dtype");
  if (src.device == Device::cpu) {
    if (dst.data != src.data) std::memmove(dst.data, src.data, src.bytes());
    return;
  }
  const TraceRange trace(std::string("read_to_host ") + what);
  g_host_syncs.fetch_add(1, std::memory_order_relaxed);
  cudab::copy(dst.data, false, src.data, true, src.bytes(), s);  // waits for the stream: the bytes are there
}

void copy_to_host_async(Tensor dst, const Tensor& src, Stream s) {
  MONTA_CHECK(dst.device == Device::cpu && dst.numel() == src.numel() && dst.dtype == src.dtype,
              "copy_to_host_async " + src.str() + " -> " + dst.str() + ": the destination must be host memory of the "
              "same size and dtype");
  if (src.device == Device::cpu) {
    if (dst.data != src.data) std::memmove(dst.data, src.data, src.bytes());
    return;
  }
  cudab::copy_async(dst.data, false, src.data, true, src.bytes(), s);
}

void stream_wait(Device d, Stream waiter, Stream signaller) {
  if (d == Device::cuda) cudab::stream_wait(waiter, signaller);
}

Stream stream_create(Device d) { return d == Device::cuda ? cudab::stream_create() : nullptr; }

void stream_destroy(Device d, Stream s) {
  if (d == Device::cuda) cudab::stream_destroy(s);
}

int64_t host_sync_count() { return g_host_syncs.load(std::memory_order_relaxed); }

void fill_zero(Tensor t, Stream s) {
  if (t.device == Device::cpu)
    std::memset(t.data, 0, t.bytes());
  else
    cudab::memset_zero(t.data, t.bytes(), s);
}

void fill_pseudo_random(Tensor t, uint64_t seed, double scale) {
  const int64_t n = t.numel();
  std::vector<double> h(static_cast<size_t>(n));
  uint64_t x = 0x9e3779b97f4a7c15ull ^ (seed + 1) * 0x2545F4914F6CDD1Dull;
  for (auto& v : h) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v = scale * (double(x >> 11) / 9007199254740992.0 * 2.0 - 1.0);
  }
  const Tensor flat = make_view(t.data, {n}, t.dtype, t.device);
  if (t.dtype == DType::f64) {
    copy(flat, Tensor(h.data(), {n}, DType::f64));
  } else if (t.dtype == DType::f32) {
    std::vector<float> f(h.begin(), h.end());
    copy(flat, Tensor(f.data(), {n}, DType::f32));
  } else {
    MONTA_CHECK(t.dtype == DType::bf16, "fill_pseudo_random: f32, bf16 or f64 only, got " + t.str());
    std::vector<bf16_t> b(h.size());
    for (size_t i = 0; i < h.size(); ++i) b[i] = float_to_bf16(float(h[i]));
    copy(flat, Tensor(b.data(), {n}, DType::bf16));
  }
}

void sync_device(Device d, Stream s) {
  if (d != Device::cuda) return;
  g_host_syncs.fetch_add(1, std::memory_order_relaxed);
  cudab::synchronize(s);
}

Tensor make_view(void* p, const std::vector<int64_t>& shape, DType t, Device d) {
  MONTA_CHECK(shape.size() <= 4, "tensors have at most 4 dimensions");
  Tensor v;
  v.data = p;
  v.dtype = t;
  v.device = d;
  v.ndim = int(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) v.shape[i] = shape[i];
  return v;
}

Arena::Arena(std::string name, Device device, const std::vector<TensorSpec>& specs, bool pinned)
    : name_(std::move(name)), device_(device), pinned_(pinned && device == Device::cpu) {
  std::vector<size_t> offsets;
  for (const auto& s : specs) {
    for (int64_t v : s.shape) MONTA_CHECK(v >= 0, "arena " + name_ + ": negative dimension in " + s.name);
    offsets.push_back(bytes_);
    bytes_ += bytes_for({s});
  }
  if (pinned_) {
    base_ = cudab::host_alloc_pinned(std::max<size_t>(bytes_, 256));
    MONTA_USER_CHECK(base_, strf("cannot page-lock %.2f GiB of host memory for %s; use more ranks or a host with more "
                                 "memory (ulimit -l)", double(bytes_) / (1u << 30), name_.c_str()));
  } else {
    base_ = device_alloc(device, bytes_);
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    names_.push_back(specs[i].name);
    tensors_.push_back(make_view(static_cast<char*>(base_) + offsets[i], specs[i].shape, specs[i].dtype, device));
  }
}

size_t Arena::bytes_for(const std::vector<TensorSpec>& specs) {
  size_t bytes = 0;
  for (const auto& s : specs) {
    int64_t n = 1;
    for (int64_t v : s.shape) n *= v;
    bytes += (size_t(n) * dtype_size(s.dtype) + 255) / 256 * 256;
  }
  return bytes;
}

void Arena::release() {
  if (pinned_)
    cudab::host_free_pinned(base_);
  else
    device_free(device_, base_);
  base_ = nullptr;
}

Arena::~Arena() { release(); }

Arena::Arena(Arena&& o) noexcept { *this = std::move(o); }
Arena& Arena::operator=(Arena&& o) noexcept {
  if (this != &o) {
    release();
    name_ = std::move(o.name_);
    device_ = o.device_;
    pinned_ = o.pinned_;
    base_ = o.base_;
    bytes_ = o.bytes_;
    names_ = std::move(o.names_);
    tensors_ = std::move(o.tensors_);
    o.base_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

Tensor Arena::whole() const { return make_view(base_, {int64_t(bytes_)}, DType::u8, device_); }

Tensor Arena::get(const std::string& name) const {
  for (size_t i = 0; i < names_.size(); ++i)
    if (names_[i] == name) return tensors_[i];
  MONTA_CHECK(false, "arena " + name_ + " has no tensor " + name);
  return {};
}

}  // namespace monta::engine
