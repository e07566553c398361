// `--comm.exchange auto`: choose the exchange strategy and chunk count for one MoE layer shape at start-up, from
// the cost model over this job's placement and links, then check the prediction by timing each strategy's best.
// docs/cost_model.md ("--comm.exchange auto") states the procedure.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "comm/communicator.h"
#include "comm/cost_model.h"
#include "comm/exchange.h"
#include "comm/groups.h"

namespace monta::comm {

struct ExchangeChoiceInput {
  int64_t experts = 0, capacity = 0, hidden = 0;  // E, C, H of the dispatch buffer
  int64_t ffn_local = 0;                          // F_l: the width of the experts' GEMMs on this rank
  int64_t dispatch_width = 0;  // elements of dtype a forward dispatch sends per slot: H, or the FP8 dispatch's packed
                               // rows (comm::fp8_dispatch_width); 0: hidden. The backward's dispatch sends H.
  engine::DType dtype = engine::DType::f32;
  engine::Device device = engine::Device::cpu;
  std::optional<LinkModel> links;  // given (a cache file, a cluster description); empty: calibrate the groups
  bool verify = true;              // time each strategy's predicted best and keep the measured fastest
  // Sequence parallelism: each dispatch also reduce-scatters over TP (sp_dispatch_reduce_scatter_time); duplicate
  // has no meaning then and is not a candidate.
  bool sequence_parallel = false;
  // Dropless routing, stage B (Exchange::set_loads): the share of slots filled and the EP ranks' max/mean rows; the
  // predictions price the most loaded rank (ExchangeLoad), the measurements run loads_like(load). Default: every slot.
  ExchangeLoad load;
  // The experts' forward GEMM as the model runs it, out (E_l, rows, F_l) = y (E_l, rows, H) · w (E_l, F_l, H)ᵀ
  // (model.fp8 experts: the FP8 GEMM with the weight's codes made once, as the model caches them): the measured
  // expert time and the candidates' measured blocks use it. Empty: engine::expert_linear_forward.
  std::function<void(engine::Tensor out, const engine::Tensor& y, const engine::Tensor& w)> expert_gemm;
  // Whether the model can run a (strategy, chunks) (FP8 experts on a GPU: every expert GEMM's rows a multiple of 16,
  // model::fp8_cuda_shape_problem). Others are neither predicted nor measured. Empty: all can.
  std::function<bool(ExchangeKind, int)> runnable;
};

struct ExchangeChoice {
  ExchangeKind kind = ExchangeKind::duplicate;
  int chunks = 1;
  std::string table;  // predictions (and measurements), for rank 0 to print
};

// Collective over world, tp and ep (every rank calls it); every rank returns rank 0's choice. groups gives the
// placement of this rank's TP and EP peers; tp, ep and world are the communicators the exchange will use.
ExchangeChoice choose_exchange(const ProcessGroups& groups, Communicator& world, Communicator& tp, Communicator& ep,
                               const ExchangeChoiceInput& in);

}  // namespace monta::comm
