// The host MoE layer with a replicated placement: P rank threads against the dense
// single-process reference (tests/common/dense_moe.hpp). Each rank's weights are every
// expert it holds, natives and replicas, in ascending id; tokens computed on a replica
// holder need no weight transfer.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <random>
#include <stdexcept>
#include <vector>

#include "../common/dense_moe.hpp"
#include "../common/layer_helpers.hpp"
#include "llep/layer/host_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/replicated.hpp"
#include "llep/sim/routing.hpp"

namespace {

using llep::count_t;

using layertest::held_weights;
using layertest::RankInput;
using layertest::relative_error;

std::vector<RankInput> make_inputs(int P, int N, int K, int D, llep::sim::Skew skew, std::uint64_t seed) {
  return layertest::make_inputs(P, N, K, D, skew, seed, layertest::TokenRange{8, 31});
}

template <class Plnr>
struct Run {
  std::vector<std::vector<float>> out;
  std::vector<llep::StepReport> reports;
  std::vector<llep::Plan> plans;
};

// One forward step on P threads; with `next`, a second step after set_placement(next).
template <class Plnr>
Run<Plnr> run_layer(const dense::Moe& moe, const llep::Topology& topo, int K, const std::vector<RankInput>& in,
                    Plnr planner, const llep::Topology* next = nullptr) {
  const int P = topo.ranks();
  llep::HostGroup group(P, llep::HostGroupOptions{std::chrono::milliseconds(20'000)});
  Run<Plnr> res;
  res.out.resize(static_cast<std::size_t>(P));
  res.reports.resize(static_cast<std::size_t>(P));
  res.plans.resize(static_cast<std::size_t>(P));
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    auto weights = held_weights(moe, topo, t.rank());
    llep::HostMoeLayer<Plnr> layer(topo, K, planner,
                                   llep::HostSwiGlu<float>(llep::ExpertShape{moe.hidden, moe.intermediate, false}), t);
    layer.set_native_weights(weights);
    std::vector<float> out(in[p].x.size());
    auto step = [&] {
      std::fill(out.begin(), out.end(), -7.0f);
      res.reports[p] = layer.forward(std::span<const float>(in[p].x), std::span<const std::int32_t>(in[p].ids),
                                     std::span<const float>(in[p].gates), std::span<float>(out));
    };
    step();
    if (next != nullptr) {
      weights = held_weights(moe, *next, t.rank());  // what the moves of placement_moves deliver
      layer.set_placement(*next, weights);
      step();
    }
    res.plans[p] = layer.plan();
    res.out[p] = out;
  });
  return res;
}

std::vector<double> history_of(const std::vector<RankInput>& in, int N) {
  std::vector<double> h(static_cast<std::size_t>(N), 0.0);
  for (const auto& r : in)
    for (const auto id : r.ids) h[static_cast<std::size_t>(id)] += 1;
  return h;
}

}  // namespace

TEST_CASE("MoeLayer with a replicated placement equals the dense MoE, and replica holders need no weights") {
  const int K = 2, D = 12, H = 8;
  for (const int P : {2, 4}) {
    for (const int slots_extra : {1, 2}) {
      const int N = 2 * P;
      const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 17 + static_cast<std::uint64_t>(P));
      const auto in = make_inputs(P, N, K, D, llep::sim::Skew{1, 0.9}, 40 + static_cast<std::uint64_t>(P));
      const auto topo = llep::Replicated::place(history_of(in, N), P, 2 + slots_extra);
      INFO("P = ", P, ", N = ", N, ", slots = ", 2 + slots_extra);
      REQUIRE(topo.has_replicas());

      const auto got = run_layer(moe, topo, K, in, llep::Replicated{});
      CHECK(relative_error(moe, in, got.out, K) <= 1e-4);
      for (int p = 0; p < P; ++p) {
        const auto& rep = got.reports[static_cast<std::size_t>(p)];
        CHECK(rep.policy == "replicated");
        CHECK(rep.weight_transfers == 0);
        CHECK(rep.weight_bytes_sent == 0);
        CHECK(rep.weight_bytes_received == 0);
        for (const count_t f : rep.foreign_rows) CHECK(f == 0);
      }
      // The hot expert really is split over its holders, replicas included.
      const auto& plan = got.plans[0];
      CHECK(plan.segments(0).size() > 1);
      for (const auto& s : plan.segments()) CHECK(topo.holds(s.expert, s.rank));
      CHECK(got.reports[0].imbalance_after < got.reports[0].imbalance_before);

      // LeastLoaded on the same placement: its transfers only go to ranks without the
      // expert, and the layer stays exact (replica slots feed its resident tasks too).
      const auto ll = run_layer(moe, topo, K, in, llep::LeastLoaded{1.0, 0});
      CHECK(relative_error(moe, in, ll.out, K) <= 1e-4);
      std::size_t off_holder = 0;
      for (int e = 0; e < N; ++e) {
        std::vector<int> ranks;
        for (const auto& s : ll.plans[0].segments(e))
          if (!topo.holds(e, s.rank)) ranks.push_back(s.rank);
        std::sort(ranks.begin(), ranks.end());
        off_holder += static_cast<std::size_t>(std::unique(ranks.begin(), ranks.end()) - ranks.begin());
      }
      CHECK(ll.reports[0].weight_transfers == off_holder);
    }
  }
}

TEST_CASE("MoeLayer re-placement: set_placement with the new weights keeps the layer exact") {
  const int P = 4, N = 8, K = 2, D = 12, H = 8;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 99);
  const auto in = make_inputs(P, N, K, D, llep::sim::Skew{1, 0.8}, 7);
  // Placed for a history where expert 5 was hot; the batch is hot on expert 0.
  std::vector<double> stale(static_cast<std::size_t>(N), 1.0);
  stale[5] = 100;
  const auto old_topo = llep::Replicated::place(stale, P, 3);
  const auto new_topo = llep::Replicated::place(history_of(in, N), llep::Topology(P, N), 3);
  REQUIRE_FALSE(llep::placement_moves(old_topo, new_topo).empty());
  const auto got = run_layer(moe, old_topo, K, in, llep::Replicated{}, &new_topo);
  CHECK(relative_error(moe, in, got.out, K) <= 1e-4);
  CHECK(got.plans[0].segments(0).size() > 1);
  CHECK(got.reports[0].weight_transfers == 0);
  // A placement of another shape is refused.
  llep::HostGroup group(1);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    llep::HostMoeLayer<llep::Replicated> layer(llep::Topology(1, 2), K, llep::Replicated{},
                                               llep::HostSwiGlu<float>(llep::ExpertShape{D, H, false}), t);
    CHECK_THROWS_WITH_AS(layer.set_placement(llep::Topology(1, 4), std::span<const float>{}), doctest::Contains("N = 4"),
                         llep::Error);
  });
}

TEST_CASE("MoeLayer with a full re-placement: P not dividing N, uneven natives, LeastLoaded too") {
  const int P = 4, N = 10, K = 2, D = 12, H = 8;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 23);
  const auto in = make_inputs(P, N, K, D, llep::sim::Skew{1, 0.9}, 5);
  // 4 slots per rank: 16 copies of 10 experts, natives uneven (from_held's lowest holder).
  const auto topo = llep::Replicated::place_full(history_of(in, N), P, 4, 2);
  REQUIRE(topo.slots_per_rank() == 4);
  std::vector<int> natives(static_cast<std::size_t>(P), 0);
  for (int e = 0; e < N; ++e) ++natives[static_cast<std::size_t>(topo.native_rank(e))];
  INFO("natives per rank ", natives[0], " ", natives[1], " ", natives[2], " ", natives[3]);
  const auto got = run_layer(moe, topo, K, in, llep::Replicated{});
  CHECK(relative_error(moe, in, got.out, K) <= 1e-4);
  for (const auto& rep : got.reports) CHECK(rep.weight_transfers == 0);
  const auto ll = run_layer(moe, topo, K, in, llep::LeastLoaded{1.0, 0});
  CHECK(relative_error(moe, in, ll.out, K) <= 1e-4);
  // A re-placement for a drifted history, switched to between two steps.
  std::vector<double> drift = history_of(in, N);
  std::reverse(drift.begin(), drift.end());
  const auto next = llep::Replicated::place_full(drift, topo, 4);
  REQUIRE_FALSE(llep::placement_moves(topo, next).empty());
  const auto two = run_layer(moe, topo, K, in, llep::Replicated{}, &next);
  CHECK(relative_error(moe, in, two.out, K) <= 1e-4);
}
