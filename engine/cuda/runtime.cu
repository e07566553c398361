// CUDA side of engine/cuda_backend.h (device count, memory, copies, streams) and the per-device and
// per-stream resources the op files share (cuBLASLt handle, workspaces, reduction scratch).
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include <nvtx3/nvToolsExt.h>

#include "engine/cuda/common.cuh"
#include "engine/cuda_backend.h"

namespace monta::engine::cudab {

int device_count() {
  int n = 0;
  // No driver, no device, or a driver too old: the CUDA backend is simply unavailable.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky error so later calls are not confused by it
    return 0;
  }
  return n;
}

void set_device(int index) {
  int n = device_count();
  MONTA_USER_CHECK(index >= 0 && index < n, "CUDA device " + std::to_string(index) + " requested but " +
                                                std::to_string(n) + " visible; check CUDA_VISIBLE_DEVICES");
  CUDA_CHECK(cudaSetDevice(index));
  // The default stream's workspaces (cuBLASLt, reductions, column partials) and the cuBLASLt handle now, so the
  // first training step allocates nothing (STYLE.md rule 5); other streams still get theirs on first use.
  cuda::lt_handle();
  cuda::lt_workspace(nullptr);
}

void* alloc(size_t bytes) {
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    int dev = -1;
    (void)cudaGetDevice(&dev);
    fail_user("out of GPU memory on device " + std::to_string(dev) + ": asked for " +
              std::to_string(bytes >> 20) + " MiB, " + std::to_string(free_b >> 20) + " MiB free of " +
              std::to_string(total_b >> 20) + " MiB; use a smaller micro-batch, more tensor/expert parallelism, "
              "or activation recomputation");
  }
  CUDA_CHECK(e);
  return p;
}

size_t device_memory_in_use() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {  // no usable device: nothing in use that we could measure
    (void)cudaGetLastError();
    return 0;
  }
  return total_b - free_b;
}

void free(void* p) {
  if (p) CUDA_CHECK(cudaFree(p));
}

void* host_alloc_pinned(size_t bytes) {
  void* p = nullptr;
  if (cudaHostAlloc(&p, bytes, cudaHostAllocDefault) != cudaSuccess) {
    (void)cudaGetLastError();  // too much to pin: the caller reports it as a user error
    return nullptr;
  }
  return p;
}

void host_free_pinned(void* p) {
  if (p) CUDA_CHECK(cudaFreeHost(p));
}

void copy(void* dst, bool dst_dev, const void* src, bool src_dev, size_t bytes, Stream s) {
  if (bytes == 0 || dst == src) return;
  cudaMemcpyKind kind = dst_dev ? (src_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                : (src_dev ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  cudaStream_t st = cuda::stream_of(s);
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, st));
  // A host buffer may be reused or read by the caller right after return: finish the copy first.
  if (!dst_dev || !src_dev) CUDA_CHECK(cudaStreamSynchronize(st));
}

void copy_async(void* dst, bool dst_dev, const void* src, bool src_dev, size_t bytes, Stream s) {
  if (bytes == 0 || dst == src) return;
  cudaMemcpyKind kind = dst_dev ? (src_dev ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                                : (src_dev ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, cuda::stream_of(s)));
}

void stream_wait(Stream waiter, Stream signaller) {
  // One event per call, destroyed at once: cudaStreamWaitEvent captures the event's state when it is called.
  cudaEvent_t e = nullptr;
  CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(e, cuda::stream_of(signaller)));
  CUDA_CHECK(cudaStreamWaitEvent(cuda::stream_of(waiter), e, 0));
  CUDA_CHECK(cudaEventDestroy(e));
}

void memset_zero(void* p, size_t bytes, Stream s) {
  if (bytes) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cuda::stream_of(s)));
}

void synchronize(Stream s) {
  if (s)
    CUDA_CHECK(cudaStreamSynchronize(cuda::stream_of(s)));
  else
    CUDA_CHECK(cudaDeviceSynchronize());
}

Stream stream_create() {
  cudaStream_t st = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  return st;
}

void stream_destroy(Stream s) {
  if (s) CUDA_CHECK(cudaStreamDestroy(cuda::stream_of(s)));
}

// NVTX 3 is header-only: without a profiler attached these calls cost a branch each.
void range_push(const char* name) { nvtxRangePushA(name); }
void range_pop() { nvtxRangePop(); }

namespace {
std::mutex g_event_mu;
std::vector<cudaEvent_t> g_events;  // the pool; the first g_events_used are handed out
size_t g_events_used = 0;
}  // namespace

void* timing_event(Stream s) {
  std::lock_guard<std::mutex> lock(g_event_mu);
  if (g_events_used == g_events.size()) {
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreate(&e));
    g_events.push_back(e);
  }
  cudaEvent_t e = g_events[g_events_used++];
  CUDA_CHECK(cudaEventRecord(e, cuda::stream_of(s)));
  return e;
}

double elapsed_ms(void* begin, void* end) {
  CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(end)));
  float ms = 0;
  CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(begin), static_cast<cudaEvent_t>(end)));
  return double(ms);
}

void recycle_timing_events() {
  std::lock_guard<std::mutex> lock(g_event_mu);
  g_events_used = 0;
}

}  // namespace monta::engine::cudab

namespace monta::engine::cuda {
namespace {

std::mutex g_mu;
std::map<int, cublasLtHandle_t> g_lt;  // device -> handle

struct StreamScratch {
  void* lt_ws = nullptr;
  float* reduce = nullptr;
  float* columns = nullptr;
};
std::map<std::pair<int, Stream>, StreamScratch> g_scratch;  // (device, stream) -> scratch

int current_device() {
  int d = 0;
  CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

StreamScratch& scratch_for(Stream s) {
  auto& sc = g_scratch[{current_device(), s}];
  if (!sc.lt_ws) {
    CUDA_CHECK(cudaMalloc(&sc.lt_ws, kLtWorkspaceBytes));
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&sc.reduce), sizeof(float) * kReduceBlocks));
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&sc.columns), sizeof(float) * kColumnScratchFloats));
  }
  return sc;
}

}  // namespace

cublasLtHandle_t lt_handle() {
  std::lock_guard<std::mutex> lock(g_mu);
  int d = current_device();
  auto it = g_lt.find(d);
  if (it != g_lt.end()) return it->second;
  cublasLtHandle_t h = nullptr;
  CUBLAS_CHECK(cublasLtCreate(&h));
  g_lt[d] = h;
  return h;
}

void* lt_workspace(Stream s) {
  std::lock_guard<std::mutex> lock(g_mu);
  return scratch_for(s).lt_ws;
}

float* reduce_scratch(Stream s) {
  std::lock_guard<std::mutex> lock(g_mu);
  return scratch_for(s).reduce;
}

float* column_scratch(Stream s) {
  std::lock_guard<std::mutex> lock(g_mu);
  return scratch_for(s).columns;
}

cublasLtMatmulAlgo_t lt_tune(cublasLtHandle_t h, const LtDescs& d, int found, const cublasLtMatmulHeuristicResult_t* res,
                          const void* A, const void* B, size_t c_bytes, float beta, cudaStream_t st) {
  void* scratch = nullptr;
  if (cudaMalloc(&scratch, c_bytes) != cudaSuccess) {
    cudaGetLastError();  // not enough memory to tune: keep the heuristic's pick
    return res[0].algo;
  }
  CUDA_CHECK(cudaMemsetAsync(scratch, 0, c_bytes, st));
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  const float alpha = 1.f;
  auto run = [&](int i) {
    return cublasLtMatmul(h, d.op, &alpha, A, d.a, B, d.b, &beta, scratch, d.c, scratch, d.c, &res[i].algo,
                          lt_workspace(st), kLtWorkspaceBytes, st);
  };
  auto time_ms = [&](int i) {  // mean of 5 runs after one warm-up; +inf for an algorithm that fails
    if (res[i].state != CUBLAS_STATUS_SUCCESS || run(i) != CUBLAS_STATUS_SUCCESS) return 1e30f;
    CUDA_CHECK(cudaEventRecord(e0, st));
    for (int r = 0; r < 5; ++r) CUBLAS_CHECK(run(i));
    CUDA_CHECK(cudaEventRecord(e1, st));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    return ms / 5;
  };
  // Lift the clocks first (an idle GPU starts slow and would make the first candidates look bad).
  for (int r = 0; r < 10; ++r) CUBLAS_CHECK(run(0));
  int best = 0;
  float best_ms = time_ms(0);
  for (int i = 1; i < found; ++i) {
    float ms = time_ms(i);
    if (ms < best_ms) {
      best_ms = ms;
      best = i;
    }
  }
  // Keep the heuristic's pick unless the winner is clearly faster when timed again right beside it.
  if (best != 0) {
    float again0 = time_ms(0), again = time_ms(best);
    if (!(again < 0.97f * again0)) best = 0;
  }
  CUDA_CHECK(cudaEventDestroy(e0));
  CUDA_CHECK(cudaEventDestroy(e1));
  CUDA_CHECK(cudaStreamSynchronize(st));
  CUDA_CHECK(cudaFree(scratch));
  return res[best].algo;
}

}  // namespace monta::engine::cuda
