// The distributed optimizer (train.zero 1) changes memory, not training: in every layout with data parallelism,
// zero 1 (alone, with bf16 moments, with host offload, with the routing options: the balancing bias is then updated
// through its shards; with model.fp8 = all, whose cached weight codes must follow the all-gathered weights) against zero 0 of the same options: the reduced gradient shards, five steps' losses and
// gradient norms, and the compute weights after them; the footprint is what the store allocates; and a zero-1
// checkpoint loads into a zero-0 store as the same state.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "comm/exchange.h"
#include "comm/groups.h"
#include "comm/runtime.h"
#include "comm/topology.h"
#include "engine/log.h"
#include "engine/rng.h"
#include "model/checkpoint.h"
#include "model/footprint.h"
#include "model/trainer.h"
#include "layout_rig.h"

using namespace monta;
using namespace monta::testing_mpi;
using engine::Tensor;

namespace {

model::Config zero_config() {
  model::Config c = small_config();
  c.train.grad_clip = 0.5;  // clipping on: the global norm over shards decides the update
  return c;
}

}  // namespace

// Bound: a different reduction order. The reduce-scatter sums the same per-rank gradients as the all-reduce, but MPI
// may associate the sum differently with more than two ranks, and the gradient norm's sum of squares runs over shards
// (another order), so the clip factor differs in its last bits. Hence float rounding: gradients 1e-6 of each tensor's
// largest, losses and norms 1e-6 relative, weights after five steps 1e-5 of the tensor's largest (1e-4 and 1e-3 with
// bf16 moments); and the gradients bit for bit where every group has two ranks (a + b is commutative). Printed: how many
// layouts came out bit-identical throughout.
TEST(ZeroEquivalence, Zero1EqualsZero0InEveryDataParallelLayout) {
  const int world = comm::runtime_world_size(), rank = comm::runtime_world_rank();
  std::vector<int32_t> in, tg;
  int cases = 0, bit_exact = 0;
  double worst_loss = 0, worst_grad = 0, worst_weight = 0;
  for (int tp : {1, 2, 4})
    for (int ep : {1, 2, 4})
      for (bool etp : {true, false})
        for (const char* variant : {"plain", "bf16", "offload", "route", "fp8"}) {
          if (world % tp || (world / tp) % ep || world / tp < 2 || (!etp && tp == 1)) continue;
          if (std::string(variant) == "fp8" && !etp) continue;  // one FP8 case per layout
          model::Config c = zero_config();
          if (std::string(variant) == "bf16") c.train.optimizer_state = "bf16";
          if (std::string(variant) == "offload") c.train.optimizer_offload = true;
          if (std::string(variant) == "fp8") c.model.fp8 = "all";
          if (std::string(variant) == "route") {  // the balancing bias: updated through the sharded master weights
            c.model.router_norm_topk = true;
            c.model.router_bias_update = 0.05;
          }
          const std::string name = engine::strf("tp%d_ep%d_dp%d_%s_%s", tp, ep, world / tp, etp ? "etp" : "ewhole", variant);
          SCOPED_TRACE(name);
          Rig rig(c, world, tp, ep, etp, "duplicate", 1, 0);
          const model::ParallelContext& par = rig.par;
          model::Config cz = c;
          cz.train.zero = 1;
          model::Trainer ref(c, par, engine::Device::cpu), z(cz, par, engine::Device::cpu);
          int sharded = 0;
          for (const auto& p : z.params().all()) sharded += p.zero_comm != nullptr;
          ASSERT_GT(sharded, 0) << "no parameter is sharded";
          {  // the footprint (--dry-run, the planner) is what the store allocates, and smaller than zero 0's
            const model::RankFootprint f = model::rank_footprint(cz, tp, ep, etp, par.dp, engine::Device::cpu);
            const model::RankFootprint f0 = model::rank_footprint(c, tp, ep, etp, par.dp, engine::Device::cpu);
            size_t all = 0;
            for (const auto* a : z.params().arenas()) all += a->bytes();
            EXPECT_EQ(f.state() + f.host_bytes, double(all));
            EXPECT_LT(f.weights + f.adam, f0.weights + f0.adam);
          }
          const int64_t per_rank = c.train.global_batch / par.dp * c.model.seq_len;
          bool exact = true, grads_exact = true;
          // bf16 moments: a last-bit difference of the clip factor can flip a moment's bf16 rounding (one ulp, 2^-8 of
          // the moment), moving that element's update by up to ~0.4% of lr: looser bounds after the first step there.
          const bool b16 = std::string(variant) == "bf16";
          const double step_bound = b16 ? 1e-4 : 1e-6, weight_bound = b16 ? 1e-3 : 1e-5;
          for (int step = 0; step < 5; ++step) {
            make_batch(c, 300 + uint64_t(step), in, tg);
            std::span<const int32_t> my_in(in.data() + par.dp_rank * per_rank, size_t(per_rank));
            std::span<const int32_t> my_tg(tg.data() + par.dp_rank * per_rank, size_t(per_rank));
            if (step == 0) {  // the reduced gradients: each shard against the same elements of the all-reduced gradient
              ref.compute_gradients(my_in, my_tg);
              z.compute_gradients(my_in, my_tg);
              for (const auto& p : z.params().all()) {
                const auto& q = ref.params().get(p.name);
                const float* full = q.grad.as<float>();
                if (!p.zero_comm) {
                  const double d = rel_dev(p.grad.as<float>(), full, p.numel());
                  EXPECT_LE(d, 1e-6) << p.name;
                  grads_exact = grads_exact && std::memcmp(p.grad.data, q.grad.data, p.grad.bytes()) == 0;
                  continue;
                }
                const int64_t begin = int64_t(p.zero_comm->rank()) * p.zero_shard;
                const int64_t count = std::clamp<int64_t>(p.numel() - begin, 0, p.zero_shard);
                if (count == 0) continue;
                const double d = rel_dev(p.grad_shard.as<float>(), full + begin, count);
                EXPECT_LE(d, 1e-6) << p.name << " shard";
                worst_grad = std::max(worst_grad, d);
                grads_exact = grads_exact && std::memcmp(p.grad_shard.data, full + begin, size_t(count) * 4) == 0;
                for (int64_t i = count; i < p.zero_shard; ++i) ASSERT_EQ(p.grad_shard.as<float>()[i], 0.f) << p.name << " padding";
              }
            }
            const auto a = ref.step(my_in, my_tg), b = z.step(my_in, my_tg);
            EXPECT_NEAR(b.loss, a.loss, step_bound * std::abs(a.loss)) << "step " << step + 1;
            EXPECT_NEAR(b.grad_norm, a.grad_norm, step_bound * a.grad_norm) << "step " << step + 1;
            worst_loss = std::max(worst_loss, std::abs(b.loss - a.loss) / std::abs(a.loss));
            exact = exact && grads_exact && a.loss == b.loss && a.grad_norm == b.grad_norm;
          }
          // Two ranks per group sum a + b in either collective: the reduced gradients are then the same bits.
          if (par.dp == 2 && par.expert_dp <= 2) EXPECT_TRUE(grads_exact) << "reduce-scatter differs from all-reduce";
          for (const auto& p : z.params().all()) {  // the all-gathered compute weights after five steps
            const auto& q = ref.params().get(p.name);
            const double d = rel_dev(p.compute.as<float>(), q.compute.as<float>(), p.numel());
            EXPECT_LE(d, weight_bound) << p.name << " compute weights";
            worst_weight = std::max(worst_weight, d);
            exact = exact && std::memcmp(p.compute.data, q.compute.data, size_t(p.numel()) * 4) == 0;
          }
          {  // checkpoints stay layout-free: the zero-1 state saved loads into a zero-0 store as the same values
            const std::string run = (std::filesystem::temp_directory_path() / "monta_zero_ckpt").string();
            model::CkptMeta meta;
            meta.step = 5;
            meta.signature = model::model_signature(c.model);
            meta.world = world;
            meta.tp = tp;
            meta.ep = ep;
            meta.expert_tp = etp;
            const std::string dir = model::ckpt_save(run, z.params(), par, meta, "", 1);
            model::Trainer back(c, par, engine::Device::cpu);
            model::ckpt_load(dir, back.params(), meta.signature);
            for (const auto& p : z.params().all()) {
              const auto& q = back.params().get(p.name);
              if (!p.zero_comm) {
                EXPECT_EQ(std::memcmp(p.master.data, q.master.data, p.master.bytes()), 0) << p.name;
                continue;
              }
              const int64_t begin = int64_t(p.zero_comm->rank()) * p.zero_shard;
              const int64_t count = std::clamp<int64_t>(p.numel() - begin, 0, p.zero_shard);
              if (count > 0)
                EXPECT_EQ(std::memcmp(p.master.data, q.master.as<float>() + begin, size_t(count) * 4), 0) << p.name << " master";
            }
            if (par.world) par.world->barrier();
            if (rank == 0) std::filesystem::remove_all(run);
          }
          int mine = exact ? 1 : 0, all = 0;
          MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
          ++cases;
          bit_exact += all;
          if (rank == 0) std::printf("  %-34s checked%s\n", name.c_str(), all ? " (bit for bit)" : "");
        }
  double red[3], mine[3] = {worst_loss, worst_grad, worst_weight};
  MPI_Allreduce(mine, red, 3, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0)
    std::printf("world %d: %d layouts x options, %d bit for bit; largest relative deviation: loss %.3g, gradient shard "
                "%.3g, weights after 5 steps %.3g\n",
                world, cases, bit_exact, red[0], red[1], red[2]);
}
