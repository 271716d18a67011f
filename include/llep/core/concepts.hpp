#pragma once
// The policy concepts in one place (DESIGN.md, "Five policies, one layer"). Each family's
// folder provides its models; MoeLayer is the only code that wires them together.
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "llep/core/config.hpp"
#include "llep/core/counts.hpp"
#include "llep/core/memory_space.hpp"
#include "llep/plan/planner.hpp"

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

/// One expert's share of work: `rows` rows of `in` (row-major, hidden size D) through the
/// expert whose serialised weights start at `weights`, into `out` (rows x D).
template <class T>
struct ExpertTask {
  int expert = 0;
  const T* weights = nullptr;
  const T* in = nullptr;
  T* out = nullptr;
  count_t rows = 0;
};

/// An expert FFN family. Weights of one expert serialise to `weight_elems()` contiguous
/// elements, which is what a weight transfer moves. `compute` runs every task; `exec` says
/// where (host, or a CUDA stream) and `scratch` is caller-owned memory of at least
/// `scratch_bytes(max rows of one task, total rows)` bytes.
template <class E, class Exec>
concept ExpertCompute = requires(const E& ex, Exec& exec, std::span<const ExpertTask<typename E::value_type>> tasks,
                                 void* scratch, count_t rows) {
  typename E::value_type;
  { ex.hidden() } -> std::convertible_to<int>;
  { ex.intermediate() } -> std::convertible_to<int>;
  { ex.weight_elems() } -> std::convertible_to<std::size_t>;
  { ex.scratch_bytes(rows, rows) } -> std::convertible_to<std::size_t>;
  { ex.compute(exec, tasks, scratch) } -> std::same_as<void>;
};

}  // namespace llep
