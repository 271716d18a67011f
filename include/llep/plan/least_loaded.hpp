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
#include <limits>
#include <ostream>
#include <span>
#include <string_view>

#include "llep/core/plan.hpp"
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
    const double c = std::ceil(alpha * static_cast<double>(total) / static_cast<double>(ranks));
    LLEP_EXPECTS(c < 9.0e18, "capacity ", c, " (alpha = ", alpha, ", total = ", total, ") overflows");
    return std::max<count_t>(1, static_cast<count_t>(c));
  }

  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    check();
    check_loads(loads, topo);
    out.reset(topo, name);
    const int P = topo.ranks();
    const int N = topo.experts();
    count_t total = 0;
    for (count_t l : loads) total += l;
    const count_t cap = capacity(total, P);
    out.set_capacity(cap);

    PlanScratch& s = out.scratch();
    s.assigned.assign(static_cast<std::size_t>(P), 0);
    native_rank_loads(loads, topo, [&]() -> std::span<count_t> {
      s.pending.resize(static_cast<std::size_t>(P));
      return s.pending;
    }());
    s.order.resize(static_cast<std::size_t>(N));
    for (int e = 0; e < N; ++e) s.order[static_cast<std::size_t>(e)] = e;
    std::sort(s.order.begin(), s.order.end(), [&](std::int32_t a, std::int32_t b) {
      const count_t la = loads[static_cast<std::size_t>(a)], lb = loads[static_cast<std::size_t>(b)];
      return la != lb ? la > lb : a < b;
    });

    auto effective = [&](int r) {
      return s.assigned[static_cast<std::size_t>(r)] + s.pending[static_cast<std::size_t>(r)];
    };
    auto give = [&](int e, int r, count_t b, count_t n) {
      out.add_segment(e, r, b, b + n);
      s.assigned[static_cast<std::size_t>(r)] += n;
    };

    for (const std::int32_t e : s.order) {
      const count_t l = loads[static_cast<std::size_t>(e)];
      if (l == 0) break;  // sorted: the rest are zero too
      const int native = topo.native_rank(e);
      s.pending[static_cast<std::size_t>(native)] -= l;
      const count_t avail = cap - effective(native);
      if (P == 1 || avail >= l) {
        give(e, native, 0, l);
        continue;
      }
      count_t t = 0;
      if (avail > 0) {
        give(e, native, 0, avail);
        t = avail;
      }
      count_t r = l - t;
      while (r > 0) {
        // One scan finds both the first qualifying rank and the first rank of the
        // (effective, rank) order: same result as sorting, O(P) per slice.
        int best = -1, first = -1;
        count_t best_c = 0;
        for (int q = 0; q < P; ++q) {
          if (q == native) continue;
          const count_t eff = effective(q);
          if (first < 0 || eff < effective(first)) first = q;
          const count_t c = std::min(r, cap - eff);
          const bool qualifies = c > 0 && !(c < min_tokens_per_gemm && r > c);
          if (qualifies && (best < 0 || eff < effective(best))) {
            best = q;
            best_c = c;
          }
        }
        if (best < 0) {  // nobody qualifies: force the rest onto the least-loaded rank
          give(e, first, t, r);
          break;
        }
        give(e, best, t, best_c);
        t += best_c;
        r -= best_c;
      }
    }
    out.finish(topo);
  }

  friend constexpr bool operator==(const LeastLoaded&, const LeastLoaded&) = default;
  friend std::ostream& operator<<(std::ostream& os, const LeastLoaded& c) {
    return os << "LeastLoaded{alpha=" << c.alpha << ", min_tokens_per_gemm=" << c.min_tokens_per_gemm << "}";
  }
};

static_assert(check_planner<LeastLoaded>());

}  // namespace llep
