#pragma once
// Per-element routines of the lossy codecs, shared by the host loops (block_scaled.hpp)
// and the device kernels (codec.cuh). Plain IEEE float arithmetic with one rounding per
// operation (a division, a multiplication by a power of two, rintf), so host and device
// produce the same bits. Both formats take y = x / s, s a per-group scale.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "llep/core/config.hpp"

namespace llep::detail {

LLEP_HOST_DEVICE inline float float_from_bits(std::uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
LLEP_HOST_DEVICE inline std::uint32_t bits_of(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}
/// 2^e as a float, for e in [-126, 127] (exact).
LLEP_HOST_DEVICE inline float pow2(int e) { return float_from_bits(static_cast<std::uint32_t>(e + 127) << 23); }

/// OCP FP8 E4M3 (E4M3FN: bias 7, no infinities, 0x7F/0xFF are NaN, max 448, smallest
/// subnormal 2^-9). Round to nearest even; magnitudes beyond 448 saturate to 448.
struct E4m3 {
  static constexpr float max = 448.0f;
  LLEP_HOST_DEVICE static std::uint8_t encode(float y) {
    const std::uint8_t sign = y < 0.0f ? 0x80 : 0x00;
    const float a = y < 0.0f ? -y : y;
    if (a >= 448.0f) return sign | 0x7E;
    if (a < 0.015625f)  // below 2^-6: subnormal codes m * 2^-9; m = 8 is the first normal
      return sign | static_cast<std::uint8_t>(rintf(a * 512.0f));
    const int e = static_cast<int>(bits_of(a) >> 23) - 127;   // a = 1.f * 2^e, e in [-6, 8]
    const int q = static_cast<int>(rintf(a * pow2(3 - e)));  // in [8, 16]; 16 carries into e
    return sign | static_cast<std::uint8_t>(((e + 7) << 3) + (q - 8));
  }
  LLEP_HOST_DEVICE static float decode(std::uint8_t c) {
    const int e = (c >> 3) & 0xF, m = c & 0x7;
    if (e == 15 && m == 7) return float_from_bits(0x7FC00000u);
    const float v = e == 0 ? static_cast<float>(m) * pow2(-9) : static_cast<float>(8 + m) * pow2(e - 10);
    return (c & 0x80) != 0 ? -v : v;
  }
};

/// Symmetric int8: codes -127..127 (-128 unused), round to nearest even.
struct Int8 {
  static constexpr float max = 127.0f;
  LLEP_HOST_DEVICE static std::uint8_t encode(float y) {
    float q = rintf(y);
    q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
    return static_cast<std::uint8_t>(static_cast<std::int8_t>(q));
  }
  LLEP_HOST_DEVICE static float decode(std::uint8_t c) { return static_cast<float>(static_cast<std::int8_t>(c)); }
};

/// The scale of a group whose largest magnitude is amax: amax / Format::max rounded down
/// (so that format_max * s never exceeds amax and decoding FLT_MAX cannot overflow), but
/// never below 2^-126 (FLT_MIN), so that all-zero and denormal groups keep a normal scale.
LLEP_HOST_DEVICE inline float group_scale(float amax, float format_max) {
  const float s = amax / format_max;
  if (s < 0x1p-126f) return 0x1p-126f;
  // The product of two floats is exact in double.
  return static_cast<double>(s) * static_cast<double>(format_max) > static_cast<double>(amax)
             ? float_from_bits(bits_of(s) - 1)
             : s;
}

}  // namespace llep::detail
