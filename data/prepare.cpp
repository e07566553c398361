// The converter behind `monta prepare-data`: reads text, raw or .npy token input into memory as uint32 ids,
// validates them, and writes the HDF5 token file. Input is decoded byte by byte as little-endian, so the
// result does not depend on the host's byte order.
#include "data/prepare.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <new>
#include <vector>

#include "data/token_file.h"
#include "engine/check.h"
#include "engine/log.h"
#include "engine/output_file.h"

namespace monta::data {

using engine::fail_user;
using engine::strf;

namespace {

std::string read_all(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    fail_user("prepare-data input '" + path + "' does not exist or is not a regular file; check --input.");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail_user("prepare-data cannot open input '" + path + "'; check its permissions.");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail_user("prepare-data could not read input '" + path + "' to the end; check the file.");
  return bytes;
}

uint64_t load_le(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::vector<uint32_t> decode_raw(const std::string& bytes, int elem, const std::string& path) {
  if (bytes.size() % size_t(elem) != 0)
    fail_user(strf("raw input '%s' has %zu bytes, not a multiple of %d (uint%d tokens); check --format (raw16 vs raw32) "
                   "or the file.",
                   path.c_str(), bytes.size(), elem, elem * 8));
  std::vector<uint32_t> out(bytes.size() / size_t(elem));
  auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t i = 0; i < out.size(); ++i) out[i] = uint32_t(load_le(p + i * size_t(elem), elem));
  return out;
}

// The value text of key `key` in a .npy header dict, e.g. {'descr': '<u2', 'fortran_order': False, 'shape': (3,), }.
std::string npy_field(const std::string& header, const std::string& key, const std::string& path) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) k = header.find("\"" + key + "\"");
  size_t colon = k == std::string::npos ? k : header.find(':', k);
  if (colon == std::string::npos)
    fail_user("npy input '" + path + "' has no '" + key + "' in its header; save it with numpy.save.");
  size_t b = colon + 1;
  while (b < header.size() && std::isspace(static_cast<unsigned char>(header[b]))) ++b;
  if (b >= header.size()) fail_user("npy input '" + path + "' has a malformed header; save it with numpy.save.");
  size_t e = b;
  if (header[b] == '\'' || header[b] == '"') {
    e = header.find(header[b], b + 1);
    if (e == std::string::npos) fail_user("npy input '" + path + "' has a malformed header; save it with numpy.save.");
    return header.substr(b + 1, e - b - 1);
  }
  if (header[b] == '(') {
    e = header.find(')', b);
    if (e == std::string::npos) fail_user("npy input '" + path + "' has a malformed header; save it with numpy.save.");
    return header.substr(b, e - b + 1);
  }
  while (e < header.size() && header[e] != ',' && header[e] != '}') ++e;
  std::string v = header.substr(b, e - b);
  while (!v.empty() && std::isspace(static_cast<unsigned char>(v.back()))) v.pop_back();
  return v;
}

std::vector<uint32_t> decode_npy(const std::string& bytes, const std::string& path) {
  auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0)
    fail_user("npy input '" + path + "' does not start with the .npy magic string; save it with numpy.save or pick another --format.");
  int major = p[6], minor = p[7];
  if (!((major == 1 || major == 2) && minor == 0))
    fail_user(strf("npy input '%s' has format version %d.%d; only 1.0 and 2.0 are supported (numpy.save writes them).",
                   path.c_str(), major, minor));
  size_t hlen_bytes = major == 1 ? 2 : 4, hstart = 8 + hlen_bytes;
  if (bytes.size() < hstart) fail_user("npy input '" + path + "' is truncated inside its header; re-save it with numpy.save.");
  size_t hlen = size_t(load_le(p + 8, int(hlen_bytes)));
  if (bytes.size() < hstart + hlen)
    fail_user("npy input '" + path + "' is truncated inside its header; re-save it with numpy.save.");
  const std::string header = bytes.substr(hstart, hlen);

  const std::string descr = npy_field(header, "descr", path);
  int elem = 0;
  bool is_signed = false;
  if (descr == "<u2") elem = 2;
  else if (descr == "<u4") elem = 4;
  else if (descr == "<i4") elem = 4, is_signed = true;
  else if (descr == "<i8") elem = 8, is_signed = true;
  else if (descr == "<u8") elem = 8;
  else
    fail_user("npy input '" + path + "' has dtype '" + descr + "'" + (descr.rfind('>', 0) == 0 ? " (big-endian)" : "") +
              "; supported are little-endian integers <u2 <u4 <i4 <i8 <u8: convert with arr.astype('<u4').");
  const std::string fortran = npy_field(header, "fortran_order", path);
  if (fortran == "True")
    fail_user("npy input '" + path + "' is in Fortran order; save a C-order array (numpy.ascontiguousarray(arr)).");
  if (fortran != "False") fail_user("npy input '" + path + "' has a malformed fortran_order; save it with numpy.save.");
  const std::string shape = npy_field(header, "shape", path);
  if (shape.empty() || shape.front() != '(')
    fail_user("npy input '" + path + "' has a malformed shape '" + shape + "'; save it with numpy.save.");
  uint64_t count = 1;
  for (size_t i = 1; i < shape.size();) {
    if (std::isdigit(static_cast<unsigned char>(shape[i]))) {
      uint64_t d = 0;
      while (i < shape.size() && std::isdigit(static_cast<unsigned char>(shape[i]))) {
        d = d * 10 + uint64_t(shape[i] - '0');
        if (d > (uint64_t(1) << 40)) fail_user("npy input '" + path + "' has an implausible shape " + shape + ".");
        ++i;
      }
      count *= d;
      if (count > (uint64_t(1) << 40)) fail_user("npy input '" + path + "' has an implausible shape " + shape + ".");
    } else if (shape[i] == ',' || shape[i] == ')' || std::isspace(static_cast<unsigned char>(shape[i])) || shape[i] == 'L') {
      ++i;
    } else {
      fail_user("npy input '" + path + "' has a malformed shape '" + shape + "'; save it with numpy.save.");
    }
  }
  const size_t data_start = hstart + hlen, need = size_t(count) * size_t(elem);
  if (bytes.size() - data_start < need)
    fail_user(strf("npy input '%s' is truncated: its shape %s needs %zu data bytes but the file holds %zu.", path.c_str(),
                   shape.c_str(), need, bytes.size() - data_start));

  std::vector<uint32_t> out(static_cast<size_t>(count));
  const unsigned char* d = p + data_start;
  for (size_t i = 0; i < out.size(); ++i) {
    uint64_t raw = load_le(d + i * size_t(elem), elem);
    int64_t sv = elem == 4 ? int64_t(int32_t(uint32_t(raw))) : int64_t(raw);
    if (is_signed && sv < 0)
      fail_user(strf("npy input '%s' has a negative token id %ld at position %zu; token ids must be >= 0.", path.c_str(),
                     long(sv), i));
    uint64_t v = is_signed ? uint64_t(sv) : raw;
    if (v > UINT32_MAX)
      fail_user(strf("npy input '%s' has token id %llu at position %zu, beyond the uint32 range token files hold.",
                     path.c_str(), (unsigned long long)v, i));
    out[i] = uint32_t(v);
  }
  return out;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::string detect_format(const std::string& input) {
  std::string lower = input;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (ends_with(lower, ".bin16") || ends_with(lower, ".u16")) return "raw16";
  if (ends_with(lower, ".bin32") || ends_with(lower, ".u32")) return "raw32";
  if (ends_with(lower, ".npy")) return "npy";
  return "text";
}

// The whole conversion; prepare_data turns running out of host memory into a user error.
static void convert(const PrepareArgs& a) {
  MONTA_USER_CHECK(!a.input.empty(), "prepare-data needs an input file; pass --input PATH.");
  MONTA_USER_CHECK(!a.output.empty(), "prepare-data needs an output file; pass --output PATH.");
  MONTA_USER_CHECK(a.vocab_size >= 0, strf("prepare-data: --vocab-size %ld is negative; pass 0 to derive it.", long(a.vocab_size)));
  const std::string format = a.format == "auto" ? detect_format(a.input) : a.format;
  MONTA_USER_CHECK(format == "text" || format == "raw16" || format == "raw32" || format == "npy",
                   "prepare-data: unknown --format '" + a.format + "'; use text, raw16, raw32, npy or auto.");
  engine::check_output_file(a.output, {a.input}, a.force, "prepare-data --output");

  const std::string bytes = read_all(a.input);
  std::vector<uint32_t> tokens;
  if (format == "text") tokens.assign(reinterpret_cast<const unsigned char*>(bytes.data()),
                                      reinterpret_cast<const unsigned char*>(bytes.data()) + bytes.size());
  else if (format == "raw16") tokens = decode_raw(bytes, 2, a.input);
  else if (format == "raw32") tokens = decode_raw(bytes, 4, a.input);
  else tokens = decode_npy(bytes, a.input);
  MONTA_USER_CHECK(!tokens.empty(), "prepare-data input '" + a.input + "' holds no tokens; check the file and --format.");

  const uint32_t max_id = *std::max_element(tokens.begin(), tokens.end());
  const int64_t vocab = a.vocab_size > 0 ? a.vocab_size : format == "text" ? 256 : int64_t(max_id) + 1;
  if (int64_t(max_id) >= vocab) {
    auto bad = std::find_if(tokens.begin(), tokens.end(), [&](uint32_t v) { return int64_t(v) >= vocab; });
    fail_user(strf("prepare-data input '%s' has token id %u at position %zu, not below vocab size %ld (max id %u); pass "
                   "a larger --vocab-size (or 0 to use the max id + 1).",
                   a.input.c_str(), *bad, size_t(bad - tokens.begin()), long(vocab), max_id));
  }
  MONTA_USER_CHECK(a.eos_token >= -1 && a.eos_token < vocab,
                   strf("prepare-data: --eos-token %ld is not below the vocab size %ld; pass -1 for none.",
                        long(a.eos_token), long(vocab)));
  write_token_file(a.output, tokens, vocab, a.eos_token, format == "text" ? "bytes" : "");
  engine::log_info(strf("prepare-data: %s (%s) -> %s: %zu tokens, vocab_size %ld, stored as %s, max id %u", a.input.c_str(),
                        format.c_str(), a.output.c_str(), tokens.size(), long(vocab), vocab <= 65536 ? "uint16" : "uint32",
                        max_id));
}

void prepare_data(const PrepareArgs& a) {
  try {
    convert(a);
  } catch (const std::bad_alloc&) {
    fail_user("prepare-data: input '" + a.input + "' does not fit in this host's memory (the converter holds it, and its " +
              "ids as uint32, in memory); split it into parts.");
  }
}

}  // namespace monta::data
