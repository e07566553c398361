// CPU linear layers: out = x · wᵀ and the per-expert batched form, forward and backward, on one
// cache-blocked GEMM (packed panels, register-tiled micro-kernel the compiler vectorizes).
// Single-threaded by design: the CPU backend runs one rank per core under MPI.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "engine/check.h"
#include "engine/ops/linear.h"

namespace monta::engine::cpu {
namespace {

// Register tile: MR rows x NR columns of C live in registers (NR = two AVX2 vectors of T).
template <class T> struct Tile {
  static constexpr int64_t MR = 6;
  static constexpr int64_t NR = 64 / int64_t(sizeof(T));
};
constexpr int64_t kKC = 256;  // k-depth of a packed panel (B panel ~ kKC·NC stays in L2)
constexpr int64_t kMC = 96;   // rows of A packed at once (multiple of MR)
constexpr int64_t kNC = 2048;

// A strided matrix operand: element (r, c) at p[r·rs + c·cs].
template <class T> struct Mat {
  const T* p;
  int64_t rs, cs;
  T at(int64_t r, int64_t c) const { return p[r * rs + c * cs]; }
};

// Pack A rows [m0, m0+mc) x k [k0, k0+kc) into MR-row slivers, k-major inside a sliver, zero-padded.
template <class T> void pack_a(T* dst, Mat<T> a, int64_t m0, int64_t mc, int64_t k0, int64_t kc) {
  constexpr int64_t MR = Tile<T>::MR;
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    int64_t mr = std::min(MR, mc - i0);
    for (int64_t k = 0; k < kc; ++k) {
      for (int64_t i = 0; i < mr; ++i) dst[k * MR + i] = a.at(m0 + i0 + i, k0 + k);
      for (int64_t i = mr; i < MR; ++i) dst[k * MR + i] = T(0);
    }
    dst += kc * MR;
  }
}

// Pack B k [k0, k0+kc) x columns [n0, n0+nc) into NR-column slivers, k-major inside, zero-padded.
template <class T> void pack_b(T* dst, Mat<T> b, int64_t k0, int64_t kc, int64_t n0, int64_t nc) {
  constexpr int64_t NR = Tile<T>::NR;
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    int64_t nr = std::min(NR, nc - j0);
    if (b.cs == 1 && nr == NR) {
      for (int64_t k = 0; k < kc; ++k) std::memcpy(dst + k * NR, b.p + (k0 + k) * b.rs + n0 + j0, sizeof(T) * NR);
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        for (int64_t j = 0; j < nr; ++j) dst[k * NR + j] = b.at(k0 + k, n0 + j0 + j);
        for (int64_t j = nr; j < NR; ++j) dst[k * NR + j] = T(0);
      }
    }
    dst += kc * NR;
  }
}

// C tile (mr x nr valid of MR x NR) += packed A sliver · packed B sliver.
template <class T>
void micro_kernel(int64_t kc, const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ c, int64_t ldc,
                  int64_t mr, int64_t nr) {
  constexpr int64_t MR = Tile<T>::MR, NR = Tile<T>::NR;
  T acc[MR][NR] = {};
  for (int64_t k = 0; k < kc; ++k) {
    const T* bk = b + k * NR;
    const T* ak = a + k * MR;
#pragma GCC unroll 8
    for (int64_t i = 0; i < MR; ++i) {
      const T ai = ak[i];
#pragma GCC unroll 16
      for (int64_t j = 0; j < NR; ++j) acc[i][j] += ai * bk[j];
    }
  }
  if (mr == MR && nr == NR) {
    for (int64_t i = 0; i < MR; ++i)
      for (int64_t j = 0; j < NR; ++j) c[i * ldc + j] += acc[i][j];
  } else {
    for (int64_t i = 0; i < mr; ++i)
      for (int64_t j = 0; j < nr; ++j) c[i * ldc + j] += acc[i][j];
  }
}

// C (M, N) row-major with leading dimension ldc: C = A·B, or C += A·B when accumulate.
template <class T>
void gemm(T* c, int64_t ldc, Mat<T> a, Mat<T> b, int64_t M, int64_t N, int64_t K, bool accumulate) {
  constexpr int64_t MR = Tile<T>::MR, NR = Tile<T>::NR;
  if (!accumulate)
    for (int64_t m = 0; m < M; ++m) std::fill(c + m * ldc, c + m * ldc + N, T(0));
  if (M == 0 || N == 0 || K == 0) return;
  const int64_t nc_max = std::min(kNC, (N + NR - 1) / NR * NR);
  const int64_t kc_max = std::min(kKC, K);
  thread_local std::vector<T> apack, bpack;
  apack.resize(size_t(kMC * kc_max));
  bpack.resize(size_t(nc_max * kc_max));
  for (int64_t n0 = 0; n0 < N; n0 += kNC) {
    const int64_t nc = std::min(kNC, N - n0);
    for (int64_t k0 = 0; k0 < K; k0 += kKC) {
      const int64_t kc = std::min(kKC, K - k0);
      pack_b(bpack.data(), b, k0, kc, n0, nc);
      for (int64_t m0 = 0; m0 < M; m0 += kMC) {
        const int64_t mc = std::min(kMC, M - m0);
        pack_a(apack.data(), a, m0, mc, k0, kc);
        for (int64_t j0 = 0; j0 < nc; j0 += NR) {
          const T* bs = bpack.data() + (j0 / NR) * kc * NR;
          for (int64_t i0 = 0; i0 < mc; i0 += MR) {
            micro_kernel<T>(kc, apack.data() + (i0 / MR) * kc * MR, bs, c + (m0 + i0) * ldc + n0 + j0, ldc,
                            std::min(MR, mc - i0), std::min(NR, nc - j0));
          }
        }
      }
    }
  }
}

void need_float(const char* op, const char* name, const Tensor& t, DType dt) {
  MONTA_CHECK(t.device == Device::cpu && t.data != nullptr,
              std::string(op) + ": " + name + " must be a non-empty CPU tensor, got " + t.str());
  MONTA_CHECK(t.dtype == dt && (dt == DType::f32 || dt == DType::f64),
              std::string(op) + ": " + name + " must be f32 or f64 and match the others, got " + t.str());
}

template <class T> void linear_fwd(Tensor out, const Tensor& x, const Tensor& w, bool accumulate) {
  const int64_t M = x.dim(0), I = x.dim(1), O = w.dim(0);
  gemm<T>(out.as<T>(), O, Mat<T>{x.as<T>(), I, 1}, Mat<T>{w.as<T>(), 1, I}, M, O, I, accumulate);
}

template <class T> void linear_bwd(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w,
                                   bool accumulate_dx, bool accumulate_dw) {
  const int64_t M = dout.dim(0), O = dout.dim(1), I = w.dim(1);
  if (!dx.empty())  // dx (M, I) = dout (M, O) · w (O, I)
    gemm<T>(dx.as<T>(), I, Mat<T>{dout.as<T>(), O, 1}, Mat<T>{w.as<T>(), I, 1}, M, I, O, accumulate_dx);
  if (!dw.empty())  // dw (O, I) += doutᵀ (O, M) · x (M, I)
    gemm<T>(dw.as<T>(), I, Mat<T>{dout.as<T>(), 1, O}, Mat<T>{x.as<T>(), I, 1}, O, I, M, accumulate_dw);
}

}  // namespace

void linear_forward(Tensor out, const Tensor& x, const Tensor& w, Write write, Stream) {
  const char* op = "linear_forward";
  need_float(op, "x", x, x.dtype);
  need_float(op, "w", w, x.dtype);
  need_float(op, "out", out, x.dtype);
  if (x.dtype == DType::f32)
    linear_fwd<float>(out, x, w, write == Write::accumulate);
  else
    linear_fwd<double>(out, x, w, write == Write::accumulate);
}

void linear_forward_residual(Tensor out, const Tensor& x, const Tensor& w, const Tensor& residual, Stream s) {
  need_float("linear_forward_residual", "residual", residual, out.dtype);
  if (residual.data != out.data) std::memcpy(out.data, residual.data, out.bytes());
  cpu::linear_forward(out, x, w, Write::accumulate, s);
}

void linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, Write dx_write,
                     Write dw_write, Stream) {
  const bool accumulate_dx = dx_write == Write::accumulate, accumulate_dw = dw_write == Write::accumulate;
  const char* op = "linear_backward";
  need_float(op, "dout", dout, dout.dtype);
  need_float(op, "w", w, dout.dtype);
  if (!dx.empty()) need_float(op, "dx", dx, dout.dtype);
  if (!dw.empty()) {
    need_float(op, "dw", dw, dout.dtype);
    need_float(op, "x", x, dout.dtype);
  }
  if (dout.dtype == DType::f32)
    linear_bwd<float>(dx, dw, dout, x, w, accumulate_dx, accumulate_dw);
  else
    linear_bwd<double>(dx, dw, dout, x, w, accumulate_dx, accumulate_dw);
}

void expert_linear_forward(Tensor out, const Tensor& x, const Tensor& w, Stream s) {
  const char* op = "expert_linear_forward";
  need_float(op, "x", x, x.dtype);
  const int64_t E = x.dim(0), C = x.dim(1), I = x.dim(2), O = w.dim(1);
  for (int64_t e = 0; e < E; ++e)
    cpu::linear_forward(out.rows(e, 1).view({C, O}), x.rows(e, 1).view({C, I}), w.rows(e, 1).view({O, I}),
                        Write::overwrite, s);
}

void expert_linear_backward(Tensor dx, Tensor dw, const Tensor& dout, const Tensor& x, const Tensor& w, Write dx_write,
                            Write dw_write, Stream s) {
  const char* op = "expert_linear_backward";
  need_float(op, "dout", dout, dout.dtype);
  const int64_t E = x.dim(0), C = x.dim(1), I = x.dim(2), O = w.dim(1);
  for (int64_t e = 0; e < E; ++e) {
    Tensor dxe = dx.empty() ? Tensor() : dx.rows(e, 1).view({C, I});
    Tensor dwe = dw.empty() ? Tensor() : dw.rows(e, 1).view({O, I});
    cpu::linear_backward(dxe, dwe, dout.rows(e, 1).view({C, O}), x.rows(e, 1).view({C, I}), w.rows(e, 1).view({O, I}),
                         dx_write, dw_write, s);
  }
}

}  // namespace monta::engine::cpu
