// Weight codecs: the E4M3 and int8 element formats against brute-force nearest-value
// references, decode(encode(x)) within each codec's documented bound on random and extreme
// weights, NaN and Inf refused, Identity exact to the bit.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "llep/codec/block_scaled.hpp"
#include "llep/codec/codec.hpp"
#include "llep/codec/formats.hpp"
#include "llep/codec/identity.hpp"

static_assert(llep::check_weight_codec<llep::Identity<double>>());
static_assert(llep::check_weight_codec<llep::Fp8Blocks<double>>());
static_assert(llep::check_weight_codec<llep::Int8Rows<float>>());
static_assert(!llep::WeightCodec<int>);
static_assert(!llep::WeightCodec<llep::ExpertShape>);

namespace {

// Every finite E4M3 value, from its definition: (-1)^s 2^(e-7) (1 + m/8), e > 0;
// (-1)^s 2^-6 (m/8) for e = 0; e = 15, m = 7 is NaN.
double e4m3_value(int code) {
  const int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
  const double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -v : v;
}
bool e4m3_nan(int code) { return (code & 0x7F) == 0x7F; }

// The nearest finite E4M3 value to y by search (ties: even mantissa), saturating at 448.
double e4m3_nearest(double y) {
  double best = 0;
  int best_code = 0;
  for (int c = 0; c < 256; ++c) {
    if (e4m3_nan(c)) continue;
    const double v = e4m3_value(c), d = std::fabs(v - y), bd = std::fabs(best - y);
    if (d < bd || (d == bd && (c & 1) == 0 && (best_code & 1) == 1)) {
      best = v;
      best_code = c;
    }
  }
  return best;
}

template <class T>
std::vector<std::byte> encode(const auto& codec, const std::vector<T>& x) {
  std::vector<std::byte> enc(codec.encoded_bytes(x.size()));
  codec.encode(std::span<const T>(x), enc);
  return enc;
}
template <class T>
std::vector<T> round_trip(const auto& codec, const std::vector<T>& x) {
  const auto enc = encode(codec, x);
  std::vector<T> out(x.size());
  codec.decode(enc, std::span<T>(out));
  return out;
}

// The documented bound of every element, with s from the group's amax (as float, which is
// what the codec sees).
enum class Kind { fp8, int8 };
template <class T>
void check_bound(Kind kind, std::size_t group, const std::vector<T>& x, const std::vector<T>& y) {
  REQUIRE(x.size() == y.size());
  for (std::size_t begin = 0; begin < x.size(); begin += group) {
    const std::size_t end = std::min(x.size(), begin + group);
    double amax = 0;
    for (std::size_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(static_cast<double>(static_cast<float>(x[i]))));
    const double s = std::max(amax / (kind == Kind::fp8 ? 448.0 : 127.0), std::ldexp(1.0, -126)) * (1 + 1e-6);
    for (std::size_t i = begin; i < end; ++i) {
      const double xi = static_cast<double>(x[i]), err = std::fabs(xi - static_cast<double>(y[i]));
      const double bound =
          kind == Kind::fp8 ? std::ldexp(std::fabs(xi), -4) + std::ldexp(s, -10) : (0.5 + std::ldexp(1.0, -15)) * s;
      if (!(err <= bound)) {
        CAPTURE(i);
        CAPTURE(xi);
        CAPTURE(static_cast<double>(y[i]));
        CHECK(err <= bound);
      }
    }
  }
}

template <class T>
std::vector<std::vector<T>> weight_sets(std::mt19937& rng) {
  std::vector<std::vector<T>> sets;
  std::normal_distribution<double> normal(0.0, 0.02);
  std::vector<T> w(1000);
  for (T& v : w) v = static_cast<T>(normal(rng));
  sets.push_back(w);
  // Magnitudes spread over many binades, both signs.
  std::uniform_real_distribution<double> expo(-30.0, 30.0);
  for (T& v : w) v = static_cast<T>((rng() % 2 ? -1.0 : 1.0) * std::pow(2.0, expo(rng)));
  sets.push_back(w);
  // Extremes: zeros, float denormals, the largest finite floats, mixed in one group.
  const float dmin = std::numeric_limits<float>::denorm_min(), fmax = std::numeric_limits<float>::max();
  sets.push_back(std::vector<T>(300, T(0)));
  sets.push_back({T(dmin), T(-dmin), T(3 * dmin), T(1e-40f), T(-1e-39f), T(0), T(1.1e-38f)});
  sets.push_back({T(fmax), T(-fmax), T(fmax / 3), T(1e38f), T(-2.5e37f), T(1), T(0)});
  sets.push_back({T(1e30f), T(-1e-30f), T(dmin), T(0), T(-1e30f), T(447.9f), T(1e-45f)});
  return sets;
}

}  // namespace

TEST_CASE("E4M3: every code decodes to its defined value and encodes back; NaN codes decode to NaN") {
  CHECK(llep::detail::E4m3::decode(0x7E) == 448.0f);
  CHECK(llep::detail::E4m3::decode(0x38) == 1.0f);
  CHECK(llep::detail::E4m3::decode(0x01) == std::ldexp(1.0f, -9));
  for (int c = 0; c < 256; ++c) {
    CAPTURE(c);
    const auto code = static_cast<std::uint8_t>(c);
    const float v = llep::detail::E4m3::decode(code);
    if (e4m3_nan(c)) {
      CHECK(std::isnan(v));
      continue;
    }
    CHECK(static_cast<double>(v) == e4m3_value(c));
    if (c != 0x80) CHECK(llep::detail::E4m3::encode(v) == code);  // -0 encodes as +0
  }
}

TEST_CASE("E4M3: encode rounds to the nearest value, ties to even, and saturates at 448") {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> wide(-520.0f, 520.0f), small(-0.03f, 0.03f);
  std::vector<float> ys = {0.0f, 1.0625f, 1.1875f, 0.5f * std::ldexp(1.0f, -9), 1.5f * std::ldexp(1.0f, -9),
                           448.0f, 460.0f, 464.0f, 1e6f, -1e6f, std::ldexp(1.0f, -6) * 0.99f};
  for (int i = 0; i < 4000; ++i) ys.push_back(i % 2 ? wide(rng) : small(rng));
  for (float y : ys) {
    CAPTURE(y);
    CHECK(static_cast<double>(llep::detail::E4m3::decode(llep::detail::E4m3::encode(y))) ==
          e4m3_nearest(static_cast<double>(y)));
  }
  CHECK(llep::detail::E4m3::decode(llep::detail::E4m3::encode(1.0625f)) == 1.0f);   // tie: even mantissa 0
  CHECK(llep::detail::E4m3::decode(llep::detail::E4m3::encode(1.1875f)) == 1.25f);  // tie: even mantissa 2
}

TEST_CASE("int8: encode is round-to-nearest-even, clamped to [-127, 127]") {
  for (float y : {0.0f, 0.5f, 1.5f, 2.5f, -2.5f, 126.6f, 127.4f, 200.0f, -200.0f, -127.5f, 3.49f}) {
    CAPTURE(y);
    const double expected = std::clamp(std::nearbyint(static_cast<double>(y)), -127.0, 127.0);
    CHECK(static_cast<double>(llep::detail::Int8::decode(llep::detail::Int8::encode(y))) == expected);
  }
}

TEST_CASE_TEMPLATE("block-scaled codecs stay within their documented bound on random and extreme weights", T,
                   float, double) {
  std::mt19937 rng(3);
  for (const auto& x : weight_sets<T>(rng))
    for (std::size_t group : {std::size_t{1}, std::size_t{7}, std::size_t{128}, std::size_t{4096}}) {
      CAPTURE(x.size());
      CAPTURE(group);
      check_bound(Kind::fp8, group, x, round_trip(llep::Fp8Blocks<T>(group), x));
      check_bound(Kind::int8, group, x, round_trip(llep::Int8Rows<T>(group), x));
    }
}

TEST_CASE("block-scaled codecs: zeros decode to zeros and a group's largest weight is nearly exact") {
  const std::vector<float> zeros(260, 0.0f);
  CHECK(round_trip(llep::Fp8Blocks<float>(), zeros) == zeros);
  CHECK(round_trip(llep::Int8Rows<float>(64), zeros) == zeros);
  const std::vector<float> x = {0.1f, -3.0f, 0.5f, 2.0f};
  const auto y8 = round_trip(llep::Fp8Blocks<float>(4), x);
  const auto yi = round_trip(llep::Int8Rows<float>(4), x);
  CHECK(y8[1] == doctest::Approx(-3.0).epsilon(1e-6));
  CHECK(yi[1] == doctest::Approx(-3.0).epsilon(1e-6));
}

TEST_CASE("block-scaled codecs refuse NaN and Inf, naming the weight") {
  std::vector<float> x(10, 1.0f);
  x[6] = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::byte> enc(llep::Fp8Blocks<float>().encoded_bytes(x.size()));
  CHECK_THROWS_WITH_AS(llep::Fp8Blocks<float>().encode(x, enc),
                       "llep: fp8-e4m3-blocks: weight 6 = nan is not finite (as a float); a lossy codec refuses NaN "
                       "and Inf",
                       llep::Error);
  x[6] = -std::numeric_limits<float>::infinity();
  std::vector<std::byte> enc8(llep::Int8Rows<float>(5).encoded_bytes(x.size()));
  CHECK_THROWS_WITH_AS(llep::Int8Rows<float>(5).encode(x, enc8), doctest::Contains("weight 6 = -inf is not finite"),
                       llep::Error);
  // A double beyond float's range is infinite as a float: refused too.
  const std::vector<double> big = {1.0, 1e300};
  std::vector<std::byte> encd(llep::Fp8Blocks<double>().encoded_bytes(2));
  CHECK_THROWS_WITH_AS(llep::Fp8Blocks<double>().encode(big, encd), doctest::Contains("weight 1 = 1e+300 is not finite"),
                       llep::Error);
}

TEST_CASE("encoded sizes are known from the element count; buffers of another size are refused") {
  const llep::Fp8Blocks<float> fp8;  // groups of 128
  CHECK(fp8.group() == 128);
  CHECK(fp8.encoded_bytes(0) == 0);
  CHECK(fp8.encoded_bytes(1) == 4 + 1);
  CHECK(fp8.encoded_bytes(128) == 4 + 128);
  CHECK(fp8.encoded_bytes(129) == 8 + 129);
  CHECK(llep::Int8Rows<double>(10).encoded_bytes(95) == 40 + 95);
  CHECK(llep::Identity<double>().encoded_bytes(95) == 95 * 8);
  // FP8 with 128-blocks moves about a quarter of float's bytes (half of bf16's).
  CHECK(static_cast<double>(fp8.encoded_bytes(1 << 20)) / static_cast<double>((1 << 20) * sizeof(float)) < 0.26);

  const std::vector<float> x(10, 1.0f);
  std::vector<std::byte> wrong(20);
  CHECK_THROWS_WITH_AS(fp8.encode(x, wrong), "llep: fp8-e4m3-blocks: 10 elements need 14 encoded bytes, the buffer has 20",
                       llep::Error);
  std::vector<float> out(9);
  std::vector<std::byte> enc(14);
  CHECK_THROWS_WITH_AS(fp8.decode(enc, out), "llep: fp8-e4m3-blocks: 9 elements need 13 encoded bytes, the buffer has 14",
                       llep::Error);
  CHECK_THROWS_WITH_AS(llep::Identity<float>().encode(x, wrong),
                       "llep: identity: 10 elements need 40 encoded bytes, the buffer has 20", llep::Error);
  CHECK_THROWS_WITH_AS(llep::Int8Rows<float>(0), "llep: int8-rows: a group of 0 elements; it must be > 0", llep::Error);
}

TEST_CASE("Int8Rows::for_expert: groups never straddle two rows of the expert's matrices") {
  for (const auto& shape : {llep::ExpertShape{6, 4, false}, llep::ExpertShape{64, 96, true}, llep::ExpertShape{7, 3, true}}) {
    CAPTURE(shape.hidden);
    const auto codec = llep::Int8Rows<float>::for_expert(shape);
    const std::size_t g = codec.group(), D = shape.d(), H = shape.h();
    CHECK(g == std::gcd(2 * H, D));
    // Every row of W_gu (D rows of 2H), of W_down (H rows of D) and each bias starts a group,
    // and no row is shorter than a group.
    for (std::size_t r = 0; r < D; ++r) CHECK((shape.gate_up_offset() + r * 2 * H) % g == 0);
    for (std::size_t r = 0; r < H; ++r) CHECK((shape.down_offset() + r * D) % g == 0);
    CHECK(g <= std::min(2 * H, D));
    CHECK(shape.gate_up_bias_offset() % g == 0);
    CHECK(shape.down_bias_offset() % g == 0);
  }
}

TEST_CASE_TEMPLATE("Identity is exact to the bit, NaN payloads and denormals included", T, float, double) {
  std::mt19937_64 rng(9);
  std::vector<T> x(777);
  for (T& v : x) {
    const std::uint64_t bits = rng();
    std::memcpy(&v, &bits, sizeof v);  // every bit pattern: NaNs, infinities, denormals
  }
  const auto y = round_trip(llep::Identity<T>(), x);
  CHECK(std::memcmp(x.data(), y.data(), x.size() * sizeof(T)) == 0);
  CHECK(llep::Identity<T>::exact);
  CHECK(!llep::Fp8Blocks<T>::exact);
}
