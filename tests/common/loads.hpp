#pragma once
// Random load vectors for the planners' property tests (the adversarial shapes, such as
// all zero, one hot expert, ties, tiny totals or a whole node hot, come up often on
// purpose), and a plan checked by validate().
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "llep/core/plan.hpp"

namespace testloads {

using llep::count_t;

inline std::vector<count_t> random_loads(std::mt19937_64& rng, int N, std::string& kind) {
  std::uniform_int_distribution<int> pick(0, 10);
  const count_t scales[] = {1, 3, 10, 100, 1000, 100000, 10000000};
  const count_t scale = scales[std::uniform_int_distribution<int>(0, 6)(rng)];
  std::uniform_int_distribution<count_t> up_to(0, scale);
  std::uniform_int_distribution<int> expert(0, N - 1);
  std::vector<count_t> l(static_cast<std::size_t>(N), 0);
  switch (pick(rng)) {
    case 0:
      kind = "all zero";
      break;
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
    case 3:
      kind = "sparse";
      for (int i = 0; i < 1 + N / 16; ++i) l[static_cast<std::size_t>(expert(rng))] = up_to(rng);
      break;
    case 4: {
      kind = "hot few";
      for (auto& x : l) x = up_to(rng) / 10;
      const int hot = 1 + static_cast<int>(rng() % 4);
      for (int i = 0; i < hot; ++i) l[static_cast<std::size_t>(expert(rng))] += scale * 20 + up_to(rng);
      break;
    }
    case 5: {
      kind = "zipf";
      std::vector<int> perm(static_cast<std::size_t>(N));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int i = 0; i < N; ++i)
        l[static_cast<std::size_t>(perm[static_cast<std::size_t>(i)])] =
            static_cast<count_t>(static_cast<double>(scale) * 50.0 / (i + 1));
      break;
    }
    case 6:
      kind = "small";
      for (auto& x : l) x = static_cast<count_t>(rng() % 3);
      break;
    case 7:
      kind = "hot node";  // the experts of the first ranks all hot: a whole node overloaded
      for (std::size_t e = 0; e < l.size(); ++e) l[e] = e < l.size() / 4 + 1 ? scale * 10 + up_to(rng) : up_to(rng) / 20;
      break;
    default:
      kind = "uniform";
      for (auto& x : l) x = up_to(rng);
  }
  return l;
}

/// The plan `planner` makes, after validate() passed on it.
template <class Planner>
llep::Plan plan_of(const Planner& planner, const std::vector<count_t>& loads, const llep::Topology& topo) {
  llep::Plan p;
  planner.plan(loads, topo, p);
  const auto v = llep::validate(p, loads, topo);
  REQUIRE_MESSAGE(v.ok, v.message);
  return p;
}

}  // namespace testloads
