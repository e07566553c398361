// Checkpoint write/read/export over HDF5 (see checkpoint.h for the layout and the atomicity argument).
#include "model/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
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
#include <type_traits>

#include "engine/check.h"
#include "engine/cuda_backend.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "engine/output_file.h"
#include "engine/parse.h"
#include "model/footprint.h"

namespace fs = std::filesystem;

namespace monta::model {

using engine::strf;

namespace {

const char* kGroups[3] = {"master", "adam_m", "adam_v"};

// The tensor of parameter p that group g (kGroups) stores.
// Bytes of one state group of p as files hold it: the master dtype, whatever the form in memory (bf16 moments, a
// ZeRO shard, host offload; ParamStore::state_read/state_write convert).
int64_t file_bytes(const ParamStore& params, const Param& p) {
  return p.numel() * int64_t(engine::dtype_size(params.master_dtype()));
}

// A shard whose close failed (disk full) stays in HDF5's table of open files, and HDF5 1.10's exit-time cleanup
// then crashes retrying its flush, turning the one-line error into a segfault. Checkpoint code closes every
// handle it opens, so nothing needs that cleanup; it must be declined before the library initialises.
const bool kHdf5NoAtexit = [] { return H5dont_atexit() >= 0; }();

struct Hdf5Quiet {
  Hdf5Quiet() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};

// File w of rank r's shard: rank_00003.h5 for the first (the only one with checkpoint.writers 1, as before), then
// rank_00003.1.h5, rank_00003.2.h5, ...
std::string rank_file(int r, int w = 0) { return w == 0 ? strf("rank_%05d.h5", r) : strf("rank_%05d.%d.h5", r, w); }

// Every file of a checkpoint saved by `world` ranks with `writers` files each, rank by rank.
std::vector<std::string> shard_files(int world, int writers) {
  std::vector<std::string> out;
  for (int r = 0; r < world; ++r)
    for (int w = 0; w < writers; ++w) out.push_back(rank_file(r, w));
  return out;
}

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

// The shard checksum: FNV-1a-style over 64-bit words in four independent lanes (a byte-wise FNV ran at
// ~0.35 GB/s and dominated saving an 11 GB checkpoint); 32-byte groups in file order, the final n % 32 bytes byte by
// byte into lane 0. Fed in pieces of any size, so the writer checksums each block from memory as it writes it.
class Checksum {
 public:
  void feed(const void* data, size_t n) {
    auto p = static_cast<const unsigned char*>(data);
    total_ += int64_t(n);
    if (npend_) {
      const size_t take = std::min(sizeof pend_ - npend_, n);
      std::memcpy(pend_ + npend_, p, take);
      npend_ += take, p += take, n -= take;
      if (npend_ < sizeof pend_) return;
      group(pend_);
      npend_ = 0;
    }
    for (; n >= 32; p += 32, n -= 32) group(p);
    std::memcpy(pend_, p, n);
    npend_ = n;
  }
  uint64_t finish() const {
    uint64_t l0 = lane_[0];
    for (size_t i = 0; i < npend_; ++i) l0 = (l0 ^ pend_[i]) * kPrime;
    uint64_t h = l0;
    for (int j = 1; j < 4; ++j) h = (h ^ lane_[j]) * kPrime;
    return h;
  }
  int64_t bytes() const { return total_; }

 private:
  static constexpr uint64_t kPrime = 1099511628211ull;
  void group(const unsigned char* q) {
    for (size_t j = 0; j < 4; ++j) {
      uint64_t x;
      std::memcpy(&x, q + j * 8, 8);
      lane_[j] = (lane_[j] ^ x) * kPrime;
    }
  }
  uint64_t lane_[4] = {1469598103934665603ull, 0x9e3779b97f4a7c15ull, 0xc2b2ae3d27d4eb4full, 0x165667b19e3779f9ull};
  unsigned char pend_[32];
  size_t npend_ = 0;
  int64_t total_ = 0;
};

// nullopt when the file cannot be opened (the callers turn that into their own verdict or error).
std::optional<uint64_t> file_checksum(const std::string& path, int64_t* bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return std::nullopt;
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  Checksum sum;
  std::vector<char> buf(size_t(16) << 20);
  bool ok = true;
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ok = n == 0;
      break;
    }
    sum.feed(buf.data(), size_t(n));
  }
  ::close(fd);
  if (!ok) return std::nullopt;
  if (bytes) *bytes = sum.bytes();
  return sum.finish();
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

// One dataset of a shard: where its bytes go in the file and where they come from (the snapshot, or the
// parameter itself for a synchronous save on the CPU).
struct ShardBlock {
  std::string name;  // "master/layers.0.wq"
  int64_t offset = 0, bytes = 0;
  const void* src = nullptr;
};

// A shard whose HDF5 structure is on disk (every dataset allocated, contiguous, not yet written) and whose data the
// writer puts in place with plain large writes: no HDF5 call leaves the main thread (the library is not thread-safe).
struct ShardPlan {
  std::string tmp, path;  // rank_R.h5.tmp, renamed to rank_R.h5 once written and synced
  int64_t file_bytes = 0;
  std::vector<ShardBlock> blocks;  // sorted by offset
  int rank = 0;
  int64_t step = 0;
};

struct ShardResult {
  uint64_t sum = 0;
  int64_t bytes = 0;
  std::string err;  // "" or one sentence (a user error, raised by the main thread)
  double ms = 0;
};

// Creates `tmp` with the owned slices assigned to it (file_of[3 * parameter index + group] == file) as allocated
// contiguous datasets (attributes full_shape and offset; no fill values, no times, aligned at 4 KiB so the data can
// be written in page-aligned blocks) and records where each dataset's bytes live. Every file has the three groups.
// src(p, g) gives the bytes of group g of parameter p. Returns "" or the reason it failed (the file is removed then).
template <class Src>
std::string shard_create(ShardPlan& plan, const ParamStore& params, const std::vector<int>& file_of, int file, Src src) {
  const std::string failed = "cannot create checkpoint file " + plan.tmp + " (directory not writable or disk full?)";
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_alignment(fapl, 1 << 16, 1 << 12);
  hid_t f = H5Fcreate(plan.tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  if (f < 0) return failed;
  for (const char* g : kGroups) H5Gclose(H5Gcreate2(f, g, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  hid_t dcpl = dcpl_no_times();
  H5Pset_layout(dcpl, H5D_CONTIGUOUS);
  H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
  H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
  bool ok = true;
  for (size_t pi = 0; pi < params.all().size(); ++pi) {
    const Param& p = params.all()[pi];
    if (!p.owner) continue;
    for (int gi = 0; gi < 3 && ok; ++gi) {
      if (file_of[3 * pi + size_t(gi)] != file) continue;
      const int64_t t_bytes = file_bytes(params, p);  // as the file holds it (fp32 moments whatever is in memory)
      const hid_t type = params.master_dtype() == engine::DType::f64 ? H5T_NATIVE_DOUBLE : H5T_NATIVE_FLOAT;
      const std::string name = std::string(kGroups[gi]) + "/" + p.name;
      std::vector<hsize_t> dims(p.local.begin(), p.local.end());
      hid_t space = H5Screate_simple(int(dims.size()), dims.data(), nullptr);
      hid_t ds = H5Dcreate2(f, name.c_str(), type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
      H5Sclose(space);
      ok = ds >= 0;
      hsize_t nd = p.full.size();
      hid_t aspace = H5Screate_simple(1, &nd, nullptr);
      for (auto [an, vals] : {std::pair{"full_shape", &p.full}, std::pair{"offset", &p.offset}}) {
        if (!ok) break;
        hid_t a = H5Acreate2(ds, an, H5T_NATIVE_INT64, aspace, H5P_DEFAULT, H5P_DEFAULT);
        ok = a >= 0 && H5Awrite(a, H5T_NATIVE_INT64, vals->data()) >= 0;
        if (a >= 0) H5Aclose(a);
      }
      H5Sclose(aspace);
      if (ok && t_bytes > 0) {
        const haddr_t at = H5Dget_offset(ds);
        ok = at != HADDR_UNDEF;
        plan.blocks.push_back({name, int64_t(at), t_bytes, src(p, gi)});
      }
      if (ds >= 0) H5Dclose(ds);
    }
  }
  H5Pclose(dcpl);
  if (H5Fclose(f) < 0) ok = false;
  std::error_code ec;
  plan.file_bytes = ok ? int64_t(fs::file_size(plan.tmp, ec)) : 0;
  if (!ok || ec) {
    std::remove(plan.tmp.c_str());
    return failed;
  }
  std::sort(plan.blocks.begin(), plan.blocks.end(), [](const ShardBlock& x, const ShardBlock& y) { return x.offset < y.offset; });
  return "";
}

// Which file of a rank's shard each owned dataset goes to (index 3 * parameter index + group; -1 for datasets the
// rank does not own): largest first, each to the file with the fewest bytes so far, so `writers` threads finish
// together. Deterministic (equal state gives equal files); empty tensors go to file 0.
std::vector<int> assign_files(const ParamStore& params, int writers) {
  std::vector<int> file_of(3 * params.all().size(), -1);
  std::vector<std::pair<int64_t, size_t>> order;  // (bytes, dataset), largest first, ties in parameter order
  for (size_t pi = 0; pi < params.all().size(); ++pi) {
    const Param& p = params.all()[pi];
    if (!p.owner) continue;
    for (int gi = 0; gi < 3; ++gi) order.push_back({file_bytes(params, p), 3 * pi + size_t(gi)});
  }
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<int64_t> load(size_t(writers), 0);
  for (const auto& [bytes, ds] : order) {
    const size_t w = bytes == 0 ? 0 : size_t(std::min_element(load.begin(), load.end()) - load.begin());
    file_of[ds] = int(w);
    load[w] += bytes;
  }
  return file_of;
}

// Test hook (tests/resume/kill_during_save.sh, async_overlap.sh): MONTA_TEST_SLOW_SAVE_MS=n makes the writer of every
// rank's first file sleep n ms before it writes (the snapshot is taken, the manifest does not exist; with several
// writers the rank's other files are written meanwhile): the window in which a crash must leave the previous checkpoint
// the newest usable one. With checkpoint.async training goes on meanwhile, so what is written must be the snapshot,
// not the parameters as they are by then.
void test_hook_slow_save(int rank, int64_t step) {
  const char* v = std::getenv("MONTA_TEST_SLOW_SAVE_MS");
  if (!v || !*v) return;
  std::fprintf(stderr, "monta: test hook: rank %d pid %d sleeping %s ms in the save of step %ld\n", rank, int(::getpid()),
               v, step);
  std::fflush(stderr);
  std::this_thread::sleep_for(std::chrono::milliseconds(engine::parse_int64(v, "MONTA_TEST_SLOW_SAVE_MS")));
}

// The checksum of a created shard in file order: the HDF5 metadata between datasets read from the file (a few KiB,
// written when the shard was laid out and never touched by the writer), each dataset's bytes from memory. It reads
// nothing the writes produce, so it runs on its own thread beside them and the disk never waits for the hash.
// Returns "" or the reason.
std::string shard_checksum(const ShardPlan& plan, int fd, Checksum& sum) {
  std::vector<char> gap;
  auto read_into_sum = [&](int64_t from, int64_t to) {
    while (from < to) {
      gap.resize(size_t(std::min<int64_t>(to - from, 1 << 22)));
      const ssize_t n = ::pread(fd, gap.data(), gap.size(), from);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      sum.feed(gap.data(), size_t(n));
      from += n;
    }
    return true;
  };
  int64_t pos = 0;
  for (const ShardBlock& b : plan.blocks) {
    if (b.offset < pos || b.offset + b.bytes > plan.file_bytes || !read_into_sum(pos, b.offset))
      return "cannot write checkpoint file " + plan.tmp + " (unexpected HDF5 layout or unreadable)";
    sum.feed(b.src, size_t(b.bytes));
    pos = b.offset + b.bytes;
  }
  return read_into_sum(pos, plan.file_bytes) ? "" : "cannot read back checkpoint file " + plan.tmp;
}

// Writes the data of a created shard file in pieces of up to 64 MiB: the page-aligned bulk of each dataset with
// O_DIRECT when `direct` (straight from the snapshot to the disk: no copy into the page cache, no dirty-page
// throttling, the same path as the raw rate `bench checkpoint` compares with), the rest (sub-page tails, unaligned
// sources, filesystems without O_DIRECT) through the page cache with write-back started at once (sync_file_range);
// the checksum is computed beside it (shard_checksum); then fsync and rename into place. Plain POSIX: safe on a
// background thread. Never fails the process: the result carries the reason.
ShardResult shard_write(const ShardPlan& plan, bool direct) {
  ShardResult r;
  const auto t0 = std::chrono::steady_clock::now();
  const int fd = ::open(plan.tmp.c_str(), O_RDWR);
  if (fd < 0) {
    r.err = "cannot open checkpoint file " + plan.tmp + " for writing: " + std::strerror(errno);
    return r;
  }
  int dfd = direct ? ::open(plan.tmp.c_str(), O_WRONLY | O_DIRECT) : -1;  // -1 where the filesystem refuses it
  Checksum sum;
  std::string sum_err;
  std::thread hasher([&] { sum_err = shard_checksum(plan, fd, sum); });
  constexpr int64_t kPiece = int64_t(64) << 20, kPage = 4096;
  for (const ShardBlock& b : plan.blocks) {
    if (b.offset < 0 || b.offset + b.bytes > plan.file_bytes) {
      r.err = "cannot write checkpoint file " + plan.tmp + " (unexpected HDF5 layout)";
      break;
    }
    const char* src = static_cast<const char*>(b.src);
    const bool aligned = b.offset % kPage == 0 && reinterpret_cast<uintptr_t>(src) % kPage == 0;
    const int64_t bulk = aligned ? b.bytes / kPage * kPage : 0;  // what O_DIRECT may take
    for (int64_t done = 0; done < b.bytes && r.err.empty();) {
      const bool use_direct = dfd >= 0 && done < bulk;
      const int64_t piece = std::min(kPiece, (use_direct ? bulk : b.bytes) - done);
      int64_t w = 0;
      while (w < piece) {
        const ssize_t n = ::pwrite(use_direct ? dfd : fd, src + done + w, size_t(piece - w), b.offset + done + w);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EINVAL && use_direct) break;  // O_DIRECT refused after all: the page cache from here on
        if (n <= 0) {
          r.err = "cannot write dataset " + b.name + " to checkpoint file " + plan.tmp + " (disk full?): " +
                  std::strerror(n < 0 ? errno : ENOSPC);
          break;
        }
        w += n;
      }
      if (w < piece && r.err.empty()) {  // the EINVAL above: retry this piece buffered
        ::close(dfd);
        dfd = -1;
        continue;
      }
      if (!use_direct) ::sync_file_range(fd, b.offset + done, piece, SYNC_FILE_RANGE_WRITE);
      done += piece;
    }
    if (!r.err.empty()) break;
  }
  hasher.join();
  if (r.err.empty()) r.err = sum_err;
  if (r.err.empty() && ::fsync(fd) != 0)
    r.err = "cannot write checkpoint file " + plan.tmp + " (disk full?): " + std::strerror(errno);
  if (dfd >= 0) ::close(dfd);
  ::close(fd);
  if (r.err.empty() && std::rename(plan.tmp.c_str(), plan.path.c_str()) != 0)
    r.err = "cannot rename " + plan.tmp + " to " + plan.path + ": " + std::strerror(errno);
  if (!r.err.empty()) {
    std::remove(plan.tmp.c_str());  // frees the space; the previous checkpoint stays the newest complete one
    return r;
  }
  r.sum = sum.finish();
  r.bytes = sum.bytes();
  r.ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// A rank's files, each on its own thread (the first on the calling one). results[i] is plans[i]'s; the returned
// milliseconds are the wall time of the whole.
double write_shards(const std::vector<ShardPlan>& plans, bool direct, std::vector<ShardResult>& results) {
  const auto t0 = std::chrono::steady_clock::now();
  results.assign(plans.size(), ShardResult{});
  std::vector<std::thread> others;
  for (size_t i = 1; i < plans.size(); ++i)
    others.emplace_back([&, i] { results[i] = shard_write(plans[i], direct); });
  test_hook_slow_save(plans[0].rank, plans[0].step);
  results[0] = shard_write(plans[0], direct);
  for (auto& t : others) t.join();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
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
  constexpr int64_t kMax = INT64_MAX, kMaxRanks = 1 << 24, kMaxWriters = 256;
  CkptMeta& m = out.meta;
  m.step = field("step", 0, kMax);
  m.consecutive_skips = field("consecutive_skips", 0, kMax);
  m.loader_epoch = field("loader_epoch", 0, kMax);
  m.loader_sample = field("loader_sample", 0, kMax);
  m.world = int(field("world", 1, kMaxRanks));
  m.tp = int(field("tp", 1, kMaxRanks));
  m.ep = int(field("ep", 1, kMaxRanks));
  m.expert_tp = field("expert_tp", 0, 1) == 1;
  m.writers = kv.count("writers") ? int(field("writers", 1, kMaxWriters)) : 1;  // absent: before checkpoint.writers
  if (!why.empty()) return why;
  auto seed = kv.find("loader_seed");
  if (seed == kv.end()) return "manifest.txt lacks 'loader_seed' (corrupt?)";
  auto sv = engine::try_parse_uint64(seed->second);
  if (!sv) return "manifest.txt has loader_seed = '" + seed->second + "', not an unsigned 64-bit integer (corrupt?)";
  m.loader_seed = *sv;
  auto sig = kv.find("signature");
  if (sig == kv.end() || sig->second.empty()) return "manifest.txt lacks 'signature' (corrupt?)";
  m.signature = sig->second;
  for (const std::string& f : shard_files(m.world, m.writers))
    if (!out.files.count(f)) return "manifest.txt lacks " + f;
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
// (row-major over want_shape), as T (float: no conversion of the stored fp32). A stored slice that is exactly the
// wanted box (same layout) is read whole into dst; otherwise (resharding) a file hyperslab into a memory hyperslab of
// dst.
// Returns the number of elements copied.
template <class T>
int64_t read_intersection(hid_t file, const std::string& name, const std::vector<int64_t>& want_off,
                          const std::vector<int64_t>& want_shape, T* dst) {
  const hid_t mem_type = std::is_same_v<T, float> ? H5T_NATIVE_FLOAT : H5T_NATIVE_DOUBLE;
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
    MONTA_USER_CHECK(H5Dread(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) >= 0,
                     "cannot read " + name + " from a checkpoint file (truncated?)");
    H5Sclose(space);
    H5Dclose(ds);
    return n;
  }
  // The stored box, selected in the file, lands at its place in dst through a memory hyperslab: HDF5 copies whole
  // rows, no staging buffer, no per-element scatter.
  std::vector<hsize_t> mem_dims(want_shape.begin(), want_shape.end()), mem_start(static_cast<size_t>(nd));
  for (int d = 0; d < nd; ++d) mem_start[size_t(d)] = hsize_t(int64_t(start[size_t(d)]) + off[size_t(d)] - want_off[size_t(d)]);
  HDF5_CHECK(H5Sselect_hyperslab(space, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr));
  hid_t mem = H5Screate_simple(nd, mem_dims.data(), nullptr);
  HDF5_CHECK(H5Sselect_hyperslab(mem, H5S_SELECT_SET, mem_start.data(), nullptr, count.data(), nullptr));
  MONTA_USER_CHECK(H5Dread(ds, mem_type, mem, space, H5P_DEFAULT, dst) >= 0,
                   "cannot read " + name + " from a checkpoint file (truncated?)");
  H5Sclose(mem);
  H5Sclose(space);
  H5Dclose(ds);
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

// Checks COMPLETE, the manifest and every file's size and (with `checksums`) checksum; returns "" if intact, else the
// reason. Without checksums it reads only the manifest: the check before a load that verifies while it reads.
std::string verify(const fs::path& dir, Manifest* keep = nullptr, bool checksums = true) {
  Manifest man;
  std::string why = read_manifest(dir, man);
  if (!why.empty()) return why;
  for (const std::string& f : shard_files(man.meta.world, man.meta.writers)) {
    const std::string& entry = man.files[f];
    const size_t sp = entry.find(' ');
    auto want_bytes = sp == std::string::npos ? std::nullopt : engine::try_parse_int64(entry.substr(sp + 1));
    if (!want_bytes) return "manifest.txt has a malformed entry for " + f + " (corrupt?)";
    fs::path path = dir / f;
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) return f + " is missing";
    const auto size = int64_t(fs::file_size(path, ec));
    if (!ec && size != *want_bytes)
      return strf("%s is truncated or altered (%ld bytes, the manifest says %ld)", f.c_str(), size, *want_bytes);
    if (!checksums) continue;
    int64_t bytes = 0;
    auto sum = file_checksum(path.string(), &bytes);
    if (!sum) return f + " cannot be read";
    if (strf("%016lx %ld", (unsigned long)*sum, bytes) != entry) return f + " fails its checksum (corrupt)";
  }
  if (keep) *keep = man;
  return "";
}

void warn_unchecked(const std::string& dir) {
  engine::log_warn("checkpoint " + dir + " has no manifest checksum (written by an older monta); its manifest is trusted as it is");
}

}  // namespace

std::string model_signature(const ModelConfig& m) {
  std::string sig = strf("vocab=%ld,hidden=%ld,layers=%ld,heads=%ld,kv_heads=%ld,ffn=%ld,experts=%ld", m.vocab,
                         m.hidden, m.layers, m.heads, m.kv_heads, m.ffn, m.experts);
  // Routing options that change the function or the tensors a checkpoint holds (the balancing bias is a tensor of
  // its own); named only when on, so checkpoints of the default routing keep their signature. The bias's rate is a
  // training setting like the learning rate: a run may resume with another.
  if (m.router_bias_update > 0) sig += ",router_bias";
  if (m.router_norm_topk) sig += ",norm_topk";
  return sig;
}

namespace {

// One save between its snapshot and its finalization.
struct PendingSave {
  std::string run_dir, config_ini;
  CkptMeta meta;
  int64_t keep = 0;
  int rank = 0, world = 1, tp = 1, ep = 1;
  bool expert_tp = true;
  comm::Communicator* comm = nullptr;
  bool direct = true;
  std::vector<ShardPlan> plans;  // this rank's files (checkpoint.writers)
  double pause_ms = 0;  // the snapshot: what training waited for
  std::chrono::steady_clock::time_point start;
  std::vector<ShardResult> results;
  double write_ms = 0;  // wall time of writing every file of this rank
  std::thread writer;
  std::atomic<bool> written{false};
};

// The first writer's error of a save ("" when every file was written), and the bytes of this rank's files.
std::string shard_error(const PendingSave& ps) {
  for (const ShardResult& r : ps.results)
    if (!r.err.empty()) return r.err;
  return "";
}
int64_t shard_bytes(const PendingSave& ps) {
  int64_t n = 0;
  for (const ShardResult& r : ps.results) n += r.bytes;
  return n;
}

// Collective: every rank's checksum and size to rank 0, which writes config.ini, the manifest and COMPLETE, renames
// step_N.tmp into place and rotates; then a barrier. The only part of a save that communicates.
std::string save_collective(PendingSave& ps) {
  const int rank = ps.rank, world = ps.world, writers = int(ps.results.size());
  const CkptMeta& meta = ps.meta;
  const int64_t keep = ps.keep;
  const std::string& config_ini = ps.config_ini;
  const fs::path root = fs::path(ps.run_dir) / "checkpoints";
  const fs::path final_dir = root / strf("step_%08ld", meta.step);
  const fs::path tmp_dir = root / strf("step_%08ld.tmp", meta.step);
  struct {
    int tp, ep;
    bool expert_tp;
    comm::Communicator* world;
  } par{ps.tp, ps.ep, ps.expert_tp, ps.comm};
  // (checksum, bytes) of every file, rank by rank (every rank has the same number of files).
  std::vector<int64_t> all(size_t(2 * world * writers)), mine;
  for (const ShardResult& res : ps.results) mine.insert(mine.end(), {int64_t(res.sum), res.bytes});
  if (par.world && world > 1)
    par.world->all_gather(Tensor(all.data(), {int64_t(all.size())}, engine::DType::i64),
                          Tensor(mine.data(), {int64_t(mine.size())}, engine::DType::i64));
  else
    all = mine;
  if (rank == 0) {
    std::ostringstream m;
    m << "step = " << meta.step << "\nconsecutive_skips = " << meta.consecutive_skips << "\nloader_seed = " << meta.loader_seed
      << "\nloader_epoch = " << meta.loader_epoch << "\nloader_sample = " << meta.loader_sample << "\nworld = " << world
      << "\ntp = " << par.tp << "\nep = " << par.ep << "\nexpert_tp = " << (par.expert_tp ? 1 : 0)
      << "\nwriters = " << writers << "\nsignature = " << meta.signature << "\n";
    const std::vector<std::string> names = shard_files(world, writers);
    for (size_t i = 0; i < names.size(); ++i)
      m << "file." << names[i] << " = "
        << strf("%016lx %ld", (unsigned long)uint64_t(all[2 * i]), all[2 * i + 1]) << "\n";
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
  if (ps.comm) ps.comm->barrier();
  return final_dir.string();
}

}  // namespace

struct CkptSaver::State {
  std::unique_ptr<PendingSave> pending;
  void* snapshot = nullptr;  // the host copy of this rank's owned state, reused by every save
  size_t snapshot_bytes = 0;
  bool pinned = false;
};

CkptSaver::CkptSaver(bool async, CkptWriteOptions io) : async_(async), io_(io), s_(std::make_unique<State>()) {
  MONTA_CHECK(io_.writers >= 1, "CkptSaver: writers must be at least 1");
}

CkptSaver::~CkptSaver() {
  // No collective here (this runs while unwinding too): a save not finalized stays step_N.tmp, never loaded.
  if (s_->pending && s_->pending->writer.joinable()) s_->pending->writer.join();
  if (s_->snapshot) (s_->pinned ? engine::cudab::host_free_pinned(s_->snapshot) : std::free(s_->snapshot));
}

bool CkptSaver::in_flight() const { return s_->pending != nullptr; }

int64_t CkptSaver::snapshot_bytes() const { return int64_t(s_->snapshot_bytes); }

void CkptSaver::reserve(const ParamStore& params) {
  const size_t need = size_t(checkpoint_host_bytes(params.all(), params.master_dtype()));
  if (need <= s_->snapshot_bytes) return;
  const auto t0 = std::chrono::steady_clock::now();
  if (s_->snapshot) (s_->pinned ? engine::cudab::host_free_pinned(s_->snapshot) : std::free(s_->snapshot));
  s_->pinned = params.device() == engine::Device::cuda;
  s_->snapshot = s_->pinned ? engine::cudab::host_alloc_pinned(need) : std::aligned_alloc(4096, std::max<size_t>(need, 4096));
  s_->snapshot_bytes = s_->snapshot ? need : 0;
  MONTA_USER_CHECK(s_->snapshot, strf("the checkpoint snapshot (%.3f GiB of %s host memory) does not fit on this host; "
                                      "use --checkpoint.async false on the CPU, or more ranks",
                                      double(need) / double(1 << 30), s_->pinned ? "pinned" : "plain"));
  // Touched now (pinned memory already is): first-touch page faults would otherwise double the first save's pause.
  if (!s_->pinned) std::memset(s_->snapshot, 0, need);
  engine::log_info(strf("arena %-16s %10.2f MiB (host%s, allocated in %.1f ms)", "ckpt snapshot", double(need) / (1 << 20),
                        s_->pinned ? ", pinned" : "",
                        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count()));
}

void CkptSaver::save(const std::string& run_dir, const ParamStore& params, const ParallelContext& par,
                     const CkptMeta& meta, const std::string& config_ini, int64_t keep) {
  static Hdf5Quiet quiet;
  if (s_->pending) finalize(strf("the save of step %ld", meta.step));
  auto ps = std::make_unique<PendingSave>();
  ps->start = std::chrono::steady_clock::now();
  ps->run_dir = run_dir, ps->config_ini = config_ini, ps->meta = meta, ps->keep = keep;
  ps->rank = par.world ? par.world->rank() : 0, ps->world = par.world ? par.world->size() : 1;
  ps->tp = par.tp, ps->ep = par.ep, ps->expert_tp = par.expert_tp, ps->comm = par.world;
  const fs::path root = fs::path(run_dir) / "checkpoints";
  const fs::path tmp_dir = root / strf("step_%08ld.tmp", meta.step);
  if (ps->rank == 0) {
    std::error_code ec;
    fs::remove_all(tmp_dir, ec);
    fs::create_directories(tmp_dir, ec);
    MONTA_USER_CHECK(!ec, "cannot create checkpoint directory " + tmp_dir.string() + ": " + ec.message());
  }
  if (par.world) par.world->barrier();
  // The snapshot: this rank's owned state copied to host memory (pinned when it comes from the GPU), in the form
  // files hold (ParamStore::state_read: fp32 moments whatever train.optimizer_state), so training may change the
  // parameters while the writer reads. A synchronous save writes from the parameters where they are that form on
  // the host.
  bool direct = !async_;
  for (const auto& p : params.all())
    for (int g = 0; g < ParamStore::kStateGroups && direct; ++g)
      direct = (!p.owner && !p.zero_comm) || (params.state_direct(p, g) && params.state(p, g).device == engine::Device::cpu);
  std::map<std::pair<const Param*, int>, const void*> where;  // (parameter, state group) -> its bytes in the snapshot
  if (!direct) {
    reserve(params);
    char* at = static_cast<char*>(s_->snapshot);
    for (const auto& p : params.all()) {
      // A sharded state (train.zero 1) is gathered by every rank of its group, in the same order everywhere.
      if (!p.owner && !p.zero_comm) continue;
      for (int g = 0; g < ParamStore::kStateGroups; ++g) {
        if (p.numel() == 0) continue;
        const Tensor host = engine::make_view(at, p.local, params.master_dtype(), engine::Device::cpu);
        params.state_read(p, g, p.owner ? host : Tensor());
        if (!p.owner) continue;
        where[{&p, g}] = at;
        at += (host.bytes() + 4095) / 4096 * 4096;
      }
    }
  }
  const double copy_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - ps->start).count();
  const std::vector<int> file_of = assign_files(params, io_.writers);
  ps->direct = io_.direct;
  ps->plans.resize(size_t(io_.writers));
  for (int w = 0; w < io_.writers; ++w) {
    ShardPlan& plan = ps->plans[size_t(w)];
    plan.path = (tmp_dir / rank_file(ps->rank, w)).string();
    plan.tmp = plan.path + ".tmp";
    plan.rank = ps->rank;
    plan.step = meta.step;
    const std::string err = shard_create(plan, params, file_of, w, [&](const Param& p, int g) -> const void* {
      return direct ? params.state(p, g).data : where.at({&p, g});
    });
    if (!err.empty()) engine::fail_user(err);
  }
  ps->pause_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - ps->start).count();
  s_->pending = std::move(ps);
  PendingSave* q = s_->pending.get();
  if (!async_) {
    q->write_ms = write_shards(q->plans, q->direct, q->results);
    q->written = true;
    finalize("");
    return;
  }
  engine::log_info(strf("checkpoint step %ld: snapshot of %.3f GiB in %.1f ms (the training pause: copy %.1f ms, shard "
                        "layout %.1f ms); writing it in the background",
                        meta.step, double(s_->snapshot_bytes) / double(1 << 30), q->pause_ms, copy_ms,
                        q->pause_ms - copy_ms));
  q->writer = std::thread([q] {
    q->write_ms = write_shards(q->plans, q->direct, q->results);
    if (q->rank == 0 && shard_error(*q).empty())
      engine::log_info(strf("checkpoint step %ld: rank 0 wrote its shard in the background (%.3f GB in %zu files in "
                            "%.1f ms, %.2f GB/s)",
                            q->meta.step, double(shard_bytes(*q)) / 1e9, q->plans.size(), q->write_ms,
                            double(shard_bytes(*q)) / 1e6 / std::max(q->write_ms, 1e-3)));
    q->written = true;
  });
}

std::string CkptSaver::finalize(const std::string& waiter) {
  if (!s_->pending) return "";
  PendingSave& q = *s_->pending;
  if (q.writer.joinable()) {
    if (!q.written) {
      const auto t0 = std::chrono::steady_clock::now();
      engine::log_info(strf("checkpoint step %ld is still being written; %s waits for it", q.meta.step,
                            waiter.empty() ? "the end of training" : waiter.c_str()));
      q.writer.join();
      engine::log_info(strf("checkpoint step %ld: waited %.1f ms for its background write", q.meta.step,
                            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count()));
    } else {
      q.writer.join();
    }
  }
  std::unique_ptr<PendingSave> done = std::move(s_->pending);
  if (!shard_error(*done).empty()) engine::fail_user(shard_error(*done));
  const std::string dir = save_collective(*done);
  const double total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - done->start).count();
  if (async_)
    engine::log_info(strf("saved checkpoint %s: training paused %.1f ms for the snapshot; written in %.1f ms (%.2f GB/s "
                          "on rank 0), complete %.1f ms after the save began",
                          dir.c_str(), done->pause_ms, done->write_ms,
                          double(shard_bytes(*done)) / 1e6 / std::max(done->write_ms, 1e-3), total_ms));
  else
    engine::log_info(strf("saved checkpoint %s in %.1f ms", dir.c_str(), total_ms));
  return dir;
}

std::string ckpt_save(const std::string& run_dir, const ParamStore& params, const ParallelContext& par,
                      const CkptMeta& meta, const std::string& config_ini, int64_t keep) {
  CkptSaver saver(false);
  saver.save(run_dir, params, par, meta, config_ini, keep);
  return (fs::path(run_dir) / "checkpoints" / strf("step_%08ld", meta.step)).string();
}

namespace {

// ckpt_find_latest among the checkpoints below step `below`, with or without the files' checksums.
std::string find_latest(const std::string& run_dir, bool checksums, int64_t below) {
  for (auto& [step, path] : list_steps(fs::path(run_dir) / "checkpoints", true)) {
    if (step >= below) continue;
    Manifest man;
    std::string why = verify(path, &man, checksums);
    if (why.empty()) {
      if (man.unchecked) warn_unchecked(path.string());
      return path.string();
    }
    engine::log_warn("skipping checkpoint " + path.string() + ": " + why);
  }
  return "";
}

// ckpt_problem, the files' checksums optional.
std::optional<std::string> problem_of(const std::string& dir, const std::string& signature, bool checksums) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return "checkpoint directory " + dir + " does not exist";
  if (!fs::exists(fs::path(dir) / "COMPLETE", ec)) return "checkpoint " + dir + " is incomplete (no COMPLETE marker)";
  Manifest man;
  std::string why = verify(dir, &man, checksums);
  if (!why.empty()) return "checkpoint " + dir + " cannot be loaded: " + why;
  if (!signature.empty() && man.meta.signature != signature)
    return "checkpoint " + (fs::path(dir) / "manifest.txt").string() + " is of another model (" + man.meta.signature +
           ") than the config (" + signature + ")";
  if (man.unchecked) warn_unchecked(dir);
  return std::nullopt;
}

}  // namespace

std::string ckpt_find_latest(const std::string& run_dir) { return find_latest(run_dir, true, INT64_MAX); }

std::string ckpt_resolve_resume(const std::string& run_dir, const std::string& resume, bool overwrite,
                                const std::string& signature, CkptMeta* meta, bool checksums, int64_t below) {
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
    if (auto problem = problem_of(resume, signature, checksums)) engine::fail_user(*problem);
    m = ckpt_read_meta(resume);
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
    if (resume == "auto") chosen = find_latest(run_dir, checksums, below);
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
      m = ckpt_read_meta(chosen);  // its files were just verified by find_latest
      MONTA_USER_CHECK(signature.empty() || m.signature == signature,
                       "checkpoint " + (fs::path(chosen) / "manifest.txt").string() + " is of another model (" +
                           m.signature + ") than the config (" + signature + ")");
    }
  }
  if (meta) *meta = m;
  return chosen;
}

std::optional<std::string> ckpt_problem(const std::string& dir, const std::string& signature) {
  return problem_of(dir, signature, true);
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

namespace {

// A dataset of a shard file as the verifying load streams it: where its bytes lie, and whether it is exactly a slice
// this rank holds (param, group), read straight into place; otherwise it is read for the checksum only.
struct StoredBlock {
  int64_t offset = 0, bytes = 0;
  size_t param = 0;
  int group = 0;
  bool whole = false;
};

// Calls fn(name, dataset) for every dataset of an open HDF5 group, in the file's order; the dataset is closed after.
template <class F>
void for_each_dataset(hid_t g, F&& fn) {
  hsize_t count = 0;
  H5Gget_num_objs(g, &count);
  for (hsize_t i = 0; i < count; ++i) {
    char name[512];
    H5Gget_objname_by_idx(g, i, name, sizeof name);
    hid_t ds = H5Dopen2(g, name, H5P_DEFAULT);
    if (ds < 0) continue;
    fn(std::string(name), ds);
    H5Dclose(ds);
  }
}

// The datasets of an open shard file in file order (contiguous: one extent each; empty ones have none).
std::vector<StoredBlock> stored_blocks(hid_t f, const ParamStore& params) {
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < params.all().size(); ++i) index[params.all()[i].name] = i;
  std::vector<StoredBlock> out;
  for (int gi = 0; gi < 3; ++gi) {
    hid_t g = H5Gopen2(f, kGroups[gi], H5P_DEFAULT);
    if (g < 0) continue;
    for_each_dataset(g, [&](const std::string& name, hid_t ds) {
      StoredBlock b;
      const haddr_t at = H5Dget_offset(ds);
      b.bytes = int64_t(H5Dget_storage_size(ds));
      b.offset = at == HADDR_UNDEF ? -1 : int64_t(at);
      b.group = gi;
      auto it = index.find(name);
      if (it != index.end() && b.offset >= 0) {
        const Param& p = params.all()[it->second];
        hid_t space = H5Dget_space(ds), type = H5Dget_type(ds);
        const int nd = H5Sget_simple_extent_ndims(space);
        std::vector<hsize_t> dims(size_t(std::max(nd, 0)));
        H5Sget_simple_extent_dims(space, dims.data(), nullptr);
        const bool same_shape = nd == int(p.local.size()) && std::equal(dims.begin(), dims.end(), p.local.begin(),
                                                                        [](hsize_t d, int64_t l) { return int64_t(d) == l; });
        b.param = it->second;
        b.whole = same_shape && read_attr(ds, "offset", size_t(nd)) == p.offset && H5Tget_class(type) == H5T_FLOAT &&
                  H5Tget_size(type) == engine::dtype_size(params.master_dtype()) && b.bytes == file_bytes(params, p);
        H5Tclose(type);
        H5Sclose(space);
      }
      if (b.offset >= 0 && b.bytes > 0) out.push_back(b);
    });
    H5Gclose(g);
  }
  std::sort(out.begin(), out.end(), [](const StoredBlock& x, const StoredBlock& y) { return x.offset < y.offset; });
  return out;
}

// Reads one shard file from start to end with its checksum: the whole slices this rank holds go straight into place
// (the parameter on the CPU; `stage`, then the device, on a GPU) and are marked in `filled`; everything else (HDF5
// metadata, other ranks' slices) is read for the checksum only. Returns "" or the reason (checksum, read error).
std::string stream_file(const std::string& path, const std::string& want, const std::vector<StoredBlock>& blocks,
                        ParamStore& params, void* stage, std::vector<char>& filled) {
  const std::string name = fs::path(path).filename().string();
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return name + " cannot be read";
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  Checksum sum;
  std::vector<char> scratch;
  bool ok = true;
  auto read_to = [&](char* dst, int64_t from, int64_t n) {  // n bytes at `from` into dst, in pieces of 64 MiB
    for (int64_t done = 0; done < n && ok;) {
      const ssize_t got = ::pread(fd, dst + done, size_t(std::min<int64_t>(n - done, int64_t(64) << 20)), from + done);
      if (got < 0 && errno == EINTR) continue;
      ok = got > 0;
      if (ok) sum.feed(dst + done, size_t(got)), done += got;
    }
  };
  auto skip = [&](int64_t from, int64_t to) {  // read for the checksum only
    scratch.resize(size_t(16) << 20);
    for (int64_t at = from; at < to && ok; at += int64_t(scratch.size()))
      read_to(scratch.data(), at, std::min<int64_t>(to - at, int64_t(scratch.size())));
  };
  int64_t pos = 0;
  for (const StoredBlock& b : blocks) {
    if (b.offset < pos) {
      ok = false;
      break;
    }
    skip(pos, b.offset);
    if (b.whole) {
      Param& p = params.all()[b.param];
      const Tensor dst = params.state(p, b.group);
      const bool in_place = params.state_direct(p, b.group) && dst.device == engine::Device::cpu;
      read_to(static_cast<char*>(in_place ? dst.data : stage), b.offset, b.bytes);
      if (ok && !in_place)
        params.state_write(p, b.group, engine::make_view(stage, p.local, params.master_dtype(), engine::Device::cpu));
      filled[3 * b.param + size_t(b.group)] = ok;
    } else {
      skip(b.offset, b.offset + b.bytes);
    }
    pos = b.offset + b.bytes;
  }
  struct stat st {};
  if (ok && ::fstat(fd, &st) == 0) skip(pos, int64_t(st.st_size));
  ::close(fd);
  if (!ok) return name + " cannot be read";
  if (strf("%016lx %ld", (unsigned long)sum.finish(), sum.bytes()) != want) return name + " fails its checksum (corrupt)";
  return "";
}

// The load. With `man` (verify while loading) every file is streamed whole by one rank, the one that saved it modulo
// `world`'s size, checksummed as it is read (stream_file); whatever a rank still lacks (other ranks' files, resharded
// slices) it reads by HDF5 hyperslabs; the ranks then agree on the verdict (collective over `world`). Returns "" or
// the problem.
std::string load_slices(const std::string& dir, const CkptMeta& meta, ParamStore& params, const Manifest* man,
                        comm::Communicator* world) {
  static Hdf5Quiet quiet;
  const std::vector<std::string> names = shard_files(meta.world, meta.writers);
  std::vector<hid_t> files;
  for (const std::string& name : names) {
    std::string path = (fs::path(dir) / name).string();
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_sieve_buf_size(fapl, size_t(32) << 20);  // resharding reads strided rows: fetch them in large pieces
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    MONTA_USER_CHECK(f >= 0, "cannot open checkpoint file " + path + " (not HDF5 or truncated)");
    files.push_back(f);
  }
  // Each tensor is read into its place: straight into the parameter on the CPU, through one reused host buffer
  // (the largest tensor) from the GPU; stored fp32 is read as fp32 (no conversion).
  // The staging buffer for the GPU: page-locked (host-to-device copies at full speed), pageable if that fails.
  size_t largest = 0;
  for (const auto& p : params.all())
    for (int gi = 0; gi < ParamStore::kStateGroups; ++gi)
      if (!params.state_direct(p, gi) || params.state(p, gi).device != engine::Device::cpu)
        largest = std::max(largest, size_t(p.numel()) * engine::dtype_size(params.master_dtype()));
  std::unique_ptr<void, void (*)(void*)> pinned(largest ? engine::cudab::host_alloc_pinned(largest) : nullptr,
                                                [](void* q) { engine::cudab::host_free_pinned(q); });
  std::vector<char> staging;
  if (largest && !pinned) staging = host_buffer<char>(int64_t(largest), "the checkpoint staging buffer");
  void* const stage = pinned ? pinned.get() : staging.data();
  std::vector<char> filled(3 * params.all().size(), 0);
  int64_t bad = 0;  // 1 + the index of the first file that failed, 0 when none
  if (man) {
    const int rank = world ? world->rank() : 0, size = world ? world->size() : 1;
    for (size_t i = 0; i < names.size() && bad == 0; ++i) {
      if (int(i) / meta.writers % size != rank) continue;
      const std::string why = stream_file((fs::path(dir) / names[i]).string(), man->files.at(names[i]),
                                          stored_blocks(files[i], params), params, stage, filled);
      if (!why.empty()) bad = int64_t(i) + 1;
    }
    if (world && size > 1) {  // every rank learns the first bad file: max over ranks of (files - index)
      int64_t v = bad ? int64_t(names.size()) + 1 - bad : 0;
      world->all_reduce(Tensor(&v, {1}, engine::DType::i64), comm::ReduceOp::max);
      bad = v ? int64_t(names.size()) + 1 - v : 0;
    }
  }
  std::string problem;
  if (bad) {
    const std::string& name = names[size_t(bad - 1)];
    struct stat st {};
    problem = "checkpoint " + dir + " cannot be loaded: " + name +
              (::stat((fs::path(dir) / name).c_str(), &st) == 0 ? " fails its checksum (corrupt)" : " cannot be read");
  }
  for (size_t pi = 0; pi < params.all().size() && problem.empty(); ++pi) {
    Param& p = params.all()[pi];
    const int64_t n = p.numel();
    for (int gi = 0; gi < ParamStore::kStateGroups; ++gi) {
      if (filled[3 * pi + size_t(gi)]) continue;
      const char* g = kGroups[gi];
      const Tensor dst = params.state(p, gi);
      const bool in_place = params.state_direct(p, gi) && dst.device == engine::Device::cpu;
      void* host = in_place ? dst.data : stage;
      const std::string name = std::string(g) + "/" + p.name;
      int64_t got = 0;
      for (hid_t f : files)
        got += params.master_dtype() == engine::DType::f64
                   ? read_intersection(f, name, p.offset, p.local, static_cast<double*>(host))
                   : read_intersection(f, name, p.offset, p.local, static_cast<float*>(host));
      MONTA_USER_CHECK(got == n, strf("checkpoint %s covers %ld of the %ld elements of %s/%s on this rank", dir.c_str(),
                                      got, n, g, p.name.c_str()));
      if (!in_place) params.state_write(p, gi, engine::make_view(host, p.local, params.master_dtype(), engine::Device::cpu));
    }
  }
  for (hid_t f : files) H5Fclose(f);
  if (problem.empty()) params.refresh_compute();
  return problem;
}

}  // namespace

CkptMeta ckpt_load(const std::string& dir, ParamStore& params, const std::string& signature, CkptVerify verify,
                   comm::Communicator* world) {
  if (verify == CkptVerify::while_loading) {
    CkptMeta meta;
    if (auto problem = ckpt_load_verified(dir, params, signature, world, &meta)) engine::fail_user(*problem);
    return meta;
  }
  const CkptMeta meta = verify == CkptVerify::before ? ckpt_check(dir, signature) : ckpt_read_meta(dir);
  const std::string problem = load_slices(dir, meta, params, nullptr, world);
  MONTA_USER_CHECK(problem.empty(), problem);
  return meta;
}

std::optional<std::string> ckpt_load_verified(const std::string& dir, ParamStore& params, const std::string& signature,
                                              comm::Communicator* world, CkptMeta* meta) {
  if (auto problem = problem_of(dir, signature, false)) return problem;
  Manifest man;
  std::string why = read_manifest(dir, man);
  if (!why.empty()) return "checkpoint " + dir + " cannot be loaded: " + why;
  if (meta) *meta = man.meta;
  const std::string problem = load_slices(dir, man.meta, params, &man, world);
  if (!problem.empty()) return problem;
  return std::nullopt;
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
  for (const std::string& name : shard_files(meta.world, meta.writers)) inputs.push_back((fs::path(dir) / name).string());
  const std::string inside = ckpt_dir_containing(out_path);
  MONTA_USER_CHECK(inside.empty(), "--out " + out_path + " lies inside the checkpoint directory " + inside +
                                       "; write the export outside it");
  engine::check_output_file(out_path, inputs, force, "--out");
  std::vector<hid_t> files;
  for (const std::string& path : inputs) {
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    MONTA_USER_CHECK(f >= 0, "cannot open checkpoint file " + path);
    files.push_back(f);
  }
  // Names and full shapes from whichever files hold each tensor.
  std::map<std::string, std::vector<int64_t>> shapes;
  for (hid_t f : files) {
    hid_t g = H5Gopen2(f, "master", H5P_DEFAULT);
    for_each_dataset(g, [&](const std::string& name, hid_t ds) {
      hid_t sp = H5Dget_space(ds);
      int nd = H5Sget_simple_extent_ndims(sp);
      shapes[name] = read_attr(ds, "full_shape", size_t(nd));
      H5Sclose(sp);
    });
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
