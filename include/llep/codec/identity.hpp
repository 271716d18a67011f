#pragma once
// Identity<T>: the exact codec and the default. The wire holds the bytes of T unchanged
// (NaN payloads included: an exact codec has no scale to protect, so it refuses nothing).
#include <cstddef>
#include <cstring>
#include <span>
#include <string_view>
#include <type_traits>

#include "llep/codec/codec.hpp"
#include "llep/core/error.hpp"

namespace llep {

template <class T>
struct Identity {
  static_assert(std::is_trivially_copyable_v<T>, "llep: Identity<T> needs a trivially copyable element type T");
  using value_type = T;
  static constexpr std::string_view name = "identity";
  static constexpr bool exact = true;

  [[nodiscard]] constexpr std::size_t encoded_bytes(std::size_t elems) const noexcept { return elems * sizeof(T); }

  void encode(std::span<const T> src, std::span<std::byte> dst) const {
    LLEP_EXPECTS(dst.size() == encoded_bytes(src.size()), name, ": ", src.size(), " elements need ",
                 encoded_bytes(src.size()), " encoded bytes, the buffer has ", dst.size());
    if (!src.empty()) std::memcpy(dst.data(), src.data(), dst.size());
  }
  void decode(std::span<const std::byte> enc, std::span<T> out) const {
    LLEP_EXPECTS(enc.size() == encoded_bytes(out.size()), name, ": ", out.size(), " elements need ",
                 encoded_bytes(out.size()), " encoded bytes, the buffer has ", enc.size());
    if (!out.empty()) std::memcpy(out.data(), enc.data(), enc.size());
  }
  friend constexpr bool operator==(const Identity&, const Identity&) = default;
};

static_assert(check_weight_codec<Identity<float>>());

}  // namespace llep
