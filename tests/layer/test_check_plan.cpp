// check_plan: every plan a planner hands to the layer is checked before the layout indexes
// anything by it. Each broken rule is made by damaging a good plan through Plan::assign
// (which checks expert ids only), and must be refused naming the planner, the expert and
// the rule; every good plan of the library's planners passes.
#include <doctest/doctest.h>

#include <climits>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../common/errors.hpp"
#include "llep/layer/check_plan.hpp"
#include "llep/layer/layout.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

using llep::count_t;
using Segs = std::vector<llep::Segment>;
using Transfers = std::vector<llep::WeightTransfer>;

struct Damaged {
  llep::Plan plan;
  std::vector<count_t> loads;
};

// A LeastLoaded plan for P = 4, N = 8 with expert 0 hot (so it has spills and transfers),
// retaken through Plan::assign after `damage` changed its parts.
Damaged damaged(const std::function<void(Segs&, Transfers&, std::vector<count_t>&)>& damage) {
  const llep::Topology topo(4, 8);
  std::vector<count_t> loads{400, 10, 12, 9, 30, 0, 7, 11};
  llep::Plan good;
  llep::LeastLoaded{1.0, 1}.plan(loads, topo, good);
  Segs segs(good.segments().begin(), good.segments().end());
  Transfers tr(good.weight_transfers().begin(), good.weight_transfers().end());
  std::vector<count_t> rl(good.rank_loads().begin(), good.rank_loads().end());
  REQUIRE(!tr.empty());
  damage(segs, tr, rl);
  Damaged d{llep::Plan{}, loads};
  d.plan.assign(topo, "user", good.capacity(), segs, tr, rl);
  return d;
}

std::string check(const Damaged& d) {
  llep::PlanCheckScratch scratch;
  return testutil::error_of([&] { llep::check_plan(d.plan, d.loads, llep::Topology(4, 8), "my-planner", scratch); });
}

}  // namespace

TEST_CASE("check_plan accepts every plan of the library's planners") {
  std::mt19937 rng(5);
  llep::PlanCheckScratch scratch;
  llep::Plan plan;
  for (int P : {1, 2, 4, 8})
    for (int trial = 0; trial < 50; ++trial) {
      const llep::Topology topo(P, 4 * P);
      std::vector<count_t> loads(static_cast<std::size_t>(4 * P));
      std::uniform_int_distribution<int> u(0, 100);
      for (auto& l : loads) l = u(rng) < 20 ? 0 : u(rng) * (u(rng) < 10 ? 50 : 1);
      llep::StandardEp{}.plan(loads, topo, plan);
      CHECK(testutil::error_of([&] { llep::check_plan(plan, loads, topo, "ep", scratch); }) == testutil::kNoError);
      llep::LeastLoaded{1.0, 1}.plan(loads, topo, plan);
      CHECK(testutil::error_of([&] { llep::check_plan(plan, loads, topo, "llep", scratch); }) == testutil::kNoError);
    }
}

TEST_CASE("check_plan refuses each broken rule, naming the planner, the expert and the rule") {
  CHECK(check(damaged([](Segs&, Transfers&, std::vector<count_t>&) {})) == testutil::kNoError);
  SUBCASE("a segment rank outside [0, P)") {
    const auto e = check(damaged([](Segs& s, Transfers&, std::vector<count_t>&) { s[1].rank = 7; }));
    CHECK(e.find("planner 'my-planner'") != std::string::npos);
    CHECK(e.find("on rank 7 outside [0, 4)") != std::string::npos);
  }
  SUBCASE("a negative segment rank") {
    const auto e = check(damaged([](Segs& s, Transfers&, std::vector<count_t>&) { s[0].rank = -1; }));
    CHECK(e.find("expert 0: segment [0, ") != std::string::npos);
    CHECK(e.find("on rank -1 outside [0, 4)") != std::string::npos);
  }
  SUBCASE("a gap between segments") {
    const auto e = check(damaged([](Segs& s, Transfers&, std::vector<count_t>&) { s[1].begin += 1; }));
    CHECK(e.find("expert 0: segment [") != std::string::npos);
    CHECK(e.find("must tile [0, load)") != std::string::npos);
  }
  SUBCASE("segments short of the load") {
    const auto e = check(damaged([](Segs& s, Transfers&, std::vector<count_t>&) { s.back().end -= 1; }));
    CHECK(e.find("expert 7: segments cover [0, 10) but its load is 11") != std::string::npos);
  }
  SUBCASE("a foreign segment without its weight transfer") {
    const auto e = check(damaged([](Segs&, Transfers& t, std::vector<count_t>&) { t.erase(t.begin()); }));
    CHECK(e.find("without holding the weights, and no weight transfer") != std::string::npos);
  }
  SUBCASE("a transfer from a rank that is not native") {
    const auto e = check(damaged([](Segs&, Transfers& t, std::vector<count_t>&) { t[0].src = 3; }));
    CHECK(e.find("expert 0: weight transfer from rank 3 but its native rank is 0") != std::string::npos);
  }
  SUBCASE("a transfer to a rank outside [0, P)") {
    const auto e = check(damaged([](Segs&, Transfers& t, std::vector<count_t>&) { t.back().dst = 4; }));
    CHECK(e.find("weight transfer to rank 4 outside [0, 4)") != std::string::npos);
  }
  SUBCASE("a transfer no segment needs") {
    const auto e = check(damaged([](Segs&, Transfers& t, std::vector<count_t>&) {
      t.push_back(llep::WeightTransfer{7, 3, 0});
    }));
    CHECK(e.find("expert 7: 1 weight transfer(s) but only 0 rank(s)") != std::string::npos);
  }
  SUBCASE("a duplicate transfer") {
    const auto e = check(damaged([](Segs&, Transfers& t, std::vector<count_t>&) { t.insert(t.begin(), t[0]); }));
    CHECK(e.find("not sorted by (expert, dst) without duplicates") != std::string::npos);
  }
  SUBCASE("rank loads that do not sum the segments") {
    const auto e = check(damaged([](Segs&, Transfers&, std::vector<count_t>& rl) { rl[2] += 1; }));
    CHECK(e.find("rank 2 load is") != std::string::npos);
  }
}

TEST_CASE("Layout refuses a rank that would receive 2^31 rows or more") {
  // Each rank sends fewer than 2^31 pairs and each segment fits 32 bits, but rank 0
  // computes both experts: 2^31 + 2 rows in all, past the 32-bit row indices.
  const llep::Topology topo(2, 4);
  const count_t big = (count_t{1} << 30) + 1;
  const std::vector<count_t> C{big, 0, 0, 0, 0, big, 0, 0};
  const std::vector<count_t> loads{big, big, 0, 0};
  llep::Plan plan;
  llep::StandardEp{}.plan(loads, topo, plan);
  llep::PlanCheckScratch scratch;
  llep::check_plan(plan, loads, topo, "ep", scratch);
  llep::Layout layout;
  const auto e = testutil::error_of([&] { layout.build(llep::CountsView(C, 2, 4), plan, topo, 0); });
  CHECK(e.find("rank 0 would receive 2147483650 rows") != std::string::npos);
  CHECK(testutil::error_of([&] { layout.build(llep::CountsView(C, 2, 4), plan, topo, 1); }) == testutil::kNoError);
}
