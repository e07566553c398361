// Internal to monta_data: RAII handles and small helpers over the HDF5 C API, shared by the token file,
// the synthetic corpus and the loader. Not installed for other libraries (HDF5 is a private dependency).
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace monta::data::h5 {

// One open HDF5 object; closes it with the matching H5*close on destruction.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), closer_(o.closer_) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      closer_ = o.closer_;
    }
    return *this;
  }
  ~Handle() { reset(); }
  void reset() {
    if (id_ >= 0 && closer_) closer_(id_);
    id_ = H5I_INVALID_HID;
  }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

inline Handle file(hid_t id) { return Handle(id, H5Fclose); }
inline Handle dataset(hid_t id) { return Handle(id, H5Dclose); }
inline Handle space(hid_t id) { return Handle(id, H5Sclose); }
inline Handle type(hid_t id) { return Handle(id, H5Tclose); }
inline Handle attr(hid_t id) { return Handle(id, H5Aclose); }
inline Handle plist(hid_t id) { return Handle(id, H5Pclose); }

// Turns off HDF5's automatic error-stack printing (per thread in thread-safe builds, so every entry calls it):
// users see our one-line messages, not a page of library frames.
void quiet();

// Opens an existing token file read-only (or read-write), with file locking off where the filesystem lacks it.
// Fails with a user error naming the path for a missing, non-HDF5, or damaged file.
Handle open_file(const std::string& path, bool writable = false);

// Writes / reads scalar attributes on an object. read_* return false when the attribute is absent and fail with
// a user error (naming `path`) when it is present but of the wrong kind.
void write_attr_i64(hid_t obj, const char* name, int64_t v);
void write_attr_f64(hid_t obj, const char* name, double v);
void write_attr_str(hid_t obj, const char* name, const std::string& v);
bool read_attr_i64(hid_t obj, const char* name, const std::string& path, int64_t* out);
bool read_attr_f64(hid_t obj, const char* name, const std::string& path, double* out);
bool read_attr_str(hid_t obj, const char* name, const std::string& path, std::string* out);

// Reads tokens [offset, offset + out.size()) of a 1-D integer dataset, converted to uint32.
void read_tokens(hid_t dset, int64_t offset, std::span<uint32_t> out, const std::string& path);

// write_token_file with extra double attributes on the tokens dataset (the synthetic corpus stores its floor).
void write_token_file_with_attrs(const std::string& path, std::span<const uint32_t> tokens, int64_t vocab_size,
                                 int64_t eos_token, const std::string& tokenizer,
                                 const std::vector<std::pair<std::string, double>>& f64_attrs);

}  // namespace monta::data::h5
