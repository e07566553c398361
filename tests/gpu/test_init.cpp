// Weight initialisation on the GPU gives the CPU's bits: the same logical values for whole tensors and for slices
// at an offset (a TP shard), and for std 0 (norm weights, all ones).
#include "engine/ops/init.h"
#include "gpu_test_util.h"

namespace monta::gputest {
namespace {

TEST(GpuInit, InitNormalEqualsCpuBitForBit) {
  MONTA_REQUIRE_GPU();
  struct Case {
    std::vector<int64_t> local, full, offset;
    double std;
  };
  const std::vector<Case> cases = {
      {{1000}, {1000}, {0}, 0.02},
      {{64, 96}, {128, 96}, {64, 0}, 0.02},          // a column-parallel shard (rows)
      {{2, 48, 33}, {4, 96, 33}, {2, 48, 0}, 0.7},   // an expert shard
      {{7, 5, 3, 2}, {14, 5, 6, 2}, {7, 0, 3, 0}, 1.0},
      {{300}, {300}, {0}, 0.0},                       // norm weights: ones
  };
  for (const Case& c : cases) {
    engine::InitNormalArgs a;
    a.seed = 1234;
    a.stream = 0x9e3779b97f4a7c15ull;
    a.std = c.std;
    for (size_t d = 0; d < c.local.size(); ++d) {
      a.full[d] = c.full[d];
      a.offset[d] = c.offset[d];
    }
    Buf cpu(c.local, DType::f32, Device::cpu), gpu(c.local, DType::f32, Device::cuda);
    engine::init_normal(cpu.t, a);
    engine::init_normal(gpu.t, a);
    const std::vector<float> got = download(gpu.t);
    int64_t diff = 0;
    for (size_t i = 0; i < got.size(); ++i)
      if (std::memcmp(&got[i], &cpu.t.as<float>()[i], 4) != 0 && diff++ < 5)
        ADD_FAILURE() << "element " << i << ": gpu " << got[i] << " cpu " << cpu.t.as<float>()[i];
    EXPECT_EQ(diff, 0) << "case with " << got.size() << " elements";
  }
}

}  // namespace
}  // namespace monta::gputest
