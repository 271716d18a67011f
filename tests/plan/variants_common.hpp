#pragma once
// Random and adversarial load vectors and topologies (several nodes, custom placements) for
// the planner variants' property tests.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

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

inline std::vector<count_t> random_loads(std::mt19937_64& rng, int N, std::string& kind) {
  const count_t scales[] = {1, 3, 10, 100, 1000, 100000, 10000000};
  const count_t scale = scales[rng() % 7];
  std::uniform_int_distribution<count_t> up_to(0, scale);
  std::uniform_int_distribution<int> expert(0, N - 1);
  std::vector<count_t> l(static_cast<std::size_t>(N), 0);
  switch (rng() % 8) {
    case 0: kind = "all zero"; break;
    case 1:
      kind = "one expert";
      l[static_cast<std::size_t>(expert(rng))] = 1 + up_to(rng);
      break;
    case 2: {
      kind = "ties";
      const count_t a = up_to(rng), b = up_to(rng);
      for (auto& x : l) x = (rng() & 1) ? a : b;
      break;
    }
    case 3: {
      kind = "hot few";
      for (auto& x : l) x = up_to(rng) / 10;
      for (int i = 0, hot = 1 + static_cast<int>(rng() % 4); i < hot; ++i)
        l[static_cast<std::size_t>(expert(rng))] += scale * 20 + up_to(rng);
      break;
    }
    case 4:
      kind = "small";
      for (auto& x : l) x = static_cast<count_t>(rng() % 3);
      break;
    case 5: {
      kind = "hot node";  // every expert of the first ranks hot: a whole node overloaded
      for (std::size_t e = 0; e < l.size(); ++e) l[e] = e < l.size() / 4 + 1 ? scale * 10 + up_to(rng) : up_to(rng) / 20;
      break;
    }
    default:
      kind = "uniform";
      for (auto& x : l) x = up_to(rng);
  }
  return l;
}

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
