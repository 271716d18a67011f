#pragma once
// Symmetric memory for the ranks of a PeerCopyGroup (device/symmetric.hpp): each rank's
// region is device memory on its own device, and its table of the P regions' bases is
// device memory on that device too, so the exchanges' kernels read peers' regions
// directly (logical ranks of one GPU, or GPUs with peer access, which PeerCopyGroup
// enables where the hardware allows; a pair without it is refused here). Set up once, by
// one host collective of the group (gathering the bases); after that a step involves no
// host. Include from .cu files only.
#include <cuda_runtime.h>

#include <cstddef>
#include <vector>

#include "llep/core/cuda_check.hpp"
#include "llep/core/error.hpp"
#include "llep/device/symmetric.hpp"
#include "llep/transport/host_threads.hpp"
#include "llep/transport/peer_copy.cuh"

namespace llep {

/// One rank's region and table. Create it on every rank's thread (a collective); destroy it
/// only after every rank's last exchange is complete (e.g. after a status check), since
/// peers read the region until then.
class PeerSymmetricMemory : public SymmetricRegion {
 public:
  PeerSymmetricMemory(PeerCopy& t, const SymmetricLayout& layout)
      : SymmetricRegion(t.rank(), t.size(), layout, "peer pointers") {
    const int device = t.group().where(rank_).device;
    detail::peer::ScopedDevice on(device);
    for (int q = 0; q < ranks_; ++q) {
      const int other = t.group().where(q).device;
      int can = 1;
      if (other != device) LLEP_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, device, other));
      LLEP_EXPECTS(can != 0, "PeerSymmetricMemory: rank ", rank_, " (device ", device, ") cannot access rank ", q,
                   "'s device ", other, " (no peer access)");
    }
    LLEP_CUDA_CHECK(cudaMalloc(&region_, layout.bytes()));
    try {
      LLEP_CUDA_CHECK(cudaMemsetAsync(region_, 0, layout.bytes(), t.stream()));
      LLEP_CUDA_CHECK(cudaStreamSynchronize(t.stream()));
      std::vector<std::byte*> bases(static_cast<std::size_t>(ranks_));
      HostThreads host(t.group().host(), rank_);
      host.all_gather(&region_, sizeof region_, bases.data());
      LLEP_CUDA_CHECK(cudaMalloc(&table_, bases.size() * sizeof(std::byte*)));
      LLEP_CUDA_CHECK(cudaMemcpy(table_, bases.data(), bases.size() * sizeof(std::byte*), cudaMemcpyHostToDevice));
      host.barrier();  // every region is zeroed before any rank signals into it
    } catch (...) {
      release();
      throw;
    }
  }
  ~PeerSymmetricMemory() { release(); }

 private:
  void release() noexcept {
    if (table_ != nullptr) (void)cudaFree(table_);
    if (region_ != nullptr) (void)cudaFree(region_);
    table_ = nullptr;
    region_ = nullptr;
  }
};

}  // namespace llep
