#pragma once
// The Transport concept (DESIGN.md, "Transports"): the minimum the layer calls, the named
// refinements for optional powers, the instructive concept check, and an archetype that
// other families use to check their own concepts without a real transport (declared only;
// never called).
#include <concepts>
#include <cstddef>
#include <span>
#include <string_view>

#include "llep/core/memory_space.hpp"

namespace llep {

/// One point-to-point operation of a grouped exchange (expert weights).
struct P2pOp {
  enum class Kind { send, recv };
  Kind kind = Kind::send;
  int peer = 0;
  void* buffer = nullptr;  // read for send, written for recv
  std::size_t bytes = 0;
};

/// Moves bytes between the P ranks of a group. Counts and offsets are host arrays of P
/// entries in bytes; buffers live in `T::memory`. Device transports order their work on
/// the rank's stream. Every call is collective: all ranks make it, in the same order.
/// `abort` releases every rank waiting in a collective with llep::Error.
template <class T>
concept Transport = requires(T& t, const void* src, void* dst, std::size_t bytes,
                             std::span<const std::size_t> sizes, std::span<const std::size_t> offsets,
                             std::span<const P2pOp> ops, std::string_view why) {
  { T::memory } -> std::convertible_to<MemorySpace>;
  { t.rank() } -> std::convertible_to<int>;
  { t.size() } -> std::convertible_to<int>;
  { t.all_gather(src, bytes, dst) } -> std::same_as<void>;  // dst: size() * bytes
  { t.all_to_all_v(src, sizes, offsets, dst, sizes, offsets) } -> std::same_as<void>;
  { t.exchange(ops) } -> std::same_as<void>;
  { t.barrier() } -> std::same_as<void>;
  { t.abort(why) } -> std::same_as<void>;
};

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
