// CPU-only builds: the CUDA seam reports "no GPU" and refuses device memory with a clear message.
#include <cstdlib>

#include "engine/check.h"
#include "engine/cuda_backend.h"

namespace monta::engine::cudab {
int device_count() { return 0; }
size_t device_memory_in_use() { return 0; }
void set_device(int) { fail_user("this build of monta has no CUDA backend; use --train.device cpu"); }
void* alloc(size_t) { fail_user("this build of monta has no CUDA backend; use --train.device cpu"); }
void free(void*) {}
void* host_alloc_pinned(size_t bytes) { return std::malloc(bytes); }
void host_free_pinned(void* p) { std::free(p); }
void copy(void*, bool, const void*, bool, size_t, Stream) { fail_user("this build of monta has no CUDA backend"); }
void memset_zero(void*, size_t, Stream) { fail_user("this build of monta has no CUDA backend"); }
void synchronize(Stream) {}
void copy_async(void*, bool, const void*, bool, size_t, Stream) { fail_user("this build of monta has no CUDA backend"); }
void stream_wait(Stream, Stream) {}
Stream stream_create() { return nullptr; }
void stream_destroy(Stream) {}
void range_push(const char*) {}
void range_pop() {}
void* timing_event(Stream) { fail_user("this build of monta has no CUDA backend"); }
double elapsed_ms(void*, void*) { return 0; }
void recycle_timing_events() {}
}  // namespace monta::engine::cudab
