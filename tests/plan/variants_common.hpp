#pragma once
// Random and adversarial load vectors and topologies (several nodes, custom placements) for
// the planner variants' property tests.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../common/loads.hpp"
#include "llep/core/plan.hpp"

namespace variants {

using llep::count_t;

struct Case {
  int P = 1;
  int per_node = 1;
  std::vector<int> native;
  std::vector<count_t> loads;
  count_t m = 0;
  std::string kind;
  [[nodiscard]] llep::Topology topology() const { return llep::Topology(P, native, per_node); }
  [[nodiscard]] count_t total() const { return std::accumulate(loads.begin(), loads.end(), count_t{0}); }
  [[nodiscard]] std::string describe() const {
    std::string s = "P=" + std::to_string(P) + " per_node=" + std::to_string(per_node) + " N=" +
                    std::to_string(loads.size()) + " m=" + std::to_string(m) + " kind=" + kind + " loads=";
    for (count_t x : loads) s += std::to_string(x) + ",";
    return s;
  }
};

using testloads::random_loads;

/// P in 1..64 with nodes of 1, 2, 4 or 8 ranks where they divide P.
inline Case random_case(std::mt19937_64& rng) {
  const int ranks[] = {1, 2, 3, 4, 6, 8, 16, 32, 64};
  Case c;
  c.P = ranks[rng() % 9];
  const int per[] = {1, 2, 4, 8, c.P};
  do c.per_node = per[rng() % 5];
  while (c.P % c.per_node != 0);
  const int M = 1 + static_cast<int>(rng() % static_cast<unsigned>(std::min(6, 384 / c.P)));
  const int N = c.P * M;
  c.native.resize(static_cast<std::size_t>(N));
  for (int e = 0; e < N; ++e) c.native[static_cast<std::size_t>(e)] = e / M;
  if (rng() % 4 == 0) std::shuffle(c.native.begin(), c.native.end(), rng);
  c.loads = random_loads(rng, N, c.kind);
  const count_t ms[] = {0, 0, 1, 2, 7, 64, 1024, 2147483647};
  c.m = ms[rng() % 8];
  return c;
}

}  // namespace variants
