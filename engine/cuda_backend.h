// The seam between host code and the CUDA backend: plain functions with no CUDA types, implemented in
// engine/cuda/runtime.cu, or by engine/cpu/no_cuda.cpp (which fails with a clear message) in CPU-only builds.
#pragma once
#include <cstddef>

#include "engine/tensor.h"

namespace monta::engine::cudab {

int device_count();  // 0 when built without CUDA or no GPU is visible
void set_device(int index);
void* alloc(size_t bytes);
// Bytes of the current device in use by anyone (total - free, cudaMemGetInfo): memory tests compare its growth with
// the predicted footprint. 0 without CUDA or without a usable device.
size_t device_memory_in_use();
void free(void* p);
// Page-locked host memory (fast device->host copies, e.g. the checkpoint snapshot); plain malloc without CUDA.
// nullptr when it cannot be had.
void* host_alloc_pinned(size_t bytes);
void host_free_pinned(void* p);
void copy(void* dst, bool dst_dev, const void* src, bool src_dev, size_t bytes, Stream s);
void memset_zero(void* p, size_t bytes, Stream s);
void synchronize(Stream s);
// copy() without the wait for a host destination: the bytes are there once stream s is synchronised.
void copy_async(void* dst, bool dst_dev, const void* src, bool src_dev, size_t bytes, Stream s);
// Work queued on `waiter` after this call starts after the work queued on `signaller` before it (an event).
void stream_wait(Stream waiter, Stream signaller);
Stream stream_create();
void stream_destroy(Stream s);
// Profiler ranges (NVTX; no-ops without CUDA or without a profiler attached).
void range_push(const char* name);
void range_pop();
// Timing events (engine/op_timing.h): an event recorded now on stream s, taken from a pool; the milliseconds
// between two of them (waits for the second); and handing every event back to the pool.
void* timing_event(Stream s);
double elapsed_ms(void* begin, void* end);
void recycle_timing_events();

}  // namespace monta::engine::cudab
