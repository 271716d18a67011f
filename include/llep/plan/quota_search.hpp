#pragma once
// Quota search (the approach UltraEP published): binary-search the smallest per-rank load
// threshold T for which a greedy pass that moves excess tokens off over-loaded ranks
// succeeds. Where LeastLoaded fills ranks up to a fixed capacity ceil(alpha * mean), this
// finds how close to the mean a plan can get under the min_tokens_per_gemm slice rule.
//
// The greedy pass at threshold T, exactly:
//  - every rank starts with its native load; experts are visited by decreasing load, ties
//    by lower id (so each rank sheds its heaviest experts first);
//  - visiting e on native rank q: while q's load > T and q still holds k > 0 of e's tokens:
//    x = min(load[q] - T, k) is the excess to move; the target is the other rank with the
//    most room T - load (ties: lower rank); if it has no room the pass fails; the slice is
//    c = min(x, room). A slice below min_tokens_per_gemm is not cut: it grows to
//    min(k, room, m) when that reaches m (q then ends below T), else it is the remainder
//    that empties e from q (k <= room) and moves whole, else e cannot shed and the pass
//    goes on to the next expert;
//  - slices come off the tail of what q holds: q keeps [0, k), a slice is [k - c, k);
//  - success: every rank's load <= T.
// T runs from ceil(mean) (no lower T can succeed: P * T < total) up to the busiest native
// rank's load (where nothing moves, so the pass succeeds). The search keeps "T succeeds,
// T - 1 fails", so the result is minimal in that sense even if the greedy pass is not
// monotone in T. The plan's capacity() is T.
#include <algorithm>
#include <cstddef>
#include <ostream>
#include <span>
#include <string_view>
#include <vector>

#include "llep/core/plan.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

struct QuotaSearch {
  static constexpr std::string_view name = "quota";

  count_t min_tokens_per_gemm = 1024;  ///< smallest slice cut out of an expert (paper's m)

  void check() const {
    LLEP_EXPECTS(min_tokens_per_gemm >= 0, "min_tokens_per_gemm = ", min_tokens_per_gemm, " must be >= 0");
  }

  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    check();
    check_loads(loads, topo);
    out.reset(topo, name);
    PlanScratch& s = out.scratch();
    const count_t T = search(loads, topo, s);
    pass(loads, topo, T, s, &out);
    out.set_capacity(T);
    out.finish(topo);
  }

  /// Whether the greedy pass succeeds at threshold T (a test and tooling helper; allocates).
  [[nodiscard]] bool feasible(std::span<const count_t> loads, const Topology& topo, count_t T) const {
    check();
    check_loads(loads, topo);
    PlanScratch s;
    prepare(loads, topo, s);
    return pass(loads, topo, T, s, nullptr);
  }

  /// The threshold plan() uses: the T found by the binary search.
  [[nodiscard]] count_t threshold(std::span<const count_t> loads, const Topology& topo) const {
    check();
    check_loads(loads, topo);
    PlanScratch s;
    return search(loads, topo, s);
  }

 private:
  // s.order: experts by decreasing load; s.pending: native rank loads (the pass's start).
  static void prepare(std::span<const count_t> loads, const Topology& topo, PlanScratch& s) {
    count_t peak = 0;
    for (count_t l : loads) peak = std::max(peak, l);
    LeastLoaded::order_experts(loads, topo.experts(), peak, s);
    s.pending.resize(static_cast<std::size_t>(topo.ranks()));
    native_rank_loads(loads, topo, s.pending);
  }

  count_t search(std::span<const count_t> loads, const Topology& topo, PlanScratch& s) const {
    prepare(loads, topo, s);
    count_t total = 0, hi = 0;
    for (count_t l : loads) total += l;
    for (count_t l : s.pending) hi = std::max(hi, l);
    const count_t P = topo.ranks();
    count_t lo = total / P + (total % P != 0);  // ceil(mean); lo - 1 fails: P * (lo - 1) < total
    while (lo < hi) {                           // invariant: hi succeeds, lo - 1 fails
      const count_t mid = lo + (hi - lo) / 2;
      if (pass(loads, topo, mid, s, nullptr))
        hi = mid;
      else
        lo = mid + 1;
    }
    return hi;
  }

  // One greedy pass; with `out` it also records the segments. s.order and s.pending must
  // come from prepare(); s.rank_tmp holds the loads as the pass moves tokens.
  bool pass(std::span<const count_t> loads, const Topology& topo, count_t T, PlanScratch& s, Plan* out) const {
    const int P = topo.ranks();
    s.rank_tmp.assign(s.pending.begin(), s.pending.end());
    const std::span<count_t> load(s.rank_tmp);
    const count_t m = min_tokens_per_gemm;
    for (const std::int32_t e : s.order) {
      const int q = topo.native_rank(e);
      count_t& lq = load[static_cast<std::size_t>(q)];
      count_t k = loads[static_cast<std::size_t>(e)];
      while (P > 1 && lq > T && k > 0) {
        const count_t x = std::min(lq - T, k);
        const int t = most_room(load, q);
        const count_t room = T - load[static_cast<std::size_t>(t)];
        if (room <= 0) return false;
        count_t c = std::min(x, room);
        if (c < m) {
          const count_t grown = std::min({k, room, m});
          if (grown == m)
            c = m;
          else if (k <= room)
            c = k;  // the remainder that empties e from its native rank
          else
            break;  // e cannot shed without a slice below m: try q's next expert
        }
        if (out) out->add_segment(e, t, k - c, k);
        load[static_cast<std::size_t>(t)] += c;
        lq -= c;
        k -= c;
      }
      if (out && k > 0) out->add_segment(e, q, 0, k);
    }
    for (const count_t l : load)
      if (l > T) return false;
    return true;
  }

  // The rank other than `skip` with the most room (least load), lower rank on ties.
  static int most_room(std::span<const count_t> load, int skip) noexcept {
    const int P = static_cast<int>(load.size());
    int best = skip == 0 ? 1 : 0;
    for (int r = best + 1; r < P; ++r)
      if (r != skip && load[static_cast<std::size_t>(r)] < load[static_cast<std::size_t>(best)]) best = r;
    return best;
  }

 public:
  friend constexpr bool operator==(const QuotaSearch&, const QuotaSearch&) = default;
  friend std::ostream& operator<<(std::ostream& os, const QuotaSearch& c) {
    return os << "QuotaSearch{min_tokens_per_gemm=" << c.min_tokens_per_gemm << "}";
  }
};

static_assert(check_planner<QuotaSearch>());

}  // namespace llep
