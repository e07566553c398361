// Shard math: one function for every split of a dimension over a process group.
#include "comm/shard.h"

#include <string>

#include "engine/check.h"

namespace monta::comm {

Shard shard(int64_t n, int parts, int index, bool must_divide) {
  MONTA_CHECK(n >= 0 && parts > 0 && index >= 0 && index < parts,
              "shard of " + std::to_string(n) + " items over " + std::to_string(parts) + " parts, index " +
                  std::to_string(index) + ": arguments out of range");
  MONTA_CHECK(!must_divide || n % parts == 0,
              std::to_string(n) + " items do not divide into " + std::to_string(parts) + " equal shards");
  const int64_t base = n / parts, extra = n % parts;
  Shard s;
  s.size = base + (index < extra ? 1 : 0);
  s.offset = index * base + (index < extra ? index : extra);
  return s;
}

}  // namespace monta::comm
