// model/run_dir.h: one launch per run directory (a second lock is refused naming the holder; the lock dies
// with its holder), and writes into the run directory fail loudly instead of silently.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include "engine/check.h"
#include "model/run_dir.h"

using namespace monta;
namespace fs = std::filesystem;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const engine::Error& e) {
    EXPECT_TRUE(e.user) << e.what();
    return e.what();
  }
  return "";
}

}  // namespace

TEST(RunDir, SecondLockIsRefusedNamingTheHolder) {
  engine::install_throwing_handler();
  const fs::path dir = fs::temp_directory_path() / "monta_run_dir_lock";
  fs::remove_all(dir);
  {
    model::RunDirLock first(dir.string());
    const std::string e = error_of([&] { model::RunDirLock second(dir.string()); });
    EXPECT_NE(e.find("is in use by " + std::to_string(::getpid()) + "@"), std::string::npos) << e;
  }
  EXPECT_EQ(error_of([&] { model::RunDirLock again(dir.string()); }), "");  // released with its holder
  fs::remove_all(dir);
}

TEST(RunDir, WritesAreChecked) {
  engine::install_throwing_handler();
  const fs::path dir = fs::temp_directory_path() / "monta_run_dir_writes";
  fs::remove_all(dir);
  fs::create_directories(dir / "config.ini");
  fs::create_directories(dir / "metrics.jsonl");
  EXPECT_NE(error_of([&] { model::write_file_checked((dir / "config.ini").string(), "x"); }).find("cannot write"),
            std::string::npos);
  model::AppendFile metrics;
  EXPECT_NE(error_of([&] { metrics.open((dir / "metrics.jsonl").string()); }).find("cannot open"), std::string::npos);
  EXPECT_NE(error_of([&] { model::RunDirLock lock("/proc/monta_no_such_dir"); }).find("cannot create run directory"),
            std::string::npos);
  model::write_file_checked((dir / "ok.txt").string(), "hello\n");
  std::ifstream in(dir / "ok.txt");
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "hello");
  EXPECT_FALSE(fs::exists(dir / "ok.txt.tmp"));
  fs::remove_all(dir);
}
