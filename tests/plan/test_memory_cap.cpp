// Capped<Inner>: the cap is never exceeded; infeasible caps throw with what is needed and
// what is available; tight caps that can be met are met.
#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include "../common/errors.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/quota_search.hpp"
#include "variants_common.hpp"

namespace {
using llep::count_t;

using testutil::error_of;

// Usage per rank from the plan's parts, written out: rows x row_cost + foreign x expert_cost.
std::vector<count_t> usage_of(const llep::Plan& p, const llep::Topology& topo, const llep::MemoryCap& cap) {
  std::vector<count_t> rows(static_cast<std::size_t>(topo.ranks()), 0), foreign = rows;
  std::vector<std::vector<bool>> holds(rows.size(), std::vector<bool>(static_cast<std::size_t>(topo.experts())));
  for (const auto& s : p.segments()) {
    rows[static_cast<std::size_t>(s.rank)] += s.end - s.begin;
    if (s.rank != topo.native_rank(s.expert) && !holds[static_cast<std::size_t>(s.rank)][static_cast<std::size_t>(s.expert)]) {
      holds[static_cast<std::size_t>(s.rank)][static_cast<std::size_t>(s.expert)] = true;
      ++foreign[static_cast<std::size_t>(s.rank)];
    }
  }
  for (std::size_t q = 0; q < rows.size(); ++q) rows[q] = rows[q] * cap.row_cost + foreign[q] * cap.expert_cost;
  return rows;
}
}  // namespace

TEST_CASE("Capped never exceeds the cap, or throws before planning") {
  std::mt19937_64 rng(64);
  llep::Plan plan;
  int planned = 0, refused = 0, filled = 0;
  for (int i = 0; i < 4000; ++i) {
    const variants::Case c = variants::random_case(rng);
    CAPTURE(c.describe());
    const auto topo = c.topology();
    const count_t mean = (c.total() + c.P - 1) / c.P;
    llep::MemoryCap cap;
    cap.row_cost = 1 + static_cast<count_t>(rng() % 3);
    cap.expert_cost = (rng() % 3 == 0) ? 0 : static_cast<count_t>(rng() % static_cast<unsigned>(1 + mean / 4 + 1));
    // Budgets from a little under the mean's rows to twice it.
    cap.budget = (mean * cap.row_cost * static_cast<count_t>(90 + rng() % 120)) / 100 + static_cast<count_t>(rng() % 3);
    CAPTURE(cap.budget);
    CAPTURE(cap.row_cost);
    CAPTURE(cap.expert_cost);
    const llep::Capped<> capped{llep::LeastLoaded{1.0, c.m}, cap};
    const std::string err = error_of([&] { capped.plan(c.loads, topo, plan); });
    if (err != testutil::kNoError) {
      ++refused;
      CHECK(err.find("memory cap") != std::string::npos);
      // Refused only when no plan fits: either the rows alone overflow, or the fill found
      // a slice no rank could hold (never when the total fits and weights are free).
      if (c.total() <= c.P * (cap.budget / cap.row_cost)) CHECK(cap.expert_cost > 0);
      continue;
    }
    ++planned;
    filled += plan.policy() == "capped";
    const auto v = llep::validate(plan, c.loads, topo);
    REQUIRE_MESSAGE(v.ok, v.message);
    for (const count_t u : usage_of(plan, topo, cap)) CHECK(u <= cap.budget);
  }
  MESSAGE("planned ", planned, " (", filled, " by the capped fill), refused ", refused);
  CHECK(planned > 1000);
  CHECK(filled > 100);
  CHECK(refused > 100);
}

TEST_CASE("infeasible caps throw with the total needed and the total available") {
  const llep::Topology topo(4, 8);
  const std::vector<count_t> loads{900, 10, 10, 10, 5, 5, 5, 5};  // 950 rows
  llep::Plan plan;
  // Rows: 950 needed, 4 x 237 = 948 available.
  std::string err = error_of([&] { llep::Capped<>{{}, llep::MemoryCap::rows(237)}.plan(loads, topo, plan); });
  CHECK(err.find("950") != std::string::npos);
  CHECK(err.find("948") != std::string::npos);
  // Bytes: D = 4, H = 8, 2-byte elements: a row is 2 x 4 x 2 = 16 bytes, an expert
  // 3 x 4 x 8 x 2 = 192. 950 rows need 950 x 16 = 15200 bytes; a rank holds
  // floor(3000 / 16) = 187 rows, the four 748 rows = 11968 bytes.
  err = error_of([&] { llep::Capped<>{{}, llep::MemoryCap::bytes(3000, 4, 8, 2)}.plan(loads, topo, plan); });
  CHECK(err.find("15200") != std::string::npos);
  CHECK(err.find("748 rows = 11968 bytes") != std::string::npos);
  // Weights: P = 2, loads [150, 0]: rows fit (150 <= 2 x 100) but rank 0 holds at most 100,
  // and the 50 others need rank 1 to hold expert 0's weights (150 > 100). At least
  // 150 x 1 + 1 x 150 = 300 units needed, 200 available.
  err = error_of([&] {
    llep::Capped<>{{1.0, 0}, llep::MemoryCap{100, 1, 150, false}}.plan(std::vector<count_t>{150, 0}, llep::Topology(2, 2), plan);
  });
  CHECK(err.find("300") != std::string::npos);
  CHECK(err.find("200") != std::string::npos);
}

TEST_CASE("tight caps that can be met are met") {
  llep::Plan plan;
  // LeastLoaded with m = 1024 forces 672 rows onto rank 2 (docs/planners.md); a 238-row cap
  // (= ceil(950 / 4), nothing to spare) makes the fill replan: every rank <= 238.
  const llep::Topology topo(4, 8);
  const std::vector<count_t> loads{900, 10, 10, 10, 5, 5, 5, 5};
  llep::Capped<>{{1.0, 1024}, llep::MemoryCap::rows(238)}.plan(loads, topo, plan);
  REQUIRE(llep::validate(plan, loads, topo).ok);
  CHECK(plan.policy() == "capped");
  for (const count_t l : plan.rank_loads()) CHECK(l <= 238);
  // With m = 0 LeastLoaded already fits: its plan is kept.
  llep::Capped<>{{1.0, 0}, llep::MemoryCap::rows(238)}.plan(loads, topo, plan);
  CHECK(plan.policy() == "llep");
  // Weights priced: P = 2, loads [150, 50], row 1, expert 10, budget 105. Rank 0 keeps 105 of
  // expert 0; rank 1 holds 50 of expert 1 and takes the other 45 with expert 0's weights:
  // 95 + 10 = 105, exactly the budget. (With 104 no plan fits: rank 1 would need
  // 96 + 10 = 106, and a foreign expert on rank 0 leaves it 94 rows, 94 + 94 < 200.)
  const llep::Topology two(2, 2);
  const std::vector<count_t> l2{150, 50};
  llep::Capped<llep::QuotaSearch>{{0}, llep::MemoryCap{105, 1, 10, false}}.plan(l2, two, plan);
  REQUIRE(llep::validate(plan, l2, two).ok);
  CHECK(std::vector<count_t>(plan.rank_loads().begin(), plan.rank_loads().end()) == std::vector<count_t>{105, 95});
  CHECK(error_of([&] { llep::Capped<llep::QuotaSearch>{{0}, llep::MemoryCap{104, 1, 10, false}}.plan(l2, two, plan); })
            .find("memory cap") != std::string::npos);
}
