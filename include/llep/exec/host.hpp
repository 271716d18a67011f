#pragma once
// HostExec: the host execution space. The layer's shared __host__ __device__ functors run
// here as plain loops; the CUDA space (exec/cuda.cuh) offers the same members on a stream.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "llep/core/block.hpp"
#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/core/memory_space.hpp"
#include "llep/exec/execution_space.hpp"

namespace llep {

class HostExec {
 public:
  static constexpr MemorySpace memory = MemorySpace::host;
  static constexpr std::string_view name = "host";

  /// Step memory grows on demand (the default).
  HostExec() = default;
  /// Step memory is the engine's `buffer`, which must outlive the exec: a larger request
  /// throws llep::Error naming both sizes, and nothing is allocated for it.
  explicit HostExec(std::span<std::byte> buffer) : fixed_(buffer), has_fixed_(true) {
    LLEP_EXPECTS(buffer.data() != nullptr || buffer.empty(), "a fixed workspace of ", buffer.size(),
                 " bytes needs a non-null pointer");
  }

  /// Runs f(i) for i in [0, n).
  template <class F>
  void for_each_n(std::size_t n, F f) const {
    for (std::size_t i = 0; i < n; ++i) f(i);
  }

  /// Runs f(i) for i in [0, min(*n x scale, bound)): a size that lives in the exec's memory
  /// (a layout's row count, say), read when the work runs.
  template <class C, class F>
  void for_each_counted(const C* n, std::size_t scale, std::size_t bound, F f) const {
    const C c = *n;
    for_each_n(c > 0 ? std::min(static_cast<std::size_t>(c) * scale, bound) : 0, f);
  }

  /// Runs f(block) once with a one-thread block (core/block.hpp): a single-block routine.
  template <class F>
  void run_block(F f) const {
    const SerialBlock block;
    f(block);
  }

  /// counts[b] = #{i : ids[i] == b} for b in [0, bins); counts[bins] = ids outside [0, bins).
  void histogram(const std::int32_t* ids, std::size_t n, int bins, count_t* counts) const {
    std::fill(counts, counts + bins + 1, count_t{0});
    for (std::size_t i = 0; i < n; ++i) {
      const std::int32_t id = ids[i];
      ++counts[(id >= 0 && id < bins) ? id : bins];
    }
  }

  /// Stable sort of pair indices by expert id: order[j] is the flat index of the j-th pair
  /// in (expert, index) order. Every id must be in [0, bins) (histogram checks first).
  void sort_by_expert(const std::int32_t* ids, std::size_t n, int bins, std::int32_t* order) {
    offsets_.assign(static_cast<std::size_t>(bins) + 1, 0);
    for (std::size_t i = 0; i < n; ++i) ++offsets_[static_cast<std::size_t>(ids[i]) + 1];
    for (std::size_t b = 0; b < static_cast<std::size_t>(bins); ++b) offsets_[b + 1] += offsets_[b];
    for (std::size_t i = 0; i < n; ++i)
      order[offsets_[static_cast<std::size_t>(ids[i])]++] = static_cast<std::int32_t>(i);
  }

  void copy(void* dst, const void* src, std::size_t bytes) const {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void to_host(void* dst, const void* src, std::size_t bytes) const { copy(dst, src, bytes); }
  void from_host(void* dst, const void* src, std::size_t bytes) const { copy(dst, src, bytes); }
  void synchronize() const noexcept {}

  /// Step memory: grows to the largest request and is then reused, so a warm layer
  /// allocates nothing per step; with a fixed buffer, a larger request throws.
  std::byte* workspace(std::size_t bytes) {
    if (has_fixed_) {
      LLEP_EXPECTS(bytes <= fixed_.size(), "the step needs ", bytes,
                   " bytes of workspace but the engine-supplied buffer holds ", fixed_.size(),
                   " bytes; supply a larger buffer or fewer tokens");
      return fixed_.data();
    }
    if (workspace_.size() < bytes) workspace_.resize(bytes);
    return workspace_.data();
  }
  [[nodiscard]] std::size_t workspace_capacity() const noexcept {
    return has_fixed_ ? fixed_.size() : workspace_.size();
  }

 private:
  std::vector<std::size_t> offsets_;
  std::vector<std::byte> workspace_;
  std::span<std::byte> fixed_;
  bool has_fixed_ = false;
};

static_assert(check_execution_space<HostExec>());

}  // namespace llep
