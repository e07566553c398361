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
    io_thread_ = std::thread([this] { io_loop(); });
  }
  thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (io_thread_.joinable()) io_thread_.join();
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

std::vector<std::optional<Heartbeat>> Watchdog::read_all() const {
  std::vector<std::optional<Heartbeat>> out(static_cast<size_t>(world_));
  for (int r = 0; r < world_; ++r) out[size_t(r)] = read_heartbeat(strf("%s/rank_%d", dir_.c_str(), r));
  return out;
}

// Every file operation happens here, outside the lock, so neither the training loop (arm/disarm) nor the timer
// ever waits on the filesystem: on a filesystem that stops answering the timer still fires, saying it cannot tell.
// Heartbeats are written as rank_N.tmp + rename (a reader sees a whole one); failures are ignored, heartbeats
// only sharpen the message.
void Watchdog::io_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  Heartbeat published;
  published.phase = -1;
  auto last = std::chrono::steady_clock::time_point{};
  const std::string path = strf("%s/rank_%d", dir_.c_str(), rank_), tmp = path + ".tmp";
  while (!stop_) {
    Heartbeat now_state = state_;
    const auto now = std::chrono::steady_clock::now();
    const bool due = now_state.phase != published.phase || now_state.armed != published.armed || now - last >= kBeat;
    const int64_t want = want_reading_;
    const std::string verdict = pending_verdict_;
    lk.unlock();
    if (due) {
      now_state.beat = published.beat + 1;
      {
        std::ofstream out(tmp, std::ios::trunc);
        out << heartbeat_text(now_state);
      }
      std::error_code ec;
      fs::rename(tmp, path, ec);
      published = now_state;
      last = now;
    }
    std::vector<std::optional<Heartbeat>> reading;
    std::string seen;
    if (want > got_reading_) {
      reading = read_all();
      std::ifstream in(dir_ + "/verdict");
      seen.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    if (!verdict.empty()) {
      int fd = ::open((dir_ + "/verdict").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
      if (fd >= 0) {
        [[maybe_unused]] const ssize_t n = ::write(fd, verdict.data(), verdict.size());
        ::close(fd);
      }
    }
    lk.lock();
    if (want > got_reading_) {
      reading_ = std::move(reading);
      verdict_seen_ = std::move(seen);
      got_reading_ = want;
    }
    if (!verdict.empty()) pending_verdict_.clear();
    cv_.notify_all();
    if (!stop_) cv_.wait_for(lk, kTick);
  }
}

void Watchdog::run() {
  std::unique_lock<std::mutex> lk(mu_);
  const auto limit = std::chrono::seconds(timeout_s_);
  auto fire = [&](const std::string& diagnosis) {
    engine::fail_user(strf("rank %d: %s did not finish within %ld s (train.step_timeout_s); %s; aborting the job", rank_,
                           state_.what.c_str(), (long)timeout_s_, diagnosis.c_str()));
  };
  const std::string no_answer = "cannot tell which rank stalled: the heartbeats in " + dir_ +
                                " could not be read in time (the filesystem does not answer?)";
  // Once the limit passes: a first reading of every heartbeat, then (heartbeats still published meanwhile, so
  // ranks diagnosing at the same time see each other alive) a second one kSettle later, then the verdict.
  enum { kIdle, kFirst, kSettling, kSecond } stage = kIdle;
  int64_t phase = -1;
  std::vector<std::optional<Heartbeat>> first;
  auto since = std::chrono::steady_clock::now();
  while (!stop_) {
    cv_.wait_for(lk, kTick);
    if (stop_) break;
    const auto now = std::chrono::steady_clock::now();
    if (!state_.armed || now - start_ < limit) {
      stage = kIdle;
      continue;
    }
    if (world_ <= 1) fire("the only rank is stuck " + std::string(state_.armed ? "in " : "after ") + state_.what);
    if (dir_.empty()) fire("cannot tell which rank stalled (no heartbeats)");
    if (stage == kIdle || phase != state_.phase) {
      stage = kFirst;
      phase = state_.phase;
      ++want_reading_;
      since = now;
      cv_.notify_all();
    } else if (stage == kFirst || stage == kSecond) {
      if (got_reading_ < want_reading_) {
        if (now - since > kReadWait) fire(no_answer);
        continue;
      }
      if (stage == kFirst) {
        first = reading_;
        stage = kSettling;
        since = now;
        continue;
      }
      // The first rank to reach a verdict records it in <dir>/verdict and later ones repeat it: once the job is
      // being aborted, the launcher may send SIGCONT to a stopped rank, whose heartbeat then moves again and
      // would make the later messages say that every rank is alive.
      const std::string tag = strf("%ld ", (long)phase);
      if (verdict_seen_.rfind(tag, 0) == 0 && verdict_seen_.size() > tag.size()) fire(verdict_seen_.substr(tag.size()));
      const std::string diagnosis = watchdog_diagnosis(rank_, state_, first, reading_);
      pending_verdict_ = tag + diagnosis;
      cv_.notify_all();
      cv_.wait_for(lk, kReadWait, [&] { return pending_verdict_.empty(); });
      fire(diagnosis);
    } else if (now - since >= kSettle) {
      stage = kSecond;
      ++want_reading_;
      since = now;
      cv_.notify_all();
    }
  }
}

}  // namespace monta::comm
