// Shared pieces of the multi-rank model tests (tests/model_mpi): the small config every layout divides, the global
// batch every rank draws alike, and the process groups, parallel context and exchange of one layout.
#pragma once
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "comm/exchange.h"
#include "comm/groups.h"
#include "comm/topology.h"
#include "engine/rng.h"
#include "model/parallel_setup.h"
#include "model/trainer.h"

namespace monta::testing_mpi {

inline model::Config small_config() {
  model::Config c;
  c.model.vocab = 32;
  c.model.hidden = 32;
  c.model.layers = 2;
  c.model.heads = 8;
  c.model.kv_heads = 4;
  c.model.ffn = 32;
  c.model.experts = 4;
  c.model.top_k = 2;
  c.model.seq_len = 8;
  c.model.capacity_factor = 1.0;  // some tokens are dropped
  c.model.min_capacity = 1;
  c.model.init_std = 0.2;
  c.train.micro_batch = 1;
  c.train.global_batch = 8;
  c.train.warmup_steps = 0;
  c.train.lr = 1e-2;
  return c;
}

// Global batch of tokens and targets, the same on every rank.
inline void make_batch(const model::Config& c, uint64_t seed, std::vector<int32_t>& in, std::vector<int32_t>& tg) {
  engine::Philox rng{seed, 7, 0};
  const size_t n = size_t(c.train.global_batch * c.model.seq_len);
  in.resize(n);
  tg.resize(n);
  for (size_t i = 0; i < n; ++i) {
    in[i] = int32_t(rng.below(uint64_t(c.model.vocab)));
    tg[i] = int32_t(rng.below(uint64_t(c.model.vocab)));
  }
}

// The process groups, parallel context and exchange (kind, in `chunks` expert chunks) of one layout; sets the layout
// into c and validates it. emulate_nodes as comm::discover_topology takes it.
struct Rig {
  std::unique_ptr<comm::ProcessGroups> groups;
  model::ParallelContext par;
  std::unique_ptr<comm::Exchange> exchange;
  Rig(model::Config& c, int world, int tp, int ep, bool expert_tp, const std::string& kind, int chunks,
      int emulate_nodes) {
    c.parallel.tp = tp;
    c.parallel.ep = ep;
    c.parallel.expert_tp = expert_tp;
    model::validate(c, world);
    comm::Layout layout = comm::make_layout(world, tp, ep, expert_tp, int(c.model.experts), int(c.model.heads),
                                            int(c.model.kv_heads), c.model.vocab, c.model.ffn);
    groups = std::make_unique<comm::ProcessGroups>(layout, comm::discover_topology(emulate_nodes));
    par = model::context_from_groups(*groups, expert_tp);
    if (ep > 1) {
      c.comm.exchange = kind;  // as a run would configure it: rank_footprint sizes the staging from these
      c.comm.chunks = chunks;
      model::Shapes s = model::Shapes::make(c.model, c.train.micro_batch, tp, ep, par.dp, expert_tp,
                                            c.parallel.sequence_parallel);
      exchange = comm::make_exchange(comm::parse_exchange_kind(kind), *par.tp_comm, *par.ep_comm,
                                     model::exchange_shape(s, chunks), engine::DType::f32, engine::Device::cpu);
      par.exchange = exchange.get();
    }
  }
};

// The layouts the suites run on `world` ranks: tp and ep in {1, 2, 4} that divide it (ep within the DP ranks), the
// experts split over TP or whole (whole only where tp > 1), in this order.
inline void for_each_layout(int world, const std::function<void(int tp, int ep, bool expert_tp)>& fn) {
  for (int tp : {1, 2, 4})
    for (int ep : {1, 2, 4}) {
      if (world % tp || (world / tp) % ep) continue;
      for (bool etp : {true, false})
        if (etp || tp > 1) fn(tp, ep, etp);
    }
}

// A suite's largest deviations over its cases, reduced (max) over every rank; rank 0 prints them with `print` after
// the suite's last case (its TearDownTestSuite).
inline void print_largest(std::vector<double> v, const std::function<void(const std::vector<double>&)>& print) {
  std::vector<double> red(v.size());
  MPI_Allreduce(v.data(), red.data(), int(v.size()), MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (comm::runtime_world_rank() == 0) print(red);
}

// Largest |a - b| / max|b| of two f32 tensors of n elements (b the reference).
inline double rel_dev(const float* a, const float* b, int64_t n) {
  double scale = 1e-30, dev = 0;
  for (int64_t i = 0; i < n; ++i) scale = std::max(scale, double(std::abs(b[i])));
  for (int64_t i = 0; i < n; ++i) dev = std::max(dev, std::abs(double(a[i]) - double(b[i])));
  return dev / scale;
}

// Max |a - b| / (1e-3·max|b| + 1e-6) of this rank's slice of every parameter's gradient against the one-process run's
// full tensor b, in units of 1e-3 of each tensor's largest gradient; worst, when given, names the element.
inline double compare_grads(model::ParamStore& local, model::ParamStore& ref, std::string* worst = nullptr) {
  double dev = 0;
  for (auto& p : local.all()) {
    const auto& r = ref.get(p.name);
    double scale = 0;
    const int64_t nr = r.grad.numel();
    for (int64_t i = 0; i < nr; ++i) scale = std::max(scale, double(std::abs(r.grad.as<float>()[i])));
    const size_t nd = p.full.size();
    std::vector<int64_t> idx(nd, 0);
    for (int64_t i = 0; i < p.grad.numel(); ++i) {
      int64_t flat = 0;
      for (size_t d = 0; d < nd; ++d) flat = flat * p.full[d] + idx[d] + p.offset[d];
      double a = p.grad.as<float>()[i], b = r.grad.as<float>()[flat];
      double e = std::abs(a - b) / (1e-3 * scale + 1e-6);
      if (e > dev) {
        dev = e;
        if (worst) *worst = p.name + "[" + std::to_string(i) + "]";
      }
      for (size_t d = nd; d-- > 0;) {
        if (++idx[d] < p.local[d]) break;
        idx[d] = 0;
      }
    }
  }
  return dev;  // in units of 1e-3 of each tensor's largest gradient
}

}  // namespace monta::testing_mpi
