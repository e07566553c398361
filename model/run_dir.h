// The run directory of `monta train`: one launch at a time (an flock on <run_dir>/.lock naming its holder), and
// every file written into it checked, so an unwritable or full directory stops the run with one line instead of
// training on with its results lost.
#pragma once
#include <fstream>
#include <string>

namespace monta::model {

// Held by rank 0 for the whole run. Creates the directory, takes an exclusive flock on <dir>/.lock and writes
// "pid@host" into it. User errors: the directory cannot be created or written (naming it), or another launch
// holds the lock (naming the holder). On a filesystem without flock the run proceeds with a warning.
class RunDirLock {
 public:
  explicit RunDirLock(const std::string& dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

 private:
  int fd_ = -1;
};

// Writes `text` to path through path.tmp, fsync and rename; user error naming the file if any step fails.
void write_file_checked(const std::string& path, const std::string& text);

// An append-only text file (metrics.jsonl): opening and every line checked, each line flushed as written.
class AppendFile {
 public:
  void open(const std::string& path);
  void write_line(const std::string& line);

 private:
  std::ofstream out_;
  std::string path_;
};

}  // namespace monta::model
