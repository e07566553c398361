// `monta prepare-data`: converts text (byte-level tokenizer), raw little-endian uint16/uint32 token files and
// .npy arrays into the HDF5 token format of token_file.h, so every source reaches the loader the same way.
#pragma once
#include <cstdint>
#include <string>

namespace monta::data {

struct PrepareArgs {
  std::string input, output;
  // text | raw16 | raw32 | npy | auto (by extension: .bin16/.u16 -> raw16, .bin32/.u32 -> raw32, .npy -> npy,
  // anything else (.txt, .md, ...) -> text)
  std::string format = "auto";
  int64_t vocab_size = 0;  // 0: 256 for text (token = byte value), else the max id + 1
  int64_t eos_token = -1;  // -1: none
  bool force = false;      // replace an existing output (never the input)
};

// Converts a.input into a.output and prints a one-line summary with log_info. .npy: versions 1.0/2.0,
// little-endian '<u2', '<u4', '<i4', '<i8', '<u8', 1-D or C-order N-D (flattened); negative ids, Fortran order
// and other dtypes are rejected. Raw: little-endian, size a multiple of the element size. Problems are user errors.
// The output must not be the input, nor an existing file unless a.force; it is written through a temporary
// file renamed into place, so a failure leaves what was there.
void prepare_data(const PrepareArgs& a);

// The format prepare_data uses for `input` when a.format is "auto".
std::string detect_format(const std::string& input);

}  // namespace monta::data
