#pragma once
// Macros shared by host and device code.
#include <cstdint>

#if defined(__CUDACC__)
#define LLEP_HOST_DEVICE __host__ __device__
// Before a __host__ __device__ template that takes callables: host code may instantiate it
// with host-only ones (a lambda over a Topology) without nvcc warning about it.
#define LLEP_EXEC_CHECK_DISABLE _Pragma("nv_exec_check_disable")
#else
#define LLEP_HOST_DEVICE
#define LLEP_EXEC_CHECK_DISABLE
#endif

namespace llep {
/// Token-expert pair counts and offsets. 64-bit so that loads summed over many ranks and
/// large batches never overflow.
using count_t = std::int64_t;
}  // namespace llep
