// LeastLoaded against the literal reference (reference.hpp) on thousands of random and
// adversarial load vectors, plus the properties the rules guarantee, reasoned out below.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../common/loads.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"
#include "reference.hpp"

namespace {

using llep::count_t;

struct Case {
  int P = 1;
  std::vector<int> native;  // native rank of each expert
  std::vector<count_t> loads;
  double alpha = 1.0;
  count_t m = 0;
  std::string kind;
};

llep::Topology topology_of(const Case& c) { return llep::Topology(c.P, c.native); }

using testloads::random_loads;

Case random_case(std::mt19937_64& rng) {
  const int ranks[] = {1, 2, 3, 4, 5, 8, 16, 32, 64};
  Case c;
  c.P = ranks[std::uniform_int_distribution<int>(0, 8)(rng)];
  const int max_m = std::min(6, 384 / c.P);
  const int M = std::uniform_int_distribution<int>(1, max_m)(rng);
  const int N = c.P * M;
  c.native.resize(static_cast<std::size_t>(N));
  for (int e = 0; e < N; ++e) c.native[static_cast<std::size_t>(e)] = e / M;
  if (rng() % 4 == 0) std::shuffle(c.native.begin(), c.native.end(), rng);  // custom placement
  c.loads = random_loads(rng, N, c.kind);
  const double alphas[] = {0.1, 0.5, 0.9, 1.0, 1.0, 1.05, 1.3, 2.0, 10.0};
  c.alpha = (rng() % 5 == 0) ? std::uniform_real_distribution<double>(0.05, 12.0)(rng)
                             : alphas[std::uniform_int_distribution<int>(0, 8)(rng)];
  const count_t ms[] = {0, 0, 1, 2, 7, 64, 1024, std::numeric_limits<std::int32_t>::max()};
  c.m = ms[std::uniform_int_distribution<int>(0, 7)(rng)];
  return c;
}

std::string describe(const Case& c) {
  std::string s = "P=" + std::to_string(c.P) + " N=" + std::to_string(c.loads.size()) + " alpha=" +
                  std::to_string(c.alpha) + " m=" + std::to_string(c.m) + " kind=" + c.kind + " loads=";
  for (count_t x : c.loads) s += std::to_string(x) + ",";
  return s;
}

void check_same_as_reference(const Case& c, llep::Plan& plan) {
  const auto topo = topology_of(c);
  const llep::LeastLoaded ll{c.alpha, c.m};
  ll.plan(c.loads, topo, plan);
  const ref::Plan want = ref::least_loaded(c.loads, c.native, c.P, c.alpha, c.m);
  const auto v = llep::validate(plan, c.loads, topo);
  REQUIRE_MESSAGE(v.ok, v.message);
  CHECK(plan.policy() == "llep");
  CHECK(plan.capacity() == want.capacity);
  const auto got = plan.segments();
  REQUIRE(got.size() == want.segments.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    CAPTURE(i);
    CHECK(got[i].expert == want.segments[i].expert);
    CHECK(got[i].rank == want.segments[i].rank);
    CHECK(got[i].begin == want.segments[i].begin);
    CHECK(got[i].end == want.segments[i].end);
  }
  const auto tr = plan.weight_transfers();
  CHECK(std::vector<llep::WeightTransfer>(tr.begin(), tr.end()) == want.transfers);
  const auto rl = plan.rank_loads();
  CHECK(std::vector<count_t>(rl.begin(), rl.end()) == want.rank_loads);
}

count_t max_of(std::span<const count_t> v) { return v.empty() ? 0 : *std::max_element(v.begin(), v.end()); }

}  // namespace

TEST_CASE("LeastLoaded matches the literal reference on random and adversarial loads") {
  std::mt19937_64 rng(20260117);
  llep::Plan warm;  // one Plan reused across every case, as engines do
  for (int i = 0; i < 4000; ++i) {
    const Case c = random_case(rng);
    CAPTURE(describe(c));
    check_same_as_reference(c, warm);
  }
}

TEST_CASE("LeastLoaded matches the reference on the extremes") {
  llep::Plan plan;
  for (int P : {1, 2, 64}) {
    for (int M : {1, 6}) {
      const int N = P * M;
      if (N > 384) continue;
      std::vector<int> native(static_cast<std::size_t>(N));
      for (int e = 0; e < N; ++e) native[static_cast<std::size_t>(e)] = e / M;
      std::vector<std::vector<count_t>> shapes;
      shapes.emplace_back(N, 0);                       // nothing routed
      shapes.emplace_back(N, 1);                       // one pair each
      shapes.emplace_back(N, 1000);                    // perfectly balanced
      shapes.emplace_back(N, 0).back() = 1;            // one pair in all
      shapes.emplace_back(N, 0).front() = 1000000;     // everything on the first expert
      shapes.emplace_back(N, 0).back() = 1000000;      // ... on the last expert
      std::vector<count_t> last_rank(static_cast<std::size_t>(N), 0);
      for (int e = N - M; e < N; ++e) last_rank[static_cast<std::size_t>(e)] = 777;  // one hot rank
      shapes.push_back(last_rank);
      for (const auto& loads : shapes)
        for (double alpha : {0.1, 1.0, 10.0})
          for (count_t m : {count_t{0}, count_t{1}, count_t{2000000}}) {
            Case c{P, native, loads, alpha, m, "extreme"};
            CAPTURE(describe(c));
            check_same_as_reference(c, plan);
          }
    }
  }
}

TEST_CASE("every planner's plan passes validate; StandardEp never moves weights") {
  std::mt19937_64 rng(7);
  llep::Plan plan;
  std::vector<count_t> native_loads;
  for (int i = 0; i < 1500; ++i) {
    const Case c = random_case(rng);
    CAPTURE(describe(c));
    const auto topo = topology_of(c);
    native_loads.assign(static_cast<std::size_t>(c.P), 0);
    llep::native_rank_loads(c.loads, topo, native_loads);

    llep::StandardEp{}.plan(c.loads, topo, plan);
    auto v = llep::validate(plan, c.loads, topo);
    REQUIRE_MESSAGE(v.ok, v.message);
    CHECK(plan.weight_transfers().empty());
    for (const auto& s : plan.segments()) {
      CHECK(s.rank == topo.native_rank(s.expert));
      CHECK(s.begin == 0);
    }
    CHECK(std::equal(native_loads.begin(), native_loads.end(), plan.rank_loads().begin()));

    const llep::Adaptive<> ad{1.0 + static_cast<double>(rng() % 100) / 50.0, llep::LeastLoaded{c.alpha, c.m}};
    ad.plan(c.loads, topo, plan);
    v = llep::validate(plan, c.loads, topo);
    REQUIRE_MESSAGE(v.ok, v.message);
    CHECK(plan.policy() == (llep::imbalance(native_loads) >= ad.lambda ? "llep" : "ep"));
  }
}

// Properties of LeastLoaded that follow from the rules:
//  (a) Assigned loads only grow by slices c <= cap - effective, except forced slices. So
//      without a forced slice every rank ends at or below cap (its pending ends at 0).
//  (b) With m = 0 and alpha >= 1 no slice is forced: while r > 0 tokens of e are unplaced,
//      the effective loads sum to total - r < total <= P * cap; the native rank is at or
//      above cap once it spills, so some other rank is below cap and qualifies.
//  (c) Hence with m = 0, alpha >= 1: max rank load <= cap; and with alpha = 1 it equals
//      ceil(total / P), the least any plan can reach.
//  (d) With m = 0, alpha >= 1 LLEP is never worse than EP: if nothing spills the plans are
//      equal; if something spills, the first spill happens on a rank whose effective load
//      is still its EP load (no foreign tokens yet) and exceeds cap, so EP's max > cap.
//  (e) For any m: a non-native slice is either >= m or the last slice of its expert; the
//      native keeps at most one slice, and it starts at 0.
// With alpha < 1 or m > 0 forced slices can push a rank past EP's max (see the hand
// examples in test_planners.cpp), so nothing is asserted there.
TEST_CASE("LeastLoaded properties") {
  std::mt19937_64 rng(11);
  llep::Plan plan, ep;
  std::vector<count_t> native_loads;
  for (int i = 0; i < 3000; ++i) {
    Case c = random_case(rng);
    if (i % 2 == 0) {
      c.m = 0;
      c.alpha = std::max(1.0, c.alpha);
    }
    CAPTURE(describe(c));
    const auto topo = topology_of(c);
    llep::LeastLoaded{c.alpha, c.m}.plan(c.loads, topo, plan);
    llep::StandardEp{}.plan(c.loads, topo, ep);
    const count_t total = std::accumulate(c.loads.begin(), c.loads.end(), count_t{0});
    const count_t peak = max_of(plan.rank_loads());

    if (c.m == 0 && c.alpha >= 1.0) {
      CHECK(peak <= plan.capacity());                    // (c)
      CHECK(peak <= max_of(ep.rank_loads()));            // (d)
      if (c.alpha == 1.0 && total > 0) CHECK(peak == (total + c.P - 1) / c.P);  // (c)
    }
    for (int e = 0; e < topo.experts(); ++e) {  // (e)
      const auto segs = plan.segments(e);
      int native_slices = 0;
      for (std::size_t k = 0; k < segs.size(); ++k) {
        if (segs[k].rank == topo.native_rank(e)) {
          ++native_slices;
          CHECK(segs[k].begin == 0);
        } else if (k + 1 < segs.size()) {
          CHECK(segs[k].size() >= c.m);
        }
      }
      CHECK(native_slices <= 1);
    }
  }
}

TEST_CASE("LeastLoaded with P = 1 keeps everything native, whatever the capacity") {
  std::mt19937_64 rng(3);
  llep::Plan plan;
  for (int i = 0; i < 200; ++i) {
    std::string kind;
    const int N = 1 + static_cast<int>(rng() % 384);
    const auto loads = random_loads(rng, N, kind);
    const llep::Topology topo(1, N);
    llep::LeastLoaded{0.1, 0}.plan(loads, topo, plan);
    REQUIRE(llep::validate(plan, loads, topo).ok);
    CHECK(plan.weight_transfers().empty());
    for (const auto& s : plan.segments()) CHECK(s.size() == loads[static_cast<std::size_t>(s.expert)]);
  }
}
