// The stall watchdog: a rank that dies or stalls leaves the others waiting in a collective forever; this turns
// that into a bounded failure that names the rank that stalled. Every rank's watchdog thread publishes a
// heartbeat file (<run_dir>/.progress/rank_N: where the rank is, and a counter bumped about once a second); the
// rank whose phase outlasts the timeout reads them all twice, a few beats apart, and names the ranks whose
// counter stood still (stopped, killed, host gone) or that are behind it, then ends the job.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace monta::comm {

// One rank's published position. phase counts arm() calls (every rank arms the same sequence of steps and
// saves), so 2·phase + (armed ? 0 : 1) orders positions: in phase p < done with phase p < in phase p + 1.
struct Heartbeat {
  int64_t beat = 0, phase = 0;
  bool armed = false;
  std::string holder;  // pid@host
  std::string what;    // "step 5", "checkpoint save at step 4"
  int64_t position() const { return 2 * phase + (armed ? 0 : 1); }
};

std::string heartbeat_text(const Heartbeat& h);
std::optional<Heartbeat> parse_heartbeat(const std::string& text);  // nullopt when malformed
std::optional<Heartbeat> read_heartbeat(const std::string& path);   // nullopt when missing or malformed

// The clause the watchdog's message ends with, from two readings of every rank's heartbeat taken a few beats
// apart (nullopt: no heartbeat from that rank). Names the ranks whose beat did not advance, then the ranks
// behind `me`; says when this rank is the one behind; says so when it cannot tell.
std::string watchdog_diagnosis(int me, const Heartbeat& mine, const std::vector<std::optional<Heartbeat>>& first,
                               const std::vector<std::optional<Heartbeat>>& second);

class Watchdog {
 public:
  // timeout_s 0: off (no thread, no heartbeats). progress_dir "": no heartbeats (the message then cannot name
  // the laggard).
  Watchdog(int rank, int world, int64_t timeout_s, const std::string& progress_dir);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  void arm(const std::string& what);
  void disarm();

  static constexpr std::chrono::milliseconds kTick{250};
  static constexpr std::chrono::milliseconds kBeat{1000};
  static constexpr std::chrono::milliseconds kSettle{2600};    // between the two readings: more than two beats
  static constexpr std::chrono::milliseconds kReadWait{3000};  // longest wait for a reading before "cannot tell"

 private:
  void run();      // the timer: no file I/O, so it fires even when the filesystem hangs
  void io_loop();  // heartbeats out, readings in
  std::vector<std::optional<Heartbeat>> read_all() const;

  const int rank_, world_;
  const int64_t timeout_s_;
  const std::string dir_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_, io_thread_;
  Heartbeat state_;  // position (phase, armed, what); the beat is io_loop's
  std::chrono::steady_clock::time_point start_;
  int64_t want_reading_ = 0, got_reading_ = 0;       // the timer asks io_loop for a reading of every heartbeat
  std::vector<std::optional<Heartbeat>> reading_;    // the latest reading
  std::string verdict_seen_, pending_verdict_;       // <dir>/verdict as read with it; one to record
  bool stop_ = false;
};

}  // namespace monta::comm
