// Writing a result file (a benchmark's JSON, a report): checked up front, so a bad path fails before the work
// rather than after it, and written whole through a temporary file and a rename, so a failure leaves no
// half-written file and never a silent exit 0.
#pragma once
#include <string>

namespace monta::engine {

// User error unless `path` names a file that can be created: its directory exists and is writable, and the
// path is not a directory. `what` names the option ("--json").
void check_output_path(const std::string& path, const std::string& what);
// Writes `text` to path.tmp.<pid>, flushes, renames over `path`; any failure is a user error naming the path.
void write_text_file(const std::string& path, const std::string& text);

}  // namespace monta::engine
