#pragma once
// Macros shared by host and device code.
#include <cstdint>

#if defined(__CUDACC__)
#define LLEP_HOST_DEVICE __host__ __device__
#else
#define LLEP_HOST_DEVICE
#endif

namespace llep {
/// Token-expert pair counts and offsets. 64-bit so that loads summed over many ranks and
/// large batches never overflow.
using count_t = std::int64_t;
}  // namespace llep
