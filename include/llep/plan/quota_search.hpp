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
#include "llep/plan/alg.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

struct QuotaSearch {
  static constexpr std::string_view name = "quota";

  count_t min_tokens_per_gemm = 1024;  ///< smallest slice cut out of an expert (paper's m)

  void check() const {
    LLEP_EXPECTS(min_tokens_per_gemm >= 0, "min_tokens_per_gemm = ", min_tokens_per_gemm, " must be >= 0");
  }

  /// Rows: at most the threshold, at most the busiest native rank: P x B. Segments: a
  /// native part or an emptying slice per expert, plus per rank one slice that fills it
  /// and one that ends its shedding: N + 2P; transfers: the slices, N + 2P.
  [[nodiscard]] static PlanBounds bounds(const Topology& topo, std::int64_t max_pairs_per_rank) {
    const int P = topo.ranks(), N = topo.experts();
    const int most = static_cast<int>(std::min<std::int64_t>(std::int64_t{N} + 2 * P, max_plan_segments(P, N)));
    return PlanBounds{detail::total_pairs(topo, max_pairs_per_rank), detail::most_foreign(topo), most,
                      static_cast<int>(std::min<std::int64_t>(most, std::int64_t{N} * (P - 1)))};
  }

  [[nodiscard]] static std::size_t scratch_bytes(const Topology& topo) noexcept {
    alg::Carve c;
    (void)Scratch::take(c, topo.ranks(), topo.experts());
    return c.used;
  }

  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    check();
    check_loads(loads, topo);
    out.reset(topo, name);
    const Scratch s = prepare(loads, topo, out.workspace(scratch_bytes(topo)).data());
    const count_t T = search(loads, s);
    pass(loads, T, s, &out.view());
    out.set_capacity(T);
    out.finish(topo, s.native);
  }

  /// Whether the greedy pass succeeds at threshold T (a test and tooling helper; allocates).
  [[nodiscard]] bool feasible(std::span<const count_t> loads, const Topology& topo, count_t T) const {
    check();
    check_loads(loads, topo);
    std::vector<std::byte> buf(scratch_bytes(topo));
    return pass(loads, T, prepare(loads, topo, buf.data()), nullptr);
  }

  /// The threshold plan() uses: the T found by the binary search.
  [[nodiscard]] count_t threshold(std::span<const count_t> loads, const Topology& topo) const {
    check();
    check_loads(loads, topo);
    std::vector<std::byte> buf(scratch_bytes(topo));
    return search(loads, prepare(loads, topo, buf.data()));
  }

 private:
  struct Scratch {
    alg::TopoView t;
    std::int32_t* native;
    alg::OrderScratch order;
    int n;           // experts with load, in order.order
    count_t* start;  // native rank loads (the pass's start)
    count_t* load;   // the loads as a pass moves tokens
    static Scratch take(alg::Carve& c, int P, int N) noexcept {
      Scratch s{};
      s.native = c.take<std::int32_t>(static_cast<std::size_t>(N));
      s.order = alg::OrderScratch::take(c, N);
      s.start = c.take<count_t>(static_cast<std::size_t>(P));
      s.load = c.take<count_t>(static_cast<std::size_t>(P));
      return s;
    }
  };

  static Scratch prepare(std::span<const count_t> loads, const Topology& topo, std::byte* memory) noexcept {
    alg::Carve c{memory};
    Scratch s = Scratch::take(c, topo.ranks(), topo.experts());
    s.t = topo_view(topo, s.native);
    s.n = alg::visit_order(loads.data(), topo.experts(), s.order);
    alg::native_loads(loads.data(), s.t, s.start);
    return s;
  }

  count_t search(std::span<const count_t> loads, const Scratch& s) const {
    count_t total = 0, hi = 0;
    for (count_t l : loads) total += l;
    for (int r = 0; r < s.t.ranks; ++r) hi = std::max(hi, s.start[r]);
    const count_t P = s.t.ranks;
    count_t lo = total / P + (total % P != 0);  // ceil(mean); lo - 1 fails: P * (lo - 1) < total
    while (lo < hi) {                           // invariant: hi succeeds, lo - 1 fails
      const count_t mid = lo + (hi - lo) / 2;
      if (pass(loads, mid, s, nullptr))
        hi = mid;
      else
        lo = mid + 1;
    }
    return hi;
  }

  // One greedy pass; with `out` it also records the segments.
  bool pass(std::span<const count_t> loads, count_t T, const Scratch& s, PlanView* out) const {
    const int P = s.t.ranks;
    count_t* load = s.load;
    for (int r = 0; r < P; ++r) load[r] = s.start[r];
    const count_t m = min_tokens_per_gemm;
    for (int i = 0; i < s.n; ++i) {
      const int e = s.order.order[i];
      const int q = s.t.native_rank(e);
      count_t& lq = load[q];
      count_t k = loads[static_cast<std::size_t>(e)];
      while (P > 1 && lq > T && k > 0) {
        const count_t x = std::min(lq - T, k);
        const int t = alg::least_loaded_rank(load, 0, P, q);  // the most room
        const count_t room = T - load[t];
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
        if (out) out->push(e, t, k - c, k);
        load[t] += c;
        lq -= c;
        k -= c;
      }
      if (out && k > 0) out->push(e, q, 0, k);
    }
    for (int r = 0; r < P; ++r)
      if (load[r] > T) return false;
    return true;
  }

 public:
  friend constexpr bool operator==(const QuotaSearch&, const QuotaSearch&) = default;
  friend std::ostream& operator<<(std::ostream& os, const QuotaSearch& c) {
    return os << "QuotaSearch{min_tokens_per_gemm=" << c.min_tokens_per_gemm << "}";
  }
};

static_assert(check_planner<QuotaSearch>());

}  // namespace llep
