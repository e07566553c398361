// The random Markov chain corpus (see synthetic.h). Successor 0 of state s is always (s+1) mod V, which makes the
// chain irreducible, so its stationary distribution is unique and the floor is what long sequences average to.
#include "data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <vector>

#include "data/hdf5_util.h"
#include "engine/check.h"
#include "engine/log.h"
#include "engine/rng.h"

namespace monta::data {

using engine::strf;

namespace {

constexpr int kSuccessors = 4;

struct Chain {
  int64_t vocab = 0, k = 0;
  std::vector<uint32_t> next;  // (vocab, k) successor ids
  std::vector<double> prob;    // (vocab, k) transition probabilities
  std::vector<double> cum;     // (vocab, k) running sums, for sampling
};

Chain make_chain(uint64_t seed, int64_t vocab) {
  Chain c;
  c.vocab = vocab;
  c.k = std::min<int64_t>(kSuccessors, vocab);
  c.next.resize(size_t(vocab * c.k));
  c.prob.resize(c.next.size());
  c.cum.resize(c.next.size());
  engine::Philox rng{seed, engine::fnv1a64("monta.data.markov.chain"), 0};
  for (int64_t s = 0; s < vocab; ++s) {
    uint32_t* nx = &c.next[size_t(s * c.k)];
    double* p = &c.prob[size_t(s * c.k)];
    nx[0] = uint32_t((s + 1) % vocab);
    for (int64_t j = 1; j < c.k; ++j) {
      uint32_t cand;
      do cand = uint32_t(rng.below(uint64_t(vocab)));
      while (std::find(nx, nx + j, cand) != nx + j);
      nx[j] = cand;
    }
    // Log-normal weights: a few likely successors and some rare ones, so the floor sits well below log(k).
    double total = 0;
    for (int64_t j = 0; j < c.k; ++j) total += p[j] = std::exp(1.5 * rng.normal());
    double run = 0;
    for (int64_t j = 0; j < c.k; ++j) {
      p[j] /= total;
      run += p[j];
      c.cum[size_t(s * c.k + j)] = run;
    }
    c.cum[size_t(s * c.k + c.k - 1)] = 1.0;
  }
  return c;
}

// Stationary distribution by power iteration on the lazy chain (I + P) / 2: same fixed point as P, and it
// converges even if P happens to be periodic.
std::vector<double> stationary(const Chain& c) {
  const size_t v = size_t(c.vocab);
  std::vector<double> pi(v, 1.0 / double(v)), nxt(v);
  for (int it = 0; it < 20000; ++it) {
    for (size_t s = 0; s < v; ++s) nxt[s] = 0.5 * pi[s];
    for (size_t s = 0; s < v; ++s)
      for (int64_t j = 0; j < c.k; ++j) nxt[c.next[s * size_t(c.k) + size_t(j)]] += 0.5 * pi[s] * c.prob[s * size_t(c.k) + size_t(j)];
    double diff = 0;
    for (size_t s = 0; s < v; ++s) diff += std::fabs(nxt[s] - pi[s]);
    pi.swap(nxt);
    if (diff < 1e-13) break;
  }
  return pi;
}

double entropy_floor(const Chain& c, const std::vector<double>& pi) {
  double h = 0;
  for (int64_t s = 0; s < c.vocab; ++s) {
    double hs = 0;
    for (int64_t j = 0; j < c.k; ++j) {
      double p = c.prob[size_t(s * c.k + j)];
      if (p > 0) hs -= p * std::log(p);
    }
    h += pi[size_t(s)] * hs;
  }
  return h;
}

}  // namespace

MarkovCorpusInfo write_markov_corpus(const std::string& path, uint64_t seed, int64_t vocab_size, int64_t num_tokens,
                                     uint64_t walk) {
  MONTA_USER_CHECK(vocab_size >= 2 && vocab_size <= (int64_t(1) << 24),
                   strf("the built-in Markov corpus needs a vocab size in [2, 2^24], not %ld; check model.vocab.", long(vocab_size)));
  MONTA_USER_CHECK(num_tokens >= 2, strf("the built-in Markov corpus needs at least 2 tokens, not %ld; raise data.builtin_tokens.",
                                         long(num_tokens)));
  const Chain c = make_chain(seed, vocab_size);
  MarkovCorpusInfo info;
  info.vocab_size = vocab_size;
  info.num_tokens = num_tokens;
  info.entropy_floor_nats = entropy_floor(c, stationary(c));

  std::vector<uint32_t> tokens;
  try {
    tokens.resize(static_cast<size_t>(num_tokens));
  } catch (const std::exception&) {  // bad_alloc, length_error
    engine::fail_user(strf("the built-in Markov corpus of %ld tokens does not fit in this host's memory; lower "
                           "data.builtin_tokens.",
                           long(num_tokens)));
  }
  engine::Philox rng{seed, engine::fnv1a64("monta.data.markov.walk") + walk, 0};
  uint32_t s = uint32_t(rng.below(uint64_t(vocab_size)));
  for (auto& t : tokens) {
    t = s;
    const double* cum = &c.cum[size_t(s) * size_t(c.k)];
    double u = rng.uniform();
    int64_t j = 0;
    while (j + 1 < c.k && u > cum[j]) ++j;
    s = c.next[size_t(s) * size_t(c.k) + size_t(j)];
  }
  h5::write_token_file_with_attrs(path, tokens, vocab_size, -1, "markov", {{"entropy_floor_nats", info.entropy_floor_nats}});
  return info;
}

double read_entropy_floor(const std::string& path) {
  h5::Handle f = h5::open_file(path);
  double v = NAN;
  if (H5Lexists(f.get(), "tokens", H5P_DEFAULT) > 0) {
    h5::Handle d = h5::dataset(H5Dopen2(f.get(), "tokens", H5P_DEFAULT));
    if (d.valid() && h5::read_attr_f64(d.get(), "entropy_floor_nats", path, &v)) return v;
  }
  if (h5::read_attr_f64(f.get(), "entropy_floor_nats", path, &v)) return v;
  return NAN;
}

}  // namespace monta::data
