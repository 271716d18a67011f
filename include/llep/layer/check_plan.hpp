#pragma once
// The plan stage's guard: every plan a planner hands to the layer is checked before the
// layout indexes anything by it. A user planner, or a plan taken with Plan::assign, may
// break the rules; unchecked, a segment rank outside [0, P) writes past a buffer.
//
// Cheap and allocation-free once warm: one pass over segments and transfers, O(P) scratch.
// Unlike validate() (core/plan.hpp), it stops at the first broken rule and builds no
// strings unless a rule breaks.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/core/plan.hpp"
#include "llep/core/topology.hpp"

namespace llep {

/// Per-rank marks and sums of check_plan, kept so that a warm check allocates nothing.
struct PlanCheckScratch {
  std::vector<std::uint64_t> transfer_mark, segment_mark;
  std::vector<count_t> rank_sum;
  std::uint64_t stamp = 0;

  void reserve(int ranks) {
    const auto P = static_cast<std::size_t>(ranks);
    if (transfer_mark.size() < P) {
      transfer_mark.assign(P, 0);
      segment_mark.assign(P, 0);
      stamp = 0;
    }
    rank_sum.reserve(P);
  }
};

/// Throws llep::Error naming `planner`, the expert and the rule unless `plan`, made for
/// `loads` under `topo`, is finished, has the topology's shape and
///   - every segment of expert e names e and a rank in [0, P), and the segments tile
///     [0, loads[e]) in order without gaps, overlaps or empty segments;
///   - rank_loads()[r] is the sum of rank r's segments;
///   - the weight transfers are sorted by (expert, dst) without duplicates and are exactly
///     one (e, native_rank(e), r) for every rank r that computes a segment of e without
///     holding e's weights (Topology::holds).
inline void check_plan(const Plan& plan, std::span<const count_t> loads, const Topology& topo,
                       std::string_view planner, PlanCheckScratch& s) {
  const int P = topo.ranks(), N = topo.experts();
  LLEP_EXPECTS(plan.finished(), "planner '", planner, "' returned an unfinished plan (call Plan::finish)");
  LLEP_EXPECTS(plan.ranks() == P && plan.experts() == N, "planner '", planner, "' made a plan for P = ", plan.ranks(),
               ", N = ", plan.experts(), " but the topology has P = ", P, ", N = ", N);
  LLEP_EXPECTS(loads.size() == static_cast<std::size_t>(N), "loads hold ", loads.size(), " entries; N = ", N);
  LLEP_EXPECTS(plan.rank_loads().size() == static_cast<std::size_t>(P), "planner '", planner, "' gave ",
               plan.rank_loads().size(), " rank loads; P = ", P);
  s.reserve(P);
  s.rank_sum.assign(static_cast<std::size_t>(P), 0);

  const auto transfers = plan.weight_transfers();
  for (std::size_t t = 0; t < transfers.size(); ++t) {
    const WeightTransfer& w = transfers[t];
    LLEP_EXPECTS(w.expert >= 0 && w.expert < N, "planner '", planner, "': weight transfer #", t, " names expert ",
                 w.expert, " outside [0, ", N, ")");
    LLEP_EXPECTS(w.dst >= 0 && w.dst < P, "planner '", planner, "': expert ", w.expert,
                 ": weight transfer to rank ", w.dst, " outside [0, ", P, ")");
    LLEP_EXPECTS(w.src == topo.native_rank(w.expert), "planner '", planner, "': expert ", w.expert,
                 ": weight transfer from rank ", w.src, " but its native rank is ", topo.native_rank(w.expert),
                 " (weights travel from the native rank)");
    LLEP_EXPECTS(!topo.holds(w.expert, w.dst), "planner '", planner, "': expert ", w.expert,
                 ": weight transfer to rank ", w.dst, ", which already holds its weights");
    LLEP_EXPECTS(t == 0 || transfers[t - 1].expert < w.expert ||
                     (transfers[t - 1].expert == w.expert && transfers[t - 1].dst < w.dst),
                 "planner '", planner, "': expert ", w.expert, ": weight transfers are not sorted by (expert, dst) ",
                 "without duplicates at entry #", t);
  }

  std::size_t t = 0;
  for (int e = 0; e < N; ++e) {
    const std::uint64_t stamp = ++s.stamp;
    std::size_t wanted = 0;
    for (; t < transfers.size() && transfers[t].expert == e; ++t, ++wanted)
      s.transfer_mark[static_cast<std::size_t>(transfers[t].dst)] = stamp;
    const count_t load = loads[static_cast<std::size_t>(e)];
    count_t next = 0;
    std::size_t used = 0;
    for (const Segment& seg : plan.segments(e)) {
      LLEP_EXPECTS(seg.expert == e, "planner '", planner, "': a segment indexed under expert ", e, " names expert ",
                   seg.expert);
      LLEP_EXPECTS(seg.rank >= 0 && seg.rank < P, "planner '", planner, "': expert ", e, ": segment [", seg.begin,
                   ", ", seg.end, ") is on rank ", seg.rank, " outside [0, ", P, ")");
      LLEP_EXPECTS(seg.begin == next && seg.end > seg.begin, "planner '", planner, "': expert ", e, ": segment [",
                   seg.begin, ", ", seg.end, ") on rank ", seg.rank, " does not continue at ", next,
                   " (segments must tile [0, load) in order, each non-empty)");
      next = seg.end;
      const auto r = static_cast<std::size_t>(seg.rank);
      s.rank_sum[r] += seg.size();
      if (topo.holds(e, seg.rank)) continue;
      LLEP_EXPECTS(s.transfer_mark[r] == stamp, "planner '", planner, "': expert ", e, ": rank ", seg.rank,
                   " computes segment [", seg.begin, ", ", seg.end, ") without holding the weights, and no weight ",
                   "transfer (", e, ", ", topo.native_rank(e), " -> ", seg.rank, ") brings them");
      if (s.segment_mark[r] != stamp) {
        s.segment_mark[r] = stamp;
        ++used;
      }
    }
    LLEP_EXPECTS(next == load, "planner '", planner, "': expert ", e, ": segments cover [0, ", next,
                 ") but its load is ", load);
    LLEP_EXPECTS(used == wanted, "planner '", planner, "': expert ", e, ": ", wanted,
                 " weight transfer(s) but only ", used, " rank(s) compute it without holding its weights");
  }
  for (int r = 0; r < P; ++r)
    LLEP_EXPECTS(plan.rank_loads()[static_cast<std::size_t>(r)] == s.rank_sum[static_cast<std::size_t>(r)],
                 "planner '", planner, "': rank ", r, " load is ", plan.rank_loads()[static_cast<std::size_t>(r)],
                 " but its segments sum to ", s.rank_sum[static_cast<std::size_t>(r)]);
}

}  // namespace llep
