// What every communicator shares: the packed all-to-all-v on top of each backend's offset form.
#include "comm/communicator.h"

#include <vector>

#include "engine/check.h"

namespace monta::comm {

void Communicator::all_to_all_v(Tensor out, std::span<const int64_t> recv_counts, const Tensor& in,
                                std::span<const int64_t> send_counts) {
  const size_t n = size_t(size());
  MONTA_CHECK(recv_counts.size() == n && send_counts.size() == n,
              name() + " all_to_all_v: need " + std::to_string(size()) + " send and receive counts");
  std::vector<int64_t> so(n), ro(n);  // packed in rank order
  for (size_t p = 1; p < n; ++p) {
    so[p] = so[p - 1] + send_counts[p - 1];
    ro[p] = ro[p - 1] + recv_counts[p - 1];
  }
  all_to_all_v_async(out, recv_counts, ro, in, send_counts, so)->wait();
}

}  // namespace monta::comm
