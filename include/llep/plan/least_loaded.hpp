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
    const int n = alg::visit_order(loads.data(), t.experts, s.order);
    alg::assign_then_spill(loads.data(), t, cap, s.order.order, n, s.spill, v, hook);
    out.finish(topo, s.native);
  }

  friend constexpr bool operator==(const LeastLoaded&, const LeastLoaded&) = default;
  friend std::ostream& operator<<(std::ostream& os, const LeastLoaded& c) {
    return os << "LeastLoaded{alpha=" << c.alpha << ", min_tokens_per_gemm=" << c.min_tokens_per_gemm << "}";
  }
};

static_assert(check_planner<LeastLoaded>());

}  // namespace llep
