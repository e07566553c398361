// TokenLoader (see loader.h). The sample order of an epoch is a pure function of (seed, epoch), and a batch is a
// pure function of (seed, epoch, sample), which is what makes resume exact and ranks agree without talking.
#include "data/loader.h"

#include <algorithm>

#include "data/hdf5_util.h"
#include "engine/check.h"
#include "engine/log.h"
#include "engine/rng.h"

namespace monta::data {

using engine::fail_user;
using engine::strf;

struct TokenLoader::FileReader {
  h5::Handle file, dset;
};

TokenLoader::TokenLoader(const std::string& path, int64_t seq_len, int64_t global_batch, int dp_rank, int dp_size,
                         uint64_t seed, int64_t max_resident_bytes, TokenRange range)
    : path_(path), seq_len_(seq_len), global_batch_(global_batch), dp_rank_(dp_rank), dp_size_(dp_size), seed_(seed) {
  MONTA_USER_CHECK(seq_len >= 1, strf("the loader needs a sequence length >= 1, not %ld; check model.seq_len.", long(seq_len)));
  MONTA_USER_CHECK(global_batch >= 1,
                   strf("the loader needs a global batch >= 1, not %ld; check train.global_batch.", long(global_batch)));
  MONTA_USER_CHECK(dp_size >= 1 && dp_rank >= 0 && dp_rank < dp_size,
                   strf("the loader got data-parallel rank %d of %d; the rank must be in [0, size).", dp_rank, dp_size));
  MONTA_USER_CHECK(global_batch % dp_size == 0,
                   strf("the global batch %ld does not divide over %d data-parallel ranks; make train.global_batch a "
                        "multiple of %d.",
                        long(global_batch), dp_size, dp_size));
  info_ = read_token_file_info(path, true);
  MONTA_USER_CHECK(info_.vocab_size <= int64_t(INT32_MAX) + 1,
                   strf("token file '%s' has vocab_size %ld, beyond the int32 ids the model takes.", path.c_str(),
                        long(info_.vocab_size)));
  range_ = {range.begin, range.end < 0 ? info_.num_tokens : range.end};
  MONTA_USER_CHECK(range_.begin >= 0 && range_.begin < range_.end && range_.end <= info_.num_tokens,
                   strf("token range [%ld, %ld) is outside token file '%s' of %ld tokens.", long(range.begin),
                        long(range.end), path.c_str(), long(info_.num_tokens)));
  const int64_t tokens = range_.end - range_.begin;
  const std::string what = tokens == info_.num_tokens ? strf("token file '%s'", path.c_str())
                                                      : strf("tokens [%ld, %ld) of '%s'", long(range_.begin),
                                                             long(range_.end), path.c_str());
  MONTA_USER_CHECK(tokens >= seq_len + 1,
                   strf("%s holds %ld tokens, shorter than one sample of seq_len + 1 = %ld tokens; use more "
                        "data or a shorter model.seq_len.",
                        what.c_str(), long(tokens), long(seq_len + 1)));
  samples_per_epoch_ = (tokens - 1) / seq_len;
  MONTA_USER_CHECK(samples_per_epoch_ >= global_batch,
                   strf("%s holds %ld tokens, %ld samples of %ld tokens, fewer than one global batch of %ld "
                        "samples, which needs at least %ld tokens; use more data or a smaller train.global_batch.",
                        what.c_str(), long(tokens), long(samples_per_epoch_), long(seq_len), long(global_batch),
                        long(global_batch * seq_len + 1)));

  if (tokens * int64_t(sizeof(uint32_t)) <= max_resident_bytes) {
    h5::Handle f = h5::open_file(path);
    h5::Handle d = h5::dataset(H5Dopen2(f.get(), "tokens", H5P_DEFAULT));
    MONTA_USER_CHECK(d.valid(), "token file '" + path + "' changed while being opened; retry.");
    tokens_.resize(size_t(tokens));
    h5::read_tokens(d.get(), range_.begin, tokens_, path);
  } else {
    reader_ = std::make_unique<FileReader>();
    reader_->file = h5::open_file(path);
    reader_->dset = h5::dataset(H5Dopen2(reader_->file.get(), "tokens", H5P_DEFAULT));
    MONTA_USER_CHECK(reader_->dset.valid(), "token file '" + path + "' changed while being opened; retry.");
  }
  window_.resize(size_t(seq_len + 1));
}

TokenLoader::~TokenLoader() = default;

void TokenLoader::ensure_order() {
  if (order_epoch_ == epoch_) return;
  order_.resize(size_t(samples_per_epoch_));
  for (int64_t i = 0; i < samples_per_epoch_; ++i) order_[size_t(i)] = i;
  engine::Philox rng{seed_, engine::fnv1a64("monta.data.loader.shuffle") + uint64_t(epoch_), 0};
  for (int64_t i = samples_per_epoch_ - 1; i > 0; --i) std::swap(order_[size_t(i)], order_[rng.below(uint64_t(i + 1))]);
  order_epoch_ = epoch_;
}

void TokenLoader::read_sample(int64_t sample, std::span<uint32_t> out) {
  const int64_t off = sample * seq_len_;
  if (!tokens_.empty())
    std::copy_n(tokens_.begin() + off, out.size(), out.begin());
  else
    h5::read_tokens(reader_->dset.get(), range_.begin + off, out, path_);
}

void TokenLoader::next_batch(std::span<int32_t> inputs, std::span<int32_t> targets) {
  const int64_t local = global_batch_ / dp_size_;
  MONTA_CHECK(int64_t(inputs.size()) == local * seq_len_ && int64_t(targets.size()) == local * seq_len_,
              strf("next_batch needs inputs and targets of %ld x %ld tokens, got %zu and %zu", long(local), long(seq_len_),
                   inputs.size(), targets.size()));
  ensure_order();
  const size_t s = size_t(seq_len_);
  for (int64_t i = 0; i < local; ++i) {
    read_sample(order_[size_t(sample_ + dp_rank_ * local + i)], window_);
    int32_t* in = inputs.data() + size_t(i) * s;
    int32_t* tg = targets.data() + size_t(i) * s;
    for (size_t t = 0; t < s; ++t) {
      in[t] = int32_t(window_[t]);
      tg[t] = int32_t(window_[t + 1]);
    }
  }
  sample_ += global_batch_;
  if (sample_ + global_batch_ > samples_per_epoch_) {  // every batch comes from one epoch
    ++epoch_;
    sample_ = 0;
  }
}

LoaderState TokenLoader::state() const { return {seed_, epoch_, sample_}; }

void TokenLoader::set_state(const LoaderState& s) {
  MONTA_USER_CHECK(s.seed == seed_, strf("loader state was saved with seed %lu but this loader uses seed %lu; resume with "
                                         "the same train.seed.",
                                         (unsigned long)s.seed, (unsigned long)seed_));
  MONTA_USER_CHECK(s.epoch >= 0 && s.sample >= 0 && s.sample <= samples_per_epoch_,
                   strf("loader state (epoch %ld, sample %ld) is out of range for '%s' with %ld samples per epoch; the "
                        "data file or seq_len changed since the checkpoint.",
                        long(s.epoch), long(s.sample), path_.c_str(), long(samples_per_epoch_)));
  epoch_ = s.epoch;
  sample_ = s.sample;
  if (sample_ + global_batch_ > samples_per_epoch_) {
    ++epoch_;
    sample_ = 0;
  }
}

}  // namespace monta::data
