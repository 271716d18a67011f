// Hand-worked plans (derivations in the comments follow the rules step by step), the
// Adaptive switch, bad configurations, and re-planning into a warm Plan.
#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include "../common/errors.hpp"
#include "../common/loads.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

using llep::count_t;
using llep::Segment;
using llep::WeightTransfer;

std::vector<Segment> segments_of(const llep::Plan& p) { return {p.segments().begin(), p.segments().end()}; }
std::vector<WeightTransfer> transfers_of(const llep::Plan& p) {
  return {p.weight_transfers().begin(), p.weight_transfers().end()};
}
std::vector<count_t> rank_loads_of(const llep::Plan& p) { return {p.rank_loads().begin(), p.rank_loads().end()}; }

using testloads::plan_of;

using testutil::error_of;

}  // namespace

TEST_CASE("LeastLoaded, hand-worked: one spill into the other rank") {
  // P = 2, N = 4 (e0, e1 on r0; e2, e3 on r1), loads {6, 1, 1, 0}, alpha = 1, m = 0.
  // total 8, cap = ceil(8 / 2) = 4; pending = [7, 1]; order e0 (6), e1 (1), e2 (1); e3 skipped.
  // e0: pending[0] = 1; a = 4 - 0 - 1 = 3 < 6 -> r0 [0,3), assigned[0] = 3; r = 3 from t = 3:
  //     r1 eff = 0 + 1 = 1, c = min(3, 4 - 1) = 3 -> r1 [3,6), assigned[1] = 3.
  // e1: pending[0] = 0; a = 4 - 3 - 0 = 1 >= 1 -> r0 [0,1).
  // e2: pending[1] = 0; a = 4 - 3 - 0 = 1 >= 1 -> r1 [0,1).
  const llep::Topology topo(2, 4);
  const auto p = plan_of(llep::LeastLoaded{1.0, 0}, {6, 1, 1, 0}, topo);
  CHECK(p.capacity() == 4);
  CHECK(segments_of(p) == std::vector<Segment>{{0, 0, 0, 3}, {0, 1, 3, 6}, {1, 0, 0, 1}, {2, 1, 0, 1}});
  CHECK(transfers_of(p) == std::vector<WeightTransfer>{{0, 0, 1}});
  CHECK(rank_loads_of(p) == std::vector<count_t>{4, 4});
}

TEST_CASE("LeastLoaded, hand-worked: min_tokens_per_gemm forces a slice, then a whole expert moves") {
  // P = 4, N = 4 (e_i on r_i), loads {10, 2, 2, 2}, alpha = 1, m = 4.
  // total 16, cap = 4; pending = [10, 2, 2, 2]; order e0, e1, e2, e3.
  // e0: pending[0] = 0; a = 4 < 10 -> r0 [0,4); r = 6 from t = 4: others r1, r2, r3 all at
  //     eff 2, c = min(6, 2) = 2 < m with r > c: none qualifies -> all 6 to r1: [4,10).
  // e1: pending[1] = 0; a = 4 - 6 - 0 = -2 -> all 2 spill from t = 0: order r2 (2), r3 (2),
  //     r0 (4); r2: c = min(2, 2) = 2, c < m but r == c -> qualifies: r2 [0,2).
  // e2: pending[2] = 0; a = 4 - 2 - 0 = 2 >= 2 -> r2 [0,2).
  // e3: a = 4 - 0 - 0 = 4 >= 2 -> r3 [0,2).
  const llep::Topology topo(4, 4);
  const auto p = plan_of(llep::LeastLoaded{1.0, 4}, {10, 2, 2, 2}, topo);
  CHECK(p.capacity() == 4);
  CHECK(segments_of(p) ==
        std::vector<Segment>{{0, 0, 0, 4}, {0, 1, 4, 10}, {1, 2, 0, 2}, {2, 2, 0, 2}, {3, 3, 0, 2}});
  CHECK(transfers_of(p) == std::vector<WeightTransfer>{{0, 0, 1}, {1, 1, 2}});
  CHECK(rank_loads_of(p) == std::vector<count_t>{4, 6, 4, 2});

  // Same loads, m = 0: e0 keeps [0,4); r = 6: r1 (eff 2) takes 2 -> [4,6); order is now
  // r2 (2), r3 (2), r1 (4): r2 takes [6,8); then r3 (2) takes [8,10). Each of e1, e2, e3
  // then has a = 4 - 2 = 2 >= 2 and stays native. Every rank ends at 4 = cap.
  const auto q = plan_of(llep::LeastLoaded{1.0, 0}, {10, 2, 2, 2}, topo);
  CHECK(segments_of(q) == std::vector<Segment>{{0, 0, 0, 4},
                                               {0, 1, 4, 6},
                                               {0, 2, 6, 8},
                                               {0, 3, 8, 10},
                                               {1, 1, 0, 2},
                                               {2, 2, 0, 2},
                                               {3, 3, 0, 2}});
  CHECK(transfers_of(q) == std::vector<WeightTransfer>{{0, 0, 1}, {0, 0, 2}, {0, 0, 3}});
  CHECK(rank_loads_of(q) == std::vector<count_t>{4, 4, 4, 4});
}

TEST_CASE("LeastLoaded, hand-worked: alpha < 1 on tied loads can end worse than EP") {
  // P = 2, N = 2, loads {3, 3}, alpha = 0.5, m = 0: cap = ceil(0.5 * 6 / 2) = ceil(1.5) = 2.
  // pending = [3, 3]; tie -> e0 first.
  // e0: pending[0] = 0; a = 2 < 3 -> r0 [0,2); r = 1: r1 eff 3, c = min(1, 2 - 3) < 0 ->
  //     forced: r1 [2,3), assigned[1] = 1.
  // e1: pending[1] = 0; a = 2 - 1 - 0 = 1 < 3 -> r1 [0,1); r = 2: r0 eff 2, c = 0 -> forced:
  //     r0 [1,3).
  // Rank loads [4, 2], while EP gives [3, 3].
  const llep::Topology topo(2, 2);
  const auto p = plan_of(llep::LeastLoaded{0.5, 0}, {3, 3}, topo);
  CHECK(p.capacity() == 2);
  CHECK(segments_of(p) == std::vector<Segment>{{0, 0, 0, 2}, {0, 1, 2, 3}, {1, 1, 0, 1}, {1, 0, 1, 3}});
  CHECK(transfers_of(p) == std::vector<WeightTransfer>{{0, 0, 1}, {1, 1, 0}});
  CHECK(rank_loads_of(p) == std::vector<count_t>{4, 2});
  // alpha = 1: cap = 3, both experts fit natively.
  const auto q = plan_of(llep::LeastLoaded{1.0, 0}, {3, 3}, topo);
  CHECK(segments_of(q) == std::vector<Segment>{{0, 0, 0, 3}, {1, 1, 0, 3}});
  CHECK(q.weight_transfers().empty());
}

TEST_CASE("LeastLoaded, hand-worked: P = 1, zero total, huge alpha") {
  // P = 1: cap = max(1, ceil(0.1 * 12)) = 2, yet everything stays native.
  const auto p = plan_of(llep::LeastLoaded{0.1, 0}, {5, 0, 7}, llep::Topology(1, 3));
  CHECK(p.capacity() == 2);
  CHECK(segments_of(p) == std::vector<Segment>{{0, 0, 0, 5}, {2, 0, 0, 7}});
  // Nothing routed: cap = max(1, 0) = 1 and no segment at all.
  const auto z = plan_of(llep::LeastLoaded{}, {0, 0, 0, 0}, llep::Topology(2, 4));
  CHECK(z.capacity() == 1);
  CHECK(z.segments().empty());
  CHECK(rank_loads_of(z) == std::vector<count_t>{0, 0});
  // alpha = 10 on {9, 1}: cap = ceil(10 * 10 / 2) = 50 >= every rank's load: EP's plan.
  const auto h = plan_of(llep::LeastLoaded{10.0, 0}, {9, 1}, llep::Topology(2, 2));
  CHECK(h.capacity() == 50);
  CHECK(segments_of(h) == std::vector<Segment>{{0, 0, 0, 9}, {1, 1, 0, 1}});
}

TEST_CASE("StandardEp, hand-worked") {
  // Every expert on its native rank; capacity = the busiest rank's load (7 on r1).
  const auto p = plan_of(llep::StandardEp{}, {5, 0, 3, 4}, llep::Topology(2, 4));
  CHECK(p.policy() == "ep");
  CHECK(p.capacity() == 7);
  CHECK(segments_of(p) == std::vector<Segment>{{0, 0, 0, 5}, {2, 1, 0, 3}, {3, 1, 0, 4}});
  CHECK(p.weight_transfers().empty());
  CHECK(rank_loads_of(p) == std::vector<count_t>{5, 7});
}

TEST_CASE("Adaptive switches at lambda: below -> EP, at or above -> inner") {
  // P = 2, N = 2, loads {3, 1}: native rank loads [3, 1], max / mean = 3 / 2 = 1.5 exactly.
  const llep::Topology topo(2, 2);
  const std::vector<count_t> loads{3, 1};
  const llep::LeastLoaded inner{1.0, 0};
  CHECK(plan_of(llep::Adaptive<>{1.5, inner}, loads, topo).policy() == "llep");   // at lambda
  CHECK(plan_of(llep::Adaptive<>{1.49, inner}, loads, topo).policy() == "llep");  // above
  const auto below = plan_of(llep::Adaptive<>{1.51, inner}, loads, topo);
  CHECK(below.policy() == "ep");
  CHECK(segments_of(below) == segments_of(plan_of(llep::StandardEp{}, loads, topo)));
  // Inner's plan, exactly: cap = 2; e0 keeps [0,2) and spills [2,3) to r1 (eff 1, c = 1).
  const auto at = plan_of(llep::Adaptive<>{1.5, inner}, loads, topo);
  CHECK(segments_of(at) == segments_of(plan_of(inner, loads, topo)));
  CHECK(segments_of(at) == std::vector<Segment>{{0, 0, 0, 2}, {0, 1, 2, 3}, {1, 1, 0, 1}});

  // Default lambda 1.3, P = N = 10, total 100: a peak of 13 gives 13 * 10 / 100 = 1.3 (at
  // lambda: LLEP), a peak of 12 gives 1.2 (EP).
  const llep::Topology ten(10, 10);
  CHECK(llep::Adaptive<>{}.lambda == 1.3);
  CHECK(plan_of(llep::Adaptive<>{}, {13, 10, 10, 10, 10, 10, 10, 9, 9, 9}, ten).policy() == "llep");
  CHECK(plan_of(llep::Adaptive<>{}, {12, 10, 10, 10, 10, 10, 10, 10, 9, 9}, ten).policy() == "ep");
  // Nothing routed: imbalance is 1, below any lambda > 1.
  CHECK(plan_of(llep::Adaptive<>{}, std::vector<count_t>(10, 0), ten).policy() == "ep");
}

TEST_CASE("bad configurations and inputs throw llep::Error naming the value and the rule") {
  const llep::Topology topo(2, 4);
  const std::vector<count_t> loads{1, 2, 3, 4};
  llep::Plan p;
  const struct {
    std::string message;
    const char* says;
  } cases[] = {
      {error_of([&] { llep::LeastLoaded{0.0, 0}.plan(loads, topo, p); }), "llep: alpha = 0 must be a finite number > 0"},
      {error_of([&] { llep::LeastLoaded{-1.5, 0}.plan(loads, topo, p); }), "llep: alpha = -1.5 must be"},
      {error_of([&] { llep::LeastLoaded{std::nan(""), 0}.plan(loads, topo, p); }), "llep: alpha = nan must be"},
      {error_of([&] { llep::LeastLoaded{1.0, -1}.plan(loads, topo, p); }),
       "llep: min_tokens_per_gemm = -1 must be >= 0"},
      {error_of([&] { llep::LeastLoaded{}.plan(std::vector<count_t>{1, -2, 3, 4}, topo, p); }),
       "llep: load -2 of expert 1 is negative"},
      {error_of([&] { llep::StandardEp{}.plan(std::vector<count_t>{1, 2, 3, -4}, topo, p); }),
       "llep: load -4 of expert 3 is negative"},
      {error_of([&] { llep::LeastLoaded{}.plan(std::vector<count_t>{1, 2, 3}, topo, p); }),
       "llep: loads has 3 entries but the topology has N = 4 experts"},
      {error_of([&] { llep::Adaptive<>{0.0}.plan(loads, topo, p); }), "llep: lambda = 0 must be a finite number > 0"},
      {error_of([&] { llep::Adaptive<>{std::nan("")}.plan(loads, topo, p); }), "llep: lambda = nan must be"},
      // Balanced loads would pick EP, but a bad inner config is reported anyway.
      {error_of([&] { llep::Adaptive<>{1.3, {0.0, 0}}.plan(std::vector<count_t>{1, 1, 1, 1}, topo, p); }),
       "llep: alpha = 0 must be"},
      {error_of([] { llep::Topology(3, 8); }), "llep: experts N = 8 must be a multiple of ranks P = 3"},
      {error_of([] { llep::Topology(0, 8); }), "llep: ranks P = 0 must be > 0"},
      {error_of([] { llep::Topology(2, 0); }), "llep: experts N = 0 must be > 0"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.says);
    CHECK_MESSAGE(c.message.find(c.says) == 0, c.message);
  }
}

TEST_CASE("re-planning into a warm Plan gives the same plans as a fresh one") {
  std::mt19937_64 rng(5);
  llep::Plan warm;
  const llep::Topology topos[] = {llep::Topology(8, 64), llep::Topology(64, 384), llep::Topology(2, 4),
                                  llep::Topology(1, 3)};
  for (int i = 0; i < 600; ++i) {
    const llep::Topology& topo = topos[i % 4];
    std::vector<count_t> loads(static_cast<std::size_t>(topo.experts()));
    const int hot = static_cast<int>(rng() % loads.size());
    for (auto& x : loads) x = static_cast<count_t>(rng() % 50);
    loads[static_cast<std::size_t>(hot)] += static_cast<count_t>(rng() % 5000);
    auto same = [&](const auto& planner) {
      llep::Plan fresh;
      planner.plan(loads, topo, fresh);
      planner.plan(loads, topo, warm);
      CHECK(warm.policy() == fresh.policy());
      CHECK(warm.capacity() == fresh.capacity());
      CHECK(segments_of(warm) == segments_of(fresh));
      CHECK(transfers_of(warm) == transfers_of(fresh));
      CHECK(rank_loads_of(warm) == rank_loads_of(fresh));
      for (int e = 0; e < topo.experts(); ++e) CHECK(warm.segments(e).size() == fresh.segments(e).size());
    };
    switch (i % 3) {
      case 0: same(llep::LeastLoaded{1.0, static_cast<count_t>(rng() % 64)}); break;
      case 1: same(llep::StandardEp{}); break;
      default: same(llep::Adaptive<>{}); break;
    }
  }
}
