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

/// A Transport with a second path for expert weights (Nccl): `exchange_weights` starts a
/// grouped exchange that overlaps later collectives, `join_weights` orders the rank's
/// stream after it. Without it, the layer moves weights with `exchange` before the tokens.
template <class T>
concept WeightsPathTransport = Transport<T> && requires(T& t, std::span<const P2pOp> ops) {
  { t.exchange_weights(ops) } -> std::same_as<void>;
  { t.join_weights() } -> std::same_as<void>;
};

/// A Transport whose group can work again after a failed step without being rebuilt:
/// every rank calls `recover()` once it has left the failed step; it returns true once
/// all have, false (group still aborted) if a rank never does within the transport's
/// timeout. Never throws. HostThreads and PeerCopy model it; Nccl does not (an aborted
/// communicator is gone).
template <class T>
concept RecoverableTransport = Transport<T> && requires(T& t) {
  { t.recover() } -> std::same_as<bool>;
};

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
