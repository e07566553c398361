// HDF5 plumbing for monta_data: quiet error stacks, opening with user-facing messages, scalar attributes,
// and chunked token reads converted to uint32.
#include "data/hdf5_util.h"

#include <filesystem>

#include "engine/check.h"
#include "engine/log.h"

namespace monta::data::h5 {

using engine::fail_user;
using engine::strf;

void quiet() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

Handle open_file(const std::string& path, bool writable) {
  quiet();
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec))
    fail_user("token file '" + path + "' does not exist; check the path, or create it with `monta prepare-data`.");
  if (!fs::is_regular_file(path, ec))
    fail_user("token file '" + path + "' is not a regular file; point data.path at an .h5 file made by `monta prepare-data`.");
  if (H5Fis_hdf5(path.c_str()) <= 0)
    fail_user("token file '" + path + "' is not an HDF5 file; convert raw tokens, text or .npy with `monta prepare-data`.");
  Handle fapl = plist(H5Pcreate(H5P_FILE_ACCESS));
  // Readers on many ranks and filesystems without flock (NFS, Lustre) must not fail on locking.
  if (fapl.valid()) H5Pset_file_locking(fapl.get(), false, true);
  Handle f = file(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, fapl.valid() ? fapl.get() : H5P_DEFAULT));
  if (!f.valid())
    fail_user("token file '" + path + "' has an HDF5 signature but cannot be opened (truncated or damaged?); " +
              "re-create it with `monta prepare-data`.");
  return f;
}

void write_attr_i64(hid_t obj, const char* name, int64_t v) {
  Handle sp = space(H5Screate(H5S_SCALAR));
  Handle a = attr(H5Acreate2(obj, name, H5T_STD_I64LE, sp.get(), H5P_DEFAULT, H5P_DEFAULT));
  HDF5_CHECK(a.get());
  HDF5_CHECK(H5Awrite(a.get(), H5T_NATIVE_INT64, &v));
}

void write_attr_f64(hid_t obj, const char* name, double v) {
  Handle sp = space(H5Screate(H5S_SCALAR));
  Handle a = attr(H5Acreate2(obj, name, H5T_IEEE_F64LE, sp.get(), H5P_DEFAULT, H5P_DEFAULT));
  HDF5_CHECK(a.get());
  HDF5_CHECK(H5Awrite(a.get(), H5T_NATIVE_DOUBLE, &v));
}

void write_attr_str(hid_t obj, const char* name, const std::string& v) {
  // Fixed-length, null-padded: readable by h5py, h5dump and our reader alike.
  Handle t = type(H5Tcopy(H5T_C_S1));
  HDF5_CHECK(H5Tset_size(t.get(), v.empty() ? 1 : v.size()));
  HDF5_CHECK(H5Tset_strpad(t.get(), H5T_STR_NULLPAD));
  Handle sp = space(H5Screate(H5S_SCALAR));
  Handle a = attr(H5Acreate2(obj, name, t.get(), sp.get(), H5P_DEFAULT, H5P_DEFAULT));
  HDF5_CHECK(a.get());
  std::string buf = v.empty() ? std::string(1, '\0') : v;
  HDF5_CHECK(H5Awrite(a.get(), t.get(), buf.data()));
}

namespace {

// Opens attribute `name` if present and checks it holds exactly one value.
Handle open_scalar_attr(hid_t obj, const char* name, const std::string& path) {
  if (H5Aexists(obj, name) <= 0) return Handle();
  Handle a = attr(H5Aopen(obj, name, H5P_DEFAULT));
  if (!a.valid()) fail_user(strf("token file '%s': attribute '%s' cannot be read; re-create the file with `monta prepare-data`.",
                                 path.c_str(), name));
  Handle sp = space(H5Aget_space(a.get()));
  if (H5Sget_simple_extent_npoints(sp.get()) != 1)
    fail_user(strf("token file '%s': attribute '%s' must hold a single value; store it as a scalar.", path.c_str(), name));
  return a;
}

}  // namespace

bool read_attr_i64(hid_t obj, const char* name, const std::string& path, int64_t* out) {
  Handle a = open_scalar_attr(obj, name, path);
  if (!a.valid()) return false;
  Handle t = type(H5Aget_type(a.get()));
  if (H5Tget_class(t.get()) != H5T_INTEGER || H5Aread(a.get(), H5T_NATIVE_INT64, out) < 0)
    fail_user(strf("token file '%s': attribute '%s' is not an integer; store it as an int64 scalar.", path.c_str(), name));
  return true;
}

bool read_attr_f64(hid_t obj, const char* name, const std::string& path, double* out) {
  Handle a = open_scalar_attr(obj, name, path);
  if (!a.valid()) return false;
  Handle t = type(H5Aget_type(a.get()));
  H5T_class_t c = H5Tget_class(t.get());
  if ((c != H5T_FLOAT && c != H5T_INTEGER) || H5Aread(a.get(), H5T_NATIVE_DOUBLE, out) < 0)
    fail_user(strf("token file '%s': attribute '%s' is not a number; store it as a float64 scalar.", path.c_str(), name));
  return true;
}

bool read_attr_str(hid_t obj, const char* name, const std::string& path, std::string* out) {
  Handle a = open_scalar_attr(obj, name, path);
  if (!a.valid()) return false;
  Handle t = type(H5Aget_type(a.get()));
  if (H5Tget_class(t.get()) != H5T_STRING)
    fail_user(strf("token file '%s': attribute '%s' is not a string; store it as a string scalar.", path.c_str(), name));
  if (H5Tis_variable_str(t.get()) > 0) {
    Handle mt = type(H5Tcopy(H5T_C_S1));
    HDF5_CHECK(H5Tset_size(mt.get(), H5T_VARIABLE));
    HDF5_CHECK(H5Tset_cset(mt.get(), H5Tget_cset(t.get())));
    char* s = nullptr;
    if (H5Aread(a.get(), mt.get(), &s) < 0)
      fail_user(strf("token file '%s': attribute '%s' cannot be read as a string.", path.c_str(), name));
    *out = s ? std::string(s) : std::string();
    H5free_memory(s);
  } else {
    size_t n = H5Tget_size(t.get());
    std::string buf(n, '\0');
    if (H5Aread(a.get(), t.get(), buf.data()) < 0)
      fail_user(strf("token file '%s': attribute '%s' cannot be read as a string.", path.c_str(), name));
    buf.resize(buf.find('\0') == std::string::npos ? n : buf.find('\0'));
    *out = buf;
  }
  return true;
}

void read_tokens(hid_t dset, int64_t offset, std::span<uint32_t> out, const std::string& path) {
  if (out.empty()) return;
  Handle fs = space(H5Dget_space(dset));
  hsize_t start = hsize_t(offset), count = hsize_t(out.size());
  Handle ms = space(H5Screate_simple(1, &count, nullptr));
  bool ok = fs.valid() && ms.valid() &&
            H5Sselect_hyperslab(fs.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr) >= 0 &&
            H5Dread(dset, H5T_NATIVE_UINT32, ms.get(), fs.get(), H5P_DEFAULT, out.data()) >= 0;
  if (!ok)
    fail_user(strf("token file '%s': reading tokens [%ld, %ld) failed (truncated or damaged file?); re-create it with "
                   "`monta prepare-data`.",
                   path.c_str(), long(offset), long(offset + int64_t(out.size()))));
}

}  // namespace monta::data::h5
