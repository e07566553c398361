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
#include <new>
#include <optional>
#include <sstream>
#include <thread>

#include "engine/check.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "engine/output_file.h"
#include "engine/parse.h"

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

// A host staging buffer for one tensor; a tensor too large for this host's memory is a user error naming it,
// not an uncaught std::bad_alloc.
template <class T>
std::vector<T> host_buffer(int64_t n, const std::string& what) {
  try {
    return std::vector<T>(static_cast<size_t>(n));
  } catch (const std::exception&) {
    engine::fail_user(strf("%s (%ld elements) does not fit in this host's memory for staging", what.c_str(), (long)n));
  }
}

// FNV-1a 64 of a text (the manifest's own checksum line).
uint64_t text_checksum(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : text) h = (h ^ ch) * 1099511628211ull;
  return h;
}

// nullopt when the file cannot be opened (the callers turn that into their own verdict or error).
std::optional<uint64_t> file_checksum(const std::string& path, int64_t* bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) return std::nullopt;
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
  std::this_thread::sleep_for(std::chrono::milliseconds(engine::parse_int64(v, "MONTA_TEST_SLOW_SAVE_MS")));
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
  std::vector<float> host = host_buffer<float>(t.dtype == engine::DType::f64 ? 0 : t.numel(), "checkpoint tensor " + p.name);
  std::vector<double> hostd;
  hid_t type = H5T_NATIVE_FLOAT;
  const void* data = host.data();
  if (t.dtype == engine::DType::f64) {
    hostd = host_buffer<double>(t.numel(), "checkpoint tensor " + p.name);
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

constexpr const char* kManifestChecksumKey = "manifest_checksum";

// A checkpoint's manifest as read and checked: the metadata, the "file.rank_XXXXX.h5" entries, and whether it
// predates the manifest checksum (written by an older monta: trusted as it stands, with a warning).
struct Manifest {
  CkptMeta meta;
  std::map<std::string, std::string> files;
  bool unchecked = false;
};

// Reads <dir>/manifest.txt; returns "" or the reason it cannot be used (never fails: a verdict is a value, so
// `resume auto` can fall back to an older checkpoint). Every number is checked whole and for range, and the
// manifest's checksum line covers every line above it, so a hand edit (step, loader position) is refused.
std::string read_manifest(const fs::path& dir, Manifest& out) {
  std::error_code ec;
  if (!fs::exists(dir / "COMPLETE", ec)) return "incomplete (no COMPLETE marker)";
  const fs::path path = dir / "manifest.txt";
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) return "manifest.txt is missing or unreadable";
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return "manifest.txt cannot be read";
  const std::string tag = std::string(kManifestChecksumKey) + " = ";
  const size_t at = text.rfind("\n" + tag);
  if (at == std::string::npos) {
    out.unchecked = true;
  } else {
    std::string got = text.substr(at + 1 + tag.size());
    while (!got.empty() && (got.back() == '\n' || got.back() == '\r')) got.pop_back();
    if (got != strf("%016lx", (unsigned long)text_checksum(text.substr(0, at + 1))))
      return "manifest.txt fails its checksum (edited by hand or corrupt)";
    text.resize(at + 1);
  }
  std::map<std::string, std::string> kv;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    auto eq = line.find(" = ");
    if (eq == std::string::npos) continue;
    const std::string key = line.substr(0, eq), value = line.substr(eq + 3);
    if (key.rfind("file.", 0) == 0)
      out.files[key.substr(5)] = value;
    else
      kv[key] = value;
  }
  std::string why;
  auto field = [&](const char* key, int64_t lo, int64_t hi) -> int64_t {
    if (!why.empty()) return 0;
    auto it = kv.find(key);
    if (it == kv.end()) {
      why = strf("manifest.txt lacks '%s' (corrupt?)", key);
      return 0;
    }
    auto v = engine::try_parse_int64(it->second);
    if (!v || *v < lo || *v > hi) why = strf("manifest.txt has %s = '%s', not an integer in [%ld, %ld] (corrupt?)", key,
                                             it->second.c_str(), (long)lo, (long)hi);
    return v ? *v : 0;
  };
  constexpr int64_t kMax = INT64_MAX, kMaxRanks = 1 << 24;
  CkptMeta& m = out.meta;
  m.step = field("step", 0, kMax);
  m.consecutive_skips = field("consecutive_skips", 0, kMax);
  m.loader_epoch = field("loader_epoch", 0, kMax);
  m.loader_sample = field("loader_sample", 0, kMax);
  m.world = int(field("world", 1, kMaxRanks));
  m.tp = int(field("tp", 1, kMaxRanks));
  m.ep = int(field("ep", 1, kMaxRanks));
  m.expert_tp = field("expert_tp", 0, 1) == 1;
  if (!why.empty()) return why;
  auto seed = kv.find("loader_seed");
  if (seed == kv.end()) return "manifest.txt lacks 'loader_seed' (corrupt?)";
  auto sv = engine::try_parse_uint64(seed->second);
  if (!sv) return "manifest.txt has loader_seed = '" + seed->second + "', not an unsigned 64-bit integer (corrupt?)";
  m.loader_seed = *sv;
  auto sig = kv.find("signature");
  if (sig == kv.end() || sig->second.empty()) return "manifest.txt lacks 'signature' (corrupt?)";
  m.signature = sig->second;
  for (int r = 0; r < m.world; ++r)
    if (!out.files.count(rank_file(r))) return "manifest.txt lacks " + rank_file(r);
  return "";
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
  std::vector<double> buf = host_buffer<double>(n, "checkpoint slice " + name);
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

// N of a directory named step_N; -1 for anything else (step_N.tmp, other names, N beyond int64).
int64_t step_of(const fs::path& p) {
  std::string n = p.filename().string();
  if (n.rfind("step_", 0) != 0) return -1;
  std::string digits = n.substr(5);
  if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return -1;
  return engine::try_parse_int64(digits).value_or(-1);
}

// The step_N directories under root, newest first ({} when root is missing or unreadable). Names that look like
// a step but are not one (step_<21 digits>) are skipped with a warning, never parsed into an exception.
std::vector<std::pair<int64_t, fs::path>> list_steps(const fs::path& root, bool warn) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path p = it->path();
    std::error_code dec;
    if (!it->is_directory(dec)) continue;
    const std::string n = p.filename().string();
    if (step_of(p) >= 0)
      out.push_back({step_of(p), p});
    else if (warn && n.rfind("step_", 0) == 0 && n.find('.') == std::string::npos)
      engine::log_warn("ignoring " + p.string() + ": not a checkpoint of this run (its step number is not a 64-bit integer)");
  }
  std::sort(out.rbegin(), out.rend());
  return out;
}

// Checks COMPLETE, the manifest and every file's size and checksum; returns "" if intact, else the reason.
std::string verify(const fs::path& dir, Manifest* keep = nullptr) {
  Manifest man;
  std::string why = read_manifest(dir, man);
  if (!why.empty()) return why;
  for (int r = 0; r < man.meta.world; ++r) {
    const std::string& entry = man.files[rank_file(r)];
    const size_t sp = entry.find(' ');
    auto want_bytes = sp == std::string::npos ? std::nullopt : engine::try_parse_int64(entry.substr(sp + 1));
    if (!want_bytes) return "manifest.txt has a malformed entry for " + rank_file(r) + " (corrupt?)";
    fs::path path = dir / rank_file(r);
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) return rank_file(r) + " is missing";
    const auto size = int64_t(fs::file_size(path, ec));
    if (!ec && size != *want_bytes)
      return strf("%s is truncated or altered (%ld bytes, the manifest says %ld)", rank_file(r).c_str(), size, *want_bytes);
    int64_t bytes = 0;
    auto sum = file_checksum(path.string(), &bytes);
    if (!sum) return rank_file(r) + " cannot be read";
    if (strf("%016lx %ld", (unsigned long)*sum, bytes) != entry) return rank_file(r) + " fails its checksum (corrupt)";
  }
  if (keep) *keep = man;
  return "";
}

void warn_unchecked(const std::string& dir) {
  engine::log_warn("checkpoint " + dir + " has no manifest checksum (written by an older monta); its manifest is trusted as it is");
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
  const auto checked = file_checksum(mine.string(), &bytes);
  MONTA_USER_CHECK(checked.has_value(), "cannot read back checkpoint file " + mine.string());
  const uint64_t sum = *checked;
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
    const uint64_t manifest_sum = text_checksum(m.str());  // over every line above its own
    m << kManifestChecksumKey << " = " << strf("%016lx", (unsigned long)manifest_sum) << "\n";
    write_text_atomic(tmp_dir / "config.ini", config_ini);
    write_text_atomic(tmp_dir / "manifest.txt", m.str());
    write_text_atomic(tmp_dir / "COMPLETE", strf("%ld\n", meta.step));
    fsync_path(tmp_dir.string(), true);
    std::error_code ec;
    fs::remove_all(final_dir, ec);
    rename_or_fail(tmp_dir, final_dir);
    fsync_path(root.string(), true);
    // Rotation: the checkpoint just written is the run's newest; keep it and the `keep` - 1 before it. Complete
    // checkpoints of higher steps are from an earlier timeline (a run started over with checkpoint.overwrite, or
    // resumed from an older checkpoint): left in place, `resume auto` would pick them over this run's latest.
    std::vector<std::pair<int64_t, fs::path>> done;
    for (auto& [step, path] : list_steps(root, false)) {
      if (!fs::exists(path / "COMPLETE", ec)) continue;
      if (step <= meta.step) {
        done.push_back({step, path});
        continue;
      }
      engine::log_warn("removing checkpoint " + path.string() + ": newer than this run's latest save (an earlier run's)");
      fs::remove_all(path, ec);
    }
    for (size_t i = size_t(keep); i < done.size(); ++i) fs::remove_all(done[i].second, ec);
  }
  if (par.world) par.world->barrier();
  return final_dir.string();
}

std::string ckpt_find_latest(const std::string& run_dir) {
  for (auto& [step, path] : list_steps(fs::path(run_dir) / "checkpoints", true)) {
    Manifest man;
    std::string why = verify(path, &man);
    if (why.empty()) {
      if (man.unchecked) warn_unchecked(path.string());
      return path.string();
    }
    engine::log_warn("skipping checkpoint " + path.string() + ": " + why);
  }
  return "";
}

std::string ckpt_resolve_resume(const std::string& run_dir, const std::string& resume, bool overwrite,
                                const std::string& signature, CkptMeta* meta) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  const bool present = fs::exists(root, ec);
  MONTA_USER_CHECK(!present || fs::is_directory(root, ec),
                   "cannot use checkpoint directory " + root.string() + ": it exists and is not a directory; move it away");
  const auto steps = present ? list_steps(root, resume.empty() || resume == "auto")
                             : std::vector<std::pair<int64_t, fs::path>>{};
  CkptMeta m;
  std::string chosen;
  if (!resume.empty() && resume != "auto") {
    m = ckpt_check(resume, signature);
    // An older checkpoint of this very run directory: the first save would remove the newer ones (Rotation).
    std::error_code e1, e2;
    if (!overwrite && fs::weakly_canonical(fs::path(resume), e1).parent_path() == fs::weakly_canonical(root, e2)) {
      std::string newer;
      for (auto& [step, path] : steps)
        if (step > m.step && newer.empty() && fs::exists(path / "COMPLETE", ec)) newer = path.string();
      MONTA_USER_CHECK(newer.empty(), "continuing from " + resume + " would remove the newer checkpoints of this run " +
                                          "directory at its first save (newest " + newer + "); pass " +
                                          "--checkpoint.overwrite true to go on, or resume into another train.run_dir");
    }
    chosen = resume;
  } else if (!steps.empty()) {
    const std::string newest = steps.front().second.string();
    MONTA_USER_CHECK(resume == "auto" || overwrite,
                     "run directory " + run_dir + " holds checkpoints (newest " + newest +
                         "); continue them with --checkpoint.resume auto, or start a new run with another train.run_dir "
                         "(--checkpoint.overwrite true replaces them)");
    if (resume == "auto") chosen = ckpt_find_latest(run_dir);
    MONTA_USER_CHECK(!chosen.empty() || overwrite,
                     strf("--checkpoint.resume auto: none of the %zu checkpoints under %s is usable (see the warnings "
                          "above; newest %s); repair or move them, or pass --checkpoint.overwrite true to start afresh "
                          "over them",
                          steps.size(), root.string().c_str(), newest.c_str()));
    if (chosen.empty())
      engine::log_warn(strf("checkpoint.overwrite: starting afresh; the %zu checkpoints under %s (newest %s) are "
                            "removed at the first save",
                            steps.size(), root.string().c_str(), newest.c_str()));
    if (!chosen.empty()) {
      m = ckpt_read_meta(chosen);  // its files were just verified by ckpt_find_latest
      MONTA_USER_CHECK(signature.empty() || m.signature == signature,
                       "checkpoint " + (fs::path(chosen) / "manifest.txt").string() + " is of another model (" +
                           m.signature + ") than the config (" + signature + ")");
    }
  }
  if (meta) *meta = m;
  return chosen;
}

std::optional<std::string> ckpt_problem(const std::string& dir, const std::string& signature) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return "checkpoint directory " + dir + " does not exist";
  if (!fs::exists(fs::path(dir) / "COMPLETE", ec)) return "checkpoint " + dir + " is incomplete (no COMPLETE marker)";
  Manifest man;
  std::string why = verify(dir, &man);
  if (!why.empty()) return "checkpoint " + dir + " cannot be loaded: " + why;
  if (!signature.empty() && man.meta.signature != signature)
    return "checkpoint " + (fs::path(dir) / "manifest.txt").string() + " is of another model (" + man.meta.signature +
           ") than the config (" + signature + ")";
  if (man.unchecked) warn_unchecked(dir);
  return std::nullopt;
}

void ckpt_check_intact(const std::string& dir) {
  auto problem = ckpt_problem(dir, "");
  if (problem) engine::fail_user(*problem);
}

CkptMeta ckpt_read_meta(const std::string& dir) {
  const fs::path d = dir;
  std::error_code ec;
  MONTA_USER_CHECK(fs::is_directory(d, ec), "checkpoint directory " + dir + " does not exist");
  Manifest man;
  std::string why = read_manifest(d, man);
  if (why == "incomplete (no COMPLETE marker)") engine::fail_user("checkpoint " + dir + " is " + why);
  MONTA_USER_CHECK(why.empty(), "checkpoint " + dir + " cannot be loaded: " + why);
  return man.meta;
}

CkptMeta ckpt_check(const std::string& dir, const std::string& signature) {
  auto problem = ckpt_problem(dir, signature);
  if (problem) engine::fail_user(*problem);
  return ckpt_read_meta(dir);
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
      std::vector<double> host = host_buffer<double>(n, "checkpoint tensor " + p.name);
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

std::string ckpt_dir_containing(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::absolute(path, ec), ec);
  if (ec) return "";
  for (fs::path a = p.parent_path(); !a.empty(); a = a.parent_path()) {
    std::error_code e;
    const std::string name = a.filename().string();
    const bool manifest = fs::exists(a / "manifest.txt", e);  // alone, a common name: with COMPLETE or a shard
    if ((manifest && (fs::exists(a / "COMPLETE", e) || fs::exists(a / rank_file(0), e))) ||
        (name.rfind("step_", 0) == 0 && a.parent_path().filename() == "checkpoints"))
      return a.string();
    if (a == a.root_path()) break;
  }
  return "";
}

namespace {

// ckpt_export without its guard against running out of host memory.
void export_full_tensors(const std::string& dir, const std::string& out_path, bool force) {
  static Hdf5Quiet quiet;
  std::vector<std::string> inputs;
  {
    auto problem = ckpt_problem(dir, "");
    if (problem) engine::fail_user(*problem);
  }
  CkptMeta meta = ckpt_read_meta(dir);
  for (int r = 0; r < meta.world; ++r) inputs.push_back((fs::path(dir) / rank_file(r)).string());
  const std::string inside = ckpt_dir_containing(out_path);
  MONTA_USER_CHECK(inside.empty(), "--out " + out_path + " lies inside the checkpoint directory " + inside +
                                       "; write the export outside it");
  engine::check_output_file(out_path, inputs, force, "--out");
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
  const std::string tmp = out_path + strf(".tmp.%d", int(::getpid()));
  hid_t out = H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  MONTA_USER_CHECK(out >= 0, "cannot create " + tmp + " (directory missing or not writable?)");
  hid_t dcpl = dcpl_no_times();
  for (auto& [name, full] : shapes) {
    int64_t n = 1;
    for (int64_t v : full) n *= v;
    std::vector<double> host = host_buffer<double>(n, "tensor " + name);
    int64_t got = 0;
    std::vector<int64_t> zero(full.size(), 0);
    for (hid_t f : files) got += read_intersection(f, "master/" + name, zero, full, host.data());
    if (got != n) {
      H5Fclose(out);
      std::remove(tmp.c_str());
      engine::fail_user("checkpoint " + dir + " does not cover all of " + name);
    }
    std::vector<float> fl(host.begin(), host.end());
    std::vector<hsize_t> dims(full.begin(), full.end());
    hid_t sp = H5Screate_simple(int(dims.size()), dims.data(), nullptr);
    hid_t ds = H5Dcreate2(out, name.c_str(), H5T_NATIVE_FLOAT, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    const bool ok = ds >= 0 && H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, fl.data()) >= 0;
    if (ds >= 0) H5Dclose(ds);
    if (!ok) {
      H5Sclose(sp);
      H5Fclose(out);
      std::remove(tmp.c_str());
      engine::fail_user("cannot write " + name + " to " + tmp + " (disk full?)");
    }
    H5Sclose(sp);
  }
  H5Pclose(dcpl);
  for (hid_t f : files) H5Fclose(f);
  if (H5Fclose(out) < 0) {
    std::remove(tmp.c_str());
    engine::fail_user("cannot close " + tmp + " (disk full?)");
  }
  fsync_path(tmp, false);
  std::error_code ec;
  fs::rename(tmp, out_path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    engine::fail_user("cannot rename " + tmp + " to " + out_path + ": " + ec.message());
  }
}

}  // namespace

void ckpt_export(const std::string& dir, const std::string& out_path, bool force) {
  try {
    export_full_tensors(dir, out_path, force);
  } catch (const std::bad_alloc&) {
    std::remove((out_path + strf(".tmp.%d", int(::getpid()))).c_str());
    engine::fail_user("monta export: a tensor of checkpoint " + dir + " does not fit in this host's memory (export holds "
                      "one full tensor at a time, in double precision)");
  }
}

}  // namespace monta::model
