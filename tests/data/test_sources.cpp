// Tests of the held-out data: the tail split shares no token with the training range (over many epochs, every rank),
// data.valid_path and the built-in companion file resolve as documented, the held-out batches are the same on every
// pass, and the promised errors.
#include <numeric>
#include <set>

#include "data/sources.h"
#include "data/synthetic.h"
#include "data/token_file.h"
#include "data_test_util.h"

namespace monta::data::test {
namespace {

constexpr int64_t kSeq = 8;

class Sources : public DataTest {
 protected:
  // tokens[i] = i + 1: every token read names its position.
  std::string make_file(int64_t num_tokens, const std::string& name = "d.h5") {
    std::vector<uint32_t> t(static_cast<size_t>(num_tokens));
    std::iota(t.begin(), t.end(), 1u);
    write_token_file(path(name), t, 65536, -1, "");
    return path(name);
  }
  DataSpec spec(const std::string& file) const {
    DataSpec s;
    s.path = file;
    s.run_dir = dir_.string();
    s.seed = 3;
    s.vocab = 64;
    s.builtin_tokens = 4096;
    return s;
  }
};

// Every token position (0-based) a loader delivers, inputs and targets, over `batches` batches.
std::set<int64_t> positions(TokenLoader& l, int64_t batches) {
  std::set<int64_t> seen;
  std::vector<int32_t> in(size_t(l.local_batch() * kSeq)), tg(in.size());
  for (int64_t b = 0; b < batches; ++b) {
    l.next_batch(in, tg);
    for (size_t i = 0; i < in.size(); ++i) {
      seen.insert(in[i] - 1);
      seen.insert(tg[i] - 1);
    }
  }
  return seen;
}

TEST_F(Sources, TailFractionSharesNoTokenWithTraining) {
  const int64_t n = 100 * kSeq + 1;
  DataSpec s = spec(make_file(n));
  s.valid_fraction = 0.2;
  const DataSources src = resolve_data_sources(s);
  const int64_t split = n - std::llround(0.2 * double(n));
  EXPECT_EQ(src.train.begin, 0);
  EXPECT_EQ(src.train.end, split);
  EXPECT_EQ(src.valid.begin, split);
  EXPECT_EQ(src.valid.end, n);
  EXPECT_EQ(src.valid_path, src.train_path);
  std::set<int64_t> train, valid;
  for (int r = 0; r < 2; ++r) {  // both data-parallel ranks, several epochs each
    TokenLoader t(src.train_path, kSeq, 4, r, 2, 9, TokenLoader::kDefaultResidentBytes, src.train);
    TokenLoader v(src.valid_path, kSeq, 4, r, 2, 9, TokenLoader::kDefaultResidentBytes, src.valid);
    train.merge(positions(t, 60));
    valid.merge(positions(v, 12));
  }
  ASSERT_FALSE(train.empty());
  ASSERT_FALSE(valid.empty());
  EXPECT_LT(*train.rbegin(), split) << "a training sample reached into the held-out tail";
  EXPECT_GE(*valid.begin(), split) << "a held-out sample reached into the training range";
  EXPECT_GT(*train.rbegin(), split - kSeq - 2) << "the training range is not used up to the split";
  // The streaming path (range read per sample) delivers the same batches as the resident one.
  TokenLoader mem(src.valid_path, kSeq, 4, 0, 1, 9, TokenLoader::kDefaultResidentBytes, src.valid);
  TokenLoader disk(src.valid_path, kSeq, 4, 0, 1, 9, 0, src.valid);
  EXPECT_EQ(positions(mem, 5), positions(disk, 5));
}

TEST_F(Sources, ValidPathIsTheWholeFileAndTrainingKeepsItsOwn) {
  DataSpec s = spec(make_file(50 * kSeq + 1));
  s.valid_path = make_file(20 * kSeq + 1, "v.h5");
  const DataSources src = resolve_data_sources(s);
  EXPECT_EQ(src.valid_path, s.valid_path);
  EXPECT_EQ(src.train.end, -1);
  EXPECT_EQ(src.valid.end, -1);
}

TEST_F(Sources, UserFileWithoutHeldOutDataHasNone) {
  const DataSources src = resolve_data_sources(spec(make_file(50 * kSeq + 1)));
  EXPECT_TRUE(src.valid_path.empty());
  EXPECT_NE(src.valid_note.find("validation is off"), std::string::npos);
}

TEST_F(Sources, BuiltinCorpusHoldsOutAnotherWalkOfTheSameChain) {
  DataSpec s = spec(kBuiltinMarkov);
  write_builtin_corpus(s);
  const DataSources src = resolve_data_sources(s);
  ASSERT_FALSE(src.valid_path.empty());
  EXPECT_NE(src.valid_path, src.train_path);
  EXPECT_EQ(read_token_file_info(src.train_path).num_tokens, 4096);
  EXPECT_EQ(read_token_file_info(src.valid_path).num_tokens, 4096 / kBuiltinValidDivisor);
  EXPECT_EQ(read_entropy_floor(src.valid_path), src.entropy_floor) << "the same chain has the same floor";
  EXPECT_FALSE(std::isnan(src.entropy_floor));
  // Walk 0 is the training file as before held-out data existed; another walk differs.
  write_markov_corpus(path("again.h5"), s.seed, s.vocab, 4096);
  TokenLoader a(path("again.h5"), kSeq, 4, 0, 1, 1), t(src.train_path, kSeq, 4, 0, 1, 1);
  TokenLoader v(src.valid_path, kSeq, 4, 0, 1, 1);
  std::vector<int32_t> ia(32), ta(32), it(32), tt(32), iv(32), tv(32);
  a.next_batch(ia, ta);
  t.next_batch(it, tt);
  v.next_batch(iv, tv);
  EXPECT_EQ(ia, it);
  EXPECT_NE(it, iv);
  EXPECT_TRUE(src.valid_implicit);
  EXPECT_TRUE(HeldOutBatches::fits(src, kSeq, 4, 15));  // (512 - 1) / 8 = 63 samples
  EXPECT_FALSE(HeldOutBatches::fits(src, kSeq, 4, 16));
  // A second call writes nothing new (the files exist).
  const auto stamp = fs::last_write_time(src.valid_path);
  write_builtin_corpus(s);
  EXPECT_EQ(fs::last_write_time(src.valid_path), stamp);
}

TEST_F(Sources, HeldOutBatchesAreTheSameOnEveryPass) {
  DataSpec s = spec(make_file(100 * kSeq + 1));
  s.valid_fraction = 0.3;
  const DataSources src = resolve_data_sources(s);
  HeldOutBatches h(src, kSeq, 4, 0, 1, 5, 3);
  std::vector<int32_t> in(32), tg(32), first, again;
  for (int pass = 0; pass < 2; ++pass) {
    h.rewind();
    for (int64_t b = 0; b < h.batches(); ++b) {
      h.next_batch(in, tg);
      (pass ? again : first).insert((pass ? again : first).end(), in.begin(), in.end());
    }
  }
  EXPECT_EQ(first, again);
  // Two data-parallel ranks read the two halves of the same global batches.
  HeldOutBatches r0(src, kSeq, 4, 0, 2, 5, 3), r1(src, kSeq, 4, 1, 2, 5, 3);
  std::vector<int32_t> a(16), b(16), ta(16), tb(16);
  r0.rewind();
  r1.rewind();
  r0.next_batch(a, ta);
  r1.next_batch(b, tb);
  a.insert(a.end(), b.begin(), b.end());
  EXPECT_EQ(a, std::vector<int32_t>(first.begin(), first.begin() + 32));
}

TEST_F(Sources, PromisedErrors) {
  DataSpec s = spec(make_file(100 * kSeq + 1));
  s.valid_fraction = 0.3;
  s.valid_path = path("v.h5");
  EXPECT_USER_ERROR(resolve_data_sources(s), "both set");
  s.valid_path.clear();
  s.valid_fraction = 0.001;
  EXPECT_USER_ERROR(resolve_data_sources(s), "leaves 1 held out");
  s.valid_fraction = 0.3;
  const DataSources src = resolve_data_sources(s);
  EXPECT_USER_ERROR(HeldOutBatches(src, kSeq, 4, 0, 1, 5, 8), "lower train.eval_steps");
  EXPECT_USER_ERROR(TokenLoader(src.train_path, kSeq, 4, 0, 1, 5, TokenLoader::kDefaultResidentBytes, {10, 5}),
                    "outside token file");
}

}  // namespace
}  // namespace monta::data::test
