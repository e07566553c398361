// Run-directory lock and checked writes (see run_dir.h).
#include "model/run_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "engine/check.h"
#include "engine/log.h"

namespace fs = std::filesystem;

namespace monta::model {

namespace {

std::string host_name() {
  char h[256] = {};
  if (::gethostname(h, sizeof h - 1) != 0) return "unknown-host";
  return h;
}

}  // namespace

RunDirLock::RunDirLock(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  MONTA_USER_CHECK(!ec, "cannot create run directory '" + dir + "': " + ec.message());
  const std::string path = (fs::path(dir) / ".lock").string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  MONTA_USER_CHECK(fd_ >= 0, "cannot write in run directory '" + dir + "' (" + path + ": " + std::strerror(errno) +
                                 "); choose a writable train.run_dir");
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err == EWOULDBLOCK) {
      char buf[256] = {};
      const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
      std::string holder = n > 0 ? std::string(buf, size_t(n)) : std::string("another process");
      while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
      ::close(fd_);
      fd_ = -1;
      engine::fail_user("run directory '" + dir + "' is in use by " + holder + " (lock " + path +
                        "); wait for that run to end, or choose another train.run_dir");
    }
    engine::log_warn("cannot lock " + path + " (" + std::strerror(err) +
                     "; the filesystem has no flock?): a second launch into this run directory would not be refused");
  }
  const std::string me = std::to_string(::getpid()) + "@" + host_name() + "\n";
  const bool ok = ::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, me.data(), me.size(), 0) == ssize_t(me.size());
  MONTA_USER_CHECK(ok, "cannot write " + path + " (" + std::strerror(errno) + "); the run directory is not writable or "
                                                                               "the disk is full");
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock; the file stays (removing it would race a new launch)
}

void write_file_checked(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    MONTA_USER_CHECK(out.is_open(), "cannot write " + tmp + " (" + std::strerror(errno) + "); check the run directory");
    out << text;
    out.flush();
    MONTA_USER_CHECK(out.good(), "cannot write " + tmp + " (disk full?)");
  }
  int fd = ::open(tmp.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    engine::fail_user("cannot write " + path + ": " + ec.message());
  }
}

void AppendFile::open(const std::string& path) {
  path_ = path;
  out_.open(path, std::ios::app);
  MONTA_USER_CHECK(out_.is_open(), "cannot open " + path + " for writing (" + std::strerror(errno) +
                                       "); check the run directory");
}

void AppendFile::write_line(const std::string& line) {
  out_ << line << '\n';
  out_.flush();
  MONTA_USER_CHECK(out_.good(), "cannot write to " + path_ + " (disk full?); stopping rather than training without metrics");
}

}  // namespace monta::model
