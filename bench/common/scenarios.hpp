#pragma once
// Routing skews of the LLEP paper's benchmarks, shared by every bench binary.
//
// A scenario sends `hot_share` of all token-expert pairs to the `hot_experts` experts with
// the lowest ids (0 .. h-1, so under the default placement they sit on as few ranks as
// possible: the worst case for standard EP) and spreads the rest evenly over the other
// experts. "balanced" spreads everything evenly. Shares are per expert probabilities, so
// the same scenario can later drive sampled top-k routings as well as exact loads.
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "llep/core/config.hpp"

namespace llep::bench {

struct Scenario {
  std::string name;     ///< "balanced", "95%-on-4", ...
  int hot_experts = 0;  ///< 0: balanced
  double hot_share = 0; ///< fraction of all pairs on the hot experts together
};

/// Tokens per rank and top-k of every plan benchmark: total pairs = P * tokens * K.
inline constexpr count_t kTokensPerRank = 32768;
inline constexpr int kTopK = 4;

/// balanced, then 30/50/80/95% of the pairs on 1, 4 or 16 experts.
inline std::vector<Scenario> paper_scenarios() {
  std::vector<Scenario> out{{"balanced", 0, 0.0}};
  for (int share : {30, 50, 80, 95})
    for (int hot : {1, 4, 16})
      out.push_back({std::to_string(share) + "%-on-" + std::to_string(hot), hot, share / 100.0});
  return out;
}

/// Probability that a pair goes to each of N experts; sums to 1. With hot_experts >= N
/// every expert is hot.
inline std::vector<double> expert_shares(const Scenario& s, int experts) {
  std::vector<double> p(static_cast<std::size_t>(experts), 0.0);
  const int hot = s.hot_experts < experts ? s.hot_experts : experts;
  const int cold = experts - hot;
  const double hot_share = hot == 0 ? 0.0 : (cold == 0 ? 1.0 : s.hot_share);
  for (int e = 0; e < experts; ++e)
    p[static_cast<std::size_t>(e)] = e < hot ? hot_share / hot : (1.0 - hot_share) / cold;
  return p;
}

/// Exact integer loads summing to `total_pairs`: the hot group gets round(share * total)
/// pairs, each group split evenly, remainders one pair each to the lowest ids of the group.
inline std::vector<count_t> expert_loads(const Scenario& s, int experts, count_t total_pairs) {
  std::vector<count_t> l(static_cast<std::size_t>(experts), 0);
  const int hot = s.hot_experts < experts ? s.hot_experts : experts;
  const int cold = experts - hot;
  const count_t hot_total =
      hot == 0 ? 0 : (cold == 0 ? total_pairs : std::llround(s.hot_share * static_cast<double>(total_pairs)));
  auto spread = [&](int first, int n, count_t pairs) {
    for (int i = 0; i < n; ++i)
      l[static_cast<std::size_t>(first + i)] = pairs / n + (i < pairs % n ? 1 : 0);
  };
  if (hot > 0) spread(0, hot, hot_total);
  if (cold > 0) spread(hot, cold, total_pairs - hot_total);
  return l;
}

}  // namespace llep::bench
