#pragma once
// One block of cooperating threads, as a __host__ __device__ routine sees it: its thread
// index, the thread count, a barrier and a one-word broadcast from thread 0. A routine
// written against it (the device planner's and the layout's single-block kernels) runs on
// the device as one CUDA block (exec.run_block, exec/cuda.cuh) and on the host as one
// thread (SerialBlock), so the host tests run the code the device runs.
#include "llep/core/config.hpp"

namespace llep {

/// The host's block: one thread; the barrier and the broadcast have nothing to wait for.
struct SerialBlock {
  static constexpr int tid = 0;
  static constexpr int threads = 1;
  LLEP_HOST_DEVICE void sync() const noexcept {}
  /// Thread 0's `value`, seen by every thread after a barrier.
  LLEP_HOST_DEVICE int broadcast(int value) const noexcept { return value; }
};

#if defined(__CUDACC__)
/// A CUDA block; `word` is one int of shared memory for broadcast().
struct CudaBlock {
  int tid = 0;
  int threads = 1;
  int* word = nullptr;
  __device__ void sync() const noexcept { __syncthreads(); }
  __device__ int broadcast(int value) const noexcept {
    if (tid == 0) *word = value;
    __syncthreads();
    const int v = *word;
    __syncthreads();  // every thread read it before the next broadcast writes
    return v;
  }
};
#endif

}  // namespace llep
