// Checked result-file writes (engine/files.h).
#include "engine/files.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "engine/check.h"

namespace fs = std::filesystem;

namespace monta::engine {

void check_output_path(const std::string& path, const std::string& what) {
  MONTA_USER_CHECK(!path.empty(), what + " needs a file name");
  std::error_code ec;
  MONTA_USER_CHECK(!fs::is_directory(path, ec), what + " '" + path + "' is a directory; give a file name");
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  MONTA_USER_CHECK(fs::is_directory(dir, ec), what + " '" + path + "': directory '" + dir.string() +
                                                  "' does not exist (create it first)");
  MONTA_USER_CHECK(::access(dir.c_str(), W_OK) == 0,
                   what + " '" + path + "': directory '" + dir.string() + "' is not writable");
}

void write_text_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  MONTA_USER_CHECK(f, "cannot write '" + path + "': " + std::strerror(errno));
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fflush(f) == 0;
  const int err = errno;
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed) {
    std::remove(tmp.c_str());
    fail_user("cannot write '" + path + "': " + std::strerror(ok ? errno : err) + " (disk full?)");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    fail_user("cannot write '" + path + "': " + std::strerror(e));
  }
}

}  // namespace monta::engine
