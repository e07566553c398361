// Whole-model golden test: one training step (two micro-batches) of monta's f64 CPU forward and backward against
// tests/model/golden_tiny.h5, the same step computed independently in PyTorch float64 by scripts/make_golden.py
// from the weights monta initialises. Logits, CE, router losses, loss_total and every gradient, llm.c-style.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "model/model.h"

using namespace monta;
using namespace monta::model;
using engine::DType;
using engine::Device;

namespace {

const std::string kGolden = std::string(MONTA_SOURCE_DIR) + "/tests/model/golden_tiny.h5";
// f64 on both sides, different summation orders: agreement to ~1e-13 relative is expected; 1e-9 leaves room for
// a platform's libm and still catches any change of the math (a wrong coefficient, pairing or drop moves 1e-3+).
constexpr double kRel = 1e-9, kAbs = 1e-12;

// Read access to the golden file (HDF5 C API; h5py wrote it).
class Golden {
 public:
  explicit Golden(const std::string& path) : f_(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT)) {}
  ~Golden() {
    if (f_ >= 0) H5Fclose(f_);
  }
  bool ok() const { return f_ >= 0; }
  int64_t i64(const char* name) const { return attr<int64_t>(name, H5T_NATIVE_INT64); }
  double f64(const char* name) const { return attr<double>(name, H5T_NATIVE_DOUBLE); }
  bool has(const std::string& path) const {
    const auto slash = path.find('/');
    if (slash != std::string::npos && H5Lexists(f_, path.substr(0, slash).c_str(), H5P_DEFAULT) <= 0) return false;
    return H5Lexists(f_, path.c_str(), H5P_DEFAULT) > 0;
  }
  // A whole dataset in row-major order, converted to T; shape gets its dimensions.
  template <class T> std::vector<T> read(const std::string& path, std::vector<int64_t>* shape = nullptr) const {
    const hid_t ds = H5Dopen2(f_, path.c_str(), H5P_DEFAULT);
    EXPECT_GE(ds, 0) << "golden has no dataset " << path;
    if (ds < 0) return {};
    const hid_t sp = H5Dget_space(ds);
    std::vector<hsize_t> dims(size_t(std::max(0, H5Sget_simple_extent_ndims(sp))));
    H5Sget_simple_extent_dims(sp, dims.data(), nullptr);
    int64_t n = 1;
    for (hsize_t d : dims) n *= int64_t(d);
    if (shape) shape->assign(dims.begin(), dims.end());
    std::vector<T> v(static_cast<size_t>(n));
    const hid_t type = std::is_same_v<T, double> ? H5T_NATIVE_DOUBLE : H5T_NATIVE_INT32;
    EXPECT_GE(H5Dread(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), 0) << path;
    H5Sclose(sp);
    H5Dclose(ds);
    return v;
  }
  hsize_t count(const char* group) const {
    H5G_info_t info{};
    return H5Gget_info_by_name(f_, group, &info, H5P_DEFAULT) >= 0 ? info.nlinks : 0;
  }

 private:
  template <class T> T attr(const char* name, hid_t type) const {
    T v{};
    const hid_t a = H5Aopen(f_, name, H5P_DEFAULT);
    EXPECT_GE(a, 0) << "golden has no attribute " << name;
    if (a >= 0) {
      H5Aread(a, type, &v);
      H5Aclose(a);
    }
    return v;
  }
  hid_t f_;
};

// llm.c's check_tensor: compares n values, prints the first mismatches (index, got, want) and the largest errors;
// returns the number of elements outside |got - want| <= abs + rel·|want|.
struct TensorCheck {
  double max_abs = 0, max_rel = 0;
  int64_t bad = 0;
};
TensorCheck check_tensor(const std::string& name, const double* got, const double* want, int64_t n,
                         double rel = kRel, double abs = kAbs, bool quiet = false) {
  TensorCheck c;
  for (int64_t i = 0; i < n; ++i) {
    const double err = std::abs(got[i] - want[i]);
    c.max_abs = std::max(c.max_abs, err);
    if (want[i] != 0) c.max_rel = std::max(c.max_rel, err / std::abs(want[i]));
    if (!(err <= abs + rel * std::abs(want[i]))) {  // NaN counts as a mismatch
      if (c.bad < 5 && !quiet)
        std::printf("  MISMATCH %s[%ld]: got %.17g want %.17g\n", name.c_str(), long(i), got[i], want[i]);
      ++c.bad;
    }
  }
  if (!quiet)
    std::printf("%-22s %6ld values  max abs err %.3e  max rel err %.3e  %s\n", name.c_str(), long(n), c.max_abs,
                c.max_rel, c.bad ? "MISMATCH" : "ok");
  return c;
}

ModelConfig golden_config(const Golden& g) {
  ModelConfig m;
  m.vocab = g.i64("vocab");
  m.hidden = g.i64("hidden");
  m.layers = g.i64("layers");
  m.heads = g.i64("heads");
  m.kv_heads = g.i64("kv_heads");
  m.ffn = g.i64("ffn");
  m.experts = g.i64("experts");
  m.top_k = g.i64("top_k");
  m.seq_len = g.i64("seq_len");
  m.min_capacity = g.i64("min_capacity");
  m.capacity_factor = g.f64("capacity_factor");
  m.rope_theta = g.f64("rope_theta");
  m.norm_eps = g.f64("norm_eps");
  m.init_std = g.f64("init_std");
  m.aux_loss_coef = g.f64("aux_loss_coef");
  m.z_loss_coef = g.f64("z_loss_coef");
  return m;
}

// monta's step on the golden's weights and data: the tensors it produces, side by side with the golden's.
struct Step {
  std::vector<std::pair<std::string, std::pair<std::vector<double>, std::vector<double>>>> tensors;  // got, want
  int64_t dropped = 0, want_dropped = 0;
};

Step run_step(const Golden& g, const ModelConfig& cfg) {
  Step st;
  const int64_t B = g.i64("micro_batch"), M = g.i64("micro_batches");
  const double ce_scale = g.f64("ce_scale"), aux_scale = g.f64("aux_scale");
  ParallelContext par;
  ParamStore params(cfg, par, Device::cpu, DType::f64, DType::f64);
  const Shapes s = Shapes::make(cfg, B, 1, 1, 1, true);
  Model model(cfg, s, par, params, DType::f64);
  EXPECT_EQ(g.count("weights"), params.all().size()) << "golden and model disagree on the parameter list";
  for (auto& p : params.all()) {
    std::vector<int64_t> shape;
    const auto w = g.read<double>("weights/" + p.name, &shape);
    EXPECT_EQ(shape, p.full) << p.name;
    if (int64_t(w.size()) != p.master.numel()) continue;
    std::copy(w.begin(), w.end(), p.master.as<double>());
  }
  params.refresh_compute();
  const auto tokens = g.read<int32_t>("tokens"), targets = g.read<int32_t>("targets");
  const auto logits = g.read<double>("logits"), ce = g.read<double>("ce_sum");
  const auto aux = g.read<double>("aux"), z = g.read<double>("z");
  const auto dropped = g.read<int32_t>("dropped");
  double ce_sum = 0, aux_sum = 0, z_sum = 0;
  params.zero_grads();
  for (int64_t mb = 0; mb < M; ++mb) {
    const MicroResult r =
        model.forward_backward(tokens.data() + mb * s.N, targets.data() + mb * s.N, ce_scale, aux_scale);
    const std::string tag = "[mb" + std::to_string(mb) + "]";
    const double* lg = model.logits().as<double>();
    st.tensors.push_back({"logits" + tag, {{lg, lg + s.N * s.V}, {logits.begin() + mb * s.N * s.V,
                                                                   logits.begin() + (mb + 1) * s.N * s.V}}});
    // MicroResult carries the router losses summed over layers; the golden has them per layer.
    double want_aux = 0, want_z = 0;
    for (int64_t l = 0; l < cfg.layers; ++l) {
      want_aux += aux[size_t(mb * cfg.layers + l)];
      want_z += z[size_t(mb * cfg.layers + l)];
    }
    st.tensors.push_back({"ce_sum" + tag, {{r.ce_sum}, {ce[size_t(mb)]}}});
    st.tensors.push_back({"aux_sum" + tag, {{r.aux_sum}, {want_aux}}});
    st.tensors.push_back({"z_sum" + tag, {{r.z_sum}, {want_z}}});
    ce_sum += r.ce_sum;
    aux_sum += r.aux_sum;
    z_sum += r.z_sum;
    st.dropped += r.dropped;
    st.want_dropped += dropped[size_t(mb)];
  }
  params.settle_grads();
  const double total = training_objective(cfg, ce_sum, aux_sum, z_sum, ce_scale, aux_scale);
  st.tensors.push_back({"loss_total", {{total}, g.read<double>("loss_total")}});
  for (auto& p : params.all()) {
    const double* gr = p.grad.as<double>();
    st.tensors.push_back({"d " + p.name, {{gr, gr + p.grad.numel()}, g.read<double>("grads/" + p.name)}});
  }
  return st;
}

}  // namespace

TEST(Golden, StepMatchesPyTorchFloat64) {
  const Golden g(kGolden);
  ASSERT_TRUE(g.ok()) << "cannot open " << kGolden << " (regenerate with scripts/make_golden.py)";
  const Step st = run_step(g, golden_config(g));
  EXPECT_GT(st.want_dropped, 0) << "the golden config should drop tokens";
  EXPECT_EQ(st.dropped, st.want_dropped) << "(token, choice) pairs dropped over layers and micro-batches";
  std::printf("bound: |got - want| <= %.0e + %.0e |want|\n", kAbs, kRel);
  for (const auto& [name, gw] : st.tensors) {
    const auto& [got, want] = gw;
    ASSERT_EQ(got.size(), want.size()) << name;
    EXPECT_EQ(check_tensor(name, got.data(), want.data(), int64_t(got.size())).bad, 0) << name;
  }
}

// The golden's weights are monta's initialisation (f32 master weights, as `monta train` on the CPU holds them).
TEST(Golden, WeightsAreMontasInitialisation) {
  const Golden g(kGolden);
  ASSERT_TRUE(g.ok()) << "cannot open " << kGolden;
  const ModelConfig cfg = golden_config(g);
  ParallelContext par;
  ParamStore params(cfg, par, Device::cpu, DType::f32, DType::f32);
  params.init(uint64_t(g.i64("seed")));
  for (auto& p : params.all()) {
    const auto want = g.read<double>("weights/" + p.name);
    ASSERT_EQ(int64_t(want.size()), p.master.numel()) << p.name;
    const float* w = p.master.as<float>();
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(double(w[i]), want[i]) << p.name << "[" << i << "]";
  }
}

// The comparison can fail: the objective with the router coefficient averaged over layers instead of summed
// (the convention the README rules out) moves loss_total and the router and upstream gradients out of bounds.
TEST(Golden, CatchesAveragedRouterCoefficient) {
  const Golden g(kGolden);
  ASSERT_TRUE(g.ok()) << "cannot open " << kGolden;
  ModelConfig cfg = golden_config(g);
  cfg.aux_loss_coef /= double(cfg.layers);
  const Step st = run_step(g, cfg);
  int64_t bad_tensors = 0;
  std::vector<std::string> bad_names;
  for (const auto& [name, gw] : st.tensors) {
    const auto& [got, want] = gw;
    if (check_tensor(name, got.data(), want.data(), int64_t(got.size()), kRel, kAbs, true).bad > 0) {
      ++bad_tensors;
      bad_names.push_back(name);
    }
  }
  EXPECT_TRUE(std::find(bad_names.begin(), bad_names.end(), "loss_total") != bad_names.end());
  EXPECT_TRUE(std::find(bad_names.begin(), bad_names.end(), "d layers.0.router") != bad_names.end());
  EXPECT_TRUE(std::find(bad_names.begin(), bad_names.end(), "d embed") != bad_names.end());
  EXPECT_GT(bad_tensors, 10);
}
