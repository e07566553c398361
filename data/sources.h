// Where the training and the held-out tokens come from: data.path, data.valid_path and data.valid_fraction resolved
// to files and token ranges, the built-in corpus generated into the run directory. `train` and `eval` both resolve
// through here, so a checkpoint is evaluated on exactly the held-out set its run reported.
#pragma once
#include <cmath>
#include <cstdint>
#include <span>
#include <string>

#include "data/loader.h"

namespace monta::data {

inline constexpr const char* kBuiltinMarkov = "builtin:markov";
// The built-in held-out file holds builtin_tokens / kBuiltinValidDivisor tokens.
inline constexpr int64_t kBuiltinValidDivisor = 8;

struct DataSpec {
  std::string path;           // a token file or builtin:markov
  std::string valid_path;     // a held-out token file; "" for none
  double valid_fraction = 0;  // with no valid_path: this fraction of path's tokens, its tail, is held out
  std::string run_dir;        // where builtin:markov is generated
  uint64_t seed = 0;
  int64_t vocab = 0, builtin_tokens = 0;
};

struct DataSources {
  std::string train_path;
  TokenRange train;
  std::string valid_path;  // "": no held-out data, validation is off
  TokenRange valid;
  std::string valid_note;     // how the held-out set was chosen, one line for the log
  bool valid_implicit = false;  // the built-in companion, chosen by default (no data.valid_* setting)
  double entropy_floor = NAN;  // of the training file (the built-in corpus has one); NaN when unknown
};

// builtin:markov only (else nothing): writes the missing files of the built-in corpus into run_dir, the training
// file (walk 0) and its held-out companion (the same chain, walk 1). One rank calls it, before the others resolve.
void write_builtin_corpus(const DataSpec& spec);
// Held-out data, first that applies: valid_path (the whole file); valid_fraction > 0 (the last
// round(valid_fraction * tokens) tokens of path, which the training range then ends before); builtin:markov (its
// companion file); else none. Setting both valid_path and valid_fraction is a user error.
DataSources resolve_data_sources(const DataSpec& spec);

// The held-out batches of every evaluation: a TokenLoader over the held-out range, rewound before each pass, so
// every pass reads the same `batches` global batches (a function of the seed, the range, seq_len and global_batch
// only: a resumed run, in any layout, evaluates on the same ones). A held-out set with fewer than batches x
// global_batch samples is a user error (a pass never repeats a sample).
class HeldOutBatches {
 public:
  HeldOutBatches(const DataSources& src, int64_t seq_len, int64_t global_batch, int dp_rank, int dp_size, uint64_t seed,
                 int64_t batches);
  void rewind() { loader_.set_state({seed_, 0, 0}); }
  void next_batch(std::span<int32_t> inputs, std::span<int32_t> targets) { loader_.next_batch(inputs, targets); }
  int64_t batches() const { return batches_; }
  // Whether src's held-out range holds `batches` global batches (the constructor's condition, without failing).
  static bool fits(const DataSources& src, int64_t seq_len, int64_t global_batch, int64_t batches);
  const TokenLoader& loader() const { return loader_; }

 private:
  TokenLoader loader_;
  uint64_t seed_;
  int64_t batches_;
};

}  // namespace monta::data
