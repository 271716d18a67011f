#pragma once
// Carving one region of caller memory into aligned arrays: the offsets are computed on the
// host once (bytes() sizes the region), and the same offsets place the arrays whether the
// region is host memory, a cudaMalloc or an engine's workspace.
#include <cstddef>

namespace llep {

struct Carve {
  static constexpr std::size_t alignment = 256;
  std::size_t bytes = 0;
  /// `n` rounded up to the alignment.
  [[nodiscard]] static constexpr std::size_t align(std::size_t n) noexcept {
    return (n + alignment - 1) / alignment * alignment;
  }
  /// Offset of the next `n` bytes, aligned.
  std::size_t take(std::size_t n) noexcept {
    const std::size_t at = bytes;
    bytes += align(n);
    return at;
  }
};

}  // namespace llep
