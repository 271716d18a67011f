#pragma once
// Where buffers live: the one notion every policy family shares.

namespace llep {

/// Where buffers handed to a transport, an execution space or an expert functor live.
enum class MemorySpace { host, device };

}  // namespace llep
