#pragma once
// The plan: for every expert with load, segments (rank, begin, end) tiling [0, l[e]); the
// weight transfers they imply; each rank's load; the capacity it was made under.
//
// A Plan is reused from step to step: planners call reset() and refill it, so once its
// vectors have grown to the largest plan seen, planning allocates nothing.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/core/counts.hpp"
#include "llep/core/error.hpp"
#include "llep/core/topology.hpp"

namespace llep {

/// Rank `rank` computes pairs [begin, end) of `expert`; pairs of an expert are ordered by
/// source rank, then by their order on the source.
struct Segment {
  std::int32_t expert = 0;
  std::int32_t rank = 0;
  count_t begin = 0;
  count_t end = 0;
  [[nodiscard]] constexpr count_t size() const noexcept { return end - begin; }
  friend constexpr bool operator==(const Segment&, const Segment&) = default;
};

/// (expert, begin) order of a plan's segments; end breaks ties so that broken plans with
/// equal begins (an empty segment) still sort the same way every time.
[[nodiscard]] constexpr bool segment_order(const Segment& a, const Segment& b) noexcept {
  if (a.expert != b.expert) return a.expert < b.expert;
  return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
}

/// The weights of `expert` travel from `src` (its native rank) to `dst`, a rank that does
/// not hold them.
struct WeightTransfer {
  std::int32_t expert = 0;
  std::int32_t src = 0;
  std::int32_t dst = 0;
  friend constexpr bool operator==(const WeightTransfer&, const WeightTransfer&) = default;
};

/// Scratch space planners may use; lives in the Plan so that planning does not allocate
/// once the plan object is warm.
struct PlanScratch {
  std::vector<std::int32_t> order;
  std::vector<std::uint64_t> keys;
  std::vector<count_t> assigned;
  std::vector<count_t> pending;
  std::vector<count_t> rank_tmp;
};

class Plan {
 public:
  Plan() = default;

  /// Empties the plan for a topology; keeps capacity of every buffer.
  void reset(const Topology& topo, std::string_view policy) {
    ranks_ = topo.ranks();
    experts_ = topo.experts();
    policy_ = policy;
    capacity_ = 0;
    segments_.clear();
    transfers_.clear();
    expert_offsets_.assign(static_cast<std::size_t>(experts_) + 1, 0);
    rank_loads_.assign(static_cast<std::size_t>(ranks_), 0);
    finished_ = false;
    // Room for the largest plan of this shape up front, so that a warm plan stays
    // allocation-free when the routing shifts (more experts with load, more spills):
    // a spill slice either fills a rank or ends its expert, so 2N + P segments suffice;
    // a split over replica holders adds at most one segment per replica, P x S.
    const auto N = static_cast<std::size_t>(experts_), P = static_cast<std::size_t>(ranks_);
    const std::size_t most = 2 * N + P + P * static_cast<std::size_t>(topo.replicas_per_rank());
    segments_.reserve(most);
    spare_.reserve(most);
    transfers_.reserve(most);
    scratch_.order.reserve(N);
    scratch_.keys.reserve(N);
  }

  /// Appends a segment; segments may come in any expert order, finish() sorts them.
  void add_segment(int expert, int rank, count_t begin, count_t end) {
    // Out-of-range ids would index past the rank loads and the expert index.
    LLEP_EXPECTS(expert >= 0 && expert < experts_, "segment expert ", expert, " is outside [0, ", experts_, ")");
    LLEP_EXPECTS(rank >= 0 && rank < ranks_, "segment rank ", rank, " of expert ", expert, " is outside [0, ",
                 ranks_, ")");
    segments_.push_back(Segment{expert, rank, begin, end});
    rank_loads_[static_cast<std::size_t>(rank)] += end - begin;
  }

  void set_capacity(count_t cap) noexcept { capacity_ = cap; }
  void set_policy(std::string_view policy) { policy_ = policy; }

  /// Sorts segments by (expert, begin), builds the per-expert index and derives the weight
  /// transfers: one per rank that computes a segment of an expert whose weights it does
  /// not hold (neither native nor replica), from the native rank; sorted by (expert, dst).
  void finish(const Topology& topo) {
    sort_segments();
    transfers_.clear();
    for (int e = 0; e < experts_; ++e) {
      const int native = topo.native_rank(e);
      const std::size_t first = transfers_.size();
      for (const Segment& s : segments(e))
        if (s.rank != native && !topo.holds_replica(e, s.rank))
          transfers_.push_back(WeightTransfer{e, native, s.rank});
      // One expert's helpers: a handful, so this sort is an insertion sort.
      const auto from = transfers_.begin() + static_cast<std::ptrdiff_t>(first);
      std::sort(from, transfers_.end(), [](const WeightTransfer& a, const WeightTransfer& b) { return a.dst < b.dst; });
      transfers_.erase(std::unique(from, transfers_.end()), transfers_.end());
    }
    finished_ = true;
  }

  /// Takes a plan made elsewhere (read from a file, received from another process) as
  /// given, without deriving or checking anything but the expert ids the index needs;
  /// validate() is what judges it. Segments are sorted by (expert, begin).
  void assign(const Topology& topo, std::string_view policy, count_t capacity,
              std::span<const Segment> segments, std::span<const WeightTransfer> transfers,
              std::span<const count_t> rank_loads) {
    reset(topo, policy);
    LLEP_EXPECTS(rank_loads.size() == static_cast<std::size_t>(ranks_), "rank loads hold ", rank_loads.size(),
                 " entries; P = ", ranks_);
    for (const Segment& s : segments)
      LLEP_EXPECTS(s.expert >= 0 && s.expert < experts_, "segment expert ", s.expert, " is outside [0, ",
                   experts_, ")");
    capacity_ = capacity;
    segments_.assign(segments.begin(), segments.end());
    std::sort(segments_.begin(), segments_.end(), segment_order);
    build_index();
    transfers_.assign(transfers.begin(), transfers.end());
    rank_loads_.assign(rank_loads.begin(), rank_loads.end());
    finished_ = true;
  }

  [[nodiscard]] int ranks() const noexcept { return ranks_; }
  [[nodiscard]] int experts() const noexcept { return experts_; }
  /// Name of the policy that made the plan ("ep", "llep", ...).
  [[nodiscard]] std::string_view policy() const noexcept { return policy_; }
  [[nodiscard]] count_t capacity() const noexcept { return capacity_; }
  [[nodiscard]] bool finished() const noexcept { return finished_; }

  /// All segments, sorted by (expert, begin).
  [[nodiscard]] std::span<const Segment> segments() const noexcept { return segments_; }
  /// Segments of one expert, sorted by begin; empty when the expert has no load.
  [[nodiscard]] std::span<const Segment> segments(int expert) const noexcept {
    const auto e = static_cast<std::size_t>(expert);
    return std::span<const Segment>(segments_).subspan(expert_offsets_[e],
                                                       expert_offsets_[e + 1] - expert_offsets_[e]);
  }
  [[nodiscard]] std::span<const WeightTransfer> weight_transfers() const noexcept { return transfers_; }
  [[nodiscard]] std::span<const count_t> rank_loads() const noexcept { return rank_loads_; }

  [[nodiscard]] PlanScratch& scratch() noexcept { return scratch_; }

 private:
  // Planners append one expert's slices at a time, in begin order, so a counting scatter
  // by expert (O(segments + N)) replaces a comparison sort; an expert whose slices came out
  // of order is sorted on its own.
  void sort_segments() {
    if (std::is_sorted(segments_.begin(), segments_.end(), segment_order)) {
      build_index();
      return;
    }
    build_index();
    spare_.resize(segments_.size());
    for (const Segment& s : segments_) spare_[expert_offsets_[static_cast<std::size_t>(s.expert)]++] = s;
    for (std::size_t e = static_cast<std::size_t>(experts_); e > 0; --e) expert_offsets_[e] = expert_offsets_[e - 1];
    expert_offsets_[0] = 0;
    segments_.swap(spare_);
    for (std::size_t e = 0; e < static_cast<std::size_t>(experts_); ++e) {
      const auto b = segments_.begin() + static_cast<std::ptrdiff_t>(expert_offsets_[e]);
      const auto en = segments_.begin() + static_cast<std::ptrdiff_t>(expert_offsets_[e + 1]);
      if (!std::is_sorted(b, en, segment_order)) std::sort(b, en, segment_order);
    }
  }

  // expert_offsets_[e] .. [e + 1] index the (expert, begin)-sorted segments of e.
  void build_index() {
    std::fill(expert_offsets_.begin(), expert_offsets_.end(), std::size_t{0});
    for (const Segment& s : segments_) ++expert_offsets_[static_cast<std::size_t>(s.expert) + 1];
    for (std::size_t e = 0; e < static_cast<std::size_t>(experts_); ++e)
      expert_offsets_[e + 1] += expert_offsets_[e];
  }

  int ranks_ = 0;
  int experts_ = 0;
  std::string policy_;  // short names fit the small-string buffer: no allocation
  count_t capacity_ = 0;
  bool finished_ = false;
  std::vector<Segment> segments_;
  std::vector<Segment> spare_;  // scatter target of sort_segments, swapped with segments_
  std::vector<std::size_t> expert_offsets_;
  std::vector<WeightTransfer> transfers_;
  std::vector<count_t> rank_loads_;
  PlanScratch scratch_;
};

/// Outcome of validate(): ok, or the first invariant that broke, in words.
struct Validation {
  bool ok = true;
  std::string message;
  explicit operator bool() const noexcept { return ok; }
};

/// Checks every invariant of a plan against the loads it was made for:
/// shape, segments tiling [0, l[e]) in order with valid ranks, zero-load experts without
/// segments, rank loads equal to the sum of segments, and transfers exactly the
/// (expert, native, rank) of every segment on a rank that does not hold the expert
/// (Topology::holds: native or replica), sorted and without duplicates.
[[nodiscard]] inline Validation validate(const Plan& plan, std::span<const count_t> loads,
                                         const Topology& topo) {
  auto fail = [](auto&&... parts) { return Validation{false, detail::concat(parts...)}; };
  if (!plan.finished()) return fail("plan was not finished (call Plan::finish)");
  if (plan.ranks() != topo.ranks() || plan.experts() != topo.experts())
    return fail("plan is for P=", plan.ranks(), " N=", plan.experts(), " but the topology has P=",
                topo.ranks(), " N=", topo.experts());
  if (loads.size() != static_cast<std::size_t>(topo.experts()))
    return fail("loads has ", loads.size(), " entries, N = ", topo.experts());

  std::vector<count_t> rank_sum(static_cast<std::size_t>(topo.ranks()), 0);
  std::vector<WeightTransfer> expected;
  for (int e = 0; e < topo.experts(); ++e) {
    const count_t l = loads[static_cast<std::size_t>(e)];
    const auto segs = plan.segments(e);
    if (l == 0 && !segs.empty()) return fail("expert ", e, " has zero load but ", segs.size(), " segments");
    if (l > 0 && segs.empty()) return fail("expert ", e, " has load ", l, " but no segment");
    count_t next = 0;
    std::vector<int> dsts;
    for (const Segment& s : segs) {
      if (s.expert != e) return fail("segment listed under expert ", e, " names expert ", s.expert);
      if (s.rank < 0 || s.rank >= topo.ranks())
        return fail("expert ", e, " segment [", s.begin, ", ", s.end, ") is on rank ", s.rank,
                    " outside [0, ", topo.ranks(), ")");
      if (s.begin > next)
        return fail("expert ", e, " segments leave a gap: [", next, ", ", s.begin, ") is on no rank");
      if (s.begin < next)
        return fail("expert ", e, " segments overlap: segment [", s.begin, ", ", s.end, ") on rank ", s.rank,
                    " starts before ", next);
      if (s.end <= s.begin)
        return fail("expert ", e, " segment [", s.begin, ", ", s.end, ") on rank ", s.rank, " is empty");
      next = s.end;
      rank_sum[static_cast<std::size_t>(s.rank)] += s.size();
      if (!topo.holds(e, s.rank)) dsts.push_back(s.rank);
    }
    if (next != l) return fail("expert ", e, " segments end at ", next, " but its load is ", l);
    std::sort(dsts.begin(), dsts.end());
    dsts.erase(std::unique(dsts.begin(), dsts.end()), dsts.end());
    for (int d : dsts) expected.push_back(WeightTransfer{e, topo.native_rank(e), d});
  }
  for (int r = 0; r < topo.ranks(); ++r)
    if (plan.rank_loads()[static_cast<std::size_t>(r)] != rank_sum[static_cast<std::size_t>(r)])
      return fail("rank ", r, " load is ", plan.rank_loads()[static_cast<std::size_t>(r)],
                  " but its segments sum to ", rank_sum[static_cast<std::size_t>(r)]);
  const auto got = plan.weight_transfers();
  auto show = [](const WeightTransfer& t) { return detail::concat("(expert ", t.expert, ", ", t.src, " -> ", t.dst, ")"); };
  for (std::size_t i = 0; i < std::max(got.size(), expected.size()); ++i) {
    if (i < got.size() && i < expected.size() && got[i] == expected[i]) continue;
    if (i < expected.size() && std::find(got.begin(), got.end(), expected[i]) == got.end())
      return fail("missing weight transfer ", show(expected[i]), " implied by its segments");
    if (i < got.size() && std::find(expected.begin(), expected.end(), got[i]) == expected.end())
      return fail("extra weight transfer ", show(got[i]), " that no segment implies");
    return fail("weight transfers are not sorted by (expert, dst) without duplicates: entry ", i, " is ",
                show(got[i]));
  }
  return {};
}

}  // namespace llep
