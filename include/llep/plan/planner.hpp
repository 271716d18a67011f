#pragma once
// The Planner concept: a deterministic host function of (loads, topology) into a Plan.
#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "llep/core/plan.hpp"
#include "llep/plan/alg.hpp"

namespace llep {

/// A load-balancing policy. `plan` must be deterministic, so every rank computes the same
/// plan from the same loads without a broadcast, and must leave `out` finished.
template <class P>
concept Planner = requires(const P& planner, std::span<const count_t> loads, const Topology& topo, Plan& out) {
  { planner.plan(loads, topo, out) } -> std::same_as<void>;
  { P::name } -> std::convertible_to<std::string_view>;
};

namespace detail {
template <class>
inline constexpr bool dependent_false = false;
}

/// Upper bounds on a plan, over every routing in which each rank has at most
/// max_pairs_per_rank token-expert pairs (B_max x K; so the loads total at most P times
/// that): the rows any one rank computes, the foreign experts (weights it does not hold)
/// any rank computes, the plan's segments and its weight transfers. What an engine sizes
/// a step's memory by before any batch (MoeLayer::workspace_bytes).
struct PlanBounds {
  std::int64_t rows_per_rank = 0;
  int foreign_experts_per_rank = 0;
  int segments = 0;
  int transfers = 0;
};

namespace detail {
/// P x pairs, saturated; the most rows any plan can put on one rank.
[[nodiscard]] inline std::int64_t total_pairs(const Topology& topo, std::int64_t pairs) {
  LLEP_EXPECTS(pairs >= 0, "max_pairs_per_rank = ", pairs, " must be >= 0");
  const std::int64_t P = topo.ranks();
  return pairs > alg::kCountMax / P ? alg::kCountMax : P * pairs;
}
/// The most experts a rank can compute without holding them: N less the fewest any rank
/// holds (natives and replicas; placements may be uneven).
[[nodiscard]] inline int most_foreign(const Topology& topo) {
  int fewest = topo.experts();
  for (int r = 0; r < topo.ranks(); ++r) {
    int held = 0;
    for (int e = 0; e < topo.experts(); ++e) held += topo.holds(e, r) ? 1 : 0;
    fewest = std::min(fewest, held);
  }
  return topo.experts() - fewest;
}
/// Bounds any valid plan meets: every pair on one rank, every other expert foreign to it,
/// the segment room of a Plan (max_plan_segments), a transfer per non-native segment.
[[nodiscard]] inline PlanBounds any_plan_bounds(const Topology& topo, std::int64_t pairs) {
  const int N = topo.experts(), P = topo.ranks();
  const auto segments = static_cast<int>(max_plan_segments(P, N, topo.replicas_per_rank()));
  return PlanBounds{total_pairs(topo, pairs), most_foreign(topo), segments,
                    static_cast<int>(std::min<std::int64_t>(segments, std::int64_t{N} * (P - 1)))};
}
/// Component-wise larger of two bounds (a planner that runs one of two plans).
[[nodiscard]] inline PlanBounds max_bounds(const PlanBounds& a, const PlanBounds& b) noexcept {
  return PlanBounds{std::max(a.rows_per_rank, b.rows_per_rank),
                    std::max(a.foreign_experts_per_rank, b.foreign_experts_per_rank), std::max(a.segments, b.segments),
                    std::max(a.transfers, b.transfers)};
}
}  // namespace detail

/// The planner's bounds(topo, pairs) when it has one, else the bounds any valid plan
/// meets (detail::any_plan_bounds).
template <class P>
[[nodiscard]] PlanBounds plan_bounds(const P& planner, const Topology& topo, std::int64_t max_pairs_per_rank) {
  if constexpr (requires { planner.bounds(topo, max_pairs_per_rank); })
    return planner.bounds(topo, max_pairs_per_rank);
  else
    return detail::any_plan_bounds(topo, max_pairs_per_rank);
}

/// Bytes of scratch `planner` carves from Plan::workspace for `topo`: its
/// scratch_bytes(topo) when it has one, else 0 (it keeps its own).
template <class P>
[[nodiscard]] std::size_t planner_scratch_bytes(const P& planner, const Topology& topo) noexcept {
  if constexpr (requires { planner.scratch_bytes(topo); })
    return planner.scratch_bytes(topo);
  else
    return 0;
}

/// native[e] = expert e's native rank, N entries (the table a device planner or layout
/// uploads once).
inline void native_ranks(const Topology& topo, std::int32_t* native) noexcept {
  const int N = topo.experts(), P = topo.ranks();
  if (topo.default_placement()) {
    const int per = N / P;
    for (int r = 0, e = 0; r < P; ++r)
      for (int k = 0; k < per; ++k) native[e++] = r;
  } else {
    for (int e = 0; e < N; ++e) native[e] = topo.native_rank(e);
  }
}

/// The topology as the shared pieces see it, its natives written to `native` (N
/// entries): a load instead of a division per lookup on the default placement.
[[nodiscard]] inline alg::TopoView topo_view(const Topology& topo, std::int32_t* native) noexcept {
  const int N = topo.experts(), P = topo.ranks();
  native_ranks(topo, native);
  return alg::TopoView{P, N, topo.ranks_per_node(), native, topo.default_placement() ? N / P : 0};
}

/// The topology for code that only sums by rank (alg::native_loads): on the default
/// placement no natives are written (native == nullptr), else as topo_view.
[[nodiscard]] inline alg::TopoView rank_view(const Topology& topo, std::int32_t* native) noexcept {
  if (topo.default_placement()) return alg::TopoView{topo.ranks(), topo.experts(), topo.ranks_per_node()};
  return topo_view(topo, native);
}

/// Scratch of the planners built on Alg. 2 (LeastLoaded, NodeAware, CostAware, Adaptive):
/// the natives and the driver's (visit order, spill state).
struct LlaScratch {
  std::int32_t* native;
  alg::SpillScratch spill;
  LLEP_HOST_DEVICE static LlaScratch take(alg::Carve& c, int P, int N) noexcept {
    LlaScratch s{};
    s.native = c.take<std::int32_t>(static_cast<std::size_t>(N));
    s.spill = alg::SpillScratch::take(c, P, N);
    return s;
  }
  [[nodiscard]] static std::size_t bytes(int P, int N) noexcept {
    alg::Carve c;
    (void)take(c, P, N);
    return c.used;
  }
};

/// Named in a static_assert so a type that is not a planner fails with an instruction.
template <class P>
constexpr bool check_planner() {
  static_assert(Planner<P>,
                "llep: this type is not a Planner. Give it `static constexpr std::string_view name` and "
                "`void plan(std::span<const llep::count_t> loads, const llep::Topology&, llep::Plan& out) "
                "const` that fills `out` and calls out.finish(topo).");
  return true;
}

}  // namespace llep
