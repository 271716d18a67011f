// A warm MoeLayer step allocates nothing: global operator new is replaced to count the
// allocations each rank thread makes while a step runs.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "../common/dense_moe.hpp"
#include "llep/layer/host_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/sim/routing.hpp"

#include "../common/count_new.hpp"

TEST_CASE("a warm MoeLayer step allocates nothing, while plans change from step to step") {
  const int P = 4, N = 16, K = 4, D = 16, H = 8, B = 64;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 3);
  llep::HostGroup group(P);
  std::vector<long> during(P, -1);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    g_counting = false;  // only the timed window below counts
    const auto weights = moe.packed_rank<float>(p, P);
    llep::HostMoeLayer<llep::LeastLoaded> layer(llep::Topology(P, N), K, llep::LeastLoaded{1.0, 4},
                                                llep::HostSwiGlu<float>(llep::ExpertShape{D, H, false}), t);
    layer.set_native_weights(weights);
    std::vector<float> x(B * D, 0.5f), out(B * D), gates(B * K);
    std::vector<std::int32_t> ids(B * K);
    // Eight routings whose hot expert moves (so plans, spills and foreign experts differ
    // from step to step), drawn up front: drawing them allocates. One pass warms the
    // layer up (its buffers grow to the largest step), the second is counted.
    auto route = [&](int hot, double share, std::uint64_t seed) {
      llep::sim::random_routing(seed, N, K, llep::sim::Skew{1, share}, std::span<std::int32_t>(ids),
                                std::span<float>(gates));
      for (auto& id : ids) id = (id + hot) % N;
    };
    auto step = [&] {
      layer.forward(std::span<const float>(x), std::span<const std::int32_t>(ids), std::span<const float>(gates),
                    std::span<float>(out));
    };
    std::vector<std::vector<std::int32_t>> all_ids;
    std::vector<std::vector<float>> all_gates;
    for (int s = 0; s < 8; ++s) {
      route((s * 5 + p) % N, s % 2 ? 0.95 : 1.0, 100 + static_cast<std::uint64_t>(s * P + p));
      all_ids.push_back(ids);
      all_gates.push_back(gates);
    }
    for (int s = 0; s < 8; ++s) {
      std::copy(all_ids[s].begin(), all_ids[s].end(), ids.begin());
      std::copy(all_gates[s].begin(), all_gates[s].end(), gates.begin());
      step();
    }
    t.barrier();  // every rank thread has started: run_ranks allocates no more
    const long before = g_news.load();
    t.barrier();
    g_counting = true;
    for (int s = 7; s >= 0; --s) {  // reverse order: each step's predecessor differs from the warm-up's
      std::copy(all_ids[s].begin(), all_ids[s].end(), ids.begin());
      std::copy(all_gates[s].begin(), all_gates[s].end(), gates.begin());
      step();
    }
    g_counting = false;
    t.barrier();
    during[static_cast<std::size_t>(p)] = g_news.load() - before;
  });
  for (int p = 0; p < P; ++p) {
    INFO("rank ", p);
    CHECK(during[static_cast<std::size_t>(p)] == 0);
  }
}
