#pragma once
// BlockScaled<Format, T>: one float scale per group of `group` consecutive elements (the
// last group may be shorter), one byte code per element. Encoded layout:
//   [ceil(elems / group) float scales][elems one-byte codes]
// so encoded_bytes(elems) = 4 * ceil(elems / group) + elems. For every element x of a
// group whose largest magnitude is amax, with s = max(amax / Q, 2^-126) (rounded down):
//   Fp8Blocks<T>: E4M3 codes, Q = 448:  |x - decode(encode(x))| <= 2^-4 |x| + 2^-10 s
//   Int8Rows<T>:  int8 codes, Q = 127:  |x - decode(encode(x))| <= (1/2 + 2^-15) s
// Int8Rows' group is a row: with llep's expert layout (experts/weight_layout.hpp),
// Int8Rows<T>::for_expert(shape) picks gcd(2H, D), the longest group that never straddles
// two matrix rows (both codecs default to groups of 128 elements). Encoding refuses NaN and Inf with llep::Error: one of them would
// poison its group's scale.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <span>
#include <string_view>
#include <type_traits>

#include "llep/codec/codec.hpp"
#include "llep/codec/formats.hpp"
#include "llep/core/error.hpp"
#include "llep/experts/weight_layout.hpp"

namespace llep {

namespace detail {
struct Fp8Tag {
  using Format = E4m3;
  static constexpr std::string_view name = "fp8-e4m3-blocks";
  static constexpr std::size_t default_group = 128;
};
struct Int8Tag {
  using Format = Int8;
  static constexpr std::string_view name = "int8-rows";
  static constexpr std::size_t default_group = 128;  // for_expert(shape) gives whole matrix rows
};
}  // namespace detail

template <class Tag, class T>
class BlockScaled {
 public:
  static_assert(std::is_floating_point_v<T>, "llep: block-scaled codecs encode float or double weights");
  using value_type = T;
  using Format = typename Tag::Format;
  static constexpr std::string_view name = Tag::name;
  static constexpr bool exact = false;

  explicit BlockScaled(std::size_t group = Tag::default_group) : group_(group) {
    LLEP_EXPECTS(group > 0, name, ": a group of ", group, " elements; it must be > 0");
  }
  /// Int8Rows for one expert of `shape`: groups of gcd(2H, D) elements.
  static BlockScaled for_expert(const ExpertShape& shape) {
    shape.check();
    return BlockScaled(std::gcd(2 * shape.h(), shape.d()));
  }

  [[nodiscard]] std::size_t group() const noexcept { return group_; }
  [[nodiscard]] std::size_t groups(std::size_t elems) const noexcept { return (elems + group_ - 1) / group_; }
  [[nodiscard]] std::size_t encoded_bytes(std::size_t elems) const noexcept {
    return groups(elems) * sizeof(float) + elems;
  }

  void encode(std::span<const T> src, std::span<std::byte> dst) const {
    check_size(src.size(), dst.size());
    const std::size_t G = groups(src.size());
    std::byte* codes = dst.data() + G * sizeof(float);
    for (std::size_t g = 0; g < G; ++g) {
      const std::size_t begin = g * group_, end = begin + group_ < src.size() ? begin + group_ : src.size();
      float amax = 0.0f;
      for (std::size_t i = begin; i < end; ++i) {
        const float x = static_cast<float>(src[i]);
        LLEP_EXPECTS(std::isfinite(x), name, ": weight ", i, " = ", src[i],
                     " is not finite (as a float); a lossy codec refuses NaN and Inf");
        amax = std::fabs(x) > amax ? std::fabs(x) : amax;
      }
      const float s = detail::group_scale(amax, Format::max);
      std::memcpy(dst.data() + g * sizeof(float), &s, sizeof s);
      for (std::size_t i = begin; i < end; ++i)
        codes[i] = static_cast<std::byte>(Format::encode(static_cast<float>(src[i]) / s));
    }
  }

  void decode(std::span<const std::byte> enc, std::span<T> out) const {
    check_size(out.size(), enc.size());
    const std::byte* codes = enc.data() + groups(out.size()) * sizeof(float);
    for (std::size_t g = 0; g < groups(out.size()); ++g) {
      float s;
      std::memcpy(&s, enc.data() + g * sizeof(float), sizeof s);
      const std::size_t begin = g * group_, end = begin + group_ < out.size() ? begin + group_ : out.size();
      for (std::size_t i = begin; i < end; ++i)
        out[i] = static_cast<T>(Format::decode(static_cast<std::uint8_t>(codes[i])) * s);
    }
  }

  friend bool operator==(const BlockScaled&, const BlockScaled&) = default;

 private:
  void check_size(std::size_t elems, std::size_t bytes) const {
    LLEP_EXPECTS(bytes == encoded_bytes(elems), name, ": ", elems, " elements need ", encoded_bytes(elems),
                 " encoded bytes, the buffer has ", bytes);
  }
  std::size_t group_;
};

template <class T>
using Fp8Blocks = BlockScaled<detail::Fp8Tag, T>;
template <class T>
using Int8Rows = BlockScaled<detail::Int8Tag, T>;

static_assert(check_weight_codec<Fp8Blocks<float>>());
static_assert(check_weight_codec<Int8Rows<double>>());

}  // namespace llep
