// CUDA linear layers through cuBLASLt. Row-major tensors are read as their column-major transposes:
//   forward   out'(O×M) = op_T(w'(I×O)) · x'(I×M)           (m=O, n=M, k=I)
//   dx        dx'(I×M)  = w'(I×O) · dout'(O×M)              (m=I, n=M, k=O)
//   dw        dw'(I×O) += x'(I×M) · op_T(dout'(O×M))         (m=I, n=O, k=M, beta=1, f32 C/D; beta=0 on the
//                                                             step's first write, which skips reading C)
// where t' is the column-major view of row-major t. Experts: the same GEMMs batched over E with strided
// offsets. Compute is always fp32 (CUBLAS_COMPUTE_32F: no TF32 for f32 inputs). Algorithms come from the
// heuristic once per shape/dtype/alignment and are cached. The backward of a linear with at most 8 outputs (the
// router) runs on two bandwidth-bound kernels of its own instead (see small_o_linear_backward).
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "engine/cuda/common.cuh"
#include "engine/ops/linear.h"
#include "engine/settings.h"

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

// Column-major D(m×n) = alpha·op(A)·op(B) + beta·Cin, batched with strides; A is (m×k) after op, B (k×n); Cin is
// D itself unless given (same layout and type as D).
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const void* A, DType dta, int64_t lda, int64_t sa,
          const void* B, DType dtb, int64_t ldb, int64_t sb, void* C, DType dtc, int64_t ldc, int64_t sc,
          int64_t batch, float beta, Stream s, const void* Cin = nullptr) {
  if (!Cin) Cin = C;
  MONTA_CHECK(dta == dtb, "GEMM operands must share a dtype");
  if (m == 0 || n == 0 || batch == 0) return;
  if (k == 0) {  // empty reduction: D = beta·Cin (our operands are always packed: ldc == m, sc == m·n)
    const size_t bytes = size_t(m * n * batch) * dtype_size(dtc);
    if (beta == 0.f)
      CUDA_CHECK(cudaMemsetAsync(C, 0, bytes, stream_of(s)));
    else if (Cin != C)
      CUDA_CHECK(cudaMemcpyAsync(C, Cin, bytes, cudaMemcpyDeviceToDevice, stream_of(s)));
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
              ptr_align(A), ptr_align(B), std::min(ptr_align(C), ptr_align(Cin)), beta != 0.f};
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
      if (found > 1 && flops >= kTuneMinFlops && settings().gemm_tune)
        algo = lt_tune(h, d, found, res, A, B, size_t(sc * batch > ldc * n ? sc * batch : ldc * n) * dtype_size(dtc),
                    beta, stream_of(s));
      g_algos.emplace(key, algo);
    }
  }
  float alpha = 1.f;
  CUBLAS_CHECK(cublasLtMatmul(h, d.op, &alpha, A, d.a, B, d.b, &beta, Cin, d.c, C, d.c, &algo, lt_workspace(s),
                              kLtWorkspaceBytes, stream_of(s)));
}

// Small O (the router, O = E experts): cuBLASLt sees 2·O-byte leading dimensions there and leaves its fast kernels
// (0.27 ms for the 8192×8192×2 router backward on an H200, memory-bound work of about 0.1 ms), so two bandwidth-bound
// kernels take the backward over. Both sum in a fixed order: the same bits on every run.
constexpr int kSmallO = 8;
constexpr int kSmallOThreads = 128;
constexpr int64_t kSmallOSplits = 64;  // row ranges of the weight-gradient partial sums

// dx[n, i:i+V] = (acc ? dx : 0) + Σ_o dout[n, o] · w[o, i:i+V], o in order.
template <class T, int O>
static __global__ void small_o_dx_kernel(T* __restrict__ dx, const T* __restrict__ dout, const T* __restrict__ w,
                                         int64_t M, int64_t I, bool acc) {
  constexpr int V = Vec16<T>::n;
  const int64_t iv = I / V, total = M * iv;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = t / iv, i = (t - n * iv) * V;
    float a[V];
    if (acc) {
      load16(dx + n * I + i, a);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) a[j] = 0.f;
    }
#pragma unroll
    for (int o = 0; o < O; ++o) {
      const float g = to_f(dout[n * O + o]);
      float wv[V];
      load16(w + o * I + i, wv);
#pragma unroll
      for (int j = 0; j < V; ++j) a[j] += g * wv[j];
    }
    store16(dx + n * I + i, a);
  }
}

// partial[split, o, i:i+V] = Σ_{n in the split's rows, in order} dout[n, o] · x[n, i:i+V].
template <class T, int O>
static __global__ void small_o_dw_partial_kernel(float* __restrict__ partial, const T* __restrict__ dout,
                                                 const T* __restrict__ x, int64_t M, int64_t I) {
  constexpr int V = Vec16<T>::n;
  const int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  const int64_t rows = (M + gridDim.y - 1) / gridDim.y, n0 = int64_t(blockIdx.y) * rows;
  const int64_t n1 = n0 + rows < M ? n0 + rows : M;
  if (i >= I) return;
  float a[O][V];
#pragma unroll
  for (int o = 0; o < O; ++o)
#pragma unroll
    for (int j = 0; j < V; ++j) a[o][j] = 0.f;
  for (int64_t n = n0; n < n1; ++n) {
    float xv[V];
    load16(x + n * I + i, xv);
#pragma unroll
    for (int o = 0; o < O; ++o) {
      const float g = to_f(dout[n * O + o]);
#pragma unroll
      for (int j = 0; j < V; ++j) a[o][j] += g * xv[j];
    }
  }
#pragma unroll
  for (int o = 0; o < O; ++o) {
    float* dst = partial + (int64_t(blockIdx.y) * O + o) * I + i;
#pragma unroll
    for (int j = 0; j < V; ++j) dst[j] = a[o][j];
  }
}

// dw[o, i] = (acc ? dw : 0) + Σ_split partial[split, o, i], splits in order.
static __global__ void small_o_dw_finish_kernel(float* __restrict__ dw, const float* __restrict__ partial, int splits,
                                                int64_t OI, bool acc) {
  const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= OI) return;
  float s = acc ? dw[k] : 0.f;
  for (int r = 0; r < splits; ++r) s += partial[int64_t(r) * OI + k];
  dw[k] = s;
}

template <class T, int O>
void small_o_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, int64_t M, int64_t I,
                      bool acc_dx, bool acc_dw, Stream s) {
  constexpr int V = Vec16<T>::n;
  cudaStream_t st = stream_of(s);
  if (!dx.empty()) {
    small_o_dx_kernel<T, O><<<grid_1d(M * I / V, kSmallOThreads, 132 * 16), kSmallOThreads, 0, st>>>(
        dx.as<T>(), dout.as<T>(), w.as<T>(), M, I, acc_dx);
    MONTA_LAUNCH_CHECK();
  }
  if (!dw.empty()) {
    const int64_t cap = std::min<int64_t>(M, kColumnScratchFloats / (O * I));
    const int splits = int(std::max<int64_t>(1, std::min<int64_t>(kSmallOSplits, cap)));
    float* partial = column_scratch(s);
    const dim3 grid(unsigned((I / V + kSmallOThreads - 1) / kSmallOThreads), unsigned(splits));
    small_o_dw_partial_kernel<T, O><<<grid, kSmallOThreads, 0, st>>>(partial, dout.as<T>(), x.as<T>(), M, I);
    MONTA_LAUNCH_CHECK();
    small_o_dw_finish_kernel<<<grid_1d(O * I, 256), 256, 0, st>>>(dw.as<float>(), partial, splits, O * I, acc_dw);
    MONTA_LAUNCH_CHECK();
  }
}

// The small-O path, where it applies (O <= kSmallO, 16-byte aligned rows, f32 dw); false: use the GEMMs.
bool small_o_linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, int64_t M,
                             int64_t I, int64_t O, bool acc_dx, bool acc_dw, Stream s) {
  if (O > kSmallO || M == 0) return false;
  const int64_t V = x.dtype == DType::bf16 ? 8 : 4;
  bool ok = I % V == 0 && O * I <= kColumnScratchFloats && aligned16(w.data) && aligned16(x.data) &&
            dout.dtype == x.dtype && w.dtype == x.dtype;
  if (!dx.empty()) ok = ok && dx.dtype == x.dtype && aligned16(dx.data);
  if (!dw.empty()) ok = ok && dw.dtype == DType::f32 && aligned16(dw.data);
  if (!ok) return false;
  MONTA_FLOAT_TYPES(x.dtype, T, {
    switch (O) {
      case 1: small_o_backward<T, 1>(dx, dw, dout, x, w, M, I, acc_dx, acc_dw, s); break;
      case 2: small_o_backward<T, 2>(dx, dw, dout, x, w, M, I, acc_dx, acc_dw, s); break;
      case 3: small_o_backward<T, 3>(dx, dw, dout, x, w, M, I, acc_dx, acc_dw, s); break;
      case 4: small_o_backward<T, 4>(dx, dw, dout, x, w, M, I, acc_dx, acc_dw, s); break;
      case 5: small_o_backward<T, 5>(dx, dw, dout, x, w, M, I, acc_dx, acc_dw, s); break;
      case 6: small_o_backward<T, 6>(dx, dw, dout, x, w, M, I, acc_dx, acc_dw, s); break;
      case 7: small_o_backward<T, 7>(dx, dw, dout, x, w, M, I, acc_dx, acc_dw, s); break;
      default: small_o_backward<T, 8>(dx, dw, dout, x, w, M, I, acc_dx, acc_dw, s); break;
    }
  });
  return true;
}

// x (M, I) and w (O, I) of one float dtype (the shapes are the contract's, engine/ops/dispatch.cpp).
void check_linear(const char* op, const Tensor& x, const Tensor& w, int64_t* M, int64_t* I, int64_t* O) {
  need_float(x, op, "x");
  need_float(w, op, "w");
  MONTA_CHECK(x.dtype == w.dtype, std::string(op) + ": x and w must share a dtype, got " + x.str() + " " + w.str());
  *O = w.dim(0);
  *I = w.dim(1);
  *M = x.dim(0);
}

}  // namespace

void linear_forward(Tensor out, const Tensor& x, const Tensor& w, Write write, Stream s) {
  const bool accumulate = write == Write::accumulate;
  int64_t M, I, O;
  need_float(out, "linear_forward", "out");
  check_linear("linear_forward", x, w, &M, &I, &O);
  gemm(true, false, O, M, I, w.data, w.dtype, I, 0, x.data, x.dtype, I, 0, out.data, out.dtype, O, 0, 1,
       accumulate ? 1.f : 0.f, s);
}

void linear_forward_residual(Tensor out, const Tensor& x, const Tensor& w, const Tensor& residual, Stream s) {
  int64_t M, I, O;
  need_float(out, "linear_forward_residual", "out");
  check_linear("linear_forward_residual", x, w, &M, &I, &O);
  MONTA_CHECK(residual.device == Device::cuda && residual.dtype == out.dtype,
              "linear_forward_residual: residual " + residual.str() + " must be a CUDA tensor of out's dtype " +
                  out.str());
  gemm(true, false, O, M, I, w.data, w.dtype, I, 0, x.data, x.dtype, I, 0, out.data, out.dtype, O, 0, 1, 1.f, s,
       residual.data);
}

void linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, Write dx_write,
                     Write dw_write, Stream s) {
  const bool accumulate_dx = dx_write == Write::accumulate, accumulate_dw = dw_write == Write::accumulate;
  int64_t M, I, O;
  need_float(dout, "linear_backward", "dout");
  check_linear("linear_backward", x, w, &M, &I, &O);
  MONTA_CHECK(dout.dtype == x.dtype, "linear_backward: dout and x must share a dtype");
  if (!dx.empty()) need_float(dx, "linear_backward", "dx");
  if (!dw.empty()) need_float(dw, "linear_backward", "dw");
  if (small_o_linear_backward(dx, dw, dout, x, w, M, I, O, accumulate_dx, accumulate_dw, s)) return;
  if (!dx.empty())
    gemm(false, false, I, M, O, w.data, w.dtype, I, 0, dout.data, dout.dtype, O, 0, dx.data, dx.dtype, I, 0, 1,
         accumulate_dx ? 1.f : 0.f, s);
  if (!dw.empty())
    gemm(false, true, I, O, M, x.data, x.dtype, I, 0, dout.data, dout.dtype, O, 0, dw.data, dw.dtype, I, 0, 1,
         accumulate_dw ? 1.f : 0.f, s);
}

void expert_linear_forward(Tensor out, const Tensor& x, const Tensor& w, Stream s) {
  const char* op = "expert_linear_forward";
  need_float(out, op, "out");
  need_float(x, op, "x");
  need_float(w, op, "w");
  int64_t E = x.dim(0), C = x.dim(1), I = x.dim(2), O = w.dim(1);
  gemm(true, false, O, C, I, w.data, w.dtype, I, O * I, x.data, x.dtype, I, C * I, out.data, out.dtype, O, C * O, E,
       0.f, s);
}

void expert_linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, Write dx_write,
                            Write dw_write, Stream s) {
  const bool accumulate_dx = dx_write == Write::accumulate, accumulate_dw = dw_write == Write::accumulate;
  const char* op = "expert_linear_backward";
  need_float(dout, op, "dout");
  need_float(x, op, "x");
  need_float(w, op, "w");
  int64_t E = x.dim(0), C = x.dim(1), I = x.dim(2), O = w.dim(1);
  if (!dx.empty()) {
    need_float(dx, op, "dx");
    gemm(false, false, I, C, O, w.data, w.dtype, I, O * I, dout.data, dout.dtype, O, C * O, dx.data, dx.dtype, I,
         C * I, E, accumulate_dx ? 1.f : 0.f, s);
  }
  if (!dw.empty()) {
    need_float(dw, op, "dw");
    gemm(false, true, I, O, C, x.data, x.dtype, I, C * I, dout.data, dout.dtype, O, C * O, dw.data, dw.dtype, I,
         O * I, E, accumulate_dw ? 1.f : 0.f, s);
  }
}

}  // namespace monta::engine::cuda
