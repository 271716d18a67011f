#pragma once
// Synthetic skewed routings, the paper's scenarios: a share of all token-expert pairs goes
// to the "hot" experts [0, hot_experts) (all of them native to the first ranks, the worst
// case for standard EP), the rest spreads evenly over the other experts. Pairs are drawn
// independently, so one token may route two of its K slots to the same expert; the layer
// is exact either way.
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/core/error.hpp"

namespace llep::sim {

struct Skew {
  int hot_experts = 0;    ///< 0: balanced
  double hot_share = 0;   ///< share of all pairs on the hot experts, in [0, 1]

  void check(int experts) const {
    LLEP_EXPECTS(hot_experts >= 0 && hot_experts <= experts, "hot_experts = ", hot_experts, " must be in [0, N = ",
                 experts, "]");
    LLEP_EXPECTS(hot_share >= 0 && hot_share <= 1, "hot_share = ", hot_share, " must be in [0, 1]");
    LLEP_EXPECTS(hot_experts > 0 || hot_share == 0, "hot_share = ", hot_share, " needs hot_experts > 0");
    LLEP_EXPECTS(hot_experts < experts || hot_share == 1 || hot_experts == 0,
                 "every expert is hot: hot_share must be 1 when hot_experts = N = ", experts);
  }
  /// "balanced", or e.g. "95%-on-1".
  [[nodiscard]] std::string name() const {
    if (hot_experts == 0) return "balanced";
    return std::to_string(static_cast<int>(std::lround(hot_share * 100))) + "%-on-" + std::to_string(hot_experts);
  }
};

/// Expected share of pairs of every expert under a skew.
inline std::vector<double> expert_shares(int experts, const Skew& skew) {
  skew.check(experts);
  std::vector<double> share(static_cast<std::size_t>(experts));
  const int cold = experts - skew.hot_experts;
  for (int e = 0; e < experts; ++e)
    share[static_cast<std::size_t>(e)] = skew.hot_experts == 0 ? 1.0 / experts
                                         : e < skew.hot_experts ? skew.hot_share / skew.hot_experts
                                                                : (1 - skew.hot_share) / cold;
  return share;
}

/// Deterministic loads: `pairs` split by the skew's shares, remainders to the lowest ids.
/// `pairs` must be in [0, 2^53], where a double holds every count exactly.
inline std::vector<count_t> skewed_loads(int experts, count_t pairs, const Skew& skew) {
  LLEP_EXPECTS(pairs >= 0 && pairs <= (count_t{1} << 53), "pairs = ", pairs, " must be in [0, 2^53]");
  const auto share = expert_shares(experts, skew);
  std::vector<count_t> loads(static_cast<std::size_t>(experts));
  count_t given = 0;
  for (std::size_t e = 0; e < loads.size(); ++e) {
    loads[e] = static_cast<count_t>(std::floor(share[e] * static_cast<double>(pairs)));
    given += loads[e];
  }
  for (std::size_t e = 0; given < pairs; e = (e + 1) % loads.size())
    if (share[e] > 0) ++loads[e], ++given;
  return loads;
}

/// Counts matrix C[P][N] where every rank routes `pairs_per_rank` pairs by the skew.
inline std::vector<count_t> skewed_counts(int ranks, int experts, count_t pairs_per_rank, const Skew& skew) {
  const auto row = skewed_loads(experts, pairs_per_rank, skew);
  std::vector<count_t> c;
  c.reserve(static_cast<std::size_t>(ranks) * row.size());
  for (int p = 0; p < ranks; ++p) c.insert(c.end(), row.begin(), row.end());
  return c;
}

/// Random top-k ids and gate weights (each token's K weights positive, summing to 1) for
/// `tokens` tokens, drawn from the skew's shares.
template <class G>
void random_routing(std::uint64_t seed, int experts, int top_k, const Skew& skew, std::span<std::int32_t> ids,
                    std::span<G> weights) {
  LLEP_EXPECTS(top_k >= 1, "top_k = ", top_k, " must be >= 1");
  LLEP_EXPECTS(ids.size() == weights.size() && ids.size() % static_cast<std::size_t>(top_k) == 0,
               "ids (", ids.size(), ") and weights (", weights.size(), ") must both hold tokens x K entries");
  const auto share = expert_shares(experts, skew);
  std::mt19937_64 rng(seed);
  std::discrete_distribution<int> pick(share.begin(), share.end());
  std::uniform_real_distribution<double> u(0.05, 1.0);
  for (std::size_t t = 0; t < ids.size(); t += static_cast<std::size_t>(top_k)) {
    double sum = 0;
    for (int k = 0; k < top_k; ++k) {
      ids[t + static_cast<std::size_t>(k)] = pick(rng);
      const double w = u(rng);
      weights[t + static_cast<std::size_t>(k)] = static_cast<G>(w);
      sum += w;
    }
    for (int k = 0; k < top_k; ++k)
      weights[t + static_cast<std::size_t>(k)] = static_cast<G>(static_cast<double>(weights[t + static_cast<std::size_t>(k)]) / sum);
  }
}

}  // namespace llep::sim
