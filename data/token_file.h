// The on-disk token format: an HDF5 file with a 1-D "tokens" dataset (uint16 or uint32) and the attributes
// vocab_size (required), eos_token and tokenizer. Every reader goes through read_token_file_info, so a bad
// file is reported once, as one plain sentence, before any training starts.
#pragma once
#include <cstdint>
#include <span>
#include <string>

namespace monta::data {

struct TokenFileInfo {
  int64_t num_tokens = 0;
  int64_t vocab_size = 0;
  int64_t eos_token = -1;  // -1: none
  std::string tokenizer;   // "" when absent
  bool is_u32 = false;     // dataset stored as uint32 (else uint16)
};

// Opens and validates a token file: dataset "tokens" present, 1-D, uint16 or uint32; attributes vocab_size
// (required), eos_token, tokenizer (optional), on the dataset or else on the file root. With check_ids, every
// id is checked < vocab_size (scanned in chunks). Every problem is a user error naming the file, with a hint.
TokenFileInfo read_token_file_info(const std::string& path, bool check_ids = true);

// Writes dataset "tokens" (uint16 when vocab_size <= 65536, else uint32; chunked) and its attributes.
// Writes path + ".tmp" and renames it at the end, so a failure (e.g. an id >= vocab_size: a user error)
// leaves nothing behind and a reader never sees a half-written file.
void write_token_file(const std::string& path, std::span<const uint32_t> tokens, int64_t vocab_size,
                      int64_t eos_token, const std::string& tokenizer);

}  // namespace monta::data
