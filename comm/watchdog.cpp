// Stall watchdog and heartbeats (see watchdog.h).
#include "comm/watchdog.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/check.h"
#include "engine/log.h"
#include "engine/parse.h"

namespace fs = std::filesystem;

namespace monta::comm {

using engine::strf;

std::string heartbeat_text(const Heartbeat& h) {
  return strf("%ld %ld %d %s %s\n", (long)h.beat, (long)h.phase, h.armed ? 1 : 0, h.holder.c_str(), h.what.c_str());
}

std::optional<Heartbeat> parse_heartbeat(const std::string& text) {
  std::istringstream in(text);
  std::string beat, phase, armed;
  Heartbeat h;
  if (!(in >> beat >> phase >> armed >> h.holder)) return std::nullopt;
  auto b = engine::try_parse_int64(beat), p = engine::try_parse_int64(phase);
  if (!b || !p || (armed != "0" && armed != "1")) return std::nullopt;
  h.beat = *b;
  h.phase = *p;
  h.armed = armed == "1";
  std::getline(in, h.what);
  if (!h.what.empty() && h.what.front() == ' ') h.what.erase(0, 1);
  return h;
}

std::optional<Heartbeat> read_heartbeat(const std::string& path) {
  std::ifstream in(path);
  if (!in.good()) return std::nullopt;
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_heartbeat(text);
}

namespace {

std::string where(const Heartbeat& h) { return h.armed ? "in " + h.what : "done with " + h.what; }

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? (i + 1 == v.size() ? " and " : ", ") : "") + v[i];
  return out;
}

}  // namespace

std::string watchdog_diagnosis(int me, const Heartbeat& mine, const std::vector<std::optional<Heartbeat>>& first,
                               const std::vector<std::optional<Heartbeat>>& second) {
  std::vector<std::string> stopped, behind, silent;
  int64_t ahead_pos = -1;
  std::string ahead_where;
  for (int r = 0; r < int(second.size()); ++r) {
    if (r == me) continue;
    const auto& a = r < int(first.size()) ? first[size_t(r)] : std::nullopt;
    const auto& b = second[size_t(r)];
    if (!b) {
      silent.push_back(std::to_string(r));
    } else if (a && a->beat == b->beat && a->holder == b->holder) {
      stopped.push_back(strf("rank %d (%s, %s)", r, b->holder.c_str(), where(*b).c_str()));
    } else if (b->position() < mine.position()) {
      behind.push_back(strf("rank %d (%s) is still %s", r, b->holder.c_str(), where(*b).c_str()));
    } else if (b->position() > ahead_pos) {
      ahead_pos = b->position();
      ahead_where = where(*b);
    }
  }
  std::vector<std::string> parts;
  if (!stopped.empty())
    parts.push_back("stalled: " + join(stopped) +
                    (stopped.size() == 1 ? " stopped responding (its heartbeat stands still)"
                                         : " stopped responding (their heartbeats stand still)"));
  if (!behind.empty()) parts.push_back((parts.empty() ? "behind: " : "; behind: ") + join(behind));
  if (parts.empty() && ahead_pos > mine.position())
    parts.push_back(strf("this rank is the one behind (still %s; others are %s)", where(mine).c_str(), ahead_where.c_str()));
  if (parts.empty() && !silent.empty())
    parts.push_back("cannot tell which rank stalled: no heartbeat from rank" + std::string(silent.size() > 1 ? "s " : " ") +
                    join(silent));
  if (parts.empty() && second.size() <= 1) parts.push_back("the only rank is stuck " + where(mine));
  if (parts.empty())
    parts.push_back("cannot tell which rank stalled: every rank is alive and " + where(mine) +
                    " (a rank stuck in compute, or in a collective another rank never entered)");
  std::string out;
  for (auto& p : parts) out += p;
  return out;
}

Watchdog::Watchdog(int rank, int world, int64_t timeout_s, const std::string& progress_dir)
    : rank_(rank), world_(world), timeout_s_(timeout_s), dir_(progress_dir) {
  if (timeout_s_ <= 0) return;
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown-host");
  state_.holder = strf("%d@%s", int(::getpid()), host);
  state_.what = "start-up";
  if (!dir_.empty()) {
    std::error_code ec;
    fs::create_directories(dir_, ec);  // best effort: without heartbeats the message says it cannot tell
    if (rank_ == 0) fs::remove(fs::path(dir_) / "verdict", ec);  // an earlier launch's
  }
  publish(true);
  thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::arm(const std::string& what) {
  std::lock_guard<std::mutex> lk(mu_);
  ++state_.phase;
  state_.what = what;
  state_.armed = true;
  start_ = std::chrono::steady_clock::now();
}

void Watchdog::disarm() {
  std::lock_guard<std::mutex> lk(mu_);
  state_.armed = false;
}

// Called with mu_ held (or before the thread starts). Writes rank_N.tmp and renames it, so a reader sees a whole
// heartbeat or the previous one. Failures are ignored: heartbeats only sharpen the message.
void Watchdog::publish(bool force) {
  if (dir_.empty()) return;
  const auto now = std::chrono::steady_clock::now();
  const bool changed = state_.phase != published_.phase || state_.armed != published_.armed;
  if (!force && !changed && now - last_publish_ < kBeat) return;
  ++state_.beat;
  const std::string path = strf("%s/rank_%d", dir_.c_str(), rank_), tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << heartbeat_text(state_);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  published_ = state_;
  last_publish_ = now;
}

std::vector<std::optional<Heartbeat>> Watchdog::read_all() const {
  std::vector<std::optional<Heartbeat>> out(static_cast<size_t>(world_));
  if (dir_.empty()) return out;
  for (int r = 0; r < world_; ++r) out[size_t(r)] = read_heartbeat(strf("%s/rank_%d", dir_.c_str(), r));
  return out;
}

// The first rank to reach a verdict records it in <dir>/verdict and later ones repeat it: once the job is being
// aborted, the launcher may send SIGCONT to a stopped rank, whose heartbeat then moves again and would make the
// later messages say that every rank is alive.
std::string Watchdog::shared_verdict(const std::string& mine) const {
  if (dir_.empty()) return mine;
  const std::string path = dir_ + "/verdict", tag = strf("%ld ", (long)state_.phase);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (fd >= 0) {
    const std::string text = tag + mine;
    [[maybe_unused]] const ssize_t n = ::write(fd, text.data(), text.size());  // unrecorded: still this rank's message
    ::close(fd);
    return mine;
  }
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return text.rfind(tag, 0) == 0 && text.size() > tag.size() ? text.substr(tag.size()) : mine;
}

void Watchdog::run() {
  std::unique_lock<std::mutex> lk(mu_);
  const auto limit = std::chrono::seconds(timeout_s_);
  // Once the limit passes: a first reading of every heartbeat, then (heartbeats still published meanwhile, so
  // ranks diagnosing at the same time see each other alive) a second one kSettle later, then the verdict.
  std::optional<std::vector<std::optional<Heartbeat>>> first;
  int64_t first_phase = -1;
  std::chrono::steady_clock::time_point first_at;
  while (!stop_) {
    cv_.wait_for(lk, kTick);
    if (stop_) break;
    publish(false);
    const auto now = std::chrono::steady_clock::now();
    if (!state_.armed || now - start_ < limit) {
      first.reset();
      continue;
    }
    if (!first || first_phase != state_.phase) {
      first = read_all();
      first_phase = state_.phase;
      first_at = now;
      continue;
    }
    if (now - first_at < kSettle && !dir_.empty()) continue;
    const std::string diagnosis = shared_verdict(watchdog_diagnosis(rank_, state_, *first, read_all()));
    engine::fail_user(strf("rank %d: %s did not finish within %ld s (train.step_timeout_s); %s; aborting the job", rank_,
                           state_.what.c_str(), (long)timeout_s_, diagnosis.c_str()));
  }
}

}  // namespace monta::comm
