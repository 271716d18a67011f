#pragma once
// Symmetric memory over an NCCL communicator (device/symmetric.hpp), NCCL 2.28 or later:
// each rank's region is ncclMemAlloc memory registered as a symmetric window
// (ncclCommWindowRegister, NCCL_WIN_COLL_SYMMETRIC), and its table of the P regions is
// filled once on the device from the window's load/store (LSA) pointers
// (ncclGetPeerPointer). Every rank must be in the communicator's LSA team (one NVLink
// domain); a communicator that spans more is refused. Set up once (collective: the
// window registration and one all-reduce); after that the exchanges read peers' regions
// directly and a step involves no host. Include from .cu files, with NCCL.
#include <cuda_runtime.h>
#include <nccl.h>

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 28, 0)
#error "llep: device/symmetric_nccl.cuh needs NCCL 2.28 or later (symmetric windows, nccl_device.h)"
#endif

#include <nccl_device.h>

#include <cstddef>

#include "llep/core/cuda_check.hpp"
#include "llep/core/error.hpp"
#include "llep/device/symmetric.hpp"
#include "llep/transport/nccl.hpp"

#ifndef LLEP_KERNEL
#define LLEP_KERNEL __global__ __attribute__((visibility("hidden")))
#endif

namespace llep {

namespace detail {
// Templated so that the kernel can live in a header included by several translation units.
template <class Window>
LLEP_KERNEL void fill_lsa_table(Window window, int ranks, std::byte** table) {
  for (int q = static_cast<int>(threadIdx.x); q < ranks; q += static_cast<int>(blockDim.x))
    table[q] = static_cast<std::byte*>(ncclGetPeerPointer(window, 0, q));
}
}  // namespace detail

/// One rank's region and table over `nccl`'s communicator. Create it on every rank (a
/// collective); destroy it on every rank only after every rank's last exchange is complete.
class NcclSymmetricMemory : public SymmetricRegion {
 public:
  NcclSymmetricMemory(Nccl& nccl, const SymmetricLayout& layout)
      : SymmetricRegion(nccl.rank(), nccl.size(), layout, "NCCL symmetric window (LSA)"), comm_(nccl.comm()) {
    const ncclTeam_t lsa = ncclTeamLsa(comm_);
    LLEP_EXPECTS(lsa.nRanks == ranks_, "NcclSymmetricMemory: only ", lsa.nRanks, " of the ", ranks_,
                 " ranks share load/store access (NCCL's LSA team) with rank ", rank_,
                 "; symmetric exchanges need every rank in one NVLink domain");
    cudaStream_t s = nccl.stream();
    void* region = nullptr;
    LLEP_NCCL_CHECK(ncclMemAlloc(&region, layout.bytes()));
    region_ = static_cast<std::byte*>(region);
    try {
      LLEP_CUDA_CHECK(cudaMemsetAsync(region_, 0, layout.bytes(), s));
      LLEP_CUDA_CHECK(cudaStreamSynchronize(s));
      LLEP_NCCL_CHECK(ncclCommWindowRegister(comm_, region_, layout.bytes(), &window_, NCCL_WIN_COLL_SYMMETRIC));
      LLEP_CUDA_CHECK(cudaMalloc(&table_, static_cast<std::size_t>(ranks_) * sizeof(std::byte*)));
      (void)cudaGetLastError();
      detail::fill_lsa_table<<<1, 64, 0, s>>>(window_, ranks_, table_);
      LLEP_CUDA_CHECK(cudaGetLastError());
      // Every region is zeroed (before its rank registered) and every table filled before
      // any rank signals: one all-reduce, waited for here (setup only).
      int* one = nullptr;
      LLEP_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&one), sizeof(int), s));
      LLEP_CUDA_CHECK(cudaMemsetAsync(one, 0, sizeof(int), s));
      LLEP_NCCL_CHECK(ncclAllReduce(one, one, 1, ncclInt32, ncclSum, comm_, s));
      LLEP_CUDA_CHECK(cudaFreeAsync(one, s));
      LLEP_CUDA_CHECK(cudaStreamSynchronize(s));
    } catch (...) {
      release();
      throw;
    }
  }
  ~NcclSymmetricMemory() { release(); }

 private:
  void release() noexcept {
    if (table_ != nullptr) (void)cudaFree(table_);
    if (window_ != nullptr) (void)ncclCommWindowDeregister(comm_, window_);
    if (region_ != nullptr) (void)ncclMemFree(region_);
    table_ = nullptr;
    window_ = nullptr;
    region_ = nullptr;
  }

  ncclComm_t comm_;
  ncclWindow_t window_ = nullptr;
};

}  // namespace llep
