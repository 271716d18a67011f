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
  [[nodiscard]] count_t usage(count_t rows, count_t foreign) const noexcept {
    constexpr count_t top = std::numeric_limits<count_t>::max();
    if (rows > top / row_cost) return top;
    const count_t a = rows * row_cost;
    if (expert_cost > 0 && foreign > (top - a) / expert_cost) return top;
    return a + foreign * expert_cost;
  }

  friend constexpr bool operator==(const MemoryCap&, const MemoryCap&) = default;
};

/// Per-rank usage of a plan under a cap, into `out` (P entries).
inline void rank_usage(const Plan& plan, const MemoryCap& cap, std::span<count_t> out) {
  LLEP_EXPECTS(out.size() == static_cast<std::size_t>(plan.ranks()), "usage holds ", out.size(), " entries; P = ",
               plan.ranks());
  std::fill(out.begin(), out.end(), count_t{0});
  for (const WeightTransfer& w : plan.weight_transfers()) ++out[static_cast<std::size_t>(w.dst)];
  for (std::size_t q = 0; q < out.size(); ++q) out[q] = cap.usage(plan.rank_loads()[q], out[q]);
}

template <Planner Inner = LeastLoaded>
struct Capped {
  static constexpr std::string_view name = "capped";

  Inner inner{};
  MemoryCap cap{};

  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    cap.check();
    if constexpr (requires { inner.check(); }) inner.check();
    check_loads(loads, topo);
    const count_t P = topo.ranks();
    count_t total = 0;
    for (count_t l : loads) total += l;
    // Rows alone: a rank holds at most budget / row_cost of them (whole rows only).
    const count_t per_rank = cap.budget / cap.row_cost;
    const count_t have = P > std::numeric_limits<count_t>::max() / std::max<count_t>(per_rank, 1)
                             ? std::numeric_limits<count_t>::max()
                             : P * per_rank;
    LLEP_EXPECTS(total <= have, "memory cap: the loads need ", total, " rows = ", cap.usage(total, 0), " ",
                 cap.unit(), " but the ranks hold at most ", have, " rows = ", cap.usage(have, 0), " ", cap.unit(),
                 " (", P, " ranks x ", cap.budget, " ", cap.unit(), ", ", cap.row_cost, " a row)");

    inner.plan(loads, topo, out);
    if (fits(out)) return;
    fill(loads, topo, out, total);
  }

 private:
  bool fits(Plan& out) const {
    PlanScratch& s = out.scratch();
    s.assigned.resize(static_cast<std::size_t>(out.ranks()));
    rank_usage(out, cap, s.assigned);
    for (const count_t u : s.assigned)
      if (u > cap.budget) return false;
    return true;
  }

  void fill(std::span<const count_t> loads, const Topology& topo, Plan& out, count_t total) const {
    out.reset(topo, name);
    const int P = topo.ranks();
    PlanScratch& s = out.scratch();
    count_t peak = 0;
    for (count_t l : loads) peak = std::max(peak, l);
    LeastLoaded::order_experts(loads, topo.experts(), peak, s);
    s.rank_tmp.assign(static_cast<std::size_t>(P), 0);  // rows
    s.assigned.assign(static_cast<std::size_t>(P), 0);  // foreign experts
    s.pending.assign(static_cast<std::size_t>(topo.experts()), 0);  // rows kept by the native
    const std::span<count_t> rows(s.rank_tmp), foreign(s.assigned), kept(s.pending);
    const count_t native_rows = cap.budget / cap.row_cost;

    for (const std::int32_t e : s.order) {
      const auto q = static_cast<std::size_t>(topo.native_rank(e));
      const count_t k = std::clamp<count_t>(native_rows - rows[q], 0, loads[static_cast<std::size_t>(e)]);
      rows[q] += k;
      kept[static_cast<std::size_t>(e)] = k;
      if (k > 0) out.add_segment(e, static_cast<int>(q), 0, k);
    }
    // Rows a rank can still take of an expert it does not hold yet.
    auto room = [&](int q) {
      const count_t f = foreign[static_cast<std::size_t>(q)] + 1;
      if (cap.expert_cost > 0 && f > cap.budget / cap.expert_cost) return count_t{-1};
      return (cap.budget - f * cap.expert_cost) / cap.row_cost - rows[static_cast<std::size_t>(q)];
    };
    const count_t have_units =
        cap.budget > std::numeric_limits<count_t>::max() / P ? std::numeric_limits<count_t>::max() : P * cap.budget;
    count_t copies = 0;
    for (const std::int32_t e : s.order) {
      const int native = topo.native_rank(e);
      count_t t = kept[static_cast<std::size_t>(e)];
      for (count_t r = loads[static_cast<std::size_t>(e)] - t; r > 0;) {
        int best = -1;
        for (int q = 0; q < P; ++q)
          if (q != native && (best < 0 || room(q) > room(best))) best = q;
        const count_t c = best < 0 ? 0 : std::min(r, room(best));
        LLEP_EXPECTS(c > 0, "memory cap: no plan fits: ", r, " rows of expert ", e,
                     " find no rank with room; the loads need at least ",
                     cap.usage(total, 0) + (copies + 1) * cap.expert_cost, " ", cap.unit(), " (", total, " rows x ",
                     cap.row_cost, " + ", copies + 1, " foreign experts x ", cap.expert_cost, ") and the ranks hold ",
                     have_units, " (", P, " ranks x ", cap.budget,
                     "), a foreign expert's weights and its rows fitting in one rank's ", cap.budget);
        out.add_segment(e, best, t, t + c);
        rows[static_cast<std::size_t>(best)] += c;
        ++foreign[static_cast<std::size_t>(best)];
        ++copies;
        t += c;
        r -= c;
      }
    }
    out.set_capacity(native_rows);
    out.finish(topo);
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
