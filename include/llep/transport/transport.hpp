#pragma once
// Helpers shared by the transports: the instructive concept check, and an archetype that
// other policy families use to check their own concepts without depending on a real
// transport (declared only; never called).
#include <cstddef>
#include <span>
#include <string_view>

#include "llep/core/concepts.hpp"

namespace llep {

/// Named in a static_assert so a type that is not a transport fails with an instruction.
template <class T>
constexpr bool check_transport() {
  static_assert(Transport<T>,
                "llep: this type is not a Transport. Give it `static constexpr llep::MemorySpace memory`, "
                "`int rank() const`, `int size() const`, and the collectives `void all_gather(const void* src, "
                "std::size_t bytes, void* dst)`, `void all_to_all_v(const void* src, std::span<const std::size_t> "
                "send_sizes, std::span<const std::size_t> send_offsets, void* dst, std::span<const std::size_t> "
                "recv_sizes, std::span<const std::size_t> recv_offsets)`, `void exchange(std::span<const "
                "llep::P2pOp>)`, `void barrier()` and `void abort(std::string_view why)`.");
  return true;
}

namespace detail {
/// The least a Transport offers, in memory space `M`. For concept checks only.
template <MemorySpace M>
struct TransportArchetype {
  static constexpr MemorySpace memory = M;
  int rank() const;
  int size() const;
  void all_gather(const void* src, std::size_t bytes, void* dst);
  void all_to_all_v(const void* src, std::span<const std::size_t> send_sizes, std::span<const std::size_t> send_offsets,
                    void* dst, std::span<const std::size_t> recv_sizes, std::span<const std::size_t> recv_offsets);
  void exchange(std::span<const P2pOp> ops);
  void barrier();
  void abort(std::string_view why);
};
static_assert(check_transport<TransportArchetype<MemorySpace::host>>());
}  // namespace detail

}  // namespace llep
