#pragma once
// The WeightCodec concept: how a moving expert's weights look on the wire (and, for
// replicas, in memory). The sender encodes, the receiver decodes; compute stays in the
// layer's type T. The encoded size is a function of the element count alone, so buffers
// and wire bytes are known before the step.
//   Identity<T>    exact, the default: the bytes of T as they are
//   Fp8Blocks<T>   FP8 E4M3 codes with one float scale per block of elements
//   Int8Rows<T>    int8 codes with one float scale per row
// Host encode/decode are members; device kernels are in codec/codec.cuh.
#include <concepts>
#include <cstddef>
#include <span>
#include <string_view>

namespace llep {

/// A codec for elements of `C::value_type`. `encode(src, dst)` writes exactly
/// `encoded_bytes(src.size())` bytes; `decode(enc, out)` reads them back into out.size()
/// elements. `exact` says decode(encode(x)) == x bit for bit.
template <class C>
concept WeightCodec = std::copyable<C> && requires(const C& c, std::size_t elems,
                                                   std::span<const typename C::value_type> src,
                                                   std::span<std::byte> dst, std::span<const std::byte> enc,
                                                   std::span<typename C::value_type> out) {
  { C::name } -> std::convertible_to<std::string_view>;
  { C::exact } -> std::convertible_to<bool>;
  { c.encoded_bytes(elems) } -> std::same_as<std::size_t>;
  { c.encode(src, dst) } -> std::same_as<void>;
  { c.decode(enc, out) } -> std::same_as<void>;
};

/// Named in a static_assert so a type that is not a WeightCodec fails with an instruction.
template <class C>
constexpr bool check_weight_codec() {
  static_assert(WeightCodec<C>,
                "llep: this type is not a WeightCodec. Give it `using value_type = T` (the layer's element "
                "type), `static constexpr std::string_view name`, `static constexpr bool exact`, "
                "`std::size_t encoded_bytes(std::size_t elems) const`, `void encode(std::span<const T>, "
                "std::span<std::byte>) const` and `void decode(std::span<const std::byte>, std::span<T>) const`, "
                "or use llep::Identity<T>, llep::Fp8Blocks<T> or llep::Int8Rows<T>.");
  return true;
}

}  // namespace llep
