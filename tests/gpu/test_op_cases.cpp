// The op-case table (engine/op_cases.h) on the GPU against the CPU: each case's tensors are filled once on the GPU
// (bf16 or f32 activations), copied to the CPU in f32, both run the forward and the backward, and every output,
// saved statistic and gradient is compared (relative error of the whole tensor). One test per case and dtype.
#include <tuple>

#include "engine/op_cases.h"
#include "gpu_test_util.h"

namespace monta::gputest {
namespace {

using engine::OpArgKind;
using engine::OpCase;

std::vector<OpCase> parity_cases() {
  std::vector<OpCase> v;
  for (OpCase& c : engine::op_cases(engine::op_dims_parity(), 2.0))
    if (c.parity) v.push_back(std::move(c));
  return v;
}

std::vector<std::string> parity_names() {
  std::vector<std::string> v;
  for (const OpCase& c : parity_cases()) v.push_back(c.name);
  return v;
}

// The GPU tensor's values, as f32 (or i32) in the CPU tensor of the same name.
void copy_to_cpu(const Tensor& cpu, const Tensor& gpu) {
  if (gpu.dtype == cpu.dtype) {
    engine::copy(cpu, gpu);
    return;
  }
  const std::vector<float> v = download(gpu);
  std::copy(v.begin(), v.end(), cpu.as<float>());
}

std::vector<float> values_of(const Tensor& t) {
  if (t.device == Device::cuda) return download(t);
  std::vector<float> v(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[size_t(i)] = t.as<float>()[i];
  return v;
}

using Param = std::tuple<std::string, DType>;
class OpParity : public testing::TestWithParam<Param> {};

TEST_P(OpParity, CudaMatchesCpu) {
  MONTA_REQUIRE_GPU();
  const auto& [name, dt] = GetParam();
  OpCase c;
  for (OpCase& k : parity_cases())
    if (k.name == name) c = k;
  ASSERT_TRUE(bool(c.forward)) << name;
  const engine::Arena g = engine::op_case_arena(c, Device::cuda, engine::op_precision_for(dt));
  const engine::Arena h = engine::op_case_arena(c, Device::cpu, engine::op_precision_for(DType::f32));
  engine::op_case_fill(c, g, 3);
  for (size_t i = 0; i < g.count(); ++i) copy_to_cpu(h.at(i), g.at(i));
  for (const engine::Arena* t : {&g, &h}) {
    c.forward(*t);
    if (c.backward) {
      engine::op_case_zero_grads(c, *t);
      c.backward(*t);
    }
  }
  engine::sync_device(Device::cuda);
  const double tol = dt == DType::bf16 ? 2e-2 : 1e-4;  // bf16: outputs rounded to 8 bits of mantissa
  int compared = 0;
  for (size_t i = 0; i < g.count(); ++i) {
    const std::string& n = g.name_of(i);
    const Tensor gt = g.at(i);
    if (gt.dtype == DType::i32) continue;  // indices: the same on both
    bool is_input = false;
    for (const engine::OpArg& a : c.args)
      if (a.name == n && (a.kind == OpArgKind::input || a.kind == OpArgKind::param)) is_input = true;
    if (is_input) continue;
    bool is_cotangent = false;  // d<output>: an input of the backward
    for (const engine::OpArg& a : c.args)
      if ("d" + a.name == n && a.kind == OpArgKind::output) is_cotangent = true;
    if (is_cotangent) continue;
    const double e = rel_err(values_of(gt), values_of(h.at(i)));
    EXPECT_LT(e, tol) << c.name << " " << n << " (" << c.shape << ", " << engine::dtype_name(dt) << "): relative error " << e;
    ++compared;
  }
  EXPECT_GT(compared, 0) << c.name;
}

INSTANTIATE_TEST_SUITE_P(Table, OpParity, testing::Combine(testing::ValuesIn(parity_names()),
                                                           testing::Values(DType::f32, DType::bf16)),
                         [](const testing::TestParamInfo<Param>& info) {
                           return std::get<0>(info.param) + "_" + engine::dtype_name(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace monta::gputest
