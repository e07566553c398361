// The checkpoint benchmark (model/checkpoint_bench.h): raw O_DIRECT (or cache-dropped) sequential I/O as the
// ceiling, then CkptSaver's save, the checksum pass, the same-layout load and a resharded load, each from the disk.
#include "model/checkpoint_bench.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>
#include <vector>

#include "engine/check.h"
#include "engine/files.h"
#include "engine/log.h"
#include "engine/memory.h"
#include "model/checkpoint.h"
#include "model/parallel_setup.h"
#include "model/params.h"

namespace fs = std::filesystem;

namespace monta::model {
namespace {

using engine::strf;

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Drops `path` from the page cache (fsync, then POSIX_FADV_DONTNEED), so the next read comes from the disk.
void drop_cached(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

void drop_cached_dir(const std::string& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) drop_cached(it->path().string());
}

// The disk's ceiling: `bytes` written sequentially in 64 MiB blocks and fsynced, then read back. With O_DIRECT where
// the filesystem allows it (no page cache either way); else buffered, the cache dropped before the read. Returns
// {write s, read s}; `how` says which.
std::pair<double, double> raw_write_read(const std::string& path, int64_t bytes, std::string* how) {
  constexpr size_t kBlock = size_t(64) << 20;
  void* buf = nullptr;
  MONTA_USER_CHECK(::posix_memalign(&buf, 4096, kBlock) == 0, "cannot allocate the raw I/O buffer");
  uint64_t x = 0x9e3779b97f4a7c15ull;  // incompressible bytes
  for (size_t i = 0; i < kBlock / 8; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    static_cast<uint64_t*>(buf)[i] = x;
  }
  const int64_t rounded = (bytes + 4095) / 4096 * 4096;
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0644);
  const bool direct = fd >= 0;
  if (!direct) fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  MONTA_USER_CHECK(fd >= 0, "cannot create " + path + ": " + std::strerror(errno));
  *how = direct ? "O_DIRECT" : "buffered + fsync, page cache dropped with posix_fadvise(DONTNEED) before reading";
  const double t0 = now_s();
  for (int64_t done = 0; done < rounded;) {
    const ssize_t n = ::write(fd, buf, size_t(std::min<int64_t>(int64_t(kBlock), rounded - done)));
    MONTA_USER_CHECK(n > 0, "cannot write " + path + " (disk full?): " + std::strerror(errno));
    done += n;
  }
  ::fsync(fd);
  const double t1 = now_s();
  ::close(fd);
  if (!direct) drop_cached(path);
  fd = ::open(path.c_str(), O_RDONLY | (direct ? O_DIRECT : 0));
  MONTA_USER_CHECK(fd >= 0, "cannot read " + path + ": " + std::strerror(errno));
  const double t2 = now_s();
  for (;;) {
    const ssize_t n = ::read(fd, buf, kBlock);
    MONTA_USER_CHECK(n >= 0, "cannot read " + path + ": " + std::strerror(errno));
    if (n == 0) break;
  }
  const double t3 = now_s();
  ::close(fd);
  std::free(buf);
  std::remove(path.c_str());
  return {t1 - t0, t3 - t2};
}

// FNV-style hash of every owned tensor's master/m/v bytes (copied to the host one tensor at a time): the state
// before the save against the state after the load, outside the timed regions.
uint64_t state_hash(const ParamStore& ps) {
  uint64_t h = 1469598103934665603ull;
  std::vector<char> host;
  for (const auto& p : ps.all())
    for (const engine::Tensor* t : {&p.master, &p.m, &p.v}) {
      host.resize(t->bytes());
      engine::Tensor v = *t;
      v.data = host.data();
      v.device = engine::Device::cpu;
      engine::read_to_host(v, *t, "checkpoint bench digest");
      for (size_t i = 0; i + 8 <= host.size(); i += 8) {
        uint64_t w;
        std::memcpy(&w, host.data() + i, 8);
        h = (h ^ w) * 1099511628211ull;
      }
    }
  return h;
}

struct Row {
  std::string op;
  double bytes = 0, seconds = 0;
  std::string note;
};

// The table (GB/s and the share of the raw rate of the same direction) and, when json is set, the JSON.
void report(const std::vector<Row>& rows, const Config& c, const std::string& config, int world, engine::Device device,
            double total_bytes, int64_t file_bytes, const std::string& how, double pause, double raw_w, double raw_r,
            const std::string& json) {
  std::ostringstream table, js;
  table << strf("%-34s %12s %10s %9s %9s  %s\n", "op", "GB", "time_s", "GB/s", "of raw", "note");
  js << "{\"config\": \"" << config << "\", \"world\": " << world << ", \"tp\": " << c.parallel.tp << ", \"ep\": "
     << c.parallel.ep << ", \"device\": \"" << engine::device_name(device) << "\", \"async\": "
     << (c.checkpoint.async ? "true" : "false") << ", \"state_bytes\": " << strf("%.0f", total_bytes)
     << ", \"checkpoint_bytes\": " << file_bytes << ", \"raw_io\": \"" << how << "\", \"pause_ms\": "
     << strf("%.3f", pause * 1e3) << ", \"rows\": [";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    const double gbps = r.bytes / 1e9 / std::max(r.seconds, 1e-9);
    const bool reading = r.op.find("load") != std::string::npos || r.op.find("verify") != std::string::npos ||
                         r.op == "raw read";
    const double raw = total_bytes / 1e9 / std::max(reading ? raw_r : raw_w, 1e-9);
    const bool is_raw = r.op.rfind("raw", 0) == 0;
    table << strf("%-34s %12.3f %10.3f %9.3f %8.0f%%  %s\n", r.op.c_str(), r.bytes / 1e9, r.seconds, gbps,
                  is_raw ? 100.0 : 100.0 * gbps / raw, r.note.c_str());
    js << (i ? ", " : "") << "{\"op\": \"" << r.op << "\", \"bytes\": " << strf("%.0f", r.bytes) << ", \"seconds\": "
       << strf("%.6f", r.seconds) << ", \"gbps\": " << strf("%.4f", gbps) << ", \"of_raw\": "
       << strf("%.4f", is_raw ? 1.0 : gbps / raw) << ", \"note\": \"" << r.note << "\"}";
  }
  js << "]}\n";
  engine::log_info(table.str() + strf("training pause for the save: %.1f ms (checkpoint.async %s)", pause * 1e3,
                                      c.checkpoint.async ? "true" : "false"));
  if (!json.empty()) engine::write_text_file(json, js.str());
}

}  // namespace

void bench_checkpoint(const Config& c, const std::string& config_name, const std::string& config_ini, std::string dir,
                      const std::string& json) {
  if (dir.empty()) dir = (fs::path(c.train.run_dir) / "bench_checkpoint").string();
  const engine::Device device = pick_device(c.train.device);
  const bool gpu = device == engine::Device::cuda;
  ParallelSetup ps = setup_parallel(c, device);
  const int world = ps.ctx.world ? ps.ctx.world->size() : 1, rank = ps.ctx.world ? ps.ctx.world->rank() : 0;
  auto barrier = [&] {
    if (ps.ctx.world) ps.ctx.world->barrier();
  };
  if (rank == 0) {
    std::error_code ec;
    MONTA_USER_CHECK(!fs::exists(dir, ec) || (fs::is_directory(dir, ec) && fs::is_empty(dir, ec)),
                     "--dir " + dir + " exists and is not an empty directory; the benchmark writes and removes files "
                     "there, so give it a new or empty one");
    fs::create_directories(dir, ec);
    MONTA_USER_CHECK(!ec, "cannot create " + dir + ": " + ec.message());
  }
  barrier();

  ParamStore store(c.model, ps.ctx, device, engine::DType::f32, gpu ? engine::DType::bf16 : engine::DType::f32);
  store.init_for_benchmark();
  int64_t owned = 0;  // this rank's bytes of state (what its shard holds, less HDF5 metadata)
  for (const auto& p : store.all())
    if (p.owner) owned += 3 * int64_t(p.master.bytes());
  const uint64_t before = state_hash(store);
  const std::string sig = model_signature(c.model);
  engine::log_info(strf("bench checkpoint: %s, %d rank(s) (tp %d, ep %d) on %s; %.3f GB of state on rank 0; writing in %s",
                        config_name.empty() ? "defaults" : config_name.c_str(), world, c.parallel.tp, c.parallel.ep,
                        engine::device_name(device), double(owned) / 1e9, dir.c_str()));
  std::vector<Row> rows;
  double total_bytes = double(owned);  // summed over ranks below
  if (ps.ctx.world && world > 1) {
    std::vector<int64_t> all(static_cast<size_t>(world));
    ps.ctx.world->all_gather(engine::Tensor(all.data(), {int64_t(world)}, engine::DType::i64),
                             engine::Tensor(&owned, {1}, engine::DType::i64));
    total_bytes = 0;
    for (int64_t b : all) total_bytes += double(b);
  }

  // The disk's ceiling, every rank at once on its own file.
  std::string how;
  barrier();
  double t0 = now_s();
  auto [raw_w, raw_r] = raw_write_read((fs::path(dir) / strf("raw_rank_%05d.bin", rank)).string(), owned, &how);
  (void)t0;
  rows.push_back({"raw write", total_bytes, raw_w, how});
  rows.push_back({"raw read", total_bytes, raw_r, how});
  barrier();

  // The save: the pause is what save() takes (snapshot + shard layout); the write ends at finalize.
  CkptSaver saver(c.checkpoint.async, CkptWriteOptions{c.checkpoint.writers, c.checkpoint.direct});
  if (c.checkpoint.async || gpu) saver.reserve(store);  // allocated before the timing, as `train` does
  CkptMeta meta;
  meta.step = 1;
  meta.loader_seed = c.train.seed;
  meta.signature = sig;
  barrier();
  t0 = now_s();
  saver.save(dir, store, ps.ctx, meta, config_ini, 1);
  const double pause = now_s() - t0;
  saver.finalize("the benchmark");  // a synchronous save is already complete
  const std::string ckpt = (fs::path(dir) / "checkpoints" / "step_00000001").string();
  const double save_s = now_s() - t0;
  int64_t file_bytes = 0;
  {
    std::error_code ec;
    for (fs::directory_iterator it(ckpt, ec), end; !ec && it != end; it.increment(ec))
      if (it->path().extension() == ".h5") file_bytes += int64_t(fs::file_size(it->path(), ec));
  }
  rows.push_back({c.checkpoint.async ? "save (async)" : "save (sync)", double(file_bytes), save_s,
                  strf("training pause %.1f ms; %d file(s) per rank%s", pause * 1e3, c.checkpoint.writers,
                       c.checkpoint.direct ? ", O_DIRECT" : ", page cache")});

  // Loads from the disk: the checksum pass (every file, what resume checks first), then the reads into place.
  drop_cached_dir(ckpt);
  barrier();
  t0 = now_s();
  ckpt_check(ckpt, sig);
  barrier();
  rows.push_back({"verify (checksums)", double(file_bytes), now_s() - t0,
                  "a separate pass (ckpt_check); resume no longer makes it"});
  drop_cached_dir(ckpt);
  barrier();
  t0 = now_s();
  ckpt_load(ckpt, store, sig, CkptVerify::while_loading, ps.ctx.world);
  barrier();
  rows.push_back({"load (same layout)", double(file_bytes), now_s() - t0,
                  "as resume: whole slices read into place, checksums checked as read"});
  MONTA_CHECK(state_hash(store) == before, "bench checkpoint: the loaded state differs from the saved state");

  // Resharded: rank 0 loads what rank 0 of another TP size holds (tp 2 from tp 1, tp 1 from more), by hyperslabs.
  ParallelContext other;
  other.tp = c.parallel.tp == 1 ? 2 : 1;
  other.ep = c.parallel.ep;
  other.expert_tp = c.parallel.expert_tp;
  const auto& m = c.model;
  const bool divides = m.hidden % other.tp == 0 && m.heads % other.tp == 0 && m.kv_heads % other.tp == 0 &&
                       m.ffn % other.tp == 0 && m.vocab % other.tp == 0;
  if (rank == 0 && divides) {
    ParamStore target(c.model, other, device, engine::DType::f32, gpu ? engine::DType::bf16 : engine::DType::f32);
    int64_t held = 0;
    for (const auto& p : target.all()) held += 3 * int64_t(p.master.bytes());
    drop_cached_dir(ckpt);
    t0 = now_s();
    ckpt_load(ckpt, target, sig, CkptVerify::none);
    rows.push_back({strf("load resharded (rank 0 of tp %d)", other.tp), double(held), now_s() - t0,
                    "hyperslabs of the stored slices"});
  }
  barrier();
  if (rank == 0) {
    std::error_code ec;
    fs::remove_all(fs::path(dir) / "checkpoints", ec);
    fs::remove(dir, ec);  // only when empty: nothing of anyone else's is removed
  }

  report(rows, c, config_name, world, device, total_bytes, file_bytes, how, pause, raw_w, raw_r, rank == 0 ? json : "");
}

}  // namespace monta::model
