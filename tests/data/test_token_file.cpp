// Tests of the HDF5 token format: write/read round trip, dtype choice, atomic failure, and every bad file
// giving its own one-line user error.
#include <cmath>

#include "data/token_file.h"
#include "data_test_util.h"

namespace monta::data::test {
namespace {

using TokenFile = DataTest;

TEST_F(TokenFile, RoundTripUint16) {
  std::vector<uint32_t> toks{0, 1, 2, 65535, 7, 7, 300};
  write_token_file(path("a.h5"), toks, 65536, 3, "my-tok");
  auto info = read_token_file_info(path("a.h5"));
  EXPECT_EQ(info.num_tokens, 7);
  EXPECT_EQ(info.vocab_size, 65536);
  EXPECT_EQ(info.eos_token, 3);
  EXPECT_EQ(info.tokenizer, "my-tok");
  EXPECT_FALSE(info.is_u32);
  EXPECT_EQ(stored_token_bytes(path("a.h5")), 2u);
  EXPECT_EQ(read_all_tokens(path("a.h5")), toks);
  EXPECT_FALSE(fs::exists(path("a.h5.tmp")));
}

TEST_F(TokenFile, RoundTripUint32AndLarge) {
  // More tokens than one HDF5 chunk and one id-scan chunk, so chunk boundaries are crossed.
  std::vector<uint32_t> toks(1500000);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = uint32_t((i * 2654435761u) % 65537u);
  write_token_file(path("b.h5"), toks, 65537, -1, "");
  auto info = read_token_file_info(path("b.h5"));
  EXPECT_TRUE(info.is_u32);
  EXPECT_EQ(stored_token_bytes(path("b.h5")), 4u);
  EXPECT_EQ(info.num_tokens, int64_t(toks.size()));
  EXPECT_EQ(info.eos_token, -1);
  EXPECT_EQ(info.tokenizer, "");
  EXPECT_EQ(read_all_tokens(path("b.h5")), toks);
}

TEST_F(TokenFile, WriteRejectsIdAtVocabAndWritesNothing) {
  std::vector<uint32_t> toks{1, 2, 10, 3};
  EXPECT_USER_ERROR(write_token_file(path("c.h5"), toks, 10, -1, ""), "token id 10 at position 2");
  EXPECT_FALSE(fs::exists(path("c.h5")));
  EXPECT_FALSE(fs::exists(path("c.h5.tmp")));
  // An existing file is left untouched by a failed write.
  write_token_file(path("c.h5"), std::vector<uint32_t>{1, 2}, 10, -1, "");
  EXPECT_USER_ERROR(write_token_file(path("c.h5"), toks, 10, -1, ""), "not below vocab_size 10");
  EXPECT_EQ(read_all_tokens(path("c.h5")), (std::vector<uint32_t>{1, 2}));
}

TEST_F(TokenFile, WriteIntoMissingDirectoryIsUserError) {
  EXPECT_USER_ERROR(write_token_file(path("no/such/dir/x.h5"), std::vector<uint32_t>{1}, 4, -1, ""), "cannot create");
}

TEST_F(TokenFile, MissingFile) {
  EXPECT_USER_ERROR(read_token_file_info(path("nope.h5")), "does not exist");
}

TEST_F(TokenFile, NotHdf5) {
  write_bytes(path("text.h5"), "just some text, not HDF5 at all\n");
  EXPECT_USER_ERROR(read_token_file_info(path("text.h5")), "is not an HDF5 file");
}

TEST_F(TokenFile, Truncated) {
  std::vector<uint32_t> toks(200000, 5);
  write_token_file(path("t.h5"), toks, 100, -1, "");
  fs::resize_file(path("t.h5"), fs::file_size(path("t.h5")) / 2);
  EXPECT_USER_ERROR(read_token_file_info(path("t.h5")), "truncated or damaged");
}

TEST_F(TokenFile, MissingTokensDataset) {
  uint16_t v[3] = {1, 2, 3};
  craft_h5(path("m.h5"), "ids", H5T_STD_U16LE, H5T_NATIVE_UINT16, v, {3}, 10);
  EXPECT_USER_ERROR(read_token_file_info(path("m.h5")), "has no 'tokens' dataset");
}

TEST_F(TokenFile, FloatDtype) {
  float v[3] = {1, 2, 3};
  craft_h5(path("f.h5"), "tokens", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, v, {3}, 10);
  EXPECT_USER_ERROR(read_token_file_info(path("f.h5")), "dtype float32, expected uint16 or uint32");
}

TEST_F(TokenFile, SignedDtype) {
  int32_t v[3] = {1, 2, 3};
  craft_h5(path("i.h5"), "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, v, {3}, 10);
  EXPECT_USER_ERROR(read_token_file_info(path("i.h5")), "dtype int32");
}

TEST_F(TokenFile, TwoDimensional) {
  uint16_t v[6] = {1, 2, 3, 4, 5, 6};
  craft_h5(path("2d.h5"), "tokens", H5T_STD_U16LE, H5T_NATIVE_UINT16, v, {2, 3}, 10);
  EXPECT_USER_ERROR(read_token_file_info(path("2d.h5")), "has 2 dimensions");
}

TEST_F(TokenFile, MissingVocabAttribute) {
  uint16_t v[3] = {1, 2, 3};
  craft_h5(path("nv.h5"), "tokens", H5T_STD_U16LE, H5T_NATIVE_UINT16, v, {3}, std::nullopt);
  EXPECT_USER_ERROR(read_token_file_info(path("nv.h5")), "no 'vocab_size' attribute");
}

TEST_F(TokenFile, IdAtVocabInFile) {
  std::vector<uint16_t> v(3000000, 1);  // beyond one scan chunk, so the later chunk is checked too
  v[2500000] = 10;
  craft_h5(path("big.h5"), "tokens", H5T_STD_U16LE, H5T_NATIVE_UINT16, v.data(), {v.size()}, 10);
  EXPECT_USER_ERROR(read_token_file_info(path("big.h5")), "token id 10 at position 2500000");
  EXPECT_EQ(read_token_file_info(path("big.h5"), /*check_ids=*/false).num_tokens, 3000000);
}

TEST_F(TokenFile, AttributesOnRootAndVariableLengthTokenizer) {
  // h5py style: f.attrs['vocab_size'] = ..., and a variable-length string attribute.
  uint32_t v[4] = {1, 2, 3, 4};
  craft_h5(path("root.h5"), "tokens", H5T_STD_U32LE, H5T_NATIVE_UINT32, v, {4}, 5, /*attr_on_root=*/true);
  hid_t f = H5Fopen(path("root.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  hid_t sp = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(f, "tokenizer", t, sp, H5P_DEFAULT, H5P_DEFAULT);
  const char* s = "gpt2";
  H5Awrite(a, t, &s);
  H5Aclose(a);
  H5Sclose(sp);
  H5Tclose(t);
  H5Fclose(f);
  auto info = read_token_file_info(path("root.h5"));
  EXPECT_EQ(info.vocab_size, 5);
  EXPECT_EQ(info.tokenizer, "gpt2");
  EXPECT_TRUE(info.is_u32);
}

}  // namespace
}  // namespace monta::data::test
