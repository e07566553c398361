// Causal GQA attention through cuDNN's fused flash-attention ("composite SDPA") graphs, built with the
// backend (graph) C API: cudnn_frontend is not available here, so the graphs below are the ones its
// SDPA / SDPA-backward nodes lower to for a causal, no-dropout, no-bias bf16 case (cuDNN >= 9.0). The
// single-op CUDNN_BACKEND_OPERATION_SDPA_FWD/BWD descriptors are not used: causal masking on them needs a
// mask subgraph (cuDNN >= 9.21) and SDPA_BWD itself needs 9.17, while the GPU machines run 9.14.
//
// Layout: tensors are described in cuDNN's (B, heads, S, D) dim order with strides over our (B, S, heads, D)
// storage, e.g. q {S·A·D, D, A·D, 1}; K and V enter transposed ((B, G, D, S), strides swapped) where the
// graph multiplies by Kᵀ or Vᵀ; the stats tensor (B, A, S, 1) f32 is our lse (B, A, S): max + log Σ exp of
// the scaled scores, natural log, exactly what attention.h's lse is.
//
// Forward graph:  S = Q·Kᵀ; S *= scale; S = select(row >= col, S, lowest); M = max_row S; E = exp(S − M);
//                 Z = Σ_row E; Stats = M + log Z; O = bf16(E / Z)·V.
// Backward graph: Δ = Σ_d dO∘O (stored to workspace, "softmax_sum"); S = Q·Kᵀ·scale − Stats, masked;
//                 P = exp(S); dV = reduce_heads(Pᵀ·dO); dS = P∘(dO·Vᵀ − Δ)·scale; dK = reduce_heads(dSᵀ·Q);
//                 dQ = dS·K into an f32 workspace accumulator, then copied (IDENTITY) to bf16 dQ.
// GQA: the matmuls broadcast the G KV heads over the A query heads (query head a reads KV head a / (A/G)),
// and dK/dV are reduced over each group of A/G heads by a reduction node.
//
// Plans are cached per (device, B, S, A, G, D, direction); a failed build is cached too (one warning, then
// the hand-written kernels). Workspace: one buffer per (device, stream), grown on first use by a larger
// shape (growing frees the old one, which synchronizes the device; steady-state training never grows).
// The backward is not guaranteed bit-deterministic run to run (cuDNN accumulates dQ in f32 with atomics),
// although it was at every shape tested on the H200. MONTA_ATTENTION_VERBOSE=1 logs the plan chosen.
#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "engine/cuda/attention_cudnn.h"
#include "engine/cuda/common.cuh"
#include "engine/log.h"
#include "engine/settings.h"

namespace monta::engine::cuda {
namespace {

using Desc = cudnnBackendDescriptor_t;

struct BuildError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string status_text(cudnnStatus_t st) {
  char last[512] = {0};
  cudnnGetLastErrorString(last, sizeof(last));
  return std::string(cudnnGetErrorString(st)) + (last[0] ? std::string(" (") + last + ")" : std::string());
}

// Fixed uids of the tensors bound at execution.
enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kScale, kNegInf, kOne, kDO, kDQ, kDK, kDV, kSoftmaxSum, kDQAccum,
  kFirstVirtual = 100
};

// Owns every backend descriptor made while building one graph (and then its plan), so they outlive the plan.
class Graph {
 public:
  ~Graph() {
    for (auto it = descs_.rbegin(); it != descs_.rend(); ++it) cudnnBackendDestroyDescriptor(*it);
  }
  Desc make(cudnnBackendDescriptorType_t t) {
    Desc d = nullptr;
    check(cudnnBackendCreateDescriptor(t, &d), "create descriptor");
    descs_.push_back(d);
    return d;
  }
  void set(Desc d, cudnnBackendAttributeName_t a, cudnnBackendAttributeType_t t, int64_t n, const void* v) {
    check(cudnnBackendSetAttribute(d, a, t, n, v), "set attribute " + std::to_string(int(a)));
  }
  void fin(Desc d, const char* what) { check(cudnnBackendFinalize(d), std::string("finalize ") + what); }
  static void check(cudnnStatus_t st, const std::string& what) {
    if (st != CUDNN_STATUS_SUCCESS) throw BuildError(what + ": " + status_text(st));
  }

  Desc tensor(int64_t uid, cudnnDataType_t dt, std::vector<int64_t> dims, std::vector<int64_t> strides,
              bool is_virtual, bool by_value = false) {
    Desc t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    int64_t align = 16;
    set(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
    set(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, int64_t(dims.size()), dims.data());
    set(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, int64_t(strides.size()), strides.data());
    set(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    set(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    set(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    if (by_value) set(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
    fin(t, "tensor");
    return t;
  }
  Desc virt(cudnnDataType_t dt, std::vector<int64_t> dims, std::vector<int64_t> strides) {
    return tensor(next_uid_++, dt, std::move(dims), std::move(strides), true);
  }
  Desc scalar(int64_t uid) { return tensor(uid, CUDNN_DATA_FLOAT, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true); }

  void matmul(Desc a, Desc b, Desc c) {
    Desc m = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    cudnnDataType_t ct = CUDNN_DATA_FLOAT;
    set(m, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &ct);
    fin(m, "matmul descriptor");
    Desc op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c);
    set(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &m);
    fin(op, "matmul");
    ops_.push_back(op);
  }
  void pointwise(cudnnPointwiseMode_t mode, Desc x, Desc b, Desc y, Desc t = nullptr,
                 cudnnDataType_t prec = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    Desc p = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    set(p, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    set(p, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
    if (axis >= 0) set(p, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    fin(p, "pointwise descriptor");
    Desc op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &p);
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    if (b) set(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    if (t) set(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t);
    set(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    fin(op, "pointwise");
    ops_.push_back(op);
  }
  void reduction(cudnnReduceTensorOp_t mode, Desc x, Desc y) {
    Desc r = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    cudnnDataType_t ct = CUDNN_DATA_FLOAT;
    set(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
    set(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &ct);
    fin(r, "reduction descriptor");
    Desc op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    set(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &r);
    fin(op, "reduction");
    ops_.push_back(op);
  }
  void reshape(Desc x, Desc y) {
    Desc op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    set(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    set(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    fin(op, "reshape");
    ops_.push_back(op);
  }

  // Operation graph; engine configs from heuristics (mode A, then fallback), then, if none finalizes, every
  // engine of the graph in turn; the first execution plan that finalizes wins. Timing every plan instead was
  // tried on the H200 (cuDNN 9.14, 2026-11-29): at S 8192, 64/8 heads the first is the fastest of the 4 offered
  // each way (forward 1.69 ms against 1.70 and 3.34; backward 5.10 against 5.13 and 12.3), and at S 77 a faster
  // one failed the comparison with the CPU. So no tuning.
  void build_plan(cudnnHandle_t h) {
    Desc g = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    set(g, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h);
    set(g, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(ops_.size()), ops_.data());
    fin(g, "operation graph");
    std::string tried;
    auto try_cfg = [&](Desc cfg, const std::string& name) {
      Desc p = make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
      set(p, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &h);
      set(p, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg);
      cudnnStatus_t st = cudnnBackendFinalize(p);
      if (st != CUDNN_STATUS_SUCCESS) {
        tried += " [" + name + ": " + status_text(st) + "]";
        return false;
      }
      int64_t ws = 0, cnt = 0;
      check(cudnnBackendGetAttribute(p, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &cnt, &ws),
            "workspace size");
      plan = p;
      plan_workspace = size_t(ws);
      plan_name = name;
      return true;
    };
    for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
      const std::string mname = mode == CUDNN_HEUR_MODE_A ? "heurA" : "heurFallback";
      Desc heur = make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
      set(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g);
      set(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
      cudnnStatus_t st = cudnnBackendFinalize(heur);
      if (st != CUDNN_STATUS_SUCCESS) {
        tried += " [" + mname + " finalize: " + status_text(st) + "]";
        continue;
      }
      int64_t n = 0;
      st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n, nullptr);
      if (st != CUDNN_STATUS_SUCCESS || n <= 0) {
        tried += " [" + mname + ": " + std::to_string(n) + " configs, " + status_text(st) + "]";
        continue;
      }
      std::vector<Desc> cfgs;
      for (int64_t i = 0; i < n; ++i) cfgs.push_back(make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
      int64_t got = 0;
      st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n, &got,
                                    cfgs.data());
      if (st != CUDNN_STATUS_SUCCESS) {
        tried += " [" + mname + " results: " + status_text(st) + "]";
        continue;
      }
      for (int64_t i = 0; i < got; ++i)
        if (try_cfg(cfgs[i], mname + " cfg " + std::to_string(i))) return;
    }
    int64_t engines = 0, cnt = 0;
    cudnnStatus_t st = cudnnBackendGetAttribute(g, CUDNN_ATTR_OPERATIONGRAPH_ENGINE_GLOBAL_COUNT, CUDNN_TYPE_INT64, 1,
                                                &cnt, &engines);
    tried += " [engines: " + std::to_string(engines) + " " + status_text(st) + "]";
    for (int64_t e = 0; e < engines; ++e) {
      Desc eng = make(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
      set(eng, CUDNN_ATTR_ENGINE_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g);
      set(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &e);
      if (cudnnBackendFinalize(eng) != CUDNN_STATUS_SUCCESS) continue;
      Desc cfg = make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
      set(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &eng);
      if (cudnnBackendFinalize(cfg) != CUDNN_STATUS_SUCCESS) continue;
      if (try_cfg(cfg, "engine " + std::to_string(e))) return;
    }
    throw BuildError("no execution plan finalized:" + tried);
  }

  Desc plan = nullptr;
  std::string plan_name;
  size_t plan_workspace = 0;
  size_t extra_workspace = 0;     // backward: softmax_sum + dQ accumulator, after the plan's workspace
  size_t softmax_sum_offset = 0;  // byte offsets into the workspace
  size_t dq_accum_offset = 0, dq_accum_bytes = 0;
  float scale = 1.f, neg_inf = -3.402823466e38f, one = 1.f;  // by-value scalars (host memory)

 private:
  std::vector<Desc> descs_;
  std::vector<Desc> ops_;
  int64_t next_uid_ = kFirstVirtual;
};

struct Shape {
  int64_t B, S, A, G, D;
};

constexpr cudnnDataType_t kF32 = CUDNN_DATA_FLOAT, kBF16 = CUDNN_DATA_BFLOAT16, kI32 = CUDNN_DATA_INT32,
                          kBool = CUDNN_DATA_BOOLEAN;

size_t align_up(size_t x) { return (x + 255) & ~size_t(255); }

// The causal mask of the flash graphs: select(row >= col, s, lowest).
Desc causal_mask(Graph& g, Desc s, const Shape& d) {
  const std::vector<int64_t> sd{d.B, d.A, d.S, d.S}, ss{d.A * d.S * d.S, d.S * d.S, d.S, 1};
  Desc row = g.virt(kI32, sd, ss), col = g.virt(kI32, sd, ss), mask = g.virt(kBool, sd, ss);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, row, nullptr, kI32, 2);
  g.pointwise(CUDNN_POINTWISE_GEN_INDEX, s, nullptr, col, nullptr, kI32, 3);
  g.pointwise(CUDNN_POINTWISE_CMP_GE, row, col, mask, nullptr, kBool);
  Desc out = g.virt(kF32, sd, ss);
  g.pointwise(CUDNN_POINTWISE_BINARY_SELECT, s, g.scalar(kNegInf), out, mask);
  return out;
}

std::unique_ptr<Graph> build_forward(cudnnHandle_t h, const Shape& d, int variant) {
  auto g = std::make_unique<Graph>();
  const int64_t B = d.B, S = d.S, A = d.A, G = d.G, D = d.D;
  g->scale = 1.f / std::sqrt(float(D));
  const std::vector<int64_t> qd{B, A, S, D}, qs{S * A * D, D, A * D, 1};
  const std::vector<int64_t> sd{B, A, S, S}, ss{A * S * S, S * S, S, 1};
  const std::vector<int64_t> rd{B, A, S, 1}, rs{A * S, S, 1, 1};
  Desc q = g->tensor(kQ, kBF16, qd, qs, false);
  Desc kt = g->tensor(kK, kBF16, {B, G, D, S}, {S * G * D, D, 1, G * D}, false);
  Desc v = g->tensor(kV, kBF16, {B, G, S, D}, {S * G * D, D, G * D, 1}, false);
  Desc o = g->tensor(kO, kBF16, qd, qs, false);
  Desc stats = g->tensor(kStats, kF32, rd, rs, false);

  Desc s0 = g->virt(kF32, sd, ss);
  g->matmul(q, kt, s0);
  Desc s1 = g->virt(kF32, sd, ss);
  g->pointwise(CUDNN_POINTWISE_MUL, s0, g->scalar(kScale), s1);
  Desc s2 = causal_mask(*g, s1, d);
  Desc mx = g->virt(kF32, rd, rs);
  g->reduction(CUDNN_REDUCE_TENSOR_MAX, s2, mx);
  Desc sub = g->virt(kF32, sd, ss);
  g->pointwise(CUDNN_POINTWISE_SUB, s2, mx, sub);
  Desc e = g->virt(kF32, sd, ss);
  g->pointwise(CUDNN_POINTWISE_EXP, sub, nullptr, e);
  Desc z = g->virt(kF32, rd, rs);
  g->reduction(CUDNN_REDUCE_TENSOR_ADD, e, z);
  Desc lz = g->virt(kF32, rd, rs);
  g->pointwise(CUDNN_POINTWISE_LOG, z, nullptr, lz);
  g->pointwise(CUDNN_POINTWISE_ADD, mx, lz, stats);
  // P enters the second matmul as bf16: cuDNN 9.14 on sm_90 rejects f32 there ("MHA only supports FP32 I/O
  // for ... ARCH_8X"); variant 1 (f32 P, what cudnn_frontend's default intermediate type gives) is kept as a
  // second try for other architectures.
  Desc p = g->virt(variant == 0 ? kBF16 : kF32, sd, ss);
  g->pointwise(CUDNN_POINTWISE_DIV, e, z, p);
  g->matmul(p, v, o);
  g->build_plan(h);
  return g;
}

std::unique_ptr<Graph> build_backward(cudnnHandle_t h, const Shape& d) {
  auto g = std::make_unique<Graph>();
  const int64_t B = d.B, S = d.S, A = d.A, G = d.G, D = d.D;
  g->scale = 1.f / std::sqrt(float(D));
  const std::vector<int64_t> qd{B, A, S, D}, qs{S * A * D, D, A * D, 1};
  const std::vector<int64_t> kd{B, G, S, D}, ks{S * G * D, D, G * D, 1};
  const std::vector<int64_t> ktd{B, G, D, S}, kts{S * G * D, D, 1, G * D};
  const std::vector<int64_t> sd{B, A, S, S}, ss{A * S * S, S * S, S, 1}, sts{A * S * S, S * S, 1, S};
  const std::vector<int64_t> rd{B, A, S, 1}, rs{A * S, S, 1, 1};
  const std::vector<int64_t> packed{A * S * D, S * D, D, 1};  // (B, A, S, D) packed: full-head grads, dQ accum
  Desc q = g->tensor(kQ, kBF16, qd, qs, false);
  Desc kt = g->tensor(kK, kBF16, ktd, kts, false);
  Desc vt = g->tensor(kV, kBF16, ktd, kts, false);
  Desc o = g->tensor(kO, kBF16, qd, qs, false);
  Desc dO = g->tensor(kDO, kBF16, qd, qs, false);
  Desc stats = g->tensor(kStats, kF32, rd, rs, false);
  Desc dq = g->tensor(kDQ, kBF16, qd, qs, false);
  Desc dk = g->tensor(kDK, kBF16, kd, ks, false);
  Desc dv = g->tensor(kDV, kBF16, kd, ks, false);
  Desc scale = g->scalar(kScale);

  // Δ = Σ_d dO∘O, written to the workspace.
  Desc t0 = g->virt(kF32, qd, qs);
  g->pointwise(CUDNN_POINTWISE_MUL, dO, o, t0);
  Desc t1 = g->virt(kF32, rd, rs);
  g->reduction(CUDNN_REDUCE_TENSOR_ADD, t0, t1);
  Desc delta = g->tensor(kSoftmaxSum, kF32, rd, rs, false);
  g->pointwise(CUDNN_POINTWISE_MUL, t1, g->scalar(kOne), delta);

  // P = exp(Q·Kᵀ·scale − Stats), causal.
  Desc s0 = g->virt(kF32, sd, ss);
  g->matmul(q, kt, s0);
  Desc s1 = g->virt(kF32, sd, ss);
  g->pointwise(CUDNN_POINTWISE_MUL, s0, scale, s1);
  Desc s2 = g->virt(kF32, sd, ss);
  g->pointwise(CUDNN_POINTWISE_SUB, s1, stats, s2);
  Desc s3 = causal_mask(*g, s2, d);
  Desc p = g->virt(kF32, sd, ss);
  g->pointwise(CUDNN_POINTWISE_EXP, s3, nullptr, p);

  // out = reduce_heads(scoresᵀ·rhs): dV from P and dO, dK from dS and Q (the A/G query heads of a KV head summed).
  auto kv_grad = [&](Desc scores, Desc rhs, Desc out) {
    Desc t = g->virt(kBF16, sd, sts);
    g->reshape(scores, t);
    if (A == G) {
      g->matmul(t, rhs, out);
    } else {
      Desc per_head = g->virt(kBF16, qd, packed);
      g->matmul(t, rhs, per_head);
      g->reduction(CUDNN_REDUCE_TENSOR_ADD, per_head, out);
    }
  };

  // dV = reduce_heads(Pᵀ·dO).
  kv_grad(p, dO, dv);

  // dS = P∘(dO·Vᵀ − Δ)·scale.
  Desc dp = g->virt(kF32, sd, ss);
  g->matmul(dO, vt, dp);
  Desc u0 = g->virt(kF32, sd, ss);
  g->pointwise(CUDNN_POINTWISE_SUB, dp, delta, u0);
  Desc u1 = g->virt(kF32, sd, ss);
  g->pointwise(CUDNN_POINTWISE_MUL, u0, p, u1);
  Desc ds = g->virt(kF32, sd, ss);
  g->pointwise(CUDNN_POINTWISE_MUL, u1, scale, ds);

  // dK = reduce_heads(dSᵀ·Q).
  kv_grad(ds, q, dk);

  // dQ = dS·K through an f32 accumulator in the workspace.
  Desc kr = g->virt(kBF16, kd, ks);
  g->reshape(kt, kr);
  Desc acc = g->tensor(kDQAccum, kF32, qd, packed, false);
  g->matmul(ds, kr, acc);
  g->pointwise(CUDNN_POINTWISE_IDENTITY, acc, nullptr, dq);

  g->build_plan(h);
  g->softmax_sum_offset = align_up(g->plan_workspace);
  g->dq_accum_offset = g->softmax_sum_offset + align_up(size_t(B * A * S) * sizeof(float));
  g->dq_accum_bytes = size_t(B * A * S * D) * sizeof(float);
  g->extra_workspace = g->dq_accum_offset + align_up(g->dq_accum_bytes) - g->plan_workspace;
  return g;
}

// ---- caches ----
std::mutex g_mu;
std::map<int, cudnnHandle_t> g_handles;
using PlanKey = std::tuple<int, bool, int64_t, int64_t, int64_t, int64_t, int64_t>;
std::map<PlanKey, std::unique_ptr<Graph>> g_plans;  // null: build failed, use the fallback
struct Workspace {
  void* p = nullptr;
  size_t bytes = 0;
};
std::map<std::pair<int, Stream>, Workspace> g_ws;
bool g_warned_build[2] = {false, false};
bool g_warned_exec[2] = {false, false};

int current_device() {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

cudnnHandle_t handle_locked(int dev) {
  auto it = g_handles.find(dev);
  if (it != g_handles.end()) return it->second;
  cudnnHandle_t h = nullptr;
  CUDNN_CHECK(cudnnCreate(&h));
  g_handles[dev] = h;
  return h;
}

void* workspace_locked(int dev, Stream s, size_t bytes) {
  Workspace& w = g_ws[{dev, s}];
  if (w.bytes < bytes) {
    if (w.p) CUDA_CHECK(cudaFree(w.p));  // synchronizes: only when a larger shape first appears
    w.p = nullptr;
    CUDA_CHECK(cudaMalloc(&w.p, bytes));
    w.bytes = bytes;
  }
  return w.p;
}

Shape shape_of(const Tensor& q, const Tensor& k) {
  return Shape{q.dim(0), q.dim(1), q.dim(2), k.dim(2), q.dim(3)};
}

// Graph for (device, direction, shape), building it on first use; null when cuDNN cannot run it.
Graph* plan_locked(int dev, bool backward, const Shape& d) {
  PlanKey key{dev, backward, d.B, d.S, d.A, d.G, d.D};
  auto it = g_plans.find(key);
  if (it != g_plans.end()) return it->second.get();
  std::unique_ptr<Graph> g;
  std::string errors;
  for (int variant = 0; variant < (backward ? 1 : 2) && !g; ++variant) {
    try {
      cudnnHandle_t h = handle_locked(dev);
      g = backward ? build_backward(h, d) : build_forward(h, d, variant);
      if (std::getenv("MONTA_ATTENTION_VERBOSE"))
        log_info(strf("attention: cuDNN %s plan: graph variant %d, %s, workspace %zu bytes",
                      backward ? "backward" : "forward", variant, g->plan_name.c_str(), g->plan_workspace));
    } catch (const BuildError& e) {
      errors += std::string(errors.empty() ? "" : " | ") + "variant " + std::to_string(variant) + ": " + e.what();
    }
  }
  if (!g) {
    if (!g_warned_build[backward]) {
      g_warned_build[backward] = true;
      log_warn(strf("attention: cuDNN %s plan for B=%lld S=%lld A=%lld G=%lld D=%lld could not be built (%s); "
                    "using the hand-written kernels for such shapes",
                    backward ? "backward" : "forward", (long long)d.B, (long long)d.S, (long long)d.A,
                    (long long)d.G, (long long)d.D, errors.c_str()));
    }
  }
  Graph* raw = g.get();
  g_plans[key] = std::move(g);
  return raw;
}

bool execute_locked(int dev, Graph& g, std::vector<int64_t> uids, std::vector<void*> ptrs, void* ws, Stream s,
                    bool backward) {
  cudnnHandle_t h = handle_locked(dev);
  CUDNN_CHECK(cudnnSetStream(h, stream_of(s)));
  Desc vp = nullptr;
  cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &vp);
  if (st == CUDNN_STATUS_SUCCESS)
    st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, int64_t(uids.size()),
                                  uids.data());
  if (st == CUDNN_STATUS_SUCCESS)
    st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR,
                                  int64_t(ptrs.size()), ptrs.data());
  if (st == CUDNN_STATUS_SUCCESS)
    st = cudnnBackendSetAttribute(vp, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
  if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(vp);
  if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendExecute(h, g.plan, vp);
  if (vp) cudnnBackendDestroyDescriptor(vp);
  if (st != CUDNN_STATUS_SUCCESS) {
    if (!g_warned_exec[backward]) {
      g_warned_exec[backward] = true;
      log_warn(std::string("attention: cuDNN ") + (backward ? "backward" : "forward") +
               " execution failed (" + status_text(st) + "); using the hand-written kernels");
    }
    return false;
  }
  return true;
}

}  // namespace

bool cudnn_attention_supported(const Tensor& q, const Tensor& k) {
  if (q.dtype != DType::bf16 || k.dtype != DType::bf16 || q.ndim != 4 || k.ndim != 4) return false;
  const int64_t D = q.dim(3), A = q.dim(2), G = k.dim(2);
  return (D == 64 || D == 128) && G > 0 && A % G == 0 && q.dim(1) > 0 && q.dim(0) > 0;
}

bool cudnn_attention_wanted(const Tensor& q, const Tensor& k) {
  return settings().attention == AttentionPath::automatic && cudnn_attention_supported(q, k);
}

bool cudnn_attention_forward(Tensor out, Tensor lse, const Tensor& q, const Tensor& k, const Tensor& v, Stream s) {
  if (!cudnn_attention_supported(q, k) || out.dtype != DType::bf16 || v.dtype != DType::bf16) return false;
  const Shape d = shape_of(q, k);
  std::lock_guard<std::mutex> lock(g_mu);
  const int dev = current_device();
  Graph* g = plan_locked(dev, false, d);
  if (!g) return false;
  void* ws = workspace_locked(dev, s, std::max<size_t>(g->plan_workspace, 256));
  return execute_locked(dev, *g, {kQ, kK, kV, kO, kStats, kScale, kNegInf},
                        {q.data, k.data, v.data, out.data, lse.data, &g->scale, &g->neg_inf}, ws, s, false);
}

bool cudnn_attention_backward(Tensor dq, Tensor dk, Tensor dv, const Tensor& dout, const Tensor& q, const Tensor& k,
                              const Tensor& v, const Tensor& out, const Tensor& lse, Stream s) {
  if (!cudnn_attention_supported(q, k) || v.dtype != DType::bf16 || dq.dtype != DType::bf16 ||
      dk.dtype != DType::bf16 || dv.dtype != DType::bf16 || dout.dtype != DType::bf16 || out.dtype != DType::bf16)
    return false;
  const Shape d = shape_of(q, k);
  std::lock_guard<std::mutex> lock(g_mu);
  const int dev = current_device();
  Graph* g = plan_locked(dev, true, d);
  if (!g) return false;
  char* ws = static_cast<char*>(workspace_locked(dev, s, g->plan_workspace + g->extra_workspace));
  // Before cuDNN 9.6 the dQ accumulator had to be zeroed by the caller; later versions zero it themselves.
  if (cudnnGetVersion() < 90600)
    CUDA_CHECK(cudaMemsetAsync(ws + g->dq_accum_offset, 0, g->dq_accum_bytes, stream_of(s)));
  return execute_locked(
      dev, *g, {kQ, kK, kV, kO, kDO, kStats, kDQ, kDK, kDV, kScale, kNegInf, kOne, kSoftmaxSum, kDQAccum},
      {q.data, k.data, v.data, out.data, dout.data, lse.data, dq.data, dk.data, dv.data, &g->scale, &g->neg_inf,
       &g->one, ws + g->softmax_sum_offset, ws + g->dq_accum_offset},
      ws, s, true);
}

}  // namespace monta::engine::cuda
