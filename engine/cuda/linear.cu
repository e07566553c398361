// CUDA linear layers through cuBLASLt. Row-major tensors are read as their column-major transposes:
//   forward   out'(O×M) = op_T(w'(I×O)) · x'(I×M)           (m=O, n=M, k=I)
//   dx        dx'(I×M)  = w'(I×O) · dout'(O×M)              (m=I, n=M, k=O)
//   dw        dw'(I×O) += x'(I×M) · op_T(dout'(O×M))         (m=I, n=O, k=M, beta=1, f32 C/D; beta=0 on the
//                                                             step's first write, which skips reading C)
// where t' is the column-major view of row-major t. Experts: the same GEMMs batched over E with strided
// offsets. Compute is always fp32 (CUBLAS_COMPUTE_32F: no TF32 for f32 inputs). Algorithms come from the
// heuristic once per shape/dtype/alignment and are cached.
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "engine/cuda/common.cuh"
#include "engine/ops/linear.h"

namespace monta::engine::cuda {
namespace {

cudaDataType_t cuda_type(DType t) { return t == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F; }

int ptr_align(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int al = 16;
  while (al > 1 && (a % uintptr_t(al)) != 0) al >>= 1;
  return al;
}

struct GemmKey {
  int device;
  int ta, tb;
  int64_t m, n, k, lda, ldb, ldc, batch, sa, sb, sc;
  int dta, dtb, dtc;
  int aa, ab, ac;
  bool beta;
  auto tie() const {
    return std::tie(device, ta, tb, m, n, k, lda, ldb, ldc, batch, sa, sb, sc, dta, dtb, dtc, aa, ab, ac, beta);
  }
  bool operator<(const GemmKey& o) const { return tie() < o.tie(); }
};

std::mutex g_algo_mu;
std::map<GemmKey, cublasLtMatmulAlgo_t> g_algos;

struct LtDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  ~LtDescs() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

void make_layout(cublasLtMatrixLayout_t* l, DType t, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                 int64_t stride) {
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(l, cuda_type(t), uint64_t(rows), uint64_t(cols), ld));
  if (batch > 1) {
    int32_t bc = int32_t(batch);
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof(bc)));
    CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
}

// Optional autotuning (MONTA_GEMM_TUNE=1): the heuristic's first kTuneCandidates algorithms are timed once per
// key on the real operands, writing into a scratch output (a beta = 1 accumulation is never disturbed), and the
// fastest is cached. Off by default: on the H200 (2026-11-29, `monta bench ops`, same run, tuned vs not) it made
// the expert backward GEMM 1.7% faster but the gate forward 14% slower, and the whole 2x70B layer moved by less
// than the run-to-run spread (74.3 vs 74.9 ms). Tuning allocates and syncs once per shape, on its first use.
constexpr int kTuneCandidates = 8;
constexpr double kTuneMinFlops = 1e11;

bool tuning_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("MONTA_GEMM_TUNE");
    return e && std::string(e) == "1";
  }();
  return on;
}

cublasLtMatmulAlgo_t tune(cublasLtHandle_t h, const LtDescs& d, int found, const cublasLtMatmulHeuristicResult_t* res,
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

// Column-major D(m×n) = alpha·op(A)·op(B) + beta·D, batched with strides; A is (m×k) after op, B (k×n).
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void* A, DType dta, int64_t lda, int64_t sa,
          const void* B, DType dtb, int64_t ldb, int64_t sb, void* C, DType dtc, int64_t ldc, int64_t sc,
          int64_t batch, float beta, Stream s) {
  MONTA_CHECK(dta == dtb, "GEMM operands must share a dtype");
  if (m == 0 || n == 0 || batch == 0) return;
  if (k == 0) {  // empty reduction: D = beta·D (our operands are always packed: ldc == m, sc == m·n)
    if (beta == 0.f)
      CUDA_CHECK(cudaMemsetAsync(C, 0, size_t(m * n * batch) * dtype_size(dtc), stream_of(s)));
    return;
  }
  cublasLtHandle_t h = lt_handle();
  LtDescs d;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&d.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
  make_layout(&d.a, dta, ta ? k : m, ta ? m : k, lda, batch, sa);
  make_layout(&d.b, dtb, tb ? n : k, tb ? k : n, ldb, batch, sb);
  make_layout(&d.c, dtc, m, n, ldc, batch, sc);

  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  GemmKey key{device, ta, tb, m, n, k, lda, ldb, ldc, batch, sa, sb, sc, int(dta), int(dtb), int(dtc),
              ptr_align(A), ptr_align(B), ptr_align(C), beta != 0.f};
  cublasLtMatmulAlgo_t algo;
  {
    std::lock_guard<std::mutex> lock(g_algo_mu);
    auto it = g_algos.find(key);
    if (it != g_algos.end()) {
      algo = it->second;
    } else {
      cublasLtMatmulPreference_t pref = nullptr;
      CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
      uint64_t ws = kLtWorkspaceBytes;
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                        sizeof(ws)));
      uint32_t al[3] = {uint32_t(key.aa), uint32_t(key.ab), uint32_t(key.ac)};
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0],
                                                        sizeof(uint32_t)));
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1],
                                                        sizeof(uint32_t)));
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2],
                                                        sizeof(uint32_t)));
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[2],
                                                        sizeof(uint32_t)));
      cublasLtMatmulHeuristicResult_t res[kTuneCandidates];
      std::memset(res, 0, sizeof(res));
      int found = 0;
      cublasStatus_t st =
          cublasLtMatmulAlgoGetHeuristic(h, d.op, d.a, d.b, d.c, d.c, pref, kTuneCandidates, res, &found);
      cublasLtMatmulPreferenceDestroy(pref);
      MONTA_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0,
                  "cuBLASLt has no algorithm for GEMM m=" + std::to_string(m) + " n=" + std::to_string(n) +
                      " k=" + std::to_string(k) + " batch=" + std::to_string(batch) + " (" + dtype_name(dta) +
                      " -> " + dtype_name(dtc) + ")");
      algo = res[0].algo;
      const double flops = 2.0 * double(m) * double(n) * double(k) * double(batch);
      if (found > 1 && flops >= kTuneMinFlops && tuning_enabled())
        algo = tune(h, d, found, res, A, B, size_t(sc * batch > ldc * n ? sc * batch : ldc * n) * dtype_size(dtc),
                    beta, stream_of(s));
      g_algos.emplace(key, algo);
    }
  }
  float alpha = 1.f;
  CUBLAS_CHECK(cublasLtMatmul(h, d.op, &alpha, A, d.a, B, d.b, &beta, C, d.c, C, d.c, &algo, lt_workspace(s),
                              kLtWorkspaceBytes, stream_of(s)));
}

void check_linear(const char* op, const Tensor& out, const Tensor& x, const Tensor& w, int64_t* M, int64_t* I,
                  int64_t* O) {
  need_float(x, op, "x");
  need_float(w, op, "w");
  MONTA_CHECK(x.dtype == w.dtype, std::string(op) + ": x and w must share a dtype, got " + x.str() + " " + w.str());
  MONTA_CHECK(w.ndim == 2, std::string(op) + ": w must be (O, I), got " + w.str());
  *O = w.dim(0);
  *I = w.dim(1);
  MONTA_CHECK(x.ndim >= 1 && x.dim(-1) == *I, std::string(op) + ": x " + x.str() + " does not match w " + w.str());
  *M = x.numel() / *I;
  if (!out.empty()) need_numel(out, *M * *O, op, "out/dout");
}

}  // namespace

void linear_forward(Tensor out, const Tensor& x, const Tensor& w, bool accumulate, Stream s) {
  int64_t M, I, O;
  need_float(out, "linear_forward", "out");
  check_linear("linear_forward", out, x, w, &M, &I, &O);
  gemm(true, false, O, M, I, w.data, w.dtype, I, 0, x.data, x.dtype, I, 0, out.data, out.dtype, O, 0, 1,
       accumulate ? 1.f : 0.f, s);
}

void linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, bool accumulate_dx,
                     bool accumulate_dw, Stream s) {
  int64_t M, I, O;
  need_float(dout, "linear_backward", "dout");
  check_linear("linear_backward", dout, x, w, &M, &I, &O);
  MONTA_CHECK(dout.dtype == x.dtype, "linear_backward: dout and x must share a dtype");
  if (!dx.empty()) {
    need_float(dx, "linear_backward", "dx");
    need_numel(dx, M * I, "linear_backward", "dx");
    gemm(false, false, I, M, O, w.data, w.dtype, I, 0, dout.data, dout.dtype, O, 0, dx.data, dx.dtype, I, 0, 1,
         accumulate_dx ? 1.f : 0.f, s);
  }
  if (!dw.empty()) {
    need_float(dw, "linear_backward", "dw");
    need_numel(dw, O * I, "linear_backward", "dw");
    gemm(false, true, I, O, M, x.data, x.dtype, I, 0, dout.data, dout.dtype, O, 0, dw.data, dw.dtype, I, 0, 1,
         accumulate_dw ? 1.f : 0.f, s);
  }
}

void expert_linear_forward(Tensor out, const Tensor& x, const Tensor& w, Stream s) {
  const char* op = "expert_linear_forward";
  need_float(out, op, "out");
  need_float(x, op, "x");
  need_float(w, op, "w");
  MONTA_CHECK(x.ndim == 3 && w.ndim == 3 && x.dim(0) == w.dim(0) && x.dim(2) == w.dim(2),
              std::string(op) + ": x (E, C, I) and w (E, O, I) disagree: " + x.str() + " " + w.str());
  int64_t E = x.dim(0), C = x.dim(1), I = x.dim(2), O = w.dim(1);
  need_numel(out, E * C * O, op, "out");
  gemm(true, false, O, C, I, w.data, w.dtype, I, O * I, x.data, x.dtype, I, C * I, out.data, out.dtype, O, C * O, E,
       0.f, s);
}

void expert_linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, bool accumulate_dx,
                            bool accumulate_dw, Stream s) {
  const char* op = "expert_linear_backward";
  need_float(dout, op, "dout");
  need_float(x, op, "x");
  need_float(w, op, "w");
  MONTA_CHECK(x.ndim == 3 && w.ndim == 3 && x.dim(0) == w.dim(0) && x.dim(2) == w.dim(2),
              std::string(op) + ": x (E, C, I) and w (E, O, I) disagree: " + x.str() + " " + w.str());
  int64_t E = x.dim(0), C = x.dim(1), I = x.dim(2), O = w.dim(1);
  need_numel(dout, E * C * O, op, "dout");
  if (!dx.empty()) {
    need_float(dx, op, "dx");
    need_numel(dx, E * C * I, op, "dx");
    gemm(false, false, I, C, O, w.data, w.dtype, I, O * I, dout.data, dout.dtype, O, C * O, dx.data, dx.dtype, I,
         C * I, E, accumulate_dx ? 1.f : 0.f, s);
  }
  if (!dw.empty()) {
    need_float(dw, op, "dw");
    need_numel(dw, E * O * I, op, "dw");
    gemm(false, true, I, O, C, x.data, x.dtype, I, C * I, dout.data, dout.dtype, O, C * O, dw.data, dw.dtype, I,
         O * I, E, accumulate_dw ? 1.f : 0.f, s);
  }
}

}  // namespace monta::engine::cuda
