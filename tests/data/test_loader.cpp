// Tests of TokenLoader: batch contents, determinism per seed, the 4-rank slices adding up to the 1-rank batch,
// epoch rollover and coverage, exact resume from state(), the streaming path, and the up-front validation.
#include <algorithm>
#include <numeric>
#include <set>

#include "data/loader.h"
#include "data/token_file.h"
#include "data_test_util.h"

namespace monta::data::test {
namespace {

constexpr int64_t kSeq = 8;

class Loader : public DataTest {
 protected:
  // tokens[i] = i + 1 (so the position of every token is recoverable; +1 keeps id 0 out, catching zero fills).
  std::string make_file(int64_t num_tokens, const std::string& name = "d.h5", int64_t vocab = 65536) {
    std::vector<uint32_t> t(static_cast<size_t>(num_tokens));
    std::iota(t.begin(), t.end(), 1u);
    write_token_file(path(name), t, vocab, -1, "");
    return path(name);
  }
};

struct Batch {
  std::vector<int32_t> in, tg;
  bool operator==(const Batch&) const = default;
};

Batch next(TokenLoader& l) {
  Batch b;
  b.in.resize(size_t(l.local_batch() * kSeq));
  b.tg.resize(b.in.size());
  l.next_batch(b.in, b.tg);
  return b;
}

// The sample index of each row (its first input token is sample * seq + 1).
std::vector<int64_t> samples_of(const Batch& b) {
  std::vector<int64_t> s;
  for (size_t r = 0; r < b.in.size() / kSeq; ++r) s.push_back((b.in[r * kSeq] - 1) / kSeq);
  return s;
}

TEST_F(Loader, BatchContentsAreWindowsShiftedByOne) {
  TokenLoader l(make_file(40 * kSeq + 1), kSeq, 8, 0, 1, 11);
  EXPECT_EQ(l.samples_per_epoch(), 40);
  EXPECT_TRUE(l.resident());
  for (int step = 0; step < 3; ++step) {
    Batch b = next(l);
    for (size_t r = 0; r < 8; ++r) {
      const int32_t first = b.in[r * kSeq];
      EXPECT_EQ((first - 1) % kSeq, 0) << "rows start at offsets i*seq_len";
      for (int64_t t = 0; t < kSeq; ++t) {
        EXPECT_EQ(b.in[r * kSeq + size_t(t)], first + t);
        EXPECT_EQ(b.tg[r * kSeq + size_t(t)], first + t + 1);
      }
    }
  }
}

TEST_F(Loader, SameSeedSameBatchesOtherSeedOther) {
  const std::string f = make_file(40 * kSeq + 1);
  TokenLoader a(f, kSeq, 8, 0, 1, 5), b(f, kSeq, 8, 0, 1, 5), c(f, kSeq, 8, 0, 1, 6);
  bool differs = false;
  std::vector<int64_t> first_epoch;
  for (int i = 0; i < 7; ++i) {
    Batch ba = next(a), bb = next(b), bc = next(c);
    EXPECT_EQ(ba, bb) << "batch " << i;
    differs |= !(ba == bc);
    if (i < 5)
      for (int64_t s : samples_of(ba)) first_epoch.push_back(s);
  }
  EXPECT_TRUE(differs);
  EXPECT_FALSE(std::is_sorted(first_epoch.begin(), first_epoch.end())) << "the order should be shuffled";
}

TEST_F(Loader, FourRanksAddUpToOneRank) {
  const std::string f = make_file(37 * kSeq + 3);  // 37 samples: 4 batches of 8 per epoch, 5 left over
  TokenLoader one(f, kSeq, 8, 0, 1, 9);
  std::vector<std::unique_ptr<TokenLoader>> ranks;
  for (int r = 0; r < 4; ++r) ranks.push_back(std::make_unique<TokenLoader>(f, kSeq, 8, r, 4, 9));
  for (int step = 0; step < 10; ++step) {  // spans epochs 0, 1 and 2
    Batch whole = next(one), joined;
    std::set<int64_t> seen;
    for (auto& l : ranks) {
      EXPECT_EQ(l->local_batch(), 2);
      Batch part = next(*l);
      for (int64_t s : samples_of(part)) EXPECT_TRUE(seen.insert(s).second) << "ranks overlap at sample " << s;
      joined.in.insert(joined.in.end(), part.in.begin(), part.in.end());
      joined.tg.insert(joined.tg.end(), part.tg.begin(), part.tg.end());
    }
    EXPECT_EQ(joined, whole) << "step " << step;
    for (auto& l : ranks) {
      EXPECT_EQ(l->state().epoch, one.state().epoch);
      EXPECT_EQ(l->state().sample, one.state().sample);
    }
  }
}

TEST_F(Loader, EpochRolloverAndCoverage) {
  // 43 samples, batch 8: 5 whole batches per epoch, the remaining 3 samples are skipped and batch 6 starts epoch 1.
  TokenLoader l(make_file(43 * kSeq + 1), kSeq, 8, 0, 1, 3);
  ASSERT_EQ(l.samples_per_epoch(), 43);
  std::vector<std::vector<int64_t>> epochs(2);
  for (int e = 0; e < 2; ++e) {
    for (int i = 0; i < 5; ++i) {
      EXPECT_EQ(l.state().epoch, e);
      EXPECT_EQ(l.state().sample, i * 8);
      for (int64_t s : samples_of(next(l))) epochs[size_t(e)].push_back(s);
    }
  }
  EXPECT_EQ(l.state().epoch, 2);
  EXPECT_EQ(l.state().sample, 0);
  for (auto& ep : epochs) {
    std::set<int64_t> u(ep.begin(), ep.end());
    EXPECT_EQ(u.size(), 40u) << "no sample twice within an epoch";
    EXPECT_LT(*u.rbegin(), 43);
  }
  EXPECT_NE(epochs[0], epochs[1]) << "each epoch has its own order";

  // With samples_per_epoch a multiple of the batch, an epoch covers every sample exactly once.
  TokenLoader full(make_file(40 * kSeq + 1, "full.h5"), kSeq, 8, 0, 1, 3);
  std::vector<int64_t> all;
  for (int i = 0; i < 5; ++i)
    for (int64_t s : samples_of(next(full))) all.push_back(s);
  std::sort(all.begin(), all.end());
  std::vector<int64_t> expect(40);
  std::iota(expect.begin(), expect.end(), 0);
  EXPECT_EQ(all, expect);
}

TEST_F(Loader, ResumeFromStateReproducesFollowingBatches) {
  const std::string f = make_file(43 * kSeq + 1);
  TokenLoader a(f, kSeq, 8, 0, 1, 77);
  for (int i = 0; i < 3; ++i) next(a);
  const LoaderState st = a.state();
  EXPECT_EQ(st.seed, 77u);
  std::vector<Batch> after;
  for (int i = 0; i < 6; ++i) after.push_back(next(a));  // crosses into epoch 1

  TokenLoader b(f, kSeq, 8, 0, 1, 77);
  next(b);  // a different position, overwritten by set_state
  b.set_state(st);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(next(b), after[size_t(i)]) << "batch " << i;
  EXPECT_EQ(b.state().epoch, a.state().epoch);
  EXPECT_EQ(b.state().sample, a.state().sample);

  // The state is global: a 2-rank layout resumed from it sees the same global batches.
  TokenLoader r0(f, kSeq, 8, 0, 2, 77), r1(f, kSeq, 8, 1, 2, 77);
  r0.set_state(st);
  r1.set_state(st);
  for (int i = 0; i < 6; ++i) {
    Batch p0 = next(r0), p1 = next(r1), joined;
    joined.in = p0.in;
    joined.in.insert(joined.in.end(), p1.in.begin(), p1.in.end());
    joined.tg = p0.tg;
    joined.tg.insert(joined.tg.end(), p1.tg.begin(), p1.tg.end());
    EXPECT_EQ(joined, after[size_t(i)]) << "batch " << i;
  }
}

TEST_F(Loader, SetStateValidates) {
  TokenLoader l(make_file(40 * kSeq + 1), kSeq, 8, 0, 1, 1);
  EXPECT_USER_ERROR(l.set_state({2, 0, 0}), "seed 2");
  EXPECT_USER_ERROR(l.set_state({1, 0, 41}), "out of range");
  EXPECT_USER_ERROR(l.set_state({1, 0, -1}), "out of range");
  EXPECT_USER_ERROR(l.set_state({1, -1, 0}), "out of range");
  l.set_state({1, 3, 40});  // the end of an epoch: the next batch starts epoch 4
  EXPECT_EQ(l.state().epoch, 4);
  EXPECT_EQ(l.state().sample, 0);
}

TEST_F(Loader, StreamingReadsMatchResident) {
  // uint32 file, read per sample (resident limit 0) vs. whole-file.
  const std::string f = make_file(50 * kSeq + 5, "u32.h5", 70000);
  ASSERT_TRUE(read_token_file_info(f).is_u32);
  TokenLoader mem(f, kSeq, 4, 1, 2, 8), disk(f, kSeq, 4, 1, 2, 8, /*max_resident_bytes=*/0);
  EXPECT_TRUE(mem.resident());
  EXPECT_FALSE(disk.resident());
  for (int i = 0; i < 30; ++i) EXPECT_EQ(next(mem), next(disk)) << "batch " << i;
}

TEST_F(Loader, RejectsBadInputsUpFront) {
  EXPECT_USER_ERROR(TokenLoader(path("missing.h5"), kSeq, 8, 0, 1, 1), "does not exist");
  const std::string f = make_file(20 * kSeq + 1);
  EXPECT_USER_ERROR(TokenLoader(f, kSeq, 6, 0, 4, 1), "does not divide over 4 data-parallel ranks");
  EXPECT_USER_ERROR(TokenLoader(f, kSeq, 24, 0, 1, 1), "needs at least 193 tokens");
  EXPECT_USER_ERROR(TokenLoader(make_file(kSeq, "short.h5"), kSeq, 1, 0, 1, 1), "shorter than one sample");
  EXPECT_USER_ERROR(TokenLoader(f, kSeq, 8, 4, 4, 1), "rank 4 of 4");
  std::vector<uint16_t> bad(200, 1);
  bad[150] = 50;
  craft_h5(path("bad.h5"), "tokens", H5T_STD_U16LE, H5T_NATIVE_UINT16, bad.data(), {bad.size()}, 50);
  EXPECT_USER_ERROR(TokenLoader(path("bad.h5"), kSeq, 8, 0, 1, 1), "token id 50 at position 150");
  float fl[200] = {};
  craft_h5(path("float.h5"), "tokens", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, fl, {200}, 50);
  EXPECT_USER_ERROR(TokenLoader(path("float.h5"), kSeq, 8, 0, 1, 1), "dtype float32");
}

}  // namespace
}  // namespace monta::data::test
