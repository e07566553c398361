// The built-in default corpus: tokens from a seeded random first-order Markov chain, with its entropy floor
// (the best cross-entropy a model that sees the previous token can reach), so a training run with no data
// of its own still has a known target to converge to.
#pragma once
#include <cstdint>
#include <string>

namespace monta::data {

struct MarkovCorpusInfo {
  double entropy_floor_nats = 0;  // Σ_s π(s)·H(P(·|s)), π the stationary distribution
  int64_t num_tokens = 0;
  int64_t vocab_size = 0;
};

// Writes `num_tokens` tokens of a random Markov chain over `vocab_size` ids (each state has up to 4 successors
// with skewed random probabilities; all drawn from engine::Philox keyed by `seed`) with write_token_file
// (tokenizer "markov") plus the attribute "entropy_floor_nats". Same arguments -> byte-identical tokens. `walk`
// picks the random walk through the chain: another walk is a second sample of the same distribution (the held-out
// file of the built-in corpus), with the same floor.
MarkovCorpusInfo write_markov_corpus(const std::string& path, uint64_t seed, int64_t vocab_size, int64_t num_tokens,
                                     uint64_t walk = 0);

// The "entropy_floor_nats" attribute of a token file; NaN when the file has none.
double read_entropy_floor(const std::string& path);

}  // namespace monta::data
