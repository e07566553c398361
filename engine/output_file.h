// Where a command may write its output file (export, prepare-data): never onto one of its own inputs, never over
// an existing file unless forced; the callers then write through a temporary file and rename it into place, so
// a refused or failed write leaves every file that existed before as it was.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "engine/check.h"

namespace monta::engine {

// User error naming `out` and `flag` when out is one of `inputs` (same file, however spelled), a directory, or
// an existing file while `force` is off.
inline void check_output_file(const std::string& out, const std::vector<std::string>& inputs, bool force,
                              const std::string& flag) {
  namespace fs = std::filesystem;
  std::error_code ec;
  MONTA_USER_CHECK(!out.empty(), flag + " is empty; pass the output file");
  for (const auto& in : inputs) {
    std::error_code e1, e2;
    const bool same = fs::exists(out, e1) ? fs::equivalent(out, in, e2)
                                          : fs::weakly_canonical(out, e1) == fs::weakly_canonical(in, e2);
    MONTA_USER_CHECK(!same, flag + " " + out + " is the input " + in + "; writing it would destroy the input, choose another " +
                                "output file");
  }
  MONTA_USER_CHECK(!fs::is_directory(out, ec), flag + " " + out + " is a directory; name the output file");
  MONTA_USER_CHECK(force || !fs::exists(fs::symlink_status(out, ec)),
                   flag + " " + out + " exists; pass --force to replace it, or choose another output file");
}

}  // namespace monta::engine
