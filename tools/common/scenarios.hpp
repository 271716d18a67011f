#pragma once
// The LLEP paper's benchmark setup (arXiv 2601.17111, Fig. 4; see
// /work/shared/reference/PAPER-NOTES.md), shared by every bench binary: the three MoE layer
// shapes, the routing skews, the LLEP settings of its experiments, and the Fig. 4 speedups
// our notes quote. The skews themselves (shares, exact loads, counts, sampled routings)
// live in llep::sim (include/llep/sim/routing.hpp); this file only lists the paper's.
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/sim/routing.hpp"

namespace llep::bench {

/// One MoE layer of the paper's benchmark: N experts, hidden size D, expert intermediate
/// size H, top-K, tokens per rank; every expert a SwiGLU FFN (gate, up: D x H; down: H x D).
struct LayerShape {
  std::string_view name;  ///< "gpt-oss-120b", "deepseek-v3", "kimi-k2" (the GEMM curve CSV's shape column)
  int experts = 0;        ///< N
  int hidden = 0;         ///< D
  int intermediate = 0;   ///< H
  int top_k = 0;          ///< K
  count_t tokens_per_rank = 0;

  /// Token-expert pairs each rank routes: tokens x K.
  [[nodiscard]] constexpr count_t pairs_per_rank() const noexcept { return tokens_per_rank * top_k; }
};

/// EP world size of the paper's benchmark (8 x H200, one node).
inline constexpr int kPaperRanks = 8;

inline constexpr LayerShape kGptOss120b{"gpt-oss-120b", 128, 2880, 2880, 4, 32768};
inline constexpr LayerShape kDeepSeekV3{"deepseek-v3", 256, 7168, 2048, 8, 16384};
inline constexpr LayerShape kKimiK2{"kimi-k2", 384, 7168, 2048, 8, 16384};
inline constexpr LayerShape kPaperShapes[] = {kGptOss120b, kDeepSeekV3, kKimiK2};

/// balanced, then 30/50/80/95% of all pairs spread evenly over 1, 4 or 16 "hot" experts
/// (ids 0 .. h-1: under the default placement, as few ranks as possible hold them).
inline std::vector<sim::Skew> paper_routings() {
  std::vector<sim::Skew> out{sim::Skew{}};
  for (int share : {30, 50, 80, 95})
    for (int hot : {1, 4, 16}) out.push_back(sim::Skew{hot, share / 100.0});
  return out;
}

/// LLEP settings of the paper's experiments: lambda = 1.3, alpha = 1, m = 1024.
inline constexpr double kPaperLambda = 1.3;
inline constexpr double kPaperAlpha = 1.0;
inline constexpr count_t kPaperMinTokensPerGemm = 1024;

/// Least-Loaded Assignment alone (Alg. 2-3) with the paper's alpha and m.
[[nodiscard]] inline LeastLoaded paper_lla() { return LeastLoaded{kPaperAlpha, kPaperMinTokensPerGemm}; }
/// The full LLEP step (Alg. 4): standard EP under lambda, LLA above it.
[[nodiscard]] inline Adaptive<LeastLoaded> paper_llep() { return Adaptive<LeastLoaded>{kPaperLambda, paper_lla()}; }

/// A speedup of LLEP over standard EP printed in the paper's Fig. 4 (8 x H200, forward),
/// as PAPER-NOTES.md quotes it. `low == high` for one printed value; a range where the
/// notes only give one ("balanced about 0.92-1.07x", over the three shapes together).
struct PaperSpeedup {
  std::string_view shape;
  sim::Skew skew;
  double low = 0;
  double high = 0;
};

/// Every Fig. 4 speedup PAPER-NOTES.md quotes; nothing else (the other bars of the
/// figure are not in our notes).
inline constexpr PaperSpeedup kPaperFig4Speedups[] = {
    {"gpt-oss-120b", {1, 0.95}, 6.11, 6.11},
    {"deepseek-v3", {1, 0.95}, 5.13, 5.13},
    {"kimi-k2", {1, 0.95}, 5.03, 5.03},
    // "balanced about 0.92-1.07x": a range over the three shapes, not per shape.
    {"gpt-oss-120b", {0, 0.0}, 0.92, 1.07},
    {"deepseek-v3", {0, 0.0}, 0.92, 1.07},
    {"kimi-k2", {0, 0.0}, 0.92, 1.07},
};

/// The quoted Fig. 4 speedup of a (shape, skew), if our notes have one.
[[nodiscard]] inline std::optional<PaperSpeedup> paper_fig4_speedup(std::string_view shape, const sim::Skew& skew) {
  for (const PaperSpeedup& s : kPaperFig4Speedups)
    if (s.shape == shape && s.skew.hot_experts == skew.hot_experts && s.skew.hot_share == skew.hot_share) return s;
  return std::nullopt;
}

}  // namespace llep::bench
