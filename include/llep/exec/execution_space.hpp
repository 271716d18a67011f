#pragma once
// The ExecutionSpace concept: where a step's per-row work runs and where its memory lives
// (DESIGN.md, "Execution spaces"). HostExec runs on the calling thread; CudaExec enqueues
// on one CUDA stream. The layer's stages call nothing else of an exec.
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "llep/core/config.hpp"
#include "llep/core/memory_space.hpp"

namespace llep {

namespace detail {
/// A __host__ __device__ functor of the shape the layer passes to for_each_n.
struct ForEachArchetype {
  LLEP_HOST_DEVICE void operator()(std::size_t) const {}
};
}  // namespace detail

/// An execution space. All pointers are in `E::memory` except the host side of
/// to_host / from_host. Calls may be asynchronous (ordered among themselves, complete on
/// the host after synchronize()).
///   for_each_n(n, f)      f(i) for i in [0, n); f is a __host__ __device__ functor
///   histogram(ids, n, bins, counts)   counts[b] = #{ids == b}, counts[bins] = ids outside
///   sort_by_expert(ids, n, bins, order)   stable: order[j] = index of the j-th pair by id
///   copy / to_host / from_host / synchronize
///   workspace(bytes)      step memory of at least `bytes`, reused from step to step; an
///                         engine-supplied fixed buffer throws llep::Error when too small
template <class E>
concept ExecutionSpace = requires(E& e, const E& ce, const std::int32_t* ids, std::size_t n, int bins, count_t* counts,
                                  std::int32_t* order, void* dst, const void* src) {
  { E::memory } -> std::convertible_to<MemorySpace>;
  { E::name } -> std::convertible_to<std::string_view>;
  { e.for_each_n(n, detail::ForEachArchetype{}) };
  { e.histogram(ids, n, bins, counts) };
  { e.sort_by_expert(ids, n, bins, order) };
  { e.copy(dst, src, n) };
  { e.to_host(dst, src, n) };
  { e.from_host(dst, src, n) };
  { e.synchronize() };
  { e.workspace(n) } -> std::same_as<std::byte*>;
  { ce.workspace_capacity() } -> std::convertible_to<std::size_t>;
};

/// Named in a static_assert so a type that is not an execution space fails with an
/// instruction.
template <class E>
constexpr bool check_execution_space() {
  static_assert(ExecutionSpace<E>,
                "llep: this type is not an ExecutionSpace. Give it `static constexpr llep::MemorySpace memory`, "
                "`static constexpr std::string_view name`, `for_each_n(std::size_t n, F f)`, `histogram(const "
                "std::int32_t* ids, std::size_t n, int bins, llep::count_t* counts)`, `sort_by_expert(const "
                "std::int32_t* ids, std::size_t n, int bins, std::int32_t* order)`, `copy`, `to_host`, `from_host` "
                "(void* dst, const void* src, std::size_t bytes), `synchronize()`, `std::byte* workspace(std::size_t "
                "bytes)` and `std::size_t workspace_capacity() const` (see exec/host.hpp).");
  return true;
}

/// Bytes of caller scratch E's sort_by_expert takes for n pairs and `bins` ids:
/// E::sort_scratch_bytes for an exec that sorts in the caller's scratch (CudaExec), 0 for
/// one that sorts in its own memory (HostExec, warm after its first step).
template <class E>
[[nodiscard]] std::size_t exec_sort_scratch_bytes(std::size_t n, int bins) {
  if constexpr (requires {
                  { E::sort_scratch_bytes(n, bins) } -> std::convertible_to<std::size_t>;
                })
    return E::sort_scratch_bytes(n, bins);
  else
    return 0;
}

/// exec.sort_by_expert in `scratch` (exec memory) when E sorts in caller scratch, otherwise
/// in the exec's own memory.
template <class E>
void sort_by_expert_in(E& exec, const std::int32_t* ids, std::size_t n, int bins, std::int32_t* order,
                       std::span<std::byte> scratch) {
  if constexpr (requires { exec.sort_by_expert(ids, n, bins, order, scratch); })
    exec.sort_by_expert(ids, n, bins, order, scratch);
  else
    exec.sort_by_expert(ids, n, bins, order);
}

}  // namespace llep
