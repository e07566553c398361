// The op-case table (engine/op_cases.h) as finite-difference gradient checks in double on the CPU: for every case
// with a backward, L = Σ c⊙out over its outputs, and every element of every input and parameter is perturbed by ±ε
// and compared with what the backward wrote. One test per case, named after it.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "engine/op_cases.h"
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
  EXPECT_GE(cases.size(), 12u);
}

}  // namespace
}  // namespace monta::enginetest
