#pragma once
// A hard per-rank memory ceiling around any planner: Capped<Inner>{inner, cap}.
//
// What a rank holds, in the units of the cap:
//   usage(q) = rows(q) * row_cost + foreign(q) * expert_cost
// where rows(q) are the pairs q computes (native and foreign) and foreign(q) the experts
// whose weights q receives. MemoryCap::rows(n) caps rows alone (row_cost 1, expert_cost 0);
// MemoryCap::bytes(bytes, D, H, elem) prices a row as its input and output activations
// (2 * D * elem, the `rows * 2 * row_bytes` of StepReport::peak_bytes) and a foreign expert
// as its three SwiGLU matrices (3 * D * H * elem). The expert scratch StepReport adds is
// not counted unless given as `scratch_per_row` bytes; keep it inside `bytes` otherwise.
//
// Planning: the inner plan is kept when every rank fits. Otherwise a capped fill replaces
// it (policy "capped"): every rank keeps its native experts, heaviest first, up to
// budget / row_cost rows (whole rows); then each expert's rest, by decreasing load, goes in slices to
// the other rank with the most room for a new foreign expert, (budget - (foreign + 1) *
// expert_cost) / row_cost - rows, ties by lower rank. The fill cuts slices of any size:
// under a hard cap, fitting beats GEMM efficiency. If the total rows exceed P * (budget / row_cost), or
// a slice finds no rank with room, plan() throws llep::Error with what is needed and what
// is available, before any data moves.
#include <algorithm>
#include <cstddef>
#include <limits>
#include <ostream>
#include <span>
#include <string_view>

#include "llep/core/plan.hpp"
#include "llep/plan/alg.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

struct MemoryCap {
  count_t budget = std::numeric_limits<count_t>::max();  ///< per-rank ceiling, in units
  count_t row_cost = 1;                                  ///< units per row
  count_t expert_cost = 0;                               ///< units per foreign expert's weights
  bool in_bytes = false;                                 ///< units are bytes (else rows)

  /// At most `max_rows` rows on every rank; weights not counted.
  static constexpr MemoryCap rows(count_t max_rows) noexcept { return {max_rows, 1, 0, false}; }
  /// At most `bytes` per rank: rows at 2 * D * elem (+ scratch_per_row), foreign experts at
  /// 3 * D * H * elem.
  static MemoryCap bytes(count_t bytes, count_t hidden, count_t intermediate, count_t elem_bytes,
                         count_t scratch_per_row = 0) {
    LLEP_EXPECTS(hidden > 0 && intermediate > 0 && elem_bytes > 0 && scratch_per_row >= 0, "memory cap: D = ", hidden,
                 ", H = ", intermediate, ", element size = ", elem_bytes, " must be > 0 and scratch_per_row = ",
                 scratch_per_row, " >= 0");
    constexpr count_t big = count_t{1} << 40;  // keeps every product below 2^63 for sane shapes
    LLEP_EXPECTS(hidden < big / elem_bytes && intermediate < big / (3 * hidden * elem_bytes),
                 "memory cap: D = ", hidden, ", H = ", intermediate, " overflow the byte counts");
    return {bytes, 2 * hidden * elem_bytes + scratch_per_row, 3 * hidden * intermediate * elem_bytes, true};
  }

  void check() const {
    LLEP_EXPECTS(budget >= 0, "memory cap budget = ", budget, " must be >= 0");
    LLEP_EXPECTS(row_cost >= 1, "memory cap row_cost = ", row_cost, " must be >= 1");
    LLEP_EXPECTS(expert_cost >= 0, "memory cap expert_cost = ", expert_cost, " must be >= 0");
  }
  [[nodiscard]] std::string_view unit() const noexcept { return in_bytes ? "bytes" : "rows"; }
  /// Units a rank uses; saturates instead of overflowing.
  [[nodiscard]] LLEP_HOST_DEVICE count_t usage(count_t rows, count_t foreign) const noexcept {
    constexpr count_t top = alg::kCountMax;
    if (rows > top / row_cost) return top;
    const count_t a = rows * row_cost;
    if (expert_cost > 0 && foreign > (top - a) / expert_cost) return top;
    return a + foreign * expert_cost;
  }

  friend constexpr bool operator==(const MemoryCap&, const MemoryCap&) = default;
};

namespace alg {

/// Per-rank usage of a finished plan under a cap, into usage[P].
LLEP_HOST_DEVICE inline void rank_usage(const PlanView& plan, const MemoryCap& cap, count_t* usage) noexcept {
  for (int q = 0; q < plan.ranks; ++q) usage[q] = 0;
  for (int i = 0; i < plan.num_transfers; ++i) ++usage[plan.transfers[i].dst];
  for (int q = 0; q < plan.ranks; ++q) usage[q] = cap.usage(plan.rank_loads[q], usage[q]);
}

/// Whether every rank of a finished plan fits the cap; usage[P] is scratch.
[[nodiscard]] LLEP_HOST_DEVICE inline bool fits(const PlanView& plan, const MemoryCap& cap, count_t* usage) noexcept {
  rank_usage(plan, cap, usage);
  for (int q = 0; q < plan.ranks; ++q)
    if (usage[q] > cap.budget) return false;
  return true;
}

/// Rows alone a rank holds under the cap: budget / row_cost (whole rows).
[[nodiscard]] LLEP_HOST_DEVICE constexpr count_t cap_rows(const MemoryCap& cap) noexcept {
  return cap.budget / cap.row_cost;
}

/// Whether P ranks hold `total` rows at all; `have` gets P x cap_rows, saturated.
[[nodiscard]] LLEP_HOST_DEVICE inline bool cap_holds(const MemoryCap& cap, count_t total, int P, count_t* have) noexcept {
  const count_t per_rank = cap_rows(cap);
  *have = P > kCountMax / (per_rank > 1 ? per_rank : 1) ? kCountMax : P * per_rank;
  return total <= *have;
}

/// Where the capped fill got stuck: expert -1 when it did not.
struct CappedStuck {
  int expert = -1;
  count_t rows_left = 0;
  count_t copies = 0;  ///< foreign experts placed before
};

/// Scratch of capped_fill.
struct CappedScratch {
  OrderScratch order;
  count_t* rows;     // P
  count_t* foreign;  // P
  count_t* kept;     // N
  LLEP_HOST_DEVICE static CappedScratch take(Carve& c, int P, int N) noexcept {
    CappedScratch s{};
    s.order = OrderScratch::take(c, N);
    s.rows = c.take<count_t>(static_cast<std::size_t>(P));
    s.foreign = c.take<count_t>(static_cast<std::size_t>(P));
    s.kept = c.take<count_t>(static_cast<std::size_t>(N));
    return s;
  }
};

/// The capped fill (see the top of memory_cap.hpp) into `out` (begun by the caller; not
/// finished). Returns where it got stuck, if it did; the plan is then incomplete.
LLEP_HOST_DEVICE inline CappedStuck capped_fill(const count_t* loads, TopoView t, const MemoryCap& cap,
                                               CappedScratch s, PlanView& out) noexcept {
  const int P = t.ranks;
  const int n = visit_order(loads, t.experts, s.order);
  for (int q = 0; q < P; ++q) s.rows[q] = s.foreign[q] = 0;
  const count_t native_rows = cap_rows(cap);
  for (int i = 0; i < n; ++i) {
    const int e = s.order.order[i];
    const int q = t.native_rank(e);
    const count_t room = native_rows - s.rows[q];
    const count_t k = room < 0 ? 0 : (room < loads[e] ? room : loads[e]);
    s.rows[q] += k;
    s.kept[e] = k;
    if (k > 0) out.push(e, q, 0, k);
  }
  // Rows a rank can still take of an expert it does not hold yet.
  auto room = [&](int q) -> count_t {
    const count_t f = s.foreign[q] + 1;
    if (cap.expert_cost > 0 && f > cap.budget / cap.expert_cost) return -1;
    return (cap.budget - f * cap.expert_cost) / cap.row_cost - s.rows[q];
  };
  count_t copies = 0;
  for (int i = 0; i < n; ++i) {
    const int e = s.order.order[i];
    const int native = t.native_rank(e);
    count_t b = s.kept[e];
    for (count_t r = loads[e] - b; r > 0;) {
      // The most room (least -room), lower rank on ties.
      const int best = least_rank_by(0, P, native, -1, -1, [&](int q) { return -room(q); });
      const count_t rm = best < 0 ? 0 : room(best);
      const count_t c = r < rm ? r : rm;
      if (c <= 0) return CappedStuck{e, r, copies};
      out.push(e, best, b, b + c);
      s.rows[best] += c;
      ++s.foreign[best];
      ++copies;
      b += c;
      r -= c;
    }
  }
  out.capacity = native_rows;
  return {};
}

}  // namespace alg

/// Per-rank usage of a plan under a cap, into `out` (P entries).
inline void rank_usage(const Plan& plan, const MemoryCap& cap, std::span<count_t> out) {
  LLEP_EXPECTS(out.size() == static_cast<std::size_t>(plan.ranks()), "usage holds ", out.size(), " entries; P = ",
               plan.ranks());
  alg::rank_usage(plan.view(), cap, out.data());
}

template <Planner Inner = LeastLoaded>
struct Capped {
  static constexpr std::string_view name = "capped";

  Inner inner{};
  MemoryCap cap{};

  /// Within the cap or refused: rows at most budget / row_cost, foreign experts at most
  /// budget / expert_cost (both as the inner planner's when smaller); segments: the
  /// inner plan's, or the fill's 2N + P (a native part per expert, a last slice per
  /// expert, at most one slice a rank that uses up its room).
  [[nodiscard]] PlanBounds bounds(const Topology& topo, std::int64_t max_pairs_per_rank) const {
    cap.check();
    PlanBounds b = plan_bounds(inner, topo, max_pairs_per_rank);
    const int P = topo.ranks(), N = topo.experts();
    b.rows_per_rank = std::min(b.rows_per_rank, alg::cap_rows(cap));
    if (cap.expert_cost > 0)
      b.foreign_experts_per_rank =
          static_cast<int>(std::min<std::int64_t>(b.foreign_experts_per_rank, cap.budget / cap.expert_cost));
    b.segments = std::max(b.segments, static_cast<int>(2 * std::int64_t{N} + P));
    b.transfers = std::max(b.transfers, static_cast<int>(std::min<std::int64_t>(std::int64_t{N} + P, std::int64_t{N} * (P - 1))));
    return b;
  }

  /// Bytes of scratch plan() carves from Plan::workspace: the inner planner's or the
  /// fill's, whichever is larger (the fill runs after the inner plan is done).
  [[nodiscard]] std::size_t scratch_bytes(const Topology& topo) const noexcept {
    alg::Carve c;
    (void)c.take<count_t>(static_cast<std::size_t>(topo.ranks()));  // usage
    (void)alg::CappedScratch::take(c, topo.ranks(), topo.experts());
    (void)c.take<std::int32_t>(static_cast<std::size_t>(topo.experts()));  // natives
    return std::max(c.used, planner_scratch_bytes(inner, topo));
  }

  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    cap.check();
    if constexpr (requires { inner.check(); }) inner.check();
    check_loads(loads, topo);
    const int P = topo.ranks();
    count_t total = 0;
    for (count_t l : loads) total += l;
    count_t have = 0;
    LLEP_EXPECTS(alg::cap_holds(cap, total, P, &have), "memory cap: the loads need ", total,
                 " rows = ", cap.usage(total, 0), " ", cap.unit(), " but the ranks hold at most ", have,
                 " rows = ", cap.usage(have, 0), " ", cap.unit(), " (", P, " ranks x ", cap.budget, " ", cap.unit(),
                 ", ", cap.row_cost, " a row)");

    inner.plan(loads, topo, out);
    alg::Carve c{out.workspace(scratch_bytes(topo)).data()};
    count_t* usage = c.take<count_t>(static_cast<std::size_t>(P));
    if (alg::fits(out.view(), cap, usage)) return;
    const alg::CappedScratch s = alg::CappedScratch::take(c, P, topo.experts());
    const alg::TopoView t = topo_view(topo, c.take<std::int32_t>(static_cast<std::size_t>(topo.experts())));
    out.reset(topo, name);
    const alg::CappedStuck stuck = alg::capped_fill(loads.data(), t, cap, s, out.view());
    if (stuck.expert >= 0) {
      const count_t have_units =
          cap.budget > alg::kCountMax / P ? alg::kCountMax : P * cap.budget;
      LLEP_FAIL("memory cap: no plan fits: ", stuck.rows_left, " rows of expert ", stuck.expert,
                " find no rank with room; the loads need at least ",
                cap.usage(total, 0) + (stuck.copies + 1) * cap.expert_cost, " ", cap.unit(), " (", total, " rows x ",
                cap.row_cost, " + ", stuck.copies + 1, " foreign experts x ", cap.expert_cost, ") and the ranks hold ",
                have_units, " (", P, " ranks x ", cap.budget,
                "), a foreign expert's weights and its rows fitting in one rank's ", cap.budget);
    }
    out.finish(topo, t.native);
  }

 public:
  friend constexpr bool operator==(const Capped&, const Capped&) = default;
  friend std::ostream& operator<<(std::ostream& os, const Capped& c) {
    return os << "Capped{inner=" << c.inner << ", budget=" << c.cap.budget << " " << c.cap.unit()
              << ", row_cost=" << c.cap.row_cost << ", expert_cost=" << c.cap.expert_cost << "}";
  }
};

static_assert(check_planner<Capped<>>());

}  // namespace llep
