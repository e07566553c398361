// The op-case table (engine/op_cases.h) as finite-difference gradient checks in double on the CPU: for every case
// with a backward, L = Σ c⊙out over its outputs, and every element of every input and parameter is perturbed by ±ε
// and compared with what the backward wrote. One test per case, named after it.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include "engine/op_cases.h"
#include "engine/op_timing.h"
#include "engine/ops/adamw.h"
#include "engine/ops/attention.h"
#include "engine/ops/cross_entropy.h"
#include "engine/ops/elementwise.h"
#include "engine/ops/embedding.h"
#include "engine/ops/init.h"
#include "engine/ops/linear.h"
#include "engine/ops/moe_permute.h"
#include "engine/ops/rmsnorm.h"
#include "engine/ops/rope.h"
#include "engine/ops/router.h"
#include "engine/ops/swiglu.h"
#include "tests/engine/test_util.h"

namespace monta::enginetest {
namespace {

using engine::OpArgKind;
using engine::OpCase;

std::vector<OpCase> gradcheck_cases() {
  std::vector<OpCase> v;
  for (OpCase& c : engine::op_cases(engine::op_dims_gradcheck(), 8.0))
    if (c.backward) v.push_back(std::move(c));
  return v;
}

std::vector<std::string> gradcheck_names() {
  std::vector<std::string> v;
  for (const OpCase& c : gradcheck_cases()) v.push_back(c.name);
  return v;
}

OpCase find_case(const std::string& name) {
  for (OpCase& c : gradcheck_cases())
    if (c.name == name) return c;
  ADD_FAILURE() << "no op case " << name;
  return {};
}

double sum_of(const Tensor& t, const Tensor* weights) {
  double s = 0;
  for (int64_t i = 0; i < t.numel(); ++i) s += t.as<double>()[i] * (weights ? weights->as<double>()[i] : 1.0);
  return s;
}

class OpGradcheck : public testing::TestWithParam<std::string> {};

TEST_P(OpGradcheck, BackwardMatchesFiniteDifferences) {
  const OpCase c = find_case(GetParam());
  ASSERT_TRUE(c.forward && c.backward);
  const engine::Arena t = engine::op_case_arena(c, Device::cpu, engine::op_precision_double());
  engine::op_case_fill(c, t, 7);
  c.forward(t);
  engine::op_case_zero_grads(c, t);
  c.backward(t);
  auto loss = [&] {
    c.forward(t);
    double L = 0;
    for (const engine::OpArg& a : c.args) {
      if (a.kind != OpArgKind::output) continue;
      if (std::isnan(a.cotangent)) {
        const Tensor w = t.get("d" + a.name);
        L += sum_of(t.get(a.name), &w);
      } else {
        L += a.cotangent * sum_of(t.get(a.name), nullptr);
      }
    }
    return L;
  };
  int checked = 0;
  for (const engine::OpArg& a : c.args) {
    if (a.kind != OpArgKind::input && a.kind != OpArgKind::param) continue;
    const Tensor x = t.get(a.name), g = t.get("d" + a.name);
    ASSERT_EQ(x.dtype, DType::f64);
    const double eps = 1e-6, tol = 1e-6;
    int bad = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      double& xi = x.as<double>()[i];
      const double x0 = xi;
      xi = x0 + eps;
      const double lp = loss();
      xi = x0 - eps;
      const double lm = loss();
      xi = x0;
      const double num = (lp - lm) / (2 * eps), ana = g.as<double>()[i];
      if (std::abs(ana - num) > tol * (1 + std::abs(num)) && ++bad <= 5)
        ADD_FAILURE() << c.name << " d" << a.name << "[" << i << "]: backward " << ana << ", finite differences " << num;
    }
    EXPECT_EQ(bad, 0) << c.name << " d" << a.name << " (" << c.shape << "): " << bad << " of " << x.numel() << " off";
    ++checked;
  }
  EXPECT_GT(checked, 0) << c.name << " has nothing to differentiate";
}

INSTANTIATE_TEST_SUITE_P(Table, OpGradcheck, testing::ValuesIn(gradcheck_names()),
                         [](const testing::TestParamInfo<std::string>& info) { return info.param; });

// The table itself: names are unique (they name the tests) and every case has a forward.
TEST(OpCaseTable, NamesUniqueAndEveryCaseRuns) {
  const std::vector<OpCase> cases = engine::op_cases(engine::op_dims_gradcheck(), 4.0);
  std::set<std::string> names;
  for (const OpCase& c : cases) {
    EXPECT_TRUE(names.insert(c.name).second) << "two cases named " << c.name;
    EXPECT_TRUE(bool(c.forward)) << c.name;
    EXPECT_GT(c.bytes_fwd, 0) << c.name;
  }
  EXPECT_GE(cases.size(), 15u);
}

// Every op declared in engine/ops (the X-macro lists) is run by some case of the table, or is listed here with the
// tests that hold it instead. A new op without either fails this test by name.
TEST(OpCaseTable, EveryDeclaredOpHasACaseOrAReason) {
#define MONTA_OP_NAME(name, on, params, args) #name,
  const std::vector<std::string> declared = {
      MONTA_OPS_ADAMW(MONTA_OP_NAME) MONTA_OPS_ATTENTION(MONTA_OP_NAME) MONTA_OPS_CROSS_ENTROPY(MONTA_OP_NAME)
          MONTA_OPS_ELEMENTWISE(MONTA_OP_NAME) MONTA_OPS_EMBEDDING(MONTA_OP_NAME) MONTA_OPS_INIT(MONTA_OP_NAME)
              MONTA_OPS_LINEAR(MONTA_OP_NAME) MONTA_OPS_MOE_PERMUTE(MONTA_OP_NAME) MONTA_OPS_RMSNORM(MONTA_OP_NAME)
                  MONTA_OPS_ROPE(MONTA_OP_NAME) MONTA_OPS_ROUTER(MONTA_OP_NAME) MONTA_OPS_SWIGLU(MONTA_OP_NAME)};
#undef MONTA_OP_NAME
  const std::map<std::string, std::string> elsewhere = {
      {"adamw_step", "the optimizer: test_loss_optim.cpp, gpu/test_runtime_elementwise.cpp; bench ops' adamw row"},
      {"adamw_step_many", "the optimizer: test_loss_optim.cpp, gpu/test_runtime_elementwise.cpp"},
      {"init_normal", "bit-exact initialisation: test_init.cpp, gpu/test_init.cpp"},
      {"add", "elementwise helpers: test_basics.cpp, gpu/test_runtime_elementwise.cpp"},
      {"accumulate", "elementwise helpers"},
      {"scale", "elementwise helpers"},
      {"cast", "elementwise helpers"},
      {"sum_squares", "elementwise helpers (the gradient norm): test_loss_optim.cpp"},
      {"sum", "elementwise helpers"},
      {"router_topk_assign", "integer assignment with ties: test_router_moe.cpp, gpu/test_router_moe.cpp; bench ops"},
      {"router_topk_assign_biased", "assignment on biased scores: test_router_moe.cpp, gpu/test_router_moe.cpp"},
  };
  std::set<std::string> ran;
  engine::set_op_timing(true);
  for (const OpCase& c : engine::op_cases(engine::op_dims_gradcheck(), 8.0)) {
    const engine::Arena t = engine::op_case_arena(c, Device::cpu, engine::op_precision_double());
    engine::op_case_fill(c, t, 1);
    c.forward(t);
    if (c.backward) c.backward(t);
  }
  engine::set_op_timing(false);
  for (const engine::OpTime& op : engine::take_op_times()) ran.insert(op.name.substr(0, op.name.find(' ')));
  for (const std::string& op : declared) {
    const bool listed = elsewhere.count(op) > 0;
    EXPECT_TRUE(ran.count(op) || listed) << op << " has no case in engine/op_cases.cpp and no reason listed here";
    EXPECT_FALSE(ran.count(op) && listed) << op << " has a case now: drop it from the list";
  }
  EXPECT_GE(declared.size(), 40u);
}

}  // namespace
}  // namespace monta::enginetest
