// Planning with CostAware into a warm Plan allocates nothing (Plan's contract). This
// executable replaces the global operator new to count calls, so it stands alone.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "llep/plan/cost_aware.hpp"

#include "../common/count_new.hpp"

TEST_CASE("a warm CostAware replan allocates nothing, with the roofline and a measured curve") {
  using llep::count_t;
  const llep::Topology topo(64, 384, 8);
  std::vector<std::vector<count_t>> batches;
  batches.emplace_back(384, 341);
  batches.emplace_back(384, 0);
  std::vector<count_t> hot(384, 100);
  for (int e = 0; e < 4; ++e) hot[static_cast<std::size_t>(e * 97)] = 300000;
  batches.push_back(hot);
  std::vector<count_t> one(384, 0);
  one[200] = 1310720;
  batches.push_back(one);

  auto roof = std::make_shared<llep::sim::CostModel>();
  auto curve = std::make_shared<llep::sim::CostModel>();
  curve->gemm.set_curve("kimi-k2", {{16, 5e-5}, {1024, 1.4e-4}, {65536, 7.5e-3}});
  const llep::sim::FfnShape shape{"kimi-k2", 7168, 2048};
  const llep::CostAware a{1.0, 1024, roof, shape}, b{1.0, 0, curve, shape};
  llep::Plan plan;
  auto all = [&] {
    for (const auto& batch : batches) {
      a.plan(batch, topo, plan);
      b.plan(batch, topo, plan);
    }
  };
  all();
  const long before = g_news.load();
  for (int i = 0; i < 3; ++i) all();
  CHECK(g_news.load() - before == 0);
}
