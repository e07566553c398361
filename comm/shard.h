// Shard math in one place (STYLE.md rule 9): which {offset, size} of n items group rank `index` of `parts`
// holds. Parameters must divide exactly (must_divide); activations such as capacity slots may be balanced.
#pragma once
#include <cstdint>

namespace monta::comm {

struct Shard {
  int64_t offset = 0, size = 0;
};

// must_divide: fails loudly (MONTA_CHECK) when n % parts != 0. Otherwise balanced: the first n % parts parts
// get one item more, so sizes differ by at most one and ceil(n / parts) bounds every size.
Shard shard(int64_t n, int parts, int index, bool must_divide);

}  // namespace monta::comm
