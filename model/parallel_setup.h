// Builds this rank's parallel context from the config: topology, validated layout, GPU choice, process groups
// (MPI; NCCL on top of them for a CUDA run) and the MoE token exchange. Owns the communicators the model borrows.
#pragma once
#include <memory>
#include <string>

#include "comm/exchange.h"
#include "comm/groups.h"
#include "comm/topology.h"
#include "model/config.h"
#include "model/parallel.h"
#include "model/shapes.h"

namespace monta::comm {
class NcclGroups;  // comm/cuda/nccl_communicator.h, CUDA builds only
}

namespace monta::model {

// Deletes an NcclGroups where its type is complete (parallel_setup.cpp), so this header needs no CUDA.
struct NcclGroupsDeleter {
  void operator()(comm::NcclGroups* g) const;
};

struct ParallelSetup {
  model::ParallelContext ctx;
  // Declaration order is destruction order reversed: the exchange goes before the communicators it uses, the
  // NCCL communicators before the MPI groups they fall back to for host buffers.
  std::unique_ptr<comm::ProcessGroups> groups;
  std::unique_ptr<comm::NcclGroups, NcclGroupsDeleter> nccl;  // set when device is cuda
  std::unique_ptr<comm::Exchange> exchange;
  std::string layout_table;
  int local_rank = 0;
  engine::Device device = engine::Device::cpu;
};

// train.device resolved: cpu, or cuda when a GPU is visible (auto), or a user error for cuda without one.
engine::Device pick_device(const std::string& train_device);
// Validates c against the world size (user errors before anything is allocated), then builds the groups. For
// device cuda it first selects GPU local_rank % device count, then builds NCCL communicators for world, tp, dp,
// ep and expert-dp and points ctx at them (host buffers given to them still travel over MPI). The default (cpu,
// MPI only) keeps callers that have not chosen their device yet building; a CUDA run must pass its device.
ParallelSetup setup_parallel(const model::Config& c, engine::Device device = engine::Device::cpu);
// Builds the MoE token exchange of the configured strategy (when ep > 1) for activations of dtype act, over
// ctx's communicators; device must be the one given to setup_parallel.
// --comm.exchange auto: comm::choose_exchange (comm/exchange_choice.h) for this layer's shape, with links from
// comm.links or a short probe, verified by measurement unless comm.auto_verify is off; rank 0 prints its table.
comm::ExchangeKind choose_exchange(ParallelSetup& ps, const model::Config& c, const model::Shapes& s, engine::DType act,
                                   engine::Device device, int* chunks);
void attach_exchange(ParallelSetup& ps, const model::Config& c, engine::Device device, engine::DType act);
// The exchange's buffer shape for the layer shapes s and `chunks` capacity chunks: what attach_exchange builds and
// rank_footprint counts the staging memory of.
comm::ExchangeShape exchange_shape(const model::Shapes& s, int chunks);

}  // namespace monta::model
