// comm/watchdog.h: heartbeats round-trip, and the watchdog's message names the rank that stalled (its heartbeat
// stands still, or it is behind), says when the firing rank is the one behind, and says when it cannot tell.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "comm/watchdog.h"
#include "engine/check.h"

using namespace monta::comm;

namespace {

Heartbeat hb(int64_t beat, int64_t phase, bool armed, const std::string& what, const std::string& holder = "1@h") {
  Heartbeat h;
  h.beat = beat;
  h.phase = phase;
  h.armed = armed;
  h.what = what;
  h.holder = holder;
  return h;
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST(Watchdog, HeartbeatRoundTrip) {
  auto h = parse_heartbeat(heartbeat_text(hb(7, 12, true, "checkpoint save at step 5", "4242@node-3")));
  ASSERT_TRUE(h);
  EXPECT_EQ(h->beat, 7);
  EXPECT_EQ(h->phase, 12);
  EXPECT_TRUE(h->armed);
  EXPECT_EQ(h->holder, "4242@node-3");
  EXPECT_EQ(h->what, "checkpoint save at step 5");
  EXPECT_FALSE(parse_heartbeat(""));
  EXPECT_FALSE(parse_heartbeat("x 1 1 a@b step 2"));
  EXPECT_FALSE(parse_heartbeat("99999999999999999999999 1 1 a@b step 2"));
  EXPECT_FALSE(parse_heartbeat("1 1 2 a@b step 2"));
}

// Rank 2 of 4 stopped (SIGSTOP) in step 5: its beat stands still; rank 3, whose watchdog fires, names rank 2.
TEST(Watchdog, NamesTheRankWhoseHeartbeatStandsStill) {
  const Heartbeat mine = hb(40, 9, true, "step 5");
  std::vector<std::optional<Heartbeat>> first = {hb(40, 9, true, "step 5"), hb(41, 9, true, "step 5"),
                                                 hb(30, 9, true, "step 5", "777@n2"), mine};
  auto second = first;
  second[0]->beat += 3;
  second[1]->beat += 2;
  const std::string d = watchdog_diagnosis(3, mine, first, second);
  EXPECT_TRUE(has(d, "stalled: rank 2 (777@n2, in step 5) stopped responding")) << d;
  EXPECT_FALSE(has(d, "rank 0")) << d;
  EXPECT_FALSE(has(d, "rank 1")) << d;
}

// Rank 1 is alive but has not started step 5 (stuck in data loading, say): named as behind.
TEST(Watchdog, NamesRanksBehind) {
  const Heartbeat mine = hb(10, 9, true, "step 5");
  std::vector<std::optional<Heartbeat>> first = {mine, hb(10, 8, false, "step 4", "5@n1")};
  auto second = first;
  second[1]->beat++;
  const std::string d = watchdog_diagnosis(0, mine, first, second);
  EXPECT_TRUE(has(d, "behind: rank 1 (5@n1) is still done with step 4")) << d;
}

// The firing rank is the laggard (every other rank already left the phase).
TEST(Watchdog, SaysWhenThisRankIsBehind) {
  const Heartbeat mine = hb(10, 9, true, "step 5");
  std::vector<std::optional<Heartbeat>> first = {mine, hb(10, 11, true, "step 6")};
  auto second = first;
  second[1]->beat++;
  const std::string d = watchdog_diagnosis(0, mine, first, second);
  EXPECT_TRUE(has(d, "this rank is the one behind (still in step 5; others are in step 6)")) << d;
}

TEST(Watchdog, SaysWhenItCannotTell) {
  const Heartbeat mine = hb(10, 3, true, "step 2");
  std::vector<std::optional<Heartbeat>> first = {mine, hb(10, 3, true, "step 2")};
  auto second = first;
  second[1]->beat++;
  EXPECT_TRUE(has(watchdog_diagnosis(0, mine, first, second), "cannot tell which rank stalled: every rank is alive"));
  second[1].reset();
  EXPECT_TRUE(has(watchdog_diagnosis(0, mine, first, second), "cannot tell which rank stalled: no heartbeat from rank 1"));
}

// The class itself publishes its position: armed phases and the beat show up in the heartbeat file.
TEST(Watchdog, PublishesHeartbeats) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / "monta_watchdog_test";
  fs::remove_all(dir);
  {
    Watchdog w(1, 2, 60, dir.string());
    w.arm("step 1");
    w.disarm();
    w.arm("step 2");
    std::this_thread::sleep_for(Watchdog::kTick * 3);
    auto h = read_heartbeat((dir / "rank_1").string());
    ASSERT_TRUE(h);
    EXPECT_EQ(h->phase, 2);
    EXPECT_TRUE(h->armed);
    EXPECT_EQ(h->what, "step 2");
    const int64_t beat = h->beat;
    std::this_thread::sleep_for(Watchdog::kBeat + Watchdog::kTick * 2);
    auto later = read_heartbeat((dir / "rank_1").string());
    ASSERT_TRUE(later);
    EXPECT_GT(later->beat, beat);
  }
  fs::remove_all(dir);
}
