// After reserve(limits), neither a lossy codec's step nor prepare + forward allocates:
// global operator new is replaced to count the allocations each rank thread makes.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "../common/dense_moe.hpp"
#include "../common/layer_helpers.hpp"
#include "llep/codec/block_scaled.hpp"
#include "llep/layer/host_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/sim/routing.hpp"

#include "../common/count_new.hpp"

namespace {

// Eight steps, each plain or prepared. Only the first (balanced) warms up (it sizes the
// count tables); the seven after it, skewed toward a hot expert that moves, with routings
// never seen and more spills, are counted. Returns the allocations per rank.
template <class Codec>
std::vector<long> count_allocations(Codec codec, bool prepare) {
  constexpr int P = 4, N = 16, K = 4, D = 16, H = 8, B = 64, S = 8;
  // Every step's inputs, drawn before any rank counts (drawing allocates).
  std::vector<std::vector<layertest::RankInput>> steps;
  for (int s = 0; s < S; ++s) {
    const auto skew = s == 0 ? llep::sim::Skew{} : llep::sim::Skew{1, s % 2 ? 0.95 : 0.6};
    steps.push_back(layertest::make_inputs(P, N, K, D, skew, 100 + static_cast<std::uint64_t>(s), {B, B}));
    for (auto& r : steps.back())
      for (auto& id : r.ids) id = (id + 5 * s) % N;
  }
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 3);
  const llep::Topology topo(P, N);
  std::vector<long> during(P, -1);
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    g_counting = false;
    const auto p = static_cast<std::size_t>(t.rank());
    const auto weights = layertest::held_weights(moe, topo, t.rank());
    using Layer = llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::HostThreads, llep::HostSwiGlu<float>,
                                 llep::HostExec, Codec>;
    Layer layer(topo, K, llep::LeastLoaded{1.0, 4}, llep::HostSwiGlu<float>({D, H, false}), t);
    layer.set_native_weights(weights);
    layer.set_codec(codec);
    const auto limits = layer.limits(B);
    layer.reserve(limits);
    std::vector<std::byte> memory(Layer::prepare_bytes(limits));
    std::vector<float> out(static_cast<std::size_t>(B * D));
    auto step = [&](int s) {
      const auto& in = steps[static_cast<std::size_t>(s)][p];
      if (prepare) layer.prepare(std::span<const std::int32_t>(in.ids), memory);
      const auto& r = layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids),
                                    std::span<const float>(in.gates), std::span<float>(out));
      CHECK(r.prepared == prepare);
    };
    step(0);
    t.barrier();
    const long before = g_news.load();
    t.barrier();
    g_counting = true;
    for (int s = 1; s < S; ++s) step(s);
    g_counting = false;
    t.barrier();
    during[p] = g_news.load() - before;
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
