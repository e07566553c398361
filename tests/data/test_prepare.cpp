// Tests of `monta prepare-data`'s converter: round trips for text, raw16, raw32 and every accepted .npy dtype
// and header version (headers written by hand here), format detection, and each rejected input's message.
#include "data/prepare.h"
#include "data/token_file.h"
#include "data_test_util.h"

namespace monta::data::test {
namespace {

using Prepare = DataTest;

// A .npy file: magic, version, little-endian header length, the dict padded with spaces to 64 bytes, then data.
std::string npy_file(const std::string& descr, const std::string& shape, const std::string& data, int major = 1,
                     const std::string& fortran = "False", int minor = 0) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': " + fortran + ", 'shape': " + shape + ", }";
  const size_t pre = 8 + (major == 1 ? 2 : 4);
  dict += std::string(64 - (pre + dict.size() + 1) % 64, ' ') + "\n";
  std::string out = std::string("\x93NUMPY") + char(major) + char(minor);
  return out + le_bytes(dict.size(), major == 1 ? 2 : 4) + dict + data;
}

std::string encode(const std::vector<int64_t>& v, int bytes) {
  std::string s;
  for (int64_t x : v) s += le_bytes(uint64_t(x), bytes);
  return s;
}

TEST_F(Prepare, TextRoundTrip) {
  const std::string text = "Hello, monta!\n\tbytes \xff\x80 end";
  write_bytes(path("in.txt"), text);
  prepare_data({path("in.txt"), path("out.h5"), "auto", 0, 10});
  auto info = read_token_file_info(path("out.h5"));
  EXPECT_EQ(info.vocab_size, 256);
  EXPECT_EQ(info.eos_token, 10);
  EXPECT_EQ(info.tokenizer, "bytes");
  EXPECT_FALSE(info.is_u32);
  std::vector<uint32_t> expect;
  for (unsigned char c : text) expect.push_back(c);
  EXPECT_EQ(read_all_tokens(path("out.h5")), expect);
}

TEST_F(Prepare, Raw16RoundTrip) {
  std::vector<int64_t> ids{0, 7, 65535, 3, 256, 1};
  write_bytes(path("in.u16"), encode(ids, 2));
  prepare_data({path("in.u16"), path("out.h5"), "auto", 0, -1});
  auto info = read_token_file_info(path("out.h5"));
  EXPECT_EQ(info.vocab_size, 65536);  // max id + 1
  EXPECT_FALSE(info.is_u32);
  EXPECT_EQ(read_all_tokens(path("out.h5")), (std::vector<uint32_t>{0, 7, 65535, 3, 256, 1}));
}

TEST_F(Prepare, Raw32RoundTripWithExplicitFormatAndVocab) {
  std::vector<int64_t> ids{70000, 1, 2, 123456, 0};
  write_bytes(path("in.dat"), encode(ids, 4));
  prepare_data({path("in.dat"), path("out.h5"), "raw32", 200000, 5});
  auto info = read_token_file_info(path("out.h5"));
  EXPECT_EQ(info.vocab_size, 200000);
  EXPECT_EQ(info.eos_token, 5);
  EXPECT_TRUE(info.is_u32);
  EXPECT_EQ(read_all_tokens(path("out.h5")), (std::vector<uint32_t>{70000, 1, 2, 123456, 0}));
}

struct NpyCase {
  const char* descr;
  int bytes;
  int major;
  const char* shape;
};

class PrepareNpy : public DataTest, public ::testing::WithParamInterface<NpyCase> {};

TEST_P(PrepareNpy, RoundTrip) {
  const NpyCase c = GetParam();
  std::vector<int64_t> ids = c.bytes == 2 ? std::vector<int64_t>{5, 0, 65535, 9, 1, 2}
                                          : std::vector<int64_t>{5, 0, 100000, 9, 1, 4000000000LL};
  if (c.descr[1] == 'i') ids.back() = 7;  // signed: stay within the int32 range
  write_bytes(path("in.npy"), npy_file(c.descr, c.shape, encode(ids, c.bytes), c.major));
  prepare_data({path("in.npy"), path("out.h5"), "auto", 0, -1});
  std::vector<uint32_t> expect(ids.begin(), ids.end());
  EXPECT_EQ(read_all_tokens(path("out.h5")), expect);
  EXPECT_EQ(read_token_file_info(path("out.h5")).vocab_size, int64_t(*std::max_element(expect.begin(), expect.end())) + 1);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, PrepareNpy,
                         ::testing::Values(NpyCase{"<u2", 2, 1, "(6,)"}, NpyCase{"<u4", 4, 1, "(6,)"},
                                           NpyCase{"<i4", 4, 1, "(2, 3)"}, NpyCase{"<i8", 8, 2, "(6,)"},
                                           NpyCase{"<u8", 8, 2, "(3, 1, 2)"}, NpyCase{"<u2", 2, 2, "(2, 3)"}),
                         [](const ::testing::TestParamInfo<NpyCase>& i) {
                           std::string d = i.param.descr + 1;
                           return d + "_v" + std::to_string(i.param.major) + "_" + std::to_string(i.index);
                         });

TEST_F(Prepare, NpyRejectsNegativeIds) {
  write_bytes(path("neg.npy"), npy_file("<i8", "(3,)", encode({1, -4, 2}, 8)));
  EXPECT_USER_ERROR(prepare_data({path("neg.npy"), path("o.h5")}), "negative token id -4 at position 1");
  EXPECT_FALSE(fs::exists(path("o.h5")));
}

TEST_F(Prepare, NpyRejectsFortranOrder) {
  write_bytes(path("f.npy"), npy_file("<u2", "(2, 2)", encode({1, 2, 3, 4}, 2), 1, "True"));
  EXPECT_USER_ERROR(prepare_data({path("f.npy"), path("o.h5")}), "Fortran order");
}

TEST_F(Prepare, NpyRejectsFloatAndBigEndian) {
  write_bytes(path("f4.npy"), npy_file("<f4", "(2,)", std::string(8, '\0')));
  EXPECT_USER_ERROR(prepare_data({path("f4.npy"), path("o.h5")}), "dtype '<f4'");
  write_bytes(path("be.npy"), npy_file(">u4", "(2,)", std::string(8, '\0')));
  EXPECT_USER_ERROR(prepare_data({path("be.npy"), path("o.h5")}), "(big-endian)");
}

TEST_F(Prepare, NpyRejectsTruncatedDataBadMagicAndVersion) {
  write_bytes(path("tr.npy"), npy_file("<u4", "(10,)", encode({1, 2, 3}, 4)));
  EXPECT_USER_ERROR(prepare_data({path("tr.npy"), path("o.h5")}), "is truncated");
  write_bytes(path("magic.npy"), "not an npy file at all");
  EXPECT_USER_ERROR(prepare_data({path("magic.npy"), path("o.h5")}), "magic string");
  write_bytes(path("v3.npy"), npy_file("<u2", "(1,)", encode({1}, 2), 3));
  EXPECT_USER_ERROR(prepare_data({path("v3.npy"), path("o.h5")}), "version 3.0");
}

TEST_F(Prepare, RejectsIdAtOrAboveVocabAndWritesNothing) {
  write_bytes(path("in.u16"), encode({1, 2, 300, 4}, 2));
  EXPECT_USER_ERROR(prepare_data({path("in.u16"), path("o.h5"), "auto", 256, -1}), "token id 300 at position 2");
  EXPECT_FALSE(fs::exists(path("o.h5")));
  EXPECT_FALSE(fs::exists(path("o.h5.tmp")));
  // Text bytes above a small explicit vocab are rejected the same way.
  write_bytes(path("in.txt"), "abc");
  EXPECT_USER_ERROR(prepare_data({path("in.txt"), path("o.h5"), "text", 98, -1}), "not below vocab size 98");
}

TEST_F(Prepare, RawSizeMustBeMultipleOfElement) {
  write_bytes(path("odd.u16"), "abc");
  EXPECT_USER_ERROR(prepare_data({path("odd.u16"), path("o.h5")}), "not a multiple of 2");
  write_bytes(path("odd.u32"), "abcdef");
  EXPECT_USER_ERROR(prepare_data({path("odd.u32"), path("o.h5")}), "not a multiple of 4");
}

TEST_F(Prepare, OtherBadArguments) {
  write_bytes(path("in.txt"), "abc");
  EXPECT_USER_ERROR(prepare_data({path("in.txt"), path("o.h5"), "csv", 0, -1}), "unknown --format 'csv'");
  EXPECT_USER_ERROR(prepare_data({path("missing.txt"), path("o.h5")}), "does not exist");
  EXPECT_USER_ERROR(prepare_data({path("in.txt"), path("o.h5"), "auto", 0, 256}), "--eos-token 256");
  write_bytes(path("empty.txt"), "");
  EXPECT_USER_ERROR(prepare_data({path("empty.txt"), path("o.h5")}), "holds no tokens");
}

TEST_F(Prepare, DetectFormatByExtension) {
  EXPECT_EQ(detect_format("a.txt"), "text");
  EXPECT_EQ(detect_format("a.md"), "text");
  EXPECT_EQ(detect_format("a"), "text");
  EXPECT_EQ(detect_format("x/a.bin16"), "raw16");
  EXPECT_EQ(detect_format("a.U16"), "raw16");
  EXPECT_EQ(detect_format("a.bin32"), "raw32");
  EXPECT_EQ(detect_format("a.u32"), "raw32");
  EXPECT_EQ(detect_format("a.npy"), "npy");
}

}  // namespace
}  // namespace monta::data::test
