// A warm Replicated replan allocates nothing, like the other planners (Plan's contract).
// This executable replaces the global operator new to count calls, so it stands alone.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "llep/plan/least_loaded.hpp"
#include "llep/plan/replicated.hpp"

#include "../common/count_new.hpp"

TEST_CASE("a warm Replicated replan allocates nothing") {
  using llep::count_t;
  const int P = 64, N = 384;
  std::vector<double> history(N, 10.0);
  for (int e = 0; e < 8; ++e) history[static_cast<std::size_t>(e * 41)] = 5000.0;
  // 6 native + 4 replica slots per rank: hot experts end up on many ranks.
  const auto topo = llep::Replicated::place(history, P, N / P + 4);
  std::vector<std::vector<count_t>> batches;
  batches.emplace_back(N, 341);
  batches.emplace_back(N, 0);
  std::vector<count_t> hot(N, 100);
  for (int e = 0; e < 8; ++e) hot[static_cast<std::size_t>(e * 41)] = 30000;
  batches.push_back(hot);
  std::vector<count_t> one(N, 0);
  one[0] = 131072;
  batches.push_back(one);

  const llep::Replicated replicated{};
  const llep::LeastLoaded least{1.0, 0};
  llep::Plan plan;
  auto all = [&] {
    for (const auto& b : batches) {
      replicated.plan(b, topo, plan);
      least.plan(b, topo, plan);
    }
  };
  all();  // warm-up
  const long before = g_news.load();
  for (int rep = 0; rep < 3; ++rep) all();
  CHECK(g_news.load() - before == 0);
  replicated.plan(batches[2], topo, plan);
  REQUIRE(llep::validate(plan, batches[2], topo).ok);
}
