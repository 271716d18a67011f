#pragma once
// Counts that stay where the exec is (issue 14 item 1): each rank's histogram of its ids
// and the all-gather of the counts matrix C[P][N], entirely in the exec's memory, with no
// copy to the host and no wait. With CudaExec and PeerCopy (logical ranks of one process,
// one stream each) the gather is peer copies ordered on the streams; the matrix then feeds
// the device planner and layout (DeviceLayout::plan_and_build) directly.
//
// Bad ids do not stop the step here: they land in the histogram's last bin, which the
// gather leaves out, and in the status word (device/status_word.hpp), which the next host
// check turns into llep::Error on every rank. The host path's header exchange (shape and
// configuration fingerprint, ExactCounts) needs the host and is not part of this step: run
// it once when the configuration changes.
#include <cstddef>
#include <cstdint>

#include "llep/core/carve.hpp"
#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/device/status_word.hpp"

namespace llep {

/// Bytes of exec memory gather_counts uses for P ranks and N experts: the local histogram
/// (N + 1) then C (P x N), 256-byte aligned.
[[nodiscard]] constexpr std::size_t gather_counts_bytes(int ranks, int experts) noexcept {
  const std::size_t local = Carve::align((static_cast<std::size_t>(experts) + 1) * sizeof(count_t));
  return local + static_cast<std::size_t>(ranks) * static_cast<std::size_t>(experts) * sizeof(count_t);
}

/// Where gather_counts puts its results in `memory` (gather_counts_bytes of exec memory).
struct GatheredCounts {
  count_t* local = nullptr;   ///< N + 1: this rank's histogram, ids outside [0, N) last
  count_t* counts = nullptr;  ///< P x N, row-major: every rank's row
  [[nodiscard]] static GatheredCounts carve(std::byte* memory, int experts) noexcept {
    const std::size_t local = Carve::align((static_cast<std::size_t>(experts) + 1) * sizeof(count_t));
    return GatheredCounts{reinterpret_cast<count_t*>(memory), reinterpret_cast<count_t*>(memory + local)};
  }
};

/// Where a sync-free step's counts exchange (gather_counts_symmetric, a StepExchange's
/// share_counts) puts its results (bytes(P, N) of exec memory): this rank's
/// histogram (N + 1 bins, ids outside [0, N) last), C (P x N, row-major) and every rank's
/// count of ids outside [0, N) (P), so that every rank sees when any rank had a bad id and
/// all can skip the rest of the step alike.
struct SharedCounts {
  count_t* local = nullptr;
  count_t* counts = nullptr;
  count_t* bad = nullptr;
  [[nodiscard]] static constexpr std::size_t bytes(int ranks, int experts) noexcept {
    return gather_counts_bytes(ranks, experts) + static_cast<std::size_t>(ranks) * sizeof(count_t);
  }
  [[nodiscard]] static SharedCounts carve(std::byte* memory, int ranks, int experts) noexcept {
    const GatheredCounts g = GatheredCounts::carve(memory, experts);
    return SharedCounts{g.local, g.counts, g.counts + static_cast<std::size_t>(ranks) * static_cast<std::size_t>(experts)};
  }
  /// Puts bin e of rank q's N + 1 bins where it belongs: C[q][e], or bad[q] for the last.
  LLEP_HOST_DEVICE void place(std::size_t q, std::size_t e, count_t c, int experts) const noexcept {
    const auto N = static_cast<std::size_t>(experts);
    if (e < N)
      counts[q * N + e] = c;
    else
      bad[q] = c;
  }
};

namespace detail {
/// Zeroes N + 1 bins.
struct ZeroBins {
  count_t* bins;
  LLEP_HOST_DEVICE void operator()(std::size_t b) const noexcept { bins[b] = 0; }
};

/// Bin of id i when i < *pairs; ids outside [0, N) in the last bin.
struct CountIds {
  const std::int32_t* ids;
  const count_t* pairs;
  int experts;
  count_t* bins;
  LLEP_HOST_DEVICE void operator()(std::size_t i) const noexcept {
    if (static_cast<count_t>(i) >= *pairs) return;
    const std::int32_t id = ids[i];
    count_t* bin = bins + ((id >= 0 && id < experts) ? id : experts);
#if defined(__CUDA_ARCH__)
    atomicAdd(reinterpret_cast<unsigned long long*>(bin), 1ull);  // non-negative counts: same bits
#else
    ++*bin;  // HostExec: serial
#endif
  }
};

}  // namespace detail

/// The histogram of the first *pairs of `ids` (a count in exec memory, <= max_pairs, which
/// only sizes the launch) into N + 1 bins, ids outside [0, N) in the last.
template <class Exec>
void count_ids(Exec& exec, const std::int32_t* ids, const count_t* pairs, std::size_t max_pairs, int experts,
               count_t* bins) {
  exec.for_each_n(static_cast<std::size_t>(experts) + 1, detail::ZeroBins{bins});
  exec.for_each_n(max_pairs, detail::CountIds{ids, pairs, experts, bins});
}

/// Collective: this rank's histogram of `pairs` ids into out.local, its bad ids into
/// `status` (may be null), and the all-gather of every rank's first N bins into
/// out.counts. Everything is enqueued on the exec and the transport; nothing waits.
/// The transport must move the exec's memory (PeerCopy or Nccl with CudaExec, a host
/// transport with HostExec).
template <class Exec, class Tr>
void gather_counts(Exec& exec, Tr& transport, const std::int32_t* ids, std::size_t pairs, int experts,
                   const GatheredCounts& out, StatusWords* status = nullptr) {
  static_assert(Tr::memory == Exec::memory,
                "llep: gather_counts keeps the counts in the exec's memory: use a transport of that memory "
                "(PeerCopy or Nccl with CudaExec); with a host transport use ExactCounts");
  LLEP_EXPECTS(experts >= 1, "gather_counts with N = ", experts, " experts; must be >= 1");
  exec.histogram(ids, pairs, experts, out.local);
  if (status != nullptr) status->scan(exec, ids, pairs, experts);
  transport.all_gather(out.local, static_cast<std::size_t>(experts) * sizeof(count_t), out.counts);
}

}  // namespace llep
