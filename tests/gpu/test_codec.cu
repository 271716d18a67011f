// Weight codecs on the device: device_encode writes the very bytes of the host encode, and
// device_decode the very elements of the host decode; a non-finite weight raises the flag.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include "device_array.hpp"
#include "llep/codec/codec.cuh"

namespace {

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~Stream() { (void)cudaStreamDestroy(s); }
};

template <class T>
std::vector<T> weights(std::mt19937& rng, std::size_t n) {
  std::normal_distribution<double> normal(0.0, 0.05);
  std::uniform_real_distribution<double> expo(-40.0, 40.0);
  std::vector<T> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<T>(i % 3 ? normal(rng) : std::pow(2.0, expo(rng)));
  const float extremes[] = {0.0f, std::numeric_limits<float>::denorm_min(), -1e-40f, std::numeric_limits<float>::max(),
                            -3e38f, 447.99f};
  for (std::size_t i = 0; i < std::size(extremes) && i * 97 < n; ++i) x[i * 97] = static_cast<T>(extremes[i]);
  return x;
}

template <class Codec>
void check_same_bits(const Codec& codec, const std::vector<typename Codec::value_type>& x) {
  using T = typename Codec::value_type;
  Stream stream;
  const std::size_t bytes = codec.encoded_bytes(x.size());
  std::vector<std::byte> host_enc(bytes);
  codec.encode(std::span<const T>(x), host_enc);
  std::vector<T> host_dec(x.size());
  codec.decode(host_enc, std::span<T>(host_dec));

  gputest::DeviceArray<T> src(x);
  gputest::DeviceArray<std::byte> enc(bytes);
  gputest::DeviceArray<T> dec(x.size());
  gputest::DeviceArray<int> flag(std::vector<int>{0});
  llep::device_encode(codec, src.get(), x.size(), enc.get(), flag.get(), stream.s);
  llep::device_decode(codec, enc.get(), x.size(), dec.get(), stream.s);
  LLEP_CUDA_CHECK(cudaStreamSynchronize(stream.s));
  const auto device_enc = enc.download();
  const auto device_dec = dec.download();
  CHECK(flag.download()[0] == 0);
  CHECK(std::memcmp(device_enc.data(), host_enc.data(), bytes) == 0);
  CHECK(std::memcmp(device_dec.data(), host_dec.data(), x.size() * sizeof(T)) == 0);
}

}  // namespace

TEST_CASE_TEMPLATE("device codecs write the host's bytes bit for bit", T, float, double) {
  std::mt19937 rng(17);
  for (std::size_t n : {std::size_t{1}, std::size_t{1000}, std::size_t{1} << 18}) {
    CAPTURE(n);
    const auto x = weights<T>(rng, n);
    for (std::size_t group : {std::size_t{1}, std::size_t{100}, std::size_t{128}, std::size_t{5000}}) {
      CAPTURE(group);
      check_same_bits(llep::Fp8Blocks<T>(group), x);
      check_same_bits(llep::Int8Rows<T>(group), x);
    }
    check_same_bits(llep::Identity<T>(), x);
  }
}

TEST_CASE("device encode flags a non-finite weight and poisons only its group") {
  Stream stream;
  std::vector<float> x(512, 0.25f);
  x[300] = std::numeric_limits<float>::infinity();
  const llep::Fp8Blocks<float> codec(128);
  gputest::DeviceArray<float> src(x);
  gputest::DeviceArray<std::byte> enc(codec.encoded_bytes(x.size()));
  gputest::DeviceArray<float> dec(x.size());
  gputest::DeviceArray<int> flag(std::vector<int>{0});
  llep::device_encode(codec, src.get(), x.size(), enc.get(), flag.get(), stream.s);
  llep::device_decode(codec, enc.get(), x.size(), dec.get(), stream.s);
  LLEP_CUDA_CHECK(cudaStreamSynchronize(stream.s));
  CHECK(flag.download()[0] == 1);
  const auto y = dec.download();
  std::vector<float> finite = x, expected(x.size());
  finite[300] = 0.25f;
  std::vector<std::byte> host_enc(codec.encoded_bytes(x.size()));
  codec.encode(std::span<const float>(finite), host_enc);
  codec.decode(host_enc, std::span<float>(expected));
  for (std::size_t i = 0; i < y.size(); ++i) {
    CAPTURE(i);
    if (i / 128 == 2)
      CHECK(std::isnan(y[i]));
    else
      CHECK(y[i] == expected[i]);
  }
  CHECK_THROWS_AS(llep::device_encode(codec, src.get(), x.size(), enc.get(), nullptr, nullptr), llep::Error);
}
