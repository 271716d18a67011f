#pragma once
// One expert's weights as one contiguous buffer, which is what a weight transfer moves.
// Element order (row-major matrices):
//   W_gu   [D x 2H]  columns [0, H) are the gate projection, [H, 2H) the up projection
//   W_down [H x D]
//   b_gu   [2H]      only when the activation has biases (gpt-oss)
//   b_down [D]       likewise
// Checkpoints that interleave gate and up columns (gpt-oss: even = gate, odd = up) are
// converted by pack_expert(..., interleaved = true).
#include <cstddef>
#include <span>

#include "llep/core/config.hpp"
#include "llep/core/error.hpp"

namespace llep {

struct ExpertShape {
  int hidden = 0;        ///< D
  int intermediate = 0;  ///< H
  bool bias = false;

  void check() const {
    LLEP_EXPECTS(hidden > 0, "hidden size D = ", hidden, " must be > 0");
    LLEP_EXPECTS(intermediate > 0, "intermediate size H = ", intermediate, " must be > 0");
  }
  LLEP_HOST_DEVICE constexpr std::size_t d() const { return static_cast<std::size_t>(hidden); }
  LLEP_HOST_DEVICE constexpr std::size_t h() const { return static_cast<std::size_t>(intermediate); }
  LLEP_HOST_DEVICE constexpr std::size_t gate_up_offset() const { return 0; }
  LLEP_HOST_DEVICE constexpr std::size_t down_offset() const { return d() * 2 * h(); }
  LLEP_HOST_DEVICE constexpr std::size_t gate_up_bias_offset() const { return down_offset() + h() * d(); }
  LLEP_HOST_DEVICE constexpr std::size_t down_bias_offset() const { return gate_up_bias_offset() + 2 * h(); }
  /// Elements of one serialised expert.
  LLEP_HOST_DEVICE constexpr std::size_t elems() const {
    return bias ? down_bias_offset() + d() : gate_up_bias_offset();
  }
  friend constexpr bool operator==(const ExpertShape&, const ExpertShape&) = default;
};

/// Serialises one expert into `out` (shape.elems() elements). `gate_up` is [D x 2H]
/// row-major; with `interleaved`, its columns alternate gate, up (gpt-oss checkpoints).
/// Biases are read only when shape.bias.
template <class T>
void pack_expert(const ExpertShape& shape, std::span<const T> gate_up, std::span<const T> down,
                 std::span<const T> gate_up_bias, std::span<const T> down_bias, std::span<T> out,
                 bool interleaved = false) {
  shape.check();
  const std::size_t D = shape.d(), H = shape.h();
  LLEP_EXPECTS(gate_up.size() == D * 2 * H, "gate_up has ", gate_up.size(), " elements; D x 2H = ", D * 2 * H);
  LLEP_EXPECTS(down.size() == H * D, "down has ", down.size(), " elements; H x D = ", H * D);
  LLEP_EXPECTS(out.size() == shape.elems(), "output buffer has ", out.size(), " elements; the expert needs ",
               shape.elems());
  auto src_col = [&](std::size_t c) { return interleaved ? (c < H ? 2 * c : 2 * (c - H) + 1) : c; };
  for (std::size_t r = 0; r < D; ++r)
    for (std::size_t c = 0; c < 2 * H; ++c) out[r * 2 * H + c] = gate_up[r * 2 * H + src_col(c)];
  for (std::size_t i = 0; i < H * D; ++i) out[shape.down_offset() + i] = down[i];
  if (shape.bias) {
    LLEP_EXPECTS(gate_up_bias.size() == 2 * H, "gate_up bias has ", gate_up_bias.size(), " elements; 2H = ", 2 * H);
    LLEP_EXPECTS(down_bias.size() == D, "down bias has ", down_bias.size(), " elements; D = ", D);
    for (std::size_t c = 0; c < 2 * H; ++c) out[shape.gate_up_bias_offset() + c] = gate_up_bias[src_col(c)];
    for (std::size_t c = 0; c < D; ++c) out[shape.down_bias_offset() + c] = down_bias[c];
  }
}

}  // namespace llep
