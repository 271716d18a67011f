#pragma once
// A plan as plain data: counts and raw pointers into caller memory (host or device) sized
// for the worst case, so that planning never allocates and the same code fills it on the
// host and in a kernel. llep::Plan (plan.hpp) owns host buffers and wraps one of these.
#include <cstdint>
#include <type_traits>

#include "llep/core/config.hpp"

namespace llep {

/// Rank `rank` computes pairs [begin, end) of `expert`; pairs of an expert are ordered by
/// source rank, then by their order on the source.
struct Segment {
  std::int32_t expert = 0;
  std::int32_t rank = 0;
  count_t begin = 0;
  count_t end = 0;
  [[nodiscard]] LLEP_HOST_DEVICE constexpr count_t size() const noexcept { return end - begin; }
  friend constexpr bool operator==(const Segment&, const Segment&) = default;
};

/// (expert, begin) order of a plan's segments; end breaks ties so that broken plans with
/// equal begins (an empty segment) still sort the same way every time.
[[nodiscard]] LLEP_HOST_DEVICE constexpr bool segment_order(const Segment& a, const Segment& b) noexcept {
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

/// Segments a plan of N experts on P ranks with S replicas per rank can hold: a spill
/// slice either fills a rank or ends its expert, so 2N + P (LeastLoaded), N + 2P
/// (QuotaSearch: a slice may also end a rank's shedding); a split over replica holders
/// adds at most one segment per replica, P x S. Every planner's bounds() stays within it.
[[nodiscard]] LLEP_HOST_DEVICE constexpr std::int64_t max_plan_segments(int ranks, int experts,
                                                                        int replicas_per_rank = 0) noexcept {
  return 2 * std::int64_t{experts} + 2 * std::int64_t{ranks} + std::int64_t{ranks} * replicas_per_rank;
}

/// How a planning step on plain data ended (plan/plan_step.hpp).
struct StepStatus {
  enum Code : std::int32_t {
    ok = 0,
    capacity_overflow = 1,  ///< LeastLoaded's capacity does not fit count_t
    cap_too_small = 2,      ///< Capped: the loads need more rows than the ranks hold
    cap_stuck = 3,          ///< Capped: the fill found no rank with room (expert, rows_left)
    segments_overflow = 4,  ///< a bound was broken: the plan view ran out of segments
  };
  std::int32_t code = ok;
  std::int32_t expert = -1;
  count_t rows_left = 0;
  count_t copies = 0;
  [[nodiscard]] LLEP_HOST_DEVICE bool good() const noexcept { return code == ok; }
};

/// The plan as plain data. Buffers: segments, spare and transfers hold max_segments
/// entries each, expert_offsets experts + 1, rank_loads ranks.
struct PlanView {
  static constexpr int kPolicyChars = 24;

  Segment* segments = nullptr;
  Segment* spare = nullptr;  ///< finish()'s scatter target
  WeightTransfer* transfers = nullptr;
  std::int32_t* expert_offsets = nullptr;  ///< [e], [e + 1]: e's segments after finish(); counts before
  count_t* rank_loads = nullptr;
  std::int32_t max_segments = 0;
  std::int32_t num_segments = 0;
  std::int32_t num_transfers = 0;
  std::int32_t ranks = 0;
  std::int32_t experts = 0;
  std::int32_t dropped = 0;  ///< pushes past max_segments (a broken bound); finish() keeps them out
  bool in_order = false;  ///< the pusher promises (expert, begin) order: finish() need not scatter
  /// The writer filled everything in order (expert_offsets as offsets, rank loads, the
  /// transfers): the next finish() only marks the plan finished.
  bool complete = false;
  count_t capacity = 0;
  bool finished = false;
  char policy[kPolicyChars] = {};  ///< NUL-terminated, truncated to kPolicyChars - 1

  /// Empties the plan for P ranks and N experts, named `policy` (n chars).
  LLEP_HOST_DEVICE void begin(int P, int N, const char* name, int n) noexcept {
    ranks = P;
    experts = N;
    num_segments = num_transfers = dropped = 0;
    in_order = complete = false;
    capacity = 0;
    finished = false;
    set_policy(name, n);
    for (int r = 0; r < P; ++r) rank_loads[r] = 0;
    for (int e = 0; e <= N; ++e) expert_offsets[e] = 0;
  }

  LLEP_HOST_DEVICE void set_policy(const char* name, int n) noexcept {
    if (n > kPolicyChars - 1) n = kPolicyChars - 1;
    for (int i = 0; i < n; ++i) policy[i] = name[i];
    policy[n] = '\0';
  }

  /// A finished plan back to one that takes pushes (offsets back to counts).
  LLEP_HOST_DEVICE void reopen() noexcept {
    if (!finished) return;
    for (int e = experts; e > 0; --e) expert_offsets[e] -= expert_offsets[e - 1];
    expert_offsets[0] = 0;
    finished = false;
    in_order = complete = false;
  }

  /// Appends a segment, unchecked: planners pass valid ids and stay within the bound.
  LLEP_HOST_DEVICE void push(int expert, int rank, count_t begin_row, count_t end_row) noexcept {
    if (num_segments >= max_segments) {
      ++dropped;
      return;
    }
    segments[num_segments++] = Segment{expert, rank, begin_row, end_row};
    rank_loads[rank] += end_row - begin_row;
    ++expert_offsets[expert + 1];  // counts until finish() turns them into offsets
  }

  /// Call after the last push (again for another topology's transfers). Sorts segments by (expert, begin) (a counting scatter by expert; an expert's slices
  /// that came out of order are insertion-sorted), indexes them, and derives the weight
  /// transfers: one per rank that computes a segment of e and does not hold it
  /// (native(e) != rank and !holds_replica(e, rank)), from the native rank, sorted by
  /// (expert, dst) without duplicates.
  LLEP_EXEC_CHECK_DISABLE
  template <class Native, class HoldsReplica>
  LLEP_HOST_DEVICE void finish(Native native, HoldsReplica holds_replica) noexcept {
    if (complete && !finished) {
      complete = false;
      finished = true;
      return;
    }
    if (!finished) {  // a second finish (another topology's transfers) keeps the order
      for (int e = 0; e < experts; ++e) expert_offsets[e + 1] += expert_offsets[e];
      if (!in_order) {
        for (int i = 0; i < num_segments; ++i) spare[expert_offsets[segments[i].expert]++] = segments[i];
        for (int e = experts; e > 0; --e) expert_offsets[e] = expert_offsets[e - 1];
        expert_offsets[0] = 0;
        Segment* t = segments;
        segments = spare;
        spare = t;
      }
    }
    // One pass over the expert-grouped segments: put each in begin order within its
    // expert (insertion: usually in order already) and collect its transfer, kept in dst
    // order within the expert without duplicates.
    num_transfers = 0;
    int cur = -1, first = 0, src = 0;
    for (int i = 0; i < num_segments; ++i) {
      const Segment sg = segments[i];
      if (sg.expert != cur) {
        cur = sg.expert;
        first = num_transfers;
        src = native(cur);
      } else if (segment_order(sg, segments[i - 1])) {
        int j = i;
        for (; j > 0 && segments[j - 1].expert == cur && segment_order(sg, segments[j - 1]); --j)
          segments[j] = segments[j - 1];
        segments[j] = sg;
      }
      if (sg.rank != src && !holds_replica(cur, sg.rank)) add_transfer(first, WeightTransfer{cur, src, sg.rank});
    }
    finished = true;
  }

  /// Adds transfer w to those of its expert, transfers[first, num_transfers), kept in dst
  /// order without duplicates.
  LLEP_HOST_DEVICE void add_transfer(int first, WeightTransfer w) noexcept {
    int j = num_transfers;
    while (j > first && transfers[j - 1].dst > w.dst) --j;
    if (j > first && transfers[j - 1].dst == w.dst) return;  // already there
    for (int k = num_transfers; k > j; --k) transfers[k] = transfers[k - 1];
    transfers[j] = w;
    ++num_transfers;
  }
};

static_assert(std::is_trivially_copyable_v<PlanView>, "llep: PlanView must stay plain data");

}  // namespace llep
