// After reserve(limits), neither a lossy codec's step nor prepare + forward allocates:
// global operator new is replaced to count the allocations each rank thread makes.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "../common/dense_moe.hpp"
#include "llep/codec/block_scaled.hpp"
#include "llep/layer/host_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/sim/routing.hpp"

#include "../common/count_new.hpp"

namespace {

// Eight routings whose hot expert moves, each step plain or prepared. Only the first
// (balanced) step warms up (it sizes the count tables); the seven after it, with routings
// never seen and more spills, are counted. Returns the allocations per rank.
template <class Codec>
std::vector<long> count_allocations(Codec codec, bool prepare) {
  const int P = 4, N = 16, K = 4, D = 16, H = 8, B = 64;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 3);
  llep::HostGroup group(P);
  std::vector<long> during(P, -1);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    g_counting = false;
    const auto weights = moe.packed_rank<float>(p, P);
    using Layer = llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::HostThreads, llep::HostSwiGlu<float>,
                                 llep::HostExec, Codec>;
    Layer layer(llep::Topology(P, N), K, llep::LeastLoaded{1.0, 4}, llep::HostSwiGlu<float>({D, H, false}), t);
    layer.set_native_weights(weights);
    layer.set_codec(codec);
    const auto limits = layer.limits(B);
    layer.reserve(limits);
    std::vector<std::byte> memory(Layer::prepare_bytes(limits));
    std::vector<float> x(B * D, 0.5f), out(B * D);
    std::vector<std::vector<std::int32_t>> ids(8, std::vector<std::int32_t>(B * K));
    std::vector<std::vector<float>> gates(8, std::vector<float>(B * K));
    for (int s = 0; s < 8; ++s) {
      const auto us = static_cast<std::size_t>(s);
      llep::sim::random_routing(100 + static_cast<std::uint64_t>(s * P + p), N, K,
                                s == 0 ? llep::sim::Skew{} : llep::sim::Skew{1, s % 2 ? 0.95 : 0.6}, std::span<std::int32_t>(ids[us]),
                                std::span<float>(gates[us]));
      for (auto& id : ids[us]) id = (id + (s * 5 + p) % N) % N;
    }
    auto step = [&](int s) {
      const auto us = static_cast<std::size_t>(s);
      if (prepare) layer.prepare(std::span<const std::int32_t>(ids[us]), memory);
      const auto& r = layer.forward(std::span<const float>(x), std::span<const std::int32_t>(ids[us]),
                                    std::span<const float>(gates[us]), std::span<float>(out));
      CHECK(r.prepared == prepare);
    };
    step(0);
    t.barrier();
    const long before = g_news.load();
    t.barrier();
    g_counting = true;
    for (int s = 1; s < 8; ++s) step(s);
    g_counting = false;
    t.barrier();
    during[static_cast<std::size_t>(p)] = g_news.load() - before;
  });
  return during;
}

}  // namespace

TEST_CASE("after reserve, a lossy codec's steps allocate nothing") {
  for (const long n : count_allocations(llep::Int8Rows<float>(16), false)) CHECK(n == 0);
  for (const long n : count_allocations(llep::Fp8Blocks<float>(32), false)) CHECK(n == 0);
}

TEST_CASE("after reserve, prepare + forward allocate nothing (exact and lossy codecs)") {
  for (const long n : count_allocations(llep::Identity<float>{}, true)) CHECK(n == 0);
  for (const long n : count_allocations(llep::Int8Rows<float>(16), true)) CHECK(n == 0);
}
