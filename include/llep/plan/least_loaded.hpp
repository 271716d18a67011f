#pragma once
// Least-Loaded Assignment (LLEP paper, Alg. 2 and 3), with tie-breaking fixed so that every
// rank computes the same plan:
//  - capacity cap = max(1, ceil(alpha * sum(l) / P));
//  - experts visited by decreasing load, ties by lower id; zero-load experts get nothing;
//  - pending[r] starts as r's native load; visiting e first removes l[e] from its native
//    rank's pending; effective load = assigned + pending;
//  - the native rank keeps min(l[e], cap - effective) when that is positive;
//  - the rest spills (Alg. 3): repeatedly the least-effective other rank (ties: lower rank)
//    whose c = min(r, cap - effective) is > 0 and not a slice below min_tokens_per_gemm
//    that leaves tokens behind; if none qualifies, all r go to the least-effective rank.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <span>
#include <string_view>

#include "llep/core/plan.hpp"
#include "llep/plan/alg.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

struct LeastLoaded {
  static constexpr std::string_view name = "llep";

  double alpha = 1.0;                   ///< capacity factor: cap = ceil(alpha * total / P)
  count_t min_tokens_per_gemm = 1024;   ///< smallest spilled slice worth a GEMM (paper's m)

  void check() const {
    LLEP_EXPECTS(std::isfinite(alpha) && alpha > 0, "alpha = ", alpha, " must be a finite number > 0");
    LLEP_EXPECTS(min_tokens_per_gemm >= 0, "min_tokens_per_gemm = ", min_tokens_per_gemm, " must be >= 0");
  }

  /// The per-rank token budget for a total load.
  [[nodiscard]] count_t capacity(count_t total, int ranks) const {
    bool ok = false;
    const count_t c = alg::capacity(alpha, total, ranks, &ok);
    LLEP_EXPECTS(ok, "capacity ceil(", alpha, " x ", total, " / ", ranks, ") overflows");
    return c;
  }

  /// Rows: a rank ends at most at the capacity cap (of P x B pairs), except through the
  /// forced spill. A forced slice happens when every other rank has room below m (and
  /// at most cap), and the rows left fit the rooms of all ranks (the loads total at most
  /// P x cap when alpha >= 1): so its target ends at most at cap + (P - 2) x min(m - 1,
  /// cap). With alpha < 1 the loads may exceed P x cap by (1 - alpha) x P x B more.
  /// Segments: a native one and a last slice per expert, and at most one slice a rank that
  /// fills it: 2N + P; transfers: the slices, N + P.
  [[nodiscard]] PlanBounds bounds(const Topology& topo, std::int64_t max_pairs_per_rank) const {
    check();
    const std::int64_t total = detail::total_pairs(topo, max_pairs_per_rank);
    return lla_bounds(topo, capacity(total, topo.ranks()), total, alpha, min_tokens_per_gemm);
  }

  /// The bounds of the planners that share Alg. 2 (LeastLoaded, NodeAware), for a
  /// capacity `cap` of `total` pairs.
  [[nodiscard]] static PlanBounds lla_bounds(const Topology& topo, count_t cap, std::int64_t total, double alpha,
                                             count_t m) {
    const int P = topo.ranks(), N = topo.experts();
    const count_t w = std::clamp<count_t>(m - 1, 0, cap);
    const double over = alpha >= 1.0 ? 0.0 : std::ceil((1.0 - alpha) * static_cast<double>(total));
    const double rows = static_cast<double>(cap) + static_cast<double>(std::max(P - 2, 0)) * static_cast<double>(w) + over;
    PlanBounds b;
    b.rows_per_rank = rows >= static_cast<double>(total) ? total : std::min<std::int64_t>(total, static_cast<count_t>(rows));
    const auto foreign = std::min<std::int64_t>(detail::most_foreign(topo), b.rows_per_rank);
    b.foreign_experts_per_rank = static_cast<int>(foreign);
    b.segments = static_cast<int>(std::min<std::int64_t>(2 * std::int64_t{N} + P, max_plan_segments(P, N, topo.replicas_per_rank())));
    b.transfers = static_cast<int>(std::min<std::int64_t>(std::int64_t{N} + P, std::int64_t{N} * (P - 1)));
    return b;
  }

  /// Bytes of scratch plan() carves from Plan::workspace for this topology.
  [[nodiscard]] static std::size_t scratch_bytes(const Topology& topo) noexcept {
    return LlaScratch::bytes(topo.ranks(), topo.experts());
  }

  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    assign(loads, topo, out, name, alg::LeastLoadedSpill{min_tokens_per_gemm});
  }

  using Slice = alg::Slice;

  /// A slice of c rows with r left is worth a GEMM of its own, or ends the expert.
  [[nodiscard]] bool qualifies(count_t c, count_t r) const noexcept {
    return alg::slice_qualifies(c, r, min_tokens_per_gemm);
  }

  /// Alg. 2, shared by the planners built on it (alg::assign_then_spill): cap from alpha,
  /// experts by decreasing load (ties: lower id), the native rank takes what fits, and
  /// `hook(effective, spill)` names each next slice of the rest (or stops). Ends with
  /// out.finish(topo).
  template <class Hook>
  void assign(std::span<const count_t> loads, const Topology& topo, Plan& out, std::string_view policy,
              Hook&& hook) const {
    check();
    check_loads(loads, topo);
    count_t total = 0;
    for (count_t l : loads) total += l;
    const count_t cap = capacity(total, topo.ranks());
    out.reset(topo, policy);
    alg::Carve c{out.workspace(scratch_bytes(topo)).data()};
    const LlaScratch s = LlaScratch::take(c, topo.ranks(), topo.experts());
    const alg::TopoView t = topo_view(topo, s.native);
    PlanView& v = out.view();
    v.capacity = cap;
    const bool replicas = topo.has_replicas();
    alg::assign_then_spill(loads.data(), t, cap, s.spill, v, hook,
                           [&topo, replicas](int e, int r) { return replicas && topo.holds_replica(e, r); });
    out.finish(topo, s.native);
  }

  friend constexpr bool operator==(const LeastLoaded&, const LeastLoaded&) = default;
  friend std::ostream& operator<<(std::ostream& os, const LeastLoaded& c) {
    return os << "LeastLoaded{alpha=" << c.alpha << ", min_tokens_per_gemm=" << c.min_tokens_per_gemm << "}";
  }
};

static_assert(check_planner<LeastLoaded>());

}  // namespace llep
