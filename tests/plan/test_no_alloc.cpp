// Planning into a warm Plan allocates nothing (Plan's contract, DESIGN practice 3). This
// executable replaces the global operator new to count calls, so it stands alone.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "llep/plan/adaptive.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/node_aware.hpp"
#include "llep/plan/quota_search.hpp"
#include "llep/plan/standard_ep.hpp"

#include "../common/count_new.hpp"

TEST_CASE("a warm replan allocates nothing") {
  using llep::count_t;
  const llep::Topology topo(64, 384);
  // Skewed, balanced and empty batches: the warm-up sees each once, then none may allocate.
  std::vector<std::vector<count_t>> batches;
  batches.emplace_back(384, 341);
  batches.emplace_back(384, 0);
  std::vector<count_t> hot(384, 100);
  for (int e = 0; e < 4; ++e) hot[static_cast<std::size_t>(e * 97)] = 30000;
  batches.push_back(hot);
  std::vector<count_t> one(384, 0);
  one[200] = 131072;
  batches.push_back(one);

  const llep::LeastLoaded llep_planner{1.0, 0};
  const llep::LeastLoaded llep_gemm{1.0, 1024};
  const llep::Adaptive<> adaptive{};
  const llep::StandardEp ep{};
  const llep::Topology nodes(64, 384, 8);
  const llep::NodeAware node_aware{1.0, 1024};
  const llep::QuotaSearch quota{1024};
  // m = 1024 overshoots 4096 rows on the one-expert batch: the capped fill runs there.
  const llep::Capped<> capped{llep::LeastLoaded{1.0, 1024}, llep::MemoryCap{4096, 1, 100, false}};
  llep::Plan plan;
  auto all = [&] {
    for (const auto& b : batches) {
      llep_planner.plan(b, topo, plan);
      llep_gemm.plan(b, topo, plan);
      adaptive.plan(b, topo, plan);
      ep.plan(b, topo, plan);
      node_aware.plan(b, nodes, plan);
      quota.plan(b, topo, plan);
      capped.plan(b, topo, plan);
    }
  };
  all();  // warm-up: vectors grow to the largest plan
  CHECK(g_news.load() > 0);  // the counter does see the planner's allocations
  const long before = g_news.load();
  for (int rep = 0; rep < 3; ++rep) all();
  const long after = g_news.load();
  CHECK(after - before == 0);
  REQUIRE(llep::validate(plan, batches.back(), topo).ok);
}
