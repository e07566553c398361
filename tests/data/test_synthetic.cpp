// Tests of the built-in Markov corpus: determinism per seed, a floor strictly between 0 and log(vocab), and the
// generated tokens' empirical bigram cross-entropy matching the analytic floor.
#include <cmath>

#include "data/synthetic.h"
#include "data/token_file.h"
#include "data_test_util.h"

namespace monta::data::test {
namespace {

using Markov = DataTest;

TEST_F(Markov, DeterministicPerSeed) {
  auto a = write_markov_corpus(path("a.h5"), 42, 100, 20000);
  auto b = write_markov_corpus(path("b.h5"), 42, 100, 20000);
  auto c = write_markov_corpus(path("c.h5"), 43, 100, 20000);
  auto ta = read_all_tokens(path("a.h5")), tb = read_all_tokens(path("b.h5")), tc = read_all_tokens(path("c.h5"));
  ASSERT_EQ(ta.size(), 20000u);
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
  EXPECT_EQ(a.entropy_floor_nats, b.entropy_floor_nats);
  EXPECT_NE(a.entropy_floor_nats, c.entropy_floor_nats);
  EXPECT_EQ(read_bytes(path("a.h5")), read_bytes(path("b.h5")));  // no timestamps: byte-identical files
  auto info = read_token_file_info(path("a.h5"));
  EXPECT_EQ(info.num_tokens, 20000);
  EXPECT_EQ(info.vocab_size, 100);
  EXPECT_EQ(info.tokenizer, "markov");
  EXPECT_EQ(a.num_tokens, 20000);
  EXPECT_EQ(a.vocab_size, 100);
}

TEST_F(Markov, FloorBetweenZeroAndLogVocabAndReadBack) {
  for (int64_t v : {2, 16, 1000}) {
    auto info = write_markov_corpus(path("m.h5"), 7, v, 1000);
    EXPECT_GT(info.entropy_floor_nats, 0.0) << v;
    EXPECT_LT(info.entropy_floor_nats, std::log(double(v))) << v;
    EXPECT_LE(info.entropy_floor_nats, std::log(4.0) + 1e-12) << v;  // at most 4 successors per state
    EXPECT_DOUBLE_EQ(read_entropy_floor(path("m.h5")), info.entropy_floor_nats);
  }
  write_token_file(path("plain.h5"), std::vector<uint32_t>{1, 2, 3}, 4, -1, "");
  EXPECT_TRUE(std::isnan(read_entropy_floor(path("plain.h5"))));
  EXPECT_USER_ERROR(read_entropy_floor(path("missing.h5")), "does not exist");
}

// Cases whose stationary distribution is far from uniform, so a floor weighted by anything but π misses by > 0.02.
TEST_F(Markov, EmpiricalBigramCrossEntropyMatchesFloor) {
  const int64_t n = 300000;
  for (auto [vocab, seed] : {std::pair<int64_t, uint64_t>{8, 2}, {16, 1}, {64, 1}}) {
    SCOPED_TRACE("vocab " + std::to_string(vocab) + " seed " + std::to_string(seed));
    auto info = write_markov_corpus(path("m.h5"), seed, vocab, n);
    auto t = read_all_tokens(path("m.h5"));
    ASSERT_EQ(int64_t(t.size()), n);
    std::vector<double> pair(size_t(vocab * vocab), 0), row(size_t(vocab), 0);
    for (size_t i = 0; i + 1 < t.size(); ++i) {
      ASSERT_LT(t[i], uint32_t(vocab));
      pair[t[i] * size_t(vocab) + t[i + 1]] += 1;
      row[t[i]] += 1;
    }
    // The plug-in conditional entropy -1/N Σ log(count(a,b)/count(a)): the cross-entropy of the fitted bigram model.
    double ce = 0;
    int max_successors = 0;
    for (int64_t a = 0; a < vocab; ++a) {
      int successors = 0;
      for (int64_t b = 0; b < vocab; ++b) {
        double c = pair[size_t(a * vocab + b)];
        if (c > 0) {
          ce -= c * std::log(c / row[size_t(a)]);
          ++successors;
        }
      }
      max_successors = std::max(max_successors, successors);
      EXPECT_GT(row[size_t(a)], 0) << "state " << a << " never visited: the chain should be irreducible";
    }
    ce /= double(n - 1);
    EXPECT_LE(max_successors, 4);
    EXPECT_NEAR(ce, info.entropy_floor_nats, 0.01);
  }
}

TEST_F(Markov, BadArguments) {
  EXPECT_USER_ERROR(write_markov_corpus(path("m.h5"), 1, 1, 100), "vocab size");
  EXPECT_USER_ERROR(write_markov_corpus(path("m.h5"), 1, 16, 1), "at least 2 tokens");
}

}  // namespace
}  // namespace monta::data::test
