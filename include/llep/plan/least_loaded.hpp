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
#include <cstdint>
#include <functional>
#include <limits>
#include <ostream>
#include <span>
#include <string_view>

#include "llep/core/plan.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

struct LeastLoaded {
  static constexpr std::string_view name = "llep";
  static constexpr int kIdBits = 16;
  static constexpr std::int32_t kIdMask = (1 << kIdBits) - 1;

  double alpha = 1.0;                   ///< capacity factor: cap = ceil(alpha * total / P)
  count_t min_tokens_per_gemm = 1024;   ///< smallest spilled slice worth a GEMM (paper's m)

  void check() const {
    LLEP_EXPECTS(std::isfinite(alpha) && alpha > 0, "alpha = ", alpha, " must be a finite number > 0");
    LLEP_EXPECTS(min_tokens_per_gemm >= 0, "min_tokens_per_gemm = ", min_tokens_per_gemm, " must be >= 0");
  }

  /// The per-rank token budget for a total load.
  [[nodiscard]] count_t capacity(count_t total, int ranks) const {
    const double c = std::ceil(alpha * static_cast<double>(total) / static_cast<double>(ranks));
    LLEP_EXPECTS(c < 9.0e18, "capacity ", c, " (alpha = ", alpha, ", total = ", total, ") overflows");
    return std::max<count_t>(1, static_cast<count_t>(c));
  }

  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    // Alg. 3. The rule takes the first qualifying rank in (effective, rank) order, else
    // forces all r onto the first rank of that order. Whether a rank qualifies only grows
    // with its room cap - effective, and the first rank has the most room: so if it does
    // not qualify nobody does, and the target is always the least-effective rank.
    assign(loads, topo, out, name, [this](std::span<const count_t> effective, int native, count_t r, count_t cap) {
      const int q = least_effective_other(effective, native);
      const count_t c = std::min(r, cap - effective[static_cast<std::size_t>(q)]);
      return Slice{q, qualifies(c, r) ? c : r};
    });
  }

  /// Where the next slice of a spilling expert goes, and how many of its rows.
  struct Slice {
    int rank;
    count_t rows;
  };

  /// A slice of c rows with r left is worth a GEMM of its own, or ends the expert.
  [[nodiscard]] bool qualifies(count_t c, count_t r) const noexcept {
    return c > 0 && !(c < min_tokens_per_gemm && r > c);
  }

  /// Alg. 2, shared by the planners built on it: cap from alpha, experts by decreasing load
  /// (ties: lower id), the native rank takes what fits, and `spill(effective, native, r,
  /// cap)` names each next slice of the rest. effective[q] = rows assigned to q plus its
  /// native load still to be visited. Ends with out.finish(topo).
  template <class Spill>
  void assign(std::span<const count_t> loads, const Topology& topo, Plan& out, std::string_view policy,
              Spill&& spill) const {
    check();
    check_loads(loads, topo);
    out.reset(topo, policy);
    const int P = topo.ranks();
    const int N = topo.experts();
    count_t total = 0, peak = 0;
    for (count_t l : loads) {
      total += l;
      peak = std::max(peak, l);
    }
    const count_t cap = capacity(total, P);
    out.set_capacity(cap);

    PlanScratch& s = out.scratch();
    // One array is enough: the native's available room is cap - effective once the
    // visited expert's load has left its pending part.
    s.rank_tmp.resize(static_cast<std::size_t>(P));
    const std::span<count_t> effective(s.rank_tmp);
    native_rank_loads(loads, topo, effective);
    order_experts(loads, N, peak, s);

    auto give = [&](int e, int r, count_t b, count_t n) {
      out.add_segment(e, r, b, b + n);
      effective[static_cast<std::size_t>(r)] += n;
    };
    for (const std::int32_t e : s.order) {
      const count_t l = loads[static_cast<std::size_t>(e)];
      const int native = topo.native_rank(e);
      effective[static_cast<std::size_t>(native)] -= l;
      const count_t avail = cap - effective[static_cast<std::size_t>(native)];
      if (P == 1 || avail >= l) {
        give(e, native, 0, l);
        continue;
      }
      count_t t = 0;
      if (avail > 0) {
        give(e, native, 0, avail);
        t = avail;
      }
      for (count_t r = l - t; r > 0;) {
        const Slice next = spill(std::span<const count_t>(effective), native, r, cap);
        give(e, next.rank, t, next.rows);
        t += next.rows;
        r -= next.rows;
      }
    }
    out.finish(topo);
  }

  /// The rank other than `skip` with the least effective load, lower rank on ties.
  static int least_effective_other(std::span<const count_t> effective, int skip) noexcept {
    const int P = static_cast<int>(effective.size());
    int best = skip == 0 ? 1 : 0;
    for (int q = best + 1; q < P; ++q)
      if (q != skip && effective[static_cast<std::size_t>(q)] < effective[static_cast<std::size_t>(best)]) best = q;
    return best;
  }

  /// s.order = the experts with load, by decreasing load, ties by lower id.
  static void order_experts(std::span<const count_t> loads, int experts, count_t peak, PlanScratch& s) {
    s.order.clear();
    if (experts <= kIdMask + 1 && peak < (count_t{1} << (64 - kIdBits - 1))) {
      // (load, ~id) packed in one integer: a plain integer sort, several times faster than
      // sorting ids through a comparator that looks loads up.
      s.keys.clear();
      for (int e = 0; e < experts; ++e)
        if (const count_t l = loads[static_cast<std::size_t>(e)]; l > 0)
          s.keys.push_back(static_cast<std::uint64_t>(l) << kIdBits | static_cast<std::uint64_t>(kIdMask - e));
      std::sort(s.keys.begin(), s.keys.end(), std::greater<>());
      for (const std::uint64_t k : s.keys) s.order.push_back(kIdMask - static_cast<std::int32_t>(k & kIdMask));
      return;
    }
    for (int e = 0; e < experts; ++e)
      if (loads[static_cast<std::size_t>(e)] > 0) s.order.push_back(e);
    std::sort(s.order.begin(), s.order.end(), [&](std::int32_t a, std::int32_t b) {
      const count_t la = loads[static_cast<std::size_t>(a)], lb = loads[static_cast<std::size_t>(b)];
      return la != lb ? la > lb : a < b;
    });
  }

  friend constexpr bool operator==(const LeastLoaded&, const LeastLoaded&) = default;
  friend std::ostream& operator<<(std::ostream& os, const LeastLoaded& c) {
    return os << "LeastLoaded{alpha=" << c.alpha << ", min_tokens_per_gemm=" << c.min_tokens_per_gemm << "}";
  }
};

static_assert(check_planner<LeastLoaded>());

}  // namespace llep
