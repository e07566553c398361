// Shared helpers of the data tests: a temp directory per test, the throwing error handler, byte and HDF5 file
// writers for crafting good and bad inputs, and an error-expectation macro that checks the promised message.
#pragma once
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "engine/check.h"

namespace monta::data::test {

namespace fs = std::filesystem;

class DataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine::install_throwing_handler();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    const auto* ti = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string(ti->test_suite_name()) + "_" + ti->name();
    for (char& c : name)
      if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    dir_ = fs::temp_directory_path() / ("monta_data_" + std::to_string(::getpid()) + "_" + name);
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Little-endian encoding of `v` in `n` bytes.
inline std::string le_bytes(uint64_t v, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s.push_back(char((v >> (8 * i)) & 0xff));
  return s;
}

// The "tokens" dataset of an HDF5 file, converted to uint32, read with the plain HDF5 API (independent of data/).
inline std::vector<uint32_t> read_all_tokens(const std::string& path) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  EXPECT_GE(f, 0) << path;
  hid_t d = H5Dopen2(f, "tokens", H5P_DEFAULT);
  hid_t sp = H5Dget_space(d);
  hsize_t n = 0;
  H5Sget_simple_extent_dims(sp, &n, nullptr);
  std::vector<uint32_t> out(static_cast<size_t>(n));
  if (n) {
    EXPECT_GE(H5Dread(d, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), 0);
  }
  H5Sclose(sp);
  H5Dclose(d);
  H5Fclose(f);
  return out;
}

// Size in bytes of the stored element type of "tokens".
inline size_t stored_token_bytes(const std::string& path) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, "tokens", H5P_DEFAULT);
  hid_t t = H5Dget_type(d);
  size_t s = H5Tget_size(t);
  H5Tclose(t);
  H5Dclose(d);
  H5Fclose(f);
  return s;
}

// A hand-made HDF5 file: dataset `name` of file type `ftype` and shape `dims`, filled from `data` (memory type
// `mtype`), with an optional int64 vocab_size attribute on the dataset (or on the root when attr_on_root).
inline void craft_h5(const std::string& path, const char* name, hid_t ftype, hid_t mtype, const void* data,
                     std::vector<hsize_t> dims, std::optional<int64_t> vocab, bool attr_on_root = false) {
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  hid_t sp = H5Screate_simple(int(dims.size()), dims.data(), nullptr);
  hid_t d = H5Dcreate2(f, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(d, 0);
  ASSERT_GE(H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0);
  if (vocab) {
    hid_t as = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(attr_on_root ? f : d, "vocab_size", H5T_STD_I64LE, as, H5P_DEFAULT, H5P_DEFAULT);
    int64_t v = *vocab;
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Sclose(as);
  }
  H5Dclose(d);
  H5Sclose(sp);
  H5Fclose(f);
}

}  // namespace monta::data::test

// `stmt` must fail through the error path with a user error whose one-line message contains `phrase`.
#define EXPECT_USER_ERROR(stmt, phrase)                                                    \
  do {                                                                                     \
    std::string monta_msg_;                                                                \
    bool monta_user_ = false;                                                              \
    EXPECT_THROW(                                                                          \
        {                                                                                  \
          try {                                                                            \
            stmt;                                                                          \
          } catch (const ::monta::engine::Error& e) {                                      \
            monta_msg_ = e.what();                                                         \
            monta_user_ = e.user;                                                          \
            throw;                                                                         \
          }                                                                                \
        },                                                                                 \
        ::monta::engine::Error);                                                           \
    EXPECT_NE(monta_msg_.find(phrase), std::string::npos) << "message: " << monta_msg_;    \
    EXPECT_TRUE(monta_user_) << "not a user error: " << monta_msg_;                        \
    EXPECT_EQ(monta_msg_.find('\n'), std::string::npos) << "not one line: " << monta_msg_; \
  } while (0)
