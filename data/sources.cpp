// Resolution of the data sources (see sources.h). The held-out tail is a token range, not a list of samples, so
// no training window can reach into it: the training loader's last window ends at or before the split point.
#include "data/sources.h"

#include <algorithm>
#include <filesystem>

#include "data/synthetic.h"
#include "data/token_file.h"
#include "engine/check.h"
#include "engine/log.h"

namespace monta::data {

using engine::strf;

namespace {

struct BuiltinPaths {
  std::string train, valid;
};

BuiltinPaths builtin_paths(const DataSpec& spec) {
  const std::filesystem::path dir = spec.run_dir;
  const std::string stem = strf("markov_v%ld_s%lu", long(spec.vocab), (unsigned long)spec.seed);
  return {(dir / (stem + ".h5")).string(), (dir / (stem + "_valid.h5")).string()};
}

}  // namespace

void write_builtin_corpus(const DataSpec& spec) {
  if (spec.path != kBuiltinMarkov) return;
  const BuiltinPaths p = builtin_paths(spec);
  if (!std::filesystem::exists(p.train)) {
    auto info = write_markov_corpus(p.train, spec.seed, spec.vocab, spec.builtin_tokens);
    engine::log_info(strf("built-in corpus: %ld tokens of a random Markov chain over %ld ids -> %s", long(info.num_tokens),
                          long(info.vocab_size), p.train.c_str()));
  }
  if (!std::filesystem::exists(p.valid)) {
    auto info = write_markov_corpus(p.valid, spec.seed, spec.vocab, spec.builtin_tokens / kBuiltinValidDivisor, 1);
    engine::log_info(strf("built-in held-out corpus: %ld tokens, the same chain on another walk -> %s",
                          long(info.num_tokens), p.valid.c_str()));
  }
}

DataSources resolve_data_sources(const DataSpec& spec) {
  MONTA_USER_CHECK(spec.valid_path.empty() || spec.valid_fraction == 0,
                   "data.valid_path and data.valid_fraction both set; hold data out one way: a file or a fraction.");
  MONTA_USER_CHECK(spec.valid_fraction >= 0 && spec.valid_fraction < 1,
                   strf("data.valid_fraction must be in [0, 1) (got %g).", spec.valid_fraction));
  const bool builtin = spec.path == kBuiltinMarkov;
  DataSources s;
  s.train_path = builtin ? builtin_paths(spec).train : spec.path;
  if (!spec.valid_path.empty()) {
    s.valid_path = spec.valid_path;
    s.valid_note = "held-out data: " + spec.valid_path + " (data.valid_path)";
  } else if (spec.valid_fraction > 0) {
    const int64_t n = read_token_file_info(s.train_path, false).num_tokens;
    const int64_t held = std::llround(spec.valid_fraction * double(n));
    MONTA_USER_CHECK(held >= 2 && n - held >= 2,
                     strf("data.valid_fraction %g of the %ld tokens of '%s' leaves %ld held out and %ld for training; "
                          "both need at least 2 (and a global batch of samples).",
                          spec.valid_fraction, long(n), s.train_path.c_str(), long(held), long(n - held)));
    s.train = {0, n - held};
    s.valid_path = s.train_path;
    s.valid = {n - held, n};
    s.valid_note = strf("held-out data: the last %ld of %ld tokens of %s (data.valid_fraction %g); training reads "
                        "tokens [0, %ld)",
                        long(held), long(n), s.train_path.c_str(), spec.valid_fraction, long(n - held));
  } else if (builtin) {
    s.valid_path = builtin_paths(spec).valid;
    s.valid_note = "held-out data: " + s.valid_path + " (the built-in chain on another walk)";
    s.valid_implicit = true;
  } else {
    s.valid_note = "held-out data: none (set data.valid_path or data.valid_fraction); validation is off";
  }
  s.entropy_floor = read_entropy_floor(s.train_path);
  return s;
}

HeldOutBatches::HeldOutBatches(const DataSources& src, int64_t seq_len, int64_t global_batch, int dp_rank, int dp_size,
                               uint64_t seed, int64_t batches)
    : loader_(src.valid_path, seq_len, global_batch, dp_rank, dp_size, seed, TokenLoader::kDefaultResidentBytes,
              src.valid),
      seed_(seed),
      batches_(batches) {
  MONTA_USER_CHECK(batches >= 1 && batches * global_batch <= loader_.samples_per_epoch(),
                   strf("the held-out data (%s) holds %ld samples of %ld tokens, fewer than train.eval_steps x "
                        "train.global_batch = %ld x %ld; lower train.eval_steps or hold out more data.",
                        src.valid_path.c_str(), long(loader_.samples_per_epoch()), long(seq_len), long(batches),
                        long(global_batch)));
}

bool HeldOutBatches::fits(const DataSources& src, int64_t seq_len, int64_t global_batch, int64_t batches) {
  const int64_t n = read_token_file_info(src.valid_path, false).num_tokens;
  const int64_t end = src.valid.end < 0 ? n : std::min(src.valid.end, n);
  return (end - src.valid.begin - 1) / seq_len >= batches * global_batch;
}

}  // namespace monta::data
