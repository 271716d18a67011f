// validate() against plans broken by hand, one invariant at a time. Plan::assign takes a
// plan as given, so each case differs from a valid plan in exactly one place.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "../common/errors.hpp"
#include "llep/core/plan.hpp"

namespace {

using llep::count_t;
using llep::Segment;
using llep::WeightTransfer;

// P = 2, N = 4, native: e0, e1 -> rank 0; e2, e3 -> rank 1.
// Valid plan: e0 = r0 [0,3) + r1 [3,5); e2 = r1 [0,3); e3 = r1 [0,2); e1 has no load.
// Rank loads: r0 = 3, r1 = 2 + 3 + 2 = 7. The one off-native segment implies (0, 0 -> 1).
const std::vector<count_t> kLoads{5, 0, 3, 2};

struct Parts {
  std::vector<Segment> segs{{0, 0, 0, 3}, {0, 1, 3, 5}, {2, 1, 0, 3}, {3, 1, 0, 2}};
  std::vector<WeightTransfer> transfers{{0, 0, 1}};
  std::vector<count_t> rank_loads{3, 7};
};

llep::Validation check(const Parts& p, const llep::Topology& topo = llep::Topology(2, 4)) {
  llep::Plan plan;
  plan.assign(topo, "hand", 4, p.segs, p.transfers, p.rank_loads);
  return llep::validate(plan, kLoads, topo);
}

using testutil::error_of;

}  // namespace

TEST_CASE("validate accepts the hand-made valid plan, built either way") {
  CHECK(check(Parts{}).ok);

  const llep::Topology topo(2, 4);
  llep::Plan plan;
  plan.reset(topo, "hand");
  plan.add_segment(3, 1, 0, 2);  // any order: finish() sorts and derives the transfers
  plan.add_segment(0, 1, 3, 5);
  plan.add_segment(2, 1, 0, 3);
  plan.add_segment(0, 0, 0, 3);
  plan.finish(topo);
  const auto v = llep::validate(plan, kLoads, topo);
  CHECK_MESSAGE(v.ok, v.message);
  CHECK(plan.segments().size() == 4);
  CHECK(plan.segments(0).size() == 2);
  CHECK(plan.segments(1).empty());
  REQUIRE(plan.weight_transfers().size() == 1);
  CHECK(plan.weight_transfers()[0] == WeightTransfer{0, 0, 1});
  CHECK(plan.rank_loads()[0] == 3);
  CHECK(plan.rank_loads()[1] == 7);
}

TEST_CASE("validate names each broken invariant") {
  struct Case {
    const char* name;
    void (*breaks)(Parts&);
    const char* says;
  };
  const Case cases[] = {
      {"gap", [](Parts& p) { p.segs[1].begin = 4; }, "expert 0 segments leave a gap: [3, 4)"},
      {"overlap", [](Parts& p) { p.segs[1].begin = 2; }, "expert 0 segments overlap"},
      {"wrong end", [](Parts& p) { p.segs[1].end = 4; }, "expert 0 segments end at 4 but its load is 5"},
      {"past the load", [](Parts& p) { p.segs[1].end = 6; }, "end at 6 but its load is 5"},
      {"empty segment", [](Parts& p) { p.segs.push_back({0, 1, 3, 3}); }, "segment [3, 3) on rank 1 is empty"},
      {"bad rank", [](Parts& p) { p.segs[2].rank = 2; }, "is on rank 2 outside [0, 2)"},
      {"negative rank", [](Parts& p) { p.segs[2].rank = -1; }, "is on rank -1 outside [0, 2)"},
      {"segment on a zero-load expert", [](Parts& p) { p.segs.push_back({1, 0, 0, 1}); },
       "expert 1 has zero load but 1 segments"},
      {"loaded expert without segment", [](Parts& p) { p.segs.pop_back(); }, "expert 3 has load 2 but no segment"},
      {"wrong rank load", [](Parts& p) { p.rank_loads[1] = 6; }, "rank 1 load is 6 but its segments sum to 7"},
      {"missing transfer", [](Parts& p) { p.transfers.clear(); }, "missing weight transfer (expert 0, 0 -> 1)"},
      {"extra transfer", [](Parts& p) { p.transfers.push_back({2, 1, 0}); }, "extra weight transfer (expert 2, 1 -> 0)"},
      {"transfer from the wrong source", [](Parts& p) { p.transfers[0].src = 1; },
       "missing weight transfer (expert 0, 0 -> 1)"},
      {"duplicate transfer", [](Parts& p) { p.transfers.push_back({0, 0, 1}); }, "without duplicates: entry 1"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    Parts p;
    c.breaks(p);
    const auto v = check(p);
    CHECK_FALSE(v.ok);
    CHECK_MESSAGE(v.message.find(c.says) != std::string::npos, v.message);
  }
}

TEST_CASE("validate: unsorted transfers, custom placement, shape mismatches") {
  // Two off-native segments in the wrong order.
  Parts p;
  p.segs = {{0, 0, 0, 1}, {0, 1, 1, 5}, {2, 0, 0, 3}, {3, 1, 0, 2}};
  p.rank_loads = {4, 6};
  p.transfers = {{2, 1, 0}, {0, 0, 1}};
  auto v = check(p);
  CHECK_FALSE(v.ok);
  CHECK_MESSAGE(v.message.find("not sorted") != std::string::npos, v.message);
  p.transfers = {{0, 0, 1}, {2, 1, 0}};
  CHECK(check(p).ok);

  // With e0 native on rank 1 the same segments imply other transfers.
  const llep::Topology custom(2, std::vector<int>{1, 0, 0, 1});
  v = check(p, custom);
  CHECK_FALSE(v.ok);
  CHECK_MESSAGE(v.message.find("missing weight transfer (expert 0, 1 -> 0)") != std::string::npos, v.message);

  const llep::Topology other(4, 4);
  llep::Plan plan;
  plan.assign(llep::Topology(2, 4), "hand", 4, Parts{}.segs, Parts{}.transfers, Parts{}.rank_loads);
  v = llep::validate(plan, kLoads, other);
  CHECK_FALSE(v.ok);
  CHECK(v.message.find("plan is for P=2 N=4 but the topology has P=4 N=4") != std::string::npos);
  const std::vector<count_t> short_loads{5, 0, 3};
  v = llep::validate(plan, short_loads, llep::Topology(2, 4));
  CHECK_FALSE(v.ok);
  CHECK(v.message.find("loads has 3 entries, N = 4") != std::string::npos);

  llep::Plan unfinished;
  unfinished.reset(llep::Topology(2, 4), "hand");
  v = llep::validate(unfinished, kLoads, llep::Topology(2, 4));
  CHECK_FALSE(v.ok);
  CHECK(v.message.find("not finished") != std::string::npos);
}

TEST_CASE("plans refuse ids that would index past their buffers") {
  const llep::Topology topo(2, 4);
  llep::Plan plan;
  plan.reset(topo, "hand");
  std::string m = error_of([&] { plan.add_segment(0, 2, 0, 1); });
  CHECK(m.rfind("llep: ", 0) == 0);
  CHECK(m.find("segment rank 2 of expert 0 is outside [0, 2)") != std::string::npos);
  m = error_of([&] { plan.add_segment(4, 0, 0, 1); });
  CHECK(m.find("llep: segment expert 4 is outside [0, 4)") == 0);
  m = error_of([&] { plan.add_segment(-1, 0, 0, 1); });
  CHECK(m.find("llep: segment expert -1 is outside [0, 4)") == 0);

  const std::vector<Segment> bad_expert{{7, 0, 0, 1}};
  const std::vector<count_t> two{0, 0};
  m = error_of([&] { plan.assign(topo, "hand", 1, bad_expert, {}, two); });
  CHECK(m.find("llep: segment expert 7 is outside [0, 4)") == 0);
  const std::vector<count_t> three{0, 0, 0};
  m = error_of([&] { plan.assign(topo, "hand", 1, {}, {}, three); });
  CHECK(m.find("llep: rank loads hold 3 entries; P = 2") == 0);
}

TEST_CASE("loads helpers: checks, native loads, imbalance") {
  const llep::Topology topo(2, 4);
  const std::vector<count_t> neg{1, 2, -3, 0};
  CHECK(error_of([&] { llep::check_loads(neg, topo); }) == "llep: load -3 of expert 2 is negative");
  const std::vector<count_t> three{1, 2, 3};
  CHECK(error_of([&] { llep::check_loads(three, topo); }) ==
        "llep: loads has 3 entries but the topology has N = 4 experts");

  std::vector<count_t> rl(2);
  llep::native_rank_loads(kLoads, topo, rl);
  CHECK(rl == std::vector<count_t>{5, 5});
  const std::vector<count_t> skew{6, 2};
  CHECK(llep::imbalance(skew) == doctest::Approx(1.5));  // max 6, mean 4
  const std::vector<count_t> zero{0, 0, 0};
  CHECK(llep::imbalance(zero) == 1.0);
}
