// The sharded, deterministic, resumable token loader: every data-parallel rank gets a fixed, seeded,
// non-overlapping slice of each global batch, and the whole position is three integers (seed, epoch, sample)
// stored in checkpoints, so a resumed run, in any data-parallel layout, sees the same global batches.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "data/token_file.h"

namespace monta::data {

// A half-open range [begin, end) of a token file's positions; end < 0: to the end of the file. A training range and a
// held-out range that do not overlap share no token (a sample reads seq_len + 1 tokens, all inside its range).
struct TokenRange {
  int64_t begin = 0, end = -1;
};

struct LoaderState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t sample = 0;  // next global sample index (position in the epoch's shuffled order)
};

class TokenLoader {
 public:
  // Files up to this many bytes (as uint32) are read into memory once; larger ones are read per sample.
  static constexpr int64_t kDefaultResidentBytes = int64_t(256) << 20;

  // Samples are windows of seq_len+1 tokens at offsets range.begin + i*seq_len, i < samples_per_epoch =
  // (range tokens - 1)/seq_len (consecutive windows share one token, never a range's first or last). Each epoch visits them in a shuffled order (Fisher-Yates with Philox keyed by seed and
  // epoch). A global batch is global_batch consecutive samples of that order; when an epoch has fewer left than a
  // whole batch, the batch starts the next epoch instead. DP rank r takes samples [r*B/dp, (r+1)*B/dp) of it.
  // Validates up front (user errors): the file, the range, global_batch % dp_size == 0, samples_per_epoch >=
  // global_batch.
  TokenLoader(const std::string& path, int64_t seq_len, int64_t global_batch, int dp_rank, int dp_size, uint64_t seed,
              int64_t max_resident_bytes = kDefaultResidentBytes, TokenRange range = {});
  ~TokenLoader();
  TokenLoader(const TokenLoader&) = delete;
  TokenLoader& operator=(const TokenLoader&) = delete;

  // This rank's slice of the next global batch: global_batch/dp_size sequences of seq_len tokens, inputs and
  // targets (inputs shifted by one), int32, row-major (sequences, seq_len). Advances by one global batch.
  void next_batch(std::span<int32_t> inputs, std::span<int32_t> targets);
  LoaderState state() const;
  // Validates (seed matches, 0 <= epoch, 0 <= sample <= samples_per_epoch); user errors otherwise.
  void set_state(const LoaderState& s);
  const TokenFileInfo& info() const { return info_; }
  int64_t samples_per_epoch() const { return samples_per_epoch_; }
  int64_t local_batch() const { return global_batch_ / dp_size_; }
  bool resident() const { return !tokens_.empty(); }  // whole range in memory (else read per sample)
  TokenRange range() const { return range_; }           // resolved: 0 <= begin < end <= num_tokens

 private:
  struct FileReader;
  void ensure_order();  // order_ = the shuffled sample order of epoch_
  void read_sample(int64_t sample, std::span<uint32_t> out);

  std::string path_;
  TokenFileInfo info_;
  TokenRange range_;
  int64_t seq_len_, global_batch_;
  int dp_rank_, dp_size_;
  uint64_t seed_;
  int64_t samples_per_epoch_ = 0;
  int64_t epoch_ = 0, sample_ = 0;
  int64_t order_epoch_ = -1;
  std::vector<int64_t> order_;
  std::vector<uint32_t> tokens_;        // the whole range when resident
  std::unique_ptr<FileReader> reader_;  // the open dataset otherwise
  std::vector<uint32_t> window_;        // one sample, seq_len + 1 tokens
};

}  // namespace monta::data
