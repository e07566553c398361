// Checkpoint write/read/export over HDF5 (see checkpoint.h for the layout and the atomicity argument).
#include "model/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "engine/check.h"
#include "engine/log.h"
#include "engine/memory.h"

namespace fs = std::filesystem;

namespace monta::model {

using engine::strf;

namespace {

const char* kGroups[3] = {"master", "adam_m", "adam_v"};

// A shard whose close failed (disk full) stays in HDF5's table of open files, and HDF5 1.10's exit-time cleanup
// then crashes retrying its flush, turning the one-line error into a segfault. Checkpoint code closes every
// handle it opens, so nothing needs that cleanup; it must be declined before the library initialises.
const bool kHdf5NoAtexit = [] { return H5dont_atexit() >= 0; }();

struct Hdf5Quiet {
  Hdf5Quiet() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};

std::string rank_file(int r) { return strf("rank_%05d.h5", r); }

uint64_t file_checksum(const std::string& path, int64_t* bytes) {
  std::ifstream in(path, std::ios::binary);
  MONTA_USER_CHECK(in.good(), "checkpoint file " + path + " is missing");
  // FNV-1a-style over 64-bit words in four independent lanes (a byte-wise FNV ran at ~0.35 GB/s and dominated
  // saving an 11 GB checkpoint); the tail of the file goes byte by byte into lane 0.
  constexpr uint64_t kPrime = 1099511628211ull;
  uint64_t lane[4] = {1469598103934665603ull, 0x9e3779b97f4a7c15ull, 0xc2b2ae3d27d4eb4full, 0x165667b19e3779f9ull};
  std::vector<char> buf(1 << 22);
  int64_t total = 0;
  while (in) {
    in.read(buf.data(), std::streamsize(buf.size()));
    const size_t n = size_t(in.gcount()), words = n / 32 * 4;
    for (size_t w = 0; w < words; w += 4)
      for (size_t j = 0; j < 4; ++j) {
        uint64_t x;
        std::memcpy(&x, buf.data() + (w + j) * 8, 8);
        lane[j] = (lane[j] ^ x) * kPrime;
      }
    for (size_t i = words * 8; i < n; ++i) lane[0] = (lane[0] ^ uint8_t(buf[i])) * kPrime;
    total += int64_t(n);
  }
  if (bytes) *bytes = total;
  uint64_t h = lane[0];
  for (int j = 1; j < 4; ++j) h = (h ^ lane[j]) * kPrime;
  return h;
}

void fsync_path(const std::string& path, bool dir) {
  int fd = ::open(path.c_str(), dir ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Rename that reports failure as a user error naming both paths (std::filesystem would throw past the handler).
void rename_or_fail(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  MONTA_USER_CHECK(!ec, "cannot rename " + from.string() + " to " + to.string() + ": " + ec.message());
}

// Dataset creation properties without modification times, so equal tensors give byte-identical files (a
// resumed run's checkpoints and exports compare with cmp against an uninterrupted run's).
hid_t dcpl_no_times() {
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_obj_track_times(dcpl, 0);
  return dcpl;
}

// Test hook (tests/resume/kill_during_save.sh): MONTA_TEST_SLOW_SAVE_MS=n makes every rank sleep n ms after its
// shard is on disk and before the manifest exists, the window in which a crash must leave the previous
// checkpoint the newest usable one.
void test_hook_slow_save(int rank, int64_t step) {
  const char* v = std::getenv("MONTA_TEST_SLOW_SAVE_MS");
  if (!v || !*v) return;
  std::fprintf(stderr, "monta: test hook: rank %d pid %d sleeping %s ms in the save of step %ld\n", rank, int(::getpid()),
               v, step);
  std::fflush(stderr);
  std::this_thread::sleep_for(std::chrono::milliseconds(std::atoll(v)));
}

void write_text_atomic(const fs::path& path, const std::string& text) {
  fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    out.flush();
    MONTA_USER_CHECK(out.good(), "cannot write " + tmp.string() + " (disk full or not writable?)");
  }
  fsync_path(tmp.string(), false);
  rename_or_fail(tmp, path);
}

// Writes one slice with its full shape and offset; returns "" or the reason it failed (the caller closes the
// file before failing, else HDF5's exit-time cleanup retries the flush of a half-written file).
std::string write_slice(hid_t file, const std::string& path, const char* group, const Param& p, const Tensor& t) {
  std::vector<float> host(size_t(t.numel()));
  std::vector<double> hostd;
  hid_t type = H5T_NATIVE_FLOAT;
  const void* data = host.data();
  if (t.dtype == engine::DType::f64) {
    hostd.resize(size_t(t.numel()));
    engine::copy(engine::make_view(hostd.data(), p.local, engine::DType::f64, engine::Device::cpu), t);
    type = H5T_NATIVE_DOUBLE;
    data = hostd.data();
  } else {
    engine::copy(engine::make_view(host.data(), p.local, engine::DType::f32, engine::Device::cpu), t);
  }
  const std::string name = std::string(group) + "/" + p.name;
  const std::string failed = "cannot write dataset " + name + " to checkpoint file " + path + " (disk full?)";
  std::vector<hsize_t> dims(p.local.begin(), p.local.end());
  hid_t space = H5Screate_simple(int(dims.size()), dims.data(), nullptr);
  hid_t dcpl = dcpl_no_times();
  hid_t ds = H5Dcreate2(file, name.c_str(), type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  H5Pclose(dcpl);
  H5Sclose(space);
  if (ds < 0) return failed;
  bool ok = H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0;
  hsize_t nd = p.full.size();
  hid_t aspace = H5Screate_simple(1, &nd, nullptr);
  for (auto [an, vals] : {std::pair{"full_shape", &p.full}, std::pair{"offset", &p.offset}}) {
    if (!ok) break;
    hid_t a = H5Acreate2(ds, an, H5T_NATIVE_INT64, aspace, H5P_DEFAULT, H5P_DEFAULT);
    ok = a >= 0 && H5Awrite(a, H5T_NATIVE_INT64, vals->data()) >= 0;
    if (a >= 0) H5Aclose(a);
  }
  H5Sclose(aspace);
  H5Dclose(ds);
  return ok ? "" : failed;
}

std::map<std::string, std::string> parse_manifest(const fs::path& path) {
  std::ifstream in(path);
  MONTA_USER_CHECK(in.good(), "checkpoint manifest " + path.string() + " is missing");
  std::map<std::string, std::string> kv;
  std::string line;
  while (std::getline(in, line)) {
    auto eq = line.find(" = ");
    if (eq == std::string::npos) continue;
    kv[line.substr(0, eq)] = line.substr(eq + 3);
  }
  return kv;
}

std::string need_key(const std::map<std::string, std::string>& kv, const std::string& k, const fs::path& path) {
  auto it = kv.find(k);
  MONTA_USER_CHECK(it != kv.end(), "checkpoint manifest " + path.string() + " lacks '" + k + "' (corrupt?)");
  return it->second;
}

// One slice stored in a file: where it sits in the logical tensor.
struct StoredSlice {
  hid_t file;
  std::vector<int64_t> full, offset, shape;
};

std::vector<int64_t> read_attr(hid_t ds, const char* name, size_t nd) {
  std::vector<int64_t> v(nd);
  hid_t a = H5Aopen(ds, name, H5P_DEFAULT);
  MONTA_USER_CHECK(a >= 0, std::string("checkpoint dataset lacks attribute ") + name);
  HDF5_CHECK(H5Aread(a, H5T_NATIVE_INT64, v.data()));
  H5Aclose(a);
  return v;
}

// Copies the intersection of a stored slice with the wanted box [want_off, want_off + want_shape) into dst
// (row-major over want_shape). Returns the number of elements copied.
int64_t read_intersection(hid_t file, const std::string& name, const std::vector<int64_t>& want_off,
                          const std::vector<int64_t>& want_shape, double* dst) {
  hid_t ds = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  if (ds < 0) return 0;
  hid_t space = H5Dget_space(ds);
  int nd = H5Sget_simple_extent_ndims(space);
  MONTA_USER_CHECK(nd == int(want_shape.size()), "checkpoint dataset " + name + " has a different rank");
  std::vector<hsize_t> dims(static_cast<size_t>(nd));
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  auto off = read_attr(ds, "offset", size_t(nd));
  std::vector<hsize_t> start(static_cast<size_t>(nd)), count(static_cast<size_t>(nd));
  int64_t n = 1;
  for (int d = 0; d < nd; ++d) {
    int64_t lo = std::max(off[size_t(d)], want_off[size_t(d)]);
    int64_t hi = std::min(off[size_t(d)] + int64_t(dims[size_t(d)]), want_off[size_t(d)] + want_shape[size_t(d)]);
    if (hi <= lo) {
      H5Sclose(space);
      H5Dclose(ds);
      return 0;
    }
    start[size_t(d)] = hsize_t(lo - off[size_t(d)]);
    count[size_t(d)] = hsize_t(hi - lo);
    n *= hi - lo;
  }
  bool whole = true;  // the stored slice is exactly the wanted box: read straight into dst, no scatter
  for (int d = 0; d < nd; ++d)
    whole = whole && off[size_t(d)] == want_off[size_t(d)] && int64_t(dims[size_t(d)]) == want_shape[size_t(d)];
  if (whole) {
    MONTA_USER_CHECK(H5Dread(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) >= 0,
                     "cannot read " + name + " from a checkpoint file (truncated?)");
    H5Sclose(space);
    H5Dclose(ds);
    return n;
  }
  std::vector<double> buf(static_cast<size_t>(n));
  HDF5_CHECK(H5Sselect_hyperslab(space, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr));
  hid_t mem = H5Screate_simple(nd, count.data(), nullptr);
  MONTA_USER_CHECK(H5Dread(ds, H5T_NATIVE_DOUBLE, mem, space, H5P_DEFAULT, buf.data()) >= 0,
                   "cannot read " + name + " from a checkpoint file (truncated?)");
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(ds);
  // Scatter the block into dst.
  std::vector<int64_t> idx(static_cast<size_t>(nd), 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t flat = 0;
    for (int d = 0; d < nd; ++d)
      flat = flat * want_shape[size_t(d)] + (int64_t(start[size_t(d)]) + off[size_t(d)] - want_off[size_t(d)] + idx[size_t(d)]);
    dst[flat] = buf[size_t(i)];
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[size_t(d)] < int64_t(count[size_t(d)])) break;
      idx[size_t(d)] = 0;
    }
  }
  return n;
}

int64_t step_of(const fs::path& p) {
  std::string n = p.filename().string();
  if (n.rfind("step_", 0) != 0) return -1;
  std::string digits = n.substr(5);
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return -1;
  return std::stoll(digits);
}

// Checks COMPLETE, the manifest and every file's checksum; returns "" if intact, else the reason.
std::string verify(const fs::path& dir) {
  if (!fs::exists(dir / "COMPLETE")) return "incomplete (no COMPLETE marker)";
  std::map<std::string, std::string> kv;
  try {
    kv = parse_manifest(dir / "manifest.txt");
  } catch (const engine::Error& e) {
    return e.what();
  }
  auto it = kv.find("world");
  if (it == kv.end()) return "manifest lacks 'world'";
  int world = std::stoi(it->second);
  for (int r = 0; r < world; ++r) {
    auto f = kv.find("file." + rank_file(r));
    if (f == kv.end()) return "manifest lacks " + rank_file(r);
    fs::path path = dir / rank_file(r);
    if (!fs::exists(path)) return rank_file(r) + " is missing";
    std::error_code ec;
    const auto size = int64_t(fs::file_size(path, ec));
    unsigned long want_sum = 0;
    long want_bytes = -1;
    std::sscanf(f->second.c_str(), "%lx %ld", &want_sum, &want_bytes);
    if (!ec && size != want_bytes)
      return strf("%s is truncated or altered (%ld bytes, the manifest says %ld)", rank_file(r).c_str(), size, want_bytes);
    int64_t bytes = 0;
    uint64_t sum = file_checksum(path.string(), &bytes);
    if (strf("%016lx %ld", (unsigned long)sum, bytes) != f->second) return rank_file(r) + " fails its checksum (corrupt)";
  }
  return "";
}

}  // namespace

std::string model_signature(const ModelConfig& m) {
  return strf("vocab=%ld,hidden=%ld,layers=%ld,heads=%ld,kv_heads=%ld,ffn=%ld,experts=%ld", m.vocab, m.hidden, m.layers,
              m.heads, m.kv_heads, m.ffn, m.experts);
}

std::string ckpt_save(const std::string& run_dir, const ParamStore& params, const ParallelContext& par,
                      const CkptMeta& meta, const std::string& config_ini, int64_t keep) {
  static Hdf5Quiet quiet;
  const int rank = par.world ? par.world->rank() : 0, world = par.world ? par.world->size() : 1;
  const fs::path root = fs::path(run_dir) / "checkpoints";
  const fs::path final_dir = root / strf("step_%08ld", meta.step);
  const fs::path tmp_dir = root / strf("step_%08ld.tmp", meta.step);
  if (rank == 0) {
    std::error_code ec;
    fs::remove_all(tmp_dir, ec);
    fs::create_directories(tmp_dir, ec);
    MONTA_USER_CHECK(!ec, "cannot create checkpoint directory " + tmp_dir.string() + ": " + ec.message());
  }
  if (par.world) par.world->barrier();
  // Every rank: its owned slices -> rank_XXXXX.h5.tmp -> fsync -> rename.
  const fs::path mine = tmp_dir / rank_file(rank);
  const std::string tmp = mine.string() + ".tmp";
  hid_t f = H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  MONTA_USER_CHECK(f >= 0, "cannot create checkpoint file " + tmp + " (directory not writable?)");
  for (const char* g : kGroups) H5Gclose(H5Gcreate2(f, g, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  std::string err;
  for (const auto& p : params.all()) {
    if (!p.owner) continue;
    for (const char* g : kGroups)
      if (err.empty()) err = write_slice(f, tmp, g, p, std::string(g) == "master" ? p.master : (std::string(g) == "adam_m" ? p.m : p.v));
  }
  if (H5Fclose(f) < 0 && err.empty()) err = "cannot close checkpoint file " + tmp + " (disk full?)";
  if (!err.empty()) {
    std::remove(tmp.c_str());  // frees the space; the previous checkpoint stays the newest complete one
    engine::fail_user(err);
  }
  fsync_path(tmp, false);
  rename_or_fail(tmp, mine);
  test_hook_slow_save(rank, meta.step);
  int64_t bytes = 0;
  uint64_t sum = file_checksum(mine.string(), &bytes);
  std::vector<int64_t> all(size_t(2 * world));
  int64_t pair[2] = {int64_t(sum), bytes};
  if (par.world && world > 1)
    par.world->all_gather(Tensor(all.data(), {2 * int64_t(world)}, engine::DType::i64),
                          Tensor(pair, {2}, engine::DType::i64));
  else
    std::copy_n(pair, 2, all.begin());
  if (rank == 0) {
    std::ostringstream m;
    m << "step = " << meta.step << "\nconsecutive_skips = " << meta.consecutive_skips << "\nloader_seed = " << meta.loader_seed
      << "\nloader_epoch = " << meta.loader_epoch << "\nloader_sample = " << meta.loader_sample << "\nworld = " << world
      << "\ntp = " << par.tp << "\nep = " << par.ep << "\nexpert_tp = " << (par.expert_tp ? 1 : 0)
      << "\nsignature = " << meta.signature << "\n";
    for (int r = 0; r < world; ++r)
      m << "file." << rank_file(r) << " = "
        << strf("%016lx %ld", (unsigned long)uint64_t(all[size_t(2 * r)]), all[size_t(2 * r + 1)]) << "\n";
    write_text_atomic(tmp_dir / "config.ini", config_ini);
    write_text_atomic(tmp_dir / "manifest.txt", m.str());
    write_text_atomic(tmp_dir / "COMPLETE", strf("%ld\n", meta.step));
    fsync_path(tmp_dir.string(), true);
    std::error_code ec;
    fs::remove_all(final_dir, ec);
    rename_or_fail(tmp_dir, final_dir);
    fsync_path(root.string(), true);
    // Rotation: keep the newest `keep` complete checkpoints.
    std::vector<std::pair<int64_t, fs::path>> done;
    for (auto& e : fs::directory_iterator(root))
      if (e.is_directory() && step_of(e.path()) >= 0 && fs::exists(e.path() / "COMPLETE")) done.push_back({step_of(e.path()), e.path()});
    std::sort(done.rbegin(), done.rend());
    for (size_t i = size_t(keep); i < done.size(); ++i) fs::remove_all(done[i].second, ec);
  }
  if (par.world) par.world->barrier();
  return final_dir.string();
}

std::string ckpt_find_latest(const std::string& run_dir) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  if (!fs::exists(root)) return "";
  std::vector<std::pair<int64_t, fs::path>> cands;
  for (auto& e : fs::directory_iterator(root))
    if (e.is_directory() && step_of(e.path()) >= 0) cands.push_back({step_of(e.path()), e.path()});
  std::sort(cands.rbegin(), cands.rend());
  for (auto& [step, path] : cands) {
    std::string why = verify(path);
    if (why.empty()) return path.string();
    engine::log_warn("skipping checkpoint " + path.string() + ": " + why);
  }
  return "";
}

CkptMeta ckpt_read_meta(const std::string& dir) {
  const fs::path d = dir;
  MONTA_USER_CHECK(fs::is_directory(d), "checkpoint directory " + dir + " does not exist");
  MONTA_USER_CHECK(fs::exists(d / "COMPLETE"), "checkpoint " + dir + " is incomplete (no COMPLETE marker)");
  auto kv = parse_manifest(d / "manifest.txt");
  const fs::path mp = d / "manifest.txt";
  CkptMeta m;
  try {
    m.step = std::stoll(need_key(kv, "step", mp));
    m.consecutive_skips = std::stoll(need_key(kv, "consecutive_skips", mp));
    m.loader_seed = std::stoull(need_key(kv, "loader_seed", mp));
    m.loader_epoch = std::stoll(need_key(kv, "loader_epoch", mp));
    m.loader_sample = std::stoll(need_key(kv, "loader_sample", mp));
    m.world = std::stoi(need_key(kv, "world", mp));
    m.tp = std::stoi(need_key(kv, "tp", mp));
    m.ep = std::stoi(need_key(kv, "ep", mp));
    m.expert_tp = need_key(kv, "expert_tp", mp) == "1";
  } catch (const std::logic_error&) {
    engine::fail_user("checkpoint manifest " + mp.string() + " has a malformed number (corrupt?)");
  }
  m.signature = need_key(kv, "signature", mp);
  return m;
}

CkptMeta ckpt_check(const std::string& dir, const std::string& signature) {
  CkptMeta meta = ckpt_read_meta(dir);
  const std::string mp = (fs::path(dir) / "manifest.txt").string();
  MONTA_USER_CHECK(meta.signature == signature, "checkpoint " + mp + " is of another model (" + meta.signature +
                                                    ") than the config (" + signature + ")");
  std::string why = verify(dir);
  MONTA_USER_CHECK(why.empty(), "checkpoint " + dir + " cannot be loaded: " + why);
  return meta;
}

CkptMeta ckpt_load(const std::string& dir, ParamStore& params, const std::string& signature, bool check) {
  static Hdf5Quiet quiet;
  CkptMeta meta = check ? ckpt_check(dir, signature) : ckpt_read_meta(dir);
  std::vector<hid_t> files;
  for (int r = 0; r < meta.world; ++r) {
    std::string path = (fs::path(dir) / rank_file(r)).string();
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    MONTA_USER_CHECK(f >= 0, "cannot open checkpoint file " + path + " (not HDF5 or truncated)");
    files.push_back(f);
  }
  for (auto& p : params.all()) {
    const int64_t n = p.master.numel();
    for (const char* g : kGroups) {
      std::vector<double> host(static_cast<size_t>(n), 0.0);
      int64_t got = 0;
      for (hid_t f : files) got += read_intersection(f, std::string(g) + "/" + p.name, p.offset, p.local, host.data());
      MONTA_USER_CHECK(got == n, strf("checkpoint %s covers %ld of the %ld elements of %s/%s on this rank", dir.c_str(),
                                      got, n, g, p.name.c_str()));
      Tensor dst = std::string(g) == "master" ? p.master : (std::string(g) == "adam_m" ? p.m : p.v);
      if (dst.dtype == engine::DType::f64) {
        engine::copy(dst, engine::make_view(host.data(), p.local, engine::DType::f64, engine::Device::cpu));
      } else {
        std::vector<float> fl(host.begin(), host.end());  // values were written from f32: exact round trip
        engine::copy(dst, engine::make_view(fl.data(), p.local, engine::DType::f32, engine::Device::cpu));
      }
    }
  }
  for (hid_t f : files) H5Fclose(f);
  params.refresh_compute();
  return meta;
}

void ckpt_export(const std::string& dir, const std::string& out_path) {
  static Hdf5Quiet quiet;
  CkptMeta meta = ckpt_read_meta(dir);
  std::string why = verify(dir);
  MONTA_USER_CHECK(why.empty(), "checkpoint " + dir + " cannot be exported: " + why);
  std::vector<hid_t> files;
  for (int r = 0; r < meta.world; ++r) {
    std::string path = (fs::path(dir) / rank_file(r)).string();
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    MONTA_USER_CHECK(f >= 0, "cannot open checkpoint file " + path);
    files.push_back(f);
  }
  // Names and full shapes from whichever files hold each tensor.
  std::map<std::string, std::vector<int64_t>> shapes;
  for (hid_t f : files) {
    hid_t g = H5Gopen2(f, "master", H5P_DEFAULT);
    hsize_t count = 0;
    H5Gget_num_objs(g, &count);
    for (hsize_t i = 0; i < count; ++i) {
      char name[512];
      H5Gget_objname_by_idx(g, i, name, sizeof name);
      hid_t ds = H5Dopen2(g, name, H5P_DEFAULT);
      hid_t sp = H5Dget_space(ds);
      int nd = H5Sget_simple_extent_ndims(sp);
      shapes[name] = read_attr(ds, "full_shape", size_t(nd));
      H5Sclose(sp);
      H5Dclose(ds);
    }
    H5Gclose(g);
  }
  std::string tmp = out_path + ".tmp";
  hid_t out = H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  MONTA_USER_CHECK(out >= 0, "cannot create " + tmp + " (directory missing or not writable?)");
  hid_t dcpl = dcpl_no_times();
  for (auto& [name, full] : shapes) {
    int64_t n = 1;
    for (int64_t v : full) n *= v;
    std::vector<double> host(static_cast<size_t>(n), 0.0);
    int64_t got = 0;
    std::vector<int64_t> zero(full.size(), 0);
    for (hid_t f : files) got += read_intersection(f, "master/" + name, zero, full, host.data());
    MONTA_USER_CHECK(got == n, "checkpoint " + dir + " does not cover all of " + name);
    std::vector<float> fl(host.begin(), host.end());
    std::vector<hsize_t> dims(full.begin(), full.end());
    hid_t sp = H5Screate_simple(int(dims.size()), dims.data(), nullptr);
    hid_t ds = H5Dcreate2(out, name.c_str(), H5T_NATIVE_FLOAT, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    MONTA_USER_CHECK(ds >= 0 && H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, fl.data()) >= 0,
                     "cannot write " + name + " to " + tmp + " (disk full?)");
    H5Dclose(ds);
    H5Sclose(sp);
  }
  H5Pclose(dcpl);
  MONTA_USER_CHECK(H5Fclose(out) >= 0, "cannot close " + tmp + " (disk full?)");
  for (hid_t f : files) H5Fclose(f);
  rename_or_fail(tmp, out_path);
}

}  // namespace monta::model
