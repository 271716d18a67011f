// encode_exchange_decode over HostThreads: each helper receives exactly decode(encode(w))
// of the native weights, each expert is encoded once however many helpers it goes to,
// the ops count the codec's wire bytes, and a NaN weight fails every rank.
#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "llep/codec/block_scaled.hpp"
#include "llep/codec/exchange.hpp"
#include "llep/codec/identity.hpp"
#include "llep/transport/host_threads.hpp"

namespace {

constexpr int P = 3, N = 6, M = N / P;
constexpr std::size_t kElems = 300;

// Native weights of expert e (the same on every call).
std::vector<float> weights_of(int e) {
  std::mt19937 rng(static_cast<unsigned>(e) + 1);
  std::normal_distribution<float> normal(0.0f, 0.1f);
  std::vector<float> w(kElems);
  for (float& v : w) v = normal(rng);
  return w;
}

// Expert 0 (rank 0) goes to ranks 1 and 2; expert 3 (rank 1) and expert 5 (rank 2) to rank 0.
const std::vector<llep::WeightTransfer> kTransfers = {{0, 0, 1}, {0, 0, 2}, {3, 1, 0}, {5, 2, 0}};

struct RankOut {
  std::vector<std::vector<float>> foreign;  // [expert] decoded weights received
  std::vector<std::size_t> op_bytes;
  std::size_t sends = 0, encoded_bytes_held = 0;
  std::string error;
};

template <class Codec>
std::vector<RankOut> run(const Codec& codec, int nan_rank = -1) {
  llep::HostGroup group(P);
  std::vector<RankOut> out(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    auto& o = out[static_cast<std::size_t>(p)];
    std::vector<std::vector<float>> held(M);
    for (int i = 0; i < M; ++i) held[static_cast<std::size_t>(i)] = weights_of(p * M + i);
    if (p == nan_rank)
      for (auto& w : held) w[7] = std::numeric_limits<float>::quiet_NaN();
    o.foreign.assign(N, {});
    llep::EncodedWeights buf;
    try {
      llep::encode_exchange_decode(
          codec, t, kTransfers, p, kElems, [&](int e) { return held[static_cast<std::size_t>(e - p * M)].data(); },
          [&](int e) {
            o.foreign[static_cast<std::size_t>(e)].resize(kElems);
            return o.foreign[static_cast<std::size_t>(e)].data();
          },
          buf);
    } catch (const llep::Error& e) {
      o.error = e.what();
      return;
    }
    for (const auto& op : buf.ops) {
      o.op_bytes.push_back(op.bytes);
      o.sends += op.kind == llep::P2pOp::Kind::send ? 1 : 0;
    }
    o.encoded_bytes_held = buf.sent.size();
  });
  return out;
}

template <class Codec>
std::vector<float> host_round_trip(const Codec& codec, const std::vector<float>& w) {
  std::vector<std::byte> enc(codec.encoded_bytes(w.size()));
  codec.encode(std::span<const float>(w), enc);
  std::vector<float> back(w.size());
  codec.decode(enc, std::span<float>(back));
  return back;
}

template <class Codec>
void check_exchange(const Codec& codec) {
  const auto out = run(codec);
  const std::size_t eb = codec.encoded_bytes(kElems);
  for (int p = 0; p < P; ++p) {
    CAPTURE(p);
    const auto& o = out[static_cast<std::size_t>(p)];
    REQUIRE(o.error == "");
    for (const auto& t : kTransfers)
      if (t.dst == p) {
        const auto expected = host_round_trip(codec, weights_of(t.expert));
        REQUIRE(o.foreign[static_cast<std::size_t>(t.expert)].size() == kElems);
        CHECK(std::memcmp(o.foreign[static_cast<std::size_t>(t.expert)].data(), expected.data(),
                          kElems * sizeof(float)) == 0);
      }
    for (std::size_t b : o.op_bytes) CHECK(b == eb);
  }
  // Rank 0 sends expert 0 twice but encodes it once.
  CHECK(out[0].sends == 2);
  CHECK(out[0].encoded_bytes_held == eb);
  CHECK(out[0].op_bytes.size() == 4);  // two sends, two receives
}

}  // namespace

TEST_CASE("encode_exchange_decode: Identity delivers the native weights bit for bit") {
  check_exchange(llep::Identity<float>());
  const auto out = run(llep::Identity<float>());
  CHECK(out[1].foreign[0] == weights_of(0));
  CHECK(out[0].op_bytes[0] == kElems * sizeof(float));
}

TEST_CASE("encode_exchange_decode: lossy codecs deliver decode(encode(w)) and move their encoded size") {
  check_exchange(llep::Fp8Blocks<float>(128));
  check_exchange(llep::Int8Rows<float>(100));
  CHECK(llep::Fp8Blocks<float>(128).encoded_bytes(kElems) < kElems * sizeof(float) / 3);
}

TEST_CASE("encode_exchange_decode: a NaN weight on a sender fails every rank, none waits") {
  const auto out = run(llep::Fp8Blocks<float>(128), /*nan_rank=*/1);
  CHECK(out[1].error == "llep: fp8-e4m3-blocks: weight 7 = nan is not finite (as a float); a lossy codec refuses "
                        "NaN and Inf");
  for (int p : {0, 2}) CHECK(out[static_cast<std::size_t>(p)].error != "");
}
