#pragma once
// A device-sized all-to-all-v for the logical ranks of one process (issue 14 item 3, for
// PeerCopy): each receiver runs one kernel that pulls its rows from every sender through
// peer pointers, reading the sizes and offsets (rows, count_t) from device memory: the
// sender's send counts and offsets (the device layout's) and its own receive offsets.
// No size ever goes to the host, so the step needs no device-to-host copy.
//
// The buffers are worst-case sized and stay where they are, so every rank registers its
// pointers once (PeerAllToAll::attach, a host all-gather of pointers); a step then is one
// kernel per rank, ordered with two events per rank and two host rendezvous of the rank
// threads (no stream or device is synchronised from the host):
//   1. rank p records ready[p] on its stream (its send rows and counts are written), meets
//      the others, waits on every ready[q], pulls, records done[p];
//   2. after the second rendezvous p waits on every done[q], so its later work cannot
//      overwrite what a slower receiver still reads.
// Ranks on one device, or on devices with peer access enabled (PeerCopyGroup enables it
// where the hardware allows). Include from .cu files only.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/core/error.hpp"
#include "llep/transport/host_threads.hpp"
#include "llep/transport/peer_copy.cuh"

namespace llep {

/// One rank's side of a device-sized all-to-all: device pointers, fixed across steps.
/// Sizes and offsets are in rows; P entries each.
struct PeerRowsEndpoint {
  const std::byte* send = nullptr;
  const count_t* send_counts = nullptr;   ///< rows this rank sends to each rank
  const count_t* send_offsets = nullptr;  ///< first send row for each rank
  std::byte* recv = nullptr;
  const count_t* recv_offsets = nullptr;  ///< first receive row from each rank
};

namespace detail {
/// blockIdx.y = the sender q: rows send_counts_q[me] from q's send buffer at
/// send_offsets_q[me], into this rank's receive buffer at recv_offsets_me[q].
template <class Word>
__global__ void pull_rows_kernel(const PeerRowsEndpoint* table, int me, std::size_t row_bytes) {
  const int q = static_cast<int>(blockIdx.y);
  const PeerRowsEndpoint from = table[q], to = table[me];
  const std::size_t bytes = static_cast<std::size_t>(from.send_counts[me]) * row_bytes;
  if (bytes == 0) return;
  const std::byte* src = from.send + static_cast<std::size_t>(from.send_offsets[me]) * row_bytes;
  std::byte* dst = to.recv + static_cast<std::size_t>(to.recv_offsets[q]) * row_bytes;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  const std::size_t first = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (sizeof(Word) > 1) {  // every pointer and row 16-byte aligned (checked by the launcher)
    const auto* s = reinterpret_cast<const Word*>(src);
    auto* d = reinterpret_cast<Word*>(dst);
    for (std::size_t i = first; i < bytes / sizeof(Word); i += stride) d[i] = s[i];
  } else {
    for (std::size_t i = first; i < bytes; i += stride) dst[i] = src[i];
  }
}
}  // namespace detail

/// The device-sized all-to-all of one PeerCopyGroup. Create one, share it among the rank
/// threads; each calls attach() once, then run() every step.
class PeerAllToAll {
 public:
  explicit PeerAllToAll(PeerCopyGroup& group) : group_(&group), P_(group.size()) {
    ready_.resize(static_cast<std::size_t>(P_), nullptr);
    done_.resize(static_cast<std::size_t>(P_), nullptr);
    tables_.resize(static_cast<std::size_t>(P_), nullptr);
    aligned_.resize(static_cast<std::size_t>(P_), 0);
  }
  PeerAllToAll(const PeerAllToAll&) = delete;
  PeerAllToAll& operator=(const PeerAllToAll&) = delete;
  ~PeerAllToAll() {
    for (std::size_t p = 0; p < ready_.size(); ++p) {
      if (ready_[p] != nullptr) (void)cudaEventDestroy(ready_[p]);
      if (done_[p] != nullptr) (void)cudaEventDestroy(done_[p]);
      if (tables_[p] != nullptr) (void)cudaFree(tables_[p]);
    }
  }

  /// Collective of the rank threads (on the rank's device): registers this rank's buffers
  /// and gathers everyone's, uploading the table to this rank's device.
  void attach(PeerCopy& t, const PeerRowsEndpoint& mine) {
    LLEP_EXPECTS(&t.group() == group_, "PeerAllToAll::attach with a rank of another group");
    const auto p = static_cast<std::size_t>(t.rank());
    LLEP_CUDA_CHECK(cudaEventCreateWithFlags(&ready_[p], cudaEventDisableTiming));
    LLEP_CUDA_CHECK(cudaEventCreateWithFlags(&done_[p], cudaEventDisableTiming));
    std::vector<PeerRowsEndpoint> all(static_cast<std::size_t>(P_));
    HostThreads host(group_->host(), t.rank());
    host.all_gather(&mine, sizeof mine, all.data());
    auto a16 = [](const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; };
    bool aligned = true;
    for (const PeerRowsEndpoint& e : all) aligned = aligned && a16(e.send) && a16(e.recv);
    aligned_[p] = aligned ? 1 : 0;
    LLEP_CUDA_CHECK(cudaMalloc(&tables_[p], all.size() * sizeof(PeerRowsEndpoint)));
    LLEP_CUDA_CHECK(cudaMemcpy(tables_[p], all.data(), all.size() * sizeof(PeerRowsEndpoint), cudaMemcpyHostToDevice));
    host.barrier();  // every rank's events exist before anyone records or waits on them
  }

  /// Collective: this rank's share of one all-to-all of `row_bytes`-byte rows, sizes read
  /// on the device. Enqueued on the rank's stream; returns without waiting for the copies.
  /// `blocks_per_peer` blocks of 256 threads pull from each sender.
  void run(PeerCopy& t, std::size_t row_bytes, unsigned blocks_per_peer = 16) {
    const auto p = static_cast<std::size_t>(t.rank());
    LLEP_EXPECTS(tables_[p] != nullptr, "rank ", t.rank(), " runs PeerAllToAll before attach()");
    cudaStream_t s = t.stream();
    HostThreads host(group_->host(), t.rank());
    LLEP_CUDA_CHECK(cudaEventRecord(ready_[p], s));
    host.barrier();
    for (int q = 0; q < P_; ++q)
      if (static_cast<std::size_t>(q) != p) LLEP_CUDA_CHECK(cudaStreamWaitEvent(s, ready_[static_cast<std::size_t>(q)], 0));
    const dim3 grid(blocks_per_peer == 0 ? 1 : blocks_per_peer, static_cast<unsigned>(P_));
    (void)cudaGetLastError();
    if (aligned_[p] != 0 && row_bytes % 16 == 0)
      detail::pull_rows_kernel<uint4><<<grid, 256, 0, s>>>(tables_[p], t.rank(), row_bytes);
    else
      detail::pull_rows_kernel<std::byte><<<grid, 256, 0, s>>>(tables_[p], t.rank(), row_bytes);
    LLEP_CUDA_CHECK(cudaGetLastError());
    LLEP_CUDA_CHECK(cudaEventRecord(done_[p], s));
    host.barrier();
    for (int q = 0; q < P_; ++q)
      if (static_cast<std::size_t>(q) != p) LLEP_CUDA_CHECK(cudaStreamWaitEvent(s, done_[static_cast<std::size_t>(q)], 0));
  }

 private:
  PeerCopyGroup* group_;
  int P_;
  std::vector<cudaEvent_t> ready_, done_;
  std::vector<PeerRowsEndpoint*> tables_;  // each rank's copy, on its device
  std::vector<char> aligned_;
};

}  // namespace llep
