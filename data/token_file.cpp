// Reading, validating and writing the HDF5 token format (see token_file.h). Attributes live on the "tokens"
// dataset; the reader also accepts them on the file root, where hand-made (h5py) files often put them.
#include "data/token_file.h"

#include <algorithm>
#include <filesystem>
#include <vector>

#include "data/hdf5_util.h"
#include "engine/check.h"
#include "engine/log.h"

namespace monta::data {

using engine::fail_user;
using engine::strf;

namespace {

constexpr int64_t kScanChunk = int64_t(1) << 20;   // tokens per read when checking ids
constexpr hsize_t kWriteChunk = hsize_t(1) << 16;  // HDF5 chunk: small enough for cheap per-sample reads

std::string describe_type(hid_t t) {
  size_t bits = H5Tget_size(t) * 8;
  switch (H5Tget_class(t)) {
    case H5T_INTEGER: return strf("%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", bits);
    case H5T_FLOAT: return strf("float%zu", bits);
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    default: return "a non-integer type";
  }
}

// Looks an attribute up on the dataset, then on the file root.
template <class T, class Reader>
bool read_attr_either(hid_t dset, hid_t file, const char* name, const std::string& path, T* out, Reader reader) {
  if (reader(dset, name, path, out)) return true;
  return reader(file, name, path, out);
}

}  // namespace

TokenFileInfo read_token_file_info(const std::string& path, bool check_ids) {
  h5::Handle f = h5::open_file(path);
  if (H5Lexists(f.get(), "tokens", H5P_DEFAULT) <= 0)
    fail_user("token file '" + path + "' has no 'tokens' dataset; create it with `monta prepare-data` (or store a 1-D " +
              "uint16/uint32 dataset named 'tokens').");
  h5::Handle d = h5::dataset(H5Dopen2(f.get(), "tokens", H5P_DEFAULT));
  if (!d.valid())
    fail_user("token file '" + path + "': 'tokens' is not a dataset (a group?); store a 1-D uint16/uint32 dataset named 'tokens'.");
  h5::Handle sp = h5::space(H5Dget_space(d.get()));
  int rank = H5Sget_simple_extent_ndims(sp.get());
  if (rank != 1)
    fail_user(strf("token file '%s': dataset 'tokens' has %d dimensions, expected 1; flatten it, e.g. with `monta prepare-data`.",
                   path.c_str(), rank));
  h5::Handle t = h5::type(H5Dget_type(d.get()));
  size_t size = H5Tget_size(t.get());
  if (H5Tget_class(t.get()) != H5T_INTEGER || H5Tget_sign(t.get()) != H5T_SGN_NONE || (size != 2 && size != 4))
    fail_user(strf("token file '%s': dataset 'tokens' has dtype %s, expected uint16 or uint32; convert it with "
                   "`monta prepare-data`.",
                   path.c_str(), describe_type(t.get()).c_str()));

  TokenFileInfo info;
  hsize_t n = 0;
  H5Sget_simple_extent_dims(sp.get(), &n, nullptr);
  info.num_tokens = int64_t(n);
  info.is_u32 = size == 4;
  if (!read_attr_either(d.get(), f.get(), "vocab_size", path, &info.vocab_size, h5::read_attr_i64))
    fail_user("token file '" + path + "' has no 'vocab_size' attribute; add it to the 'tokens' dataset or re-create the " +
              "file with `monta prepare-data --vocab-size N`.");
  if (info.vocab_size <= 0)
    fail_user(strf("token file '%s' has vocab_size %ld; it must be positive.", path.c_str(), long(info.vocab_size)));
  if (!read_attr_either(d.get(), f.get(), "eos_token", path, &info.eos_token, h5::read_attr_i64)) info.eos_token = -1;
  if (info.eos_token < -1 || info.eos_token >= info.vocab_size)
    fail_user(strf("token file '%s' has eos_token %ld outside [0, vocab_size %ld); use -1 for none.", path.c_str(),
                   long(info.eos_token), long(info.vocab_size)));
  read_attr_either(d.get(), f.get(), "tokenizer", path, &info.tokenizer, h5::read_attr_str);

  if (check_ids && info.vocab_size <= (size == 2 ? 65535 : int64_t(UINT32_MAX))) {
    std::vector<uint32_t> buf(size_t(std::min(kScanChunk, std::max<int64_t>(info.num_tokens, 1))));
    for (int64_t off = 0; off < info.num_tokens; off += kScanChunk) {
      int64_t cnt = std::min(kScanChunk, info.num_tokens - off);
      std::span<uint32_t> s(buf.data(), size_t(cnt));
      h5::read_tokens(d.get(), off, s, path);
      auto it = std::find_if(s.begin(), s.end(), [&](uint32_t v) { return int64_t(v) >= info.vocab_size; });
      if (it != s.end())
        fail_user(strf("token file '%s' has token id %u at position %ld, not below its vocab_size %ld; re-create it with "
                       "a larger --vocab-size.",
                       path.c_str(), *it, long(off + (it - s.begin())), long(info.vocab_size)));
    }
  }
  return info;
}

namespace h5 {

void write_token_file_with_attrs(const std::string& path, std::span<const uint32_t> tokens, int64_t vocab_size,
                                 int64_t eos_token, const std::string& tokenizer,
                                 const std::vector<std::pair<std::string, double>>& f64_attrs) {
  quiet();
  MONTA_USER_CHECK(vocab_size > 0 && vocab_size <= int64_t(UINT32_MAX) + 1,
                   strf("cannot write '%s': vocab_size %ld must be in [1, 2^32].", path.c_str(), long(vocab_size)));
  MONTA_USER_CHECK(eos_token >= -1 && eos_token < vocab_size,
                   strf("cannot write '%s': eos_token %ld must be -1 (none) or below vocab_size %ld.", path.c_str(),
                        long(eos_token), long(vocab_size)));
  auto bad = std::find_if(tokens.begin(), tokens.end(), [&](uint32_t v) { return int64_t(v) >= vocab_size; });
  if (bad != tokens.end())
    fail_user(strf("cannot write '%s': token id %u at position %ld is not below vocab_size %ld; pass a larger vocab size.",
                   path.c_str(), *bad, long(bad - tokens.begin()), long(vocab_size)));

  const std::string tmp = path + ".tmp";
  std::error_code ec;
  {
    Handle f = file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    if (!f.valid())
      fail_user("cannot create '" + tmp + "'; check that its directory exists and is writable.");
    hsize_t n = tokens.size(), maxn = H5S_UNLIMITED, chunk = std::max<hsize_t>(1, std::min<hsize_t>(n, kWriteChunk));
    Handle sp = space(H5Screate_simple(1, &n, &maxn));
    Handle dcpl = plist(H5Pcreate(H5P_DATASET_CREATE));
    HDF5_CHECK(H5Pset_chunk(dcpl.get(), 1, &chunk));
    HDF5_CHECK(H5Pset_obj_track_times(dcpl.get(), false));  // no timestamps: same tokens, same bytes
    hid_t ftype = vocab_size <= 65536 ? H5T_STD_U16LE : H5T_STD_U32LE;
    Handle d = dataset(H5Dcreate2(f.get(), "tokens", ftype, sp.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
    bool ok = d.valid() && (n == 0 || H5Dwrite(d.get(), H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, tokens.data()) >= 0);
    if (ok) {
      write_attr_i64(d.get(), "vocab_size", vocab_size);
      write_attr_i64(d.get(), "eos_token", eos_token);
      write_attr_str(d.get(), "tokenizer", tokenizer);
      for (const auto& [name, v] : f64_attrs) write_attr_f64(d.get(), name.c_str(), v);
    }
    d.reset();
    ok = ok && H5Fflush(f.get(), H5F_SCOPE_LOCAL) >= 0;
    f.reset();
    if (!ok) {
      std::filesystem::remove(tmp, ec);
      fail_user("writing '" + tmp + "' failed; check free disk space and permissions.");
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::string why = ec.message();
    std::filesystem::remove(tmp, ec);
    fail_user("cannot rename '" + tmp + "' to '" + path + "' (" + why + "); check the output path and its permissions.");
  }
}

}  // namespace h5

void write_token_file(const std::string& path, std::span<const uint32_t> tokens, int64_t vocab_size, int64_t eos_token,
                      const std::string& tokenizer) {
  h5::write_token_file_with_attrs(path, tokens, vocab_size, eos_token, tokenizer, {});
}

}  // namespace monta::data
