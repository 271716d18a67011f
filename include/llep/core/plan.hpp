#pragma once
// The plan: for every expert with load, segments (rank, begin, end) tiling [0, l[e]); the
// weight transfers they imply; each rank's load; the capacity it was made under.
//
// The plan as plain data is PlanView (plan_view.hpp); Plan owns host buffers for one, sized
// for the topology's largest plan, so a warm Plan refilled each step allocates nothing.
#include <algorithm>
#include <cstddef>
#include <utility>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/core/counts.hpp"
#include "llep/core/error.hpp"
#include "llep/core/plan_view.hpp"
#include "llep/core/topology.hpp"

namespace llep {

/// Scratch space Replicated still borrows from the Plan (the other planners carve their
/// own from Plan::workspace, sized by their scratch_bytes).
struct PlanScratch {
  std::vector<std::int32_t> order;
  std::vector<std::uint64_t> keys;
  std::vector<count_t> assigned;
  std::vector<count_t> pending;
  std::vector<count_t> rank_tmp;
};

/// A plan with its own host buffers: a PlanView over vectors sized, on reset(), for the
/// largest plan of the topology (max_plan_segments), so that refilling a warm Plan
/// allocates nothing. Planners fill view() with unchecked pushes and call finish();
/// add_segment() is the checked append for plans built by hand.
class Plan {
 public:
  Plan() = default;
  Plan(const Plan& o) { *this = o; }
  Plan(Plan&& o) noexcept { *this = std::move(o); }
  Plan& operator=(const Plan& o) {
    if (this != &o) {
      segments_ = o.segments_;
      spare_ = o.spare_;
      transfers_ = o.transfers_;
      expert_offsets_ = o.expert_offsets_;
      rank_loads_ = o.rank_loads_;
      scratch_ = o.scratch_;
      v_ = o.v_;
      // workspace_ is scratch: not copied.
      repoint();
    }
    return *this;
  }
  Plan& operator=(Plan&& o) noexcept {
    if (this != &o) {
      segments_ = std::move(o.segments_);
      spare_ = std::move(o.spare_);
      transfers_ = std::move(o.transfers_);
      expert_offsets_ = std::move(o.expert_offsets_);
      rank_loads_ = std::move(o.rank_loads_);
      scratch_ = std::move(o.scratch_);
      workspace_ = std::move(o.workspace_);
      v_ = o.v_;
      o.v_ = PlanView{};
      repoint();
    }
    return *this;
  }

  /// Empties the plan for a topology; buffers grow to the topology's largest plan once.
  void reset(const Topology& topo, std::string_view policy) {
    const auto most = static_cast<std::size_t>(max_plan_segments(topo.ranks(), topo.experts(), topo.replicas_per_rank()));
    if (segments_.size() < most) {
      segments_.resize(most);
      spare_.resize(most);
      transfers_.resize(most);
    }
    expert_offsets_.resize(static_cast<std::size_t>(topo.experts()) + 1);
    rank_loads_.resize(static_cast<std::size_t>(topo.ranks()));
    repoint();
    v_.begin(topo.ranks(), topo.experts(), policy.data(), static_cast<int>(policy.size()));
  }

  /// The plan as plain data, for planners to fill (after reset) with PlanView::push.
  [[nodiscard]] PlanView& view() noexcept { return v_; }
  [[nodiscard]] const PlanView& view() const noexcept { return v_; }

  /// At least `bytes` of 16-byte-aligned scratch for a planner; grows, never shrinks.
  [[nodiscard]] std::span<std::byte> workspace(std::size_t bytes) {
    const std::size_t words = (bytes + 15) / 16;
    if (workspace_.size() < words) workspace_.resize(words);
    return std::as_writable_bytes(std::span<Word>(workspace_)).first(bytes);
  }

  /// Appends a segment, checking its ids; segments may come in any expert order, finish()
  /// sorts them.
  void add_segment(int expert, int rank, count_t begin, count_t end) {
    // Out-of-range ids would index past the rank loads and the expert index.
    LLEP_EXPECTS(expert >= 0 && expert < v_.experts, "segment expert ", expert, " is outside [0, ", v_.experts, ")");
    LLEP_EXPECTS(rank >= 0 && rank < v_.ranks, "segment rank ", rank, " of expert ", expert, " is outside [0, ",
                 v_.ranks, ")");
    if (v_.num_segments == v_.max_segments) grow(segments_.size() * 2 + 8);
    v_.reopen();
    v_.push(expert, rank, begin, end);
  }

  void set_capacity(count_t cap) noexcept { v_.capacity = cap; }
  void set_policy(std::string_view policy) noexcept {
    v_.set_policy(policy.data(), static_cast<int>(policy.size()));
  }

  /// Sorts segments by (expert, begin), builds the per-expert index and derives the weight
  /// transfers: one per rank that computes a segment of an expert whose weights it does
  /// not hold (neither native nor replica), from the native rank; sorted by (expert, dst).
  /// `natives` (N entries, optional) are the topology's native ranks, to save lookups.
  void finish(const Topology& topo, const std::int32_t* natives = nullptr) {
    LLEP_EXPECTS(v_.dropped == 0, "a planner pushed ", v_.dropped, " segments past the bound of ", v_.max_segments,
                 " (policy ", policy(), "): a bug in its bound");
    auto no_replica = [](int, int) { return false; };
    auto replica = [&topo](int e, int r) { return topo.holds_replica(e, r); };
    if (natives != nullptr) {
      auto native = [natives](int e) { return natives[e]; };
      topo.has_replicas() ? v_.finish(native, replica) : v_.finish(native, no_replica);
    } else {
      auto native = [&topo](int e) { return topo.native_rank(e); };
      topo.has_replicas() ? v_.finish(native, replica) : v_.finish(native, no_replica);
    }
    // finish() swaps segments and spare: keep the vectors in step with the view.
    if (v_.segments != segments_.data()) segments_.swap(spare_);
  }

  /// Takes a plan made elsewhere (read from a file, received from another process) as
  /// given, without deriving or checking anything but the expert ids the index needs;
  /// validate() is what judges it. Segments are sorted by (expert, begin).
  void assign(const Topology& topo, std::string_view policy, count_t capacity,
              std::span<const Segment> segments, std::span<const WeightTransfer> transfers,
              std::span<const count_t> rank_loads) {
    reset(topo, policy);
    LLEP_EXPECTS(rank_loads.size() == static_cast<std::size_t>(v_.ranks), "rank loads hold ", rank_loads.size(),
                 " entries; P = ", v_.ranks);
    for (const Segment& s : segments)
      LLEP_EXPECTS(s.expert >= 0 && s.expert < v_.experts, "segment expert ", s.expert, " is outside [0, ",
                   v_.experts, ")");
    grow(std::max(segments.size(), transfers.size()));
    v_.capacity = capacity;
    std::copy(segments.begin(), segments.end(), segments_.begin());
    std::sort(segments_.begin(), segments_.begin() + static_cast<std::ptrdiff_t>(segments.size()), segment_order);
    v_.num_segments = static_cast<std::int32_t>(segments.size());
    for (int e = 0; e <= v_.experts; ++e) v_.expert_offsets[e] = 0;
    for (const Segment& s : segments) ++v_.expert_offsets[s.expert + 1];
    for (int e = 0; e < v_.experts; ++e) v_.expert_offsets[e + 1] += v_.expert_offsets[e];
    std::copy(transfers.begin(), transfers.end(), transfers_.begin());
    v_.num_transfers = static_cast<std::int32_t>(transfers.size());
    std::copy(rank_loads.begin(), rank_loads.end(), rank_loads_.begin());
    v_.finished = true;
  }

  [[nodiscard]] int ranks() const noexcept { return v_.ranks; }
  [[nodiscard]] int experts() const noexcept { return v_.experts; }
  /// Name of the policy that made the plan ("ep", "llep", ...).
  [[nodiscard]] std::string_view policy() const noexcept { return std::string_view(v_.policy); }
  [[nodiscard]] count_t capacity() const noexcept { return v_.capacity; }
  [[nodiscard]] bool finished() const noexcept { return v_.finished; }

  /// All segments, sorted by (expert, begin).
  [[nodiscard]] std::span<const Segment> segments() const noexcept {
    return {v_.segments, static_cast<std::size_t>(v_.num_segments)};
  }
  /// Segments of one expert, sorted by begin; empty when the expert has no load.
  [[nodiscard]] std::span<const Segment> segments(int expert) const noexcept {
    const auto e = static_cast<std::size_t>(expert);
    const auto b = static_cast<std::size_t>(v_.expert_offsets[e]);
    return {v_.segments + b, static_cast<std::size_t>(v_.expert_offsets[e + 1]) - b};
  }
  [[nodiscard]] std::span<const WeightTransfer> weight_transfers() const noexcept {
    return {v_.transfers, static_cast<std::size_t>(v_.num_transfers)};
  }
  [[nodiscard]] std::span<const count_t> rank_loads() const noexcept {
    return {v_.rank_loads, static_cast<std::size_t>(v_.ranks)};
  }

  /// Replicated's scratch (see PlanScratch).
  [[nodiscard]] PlanScratch& scratch() noexcept { return scratch_; }

 private:
  struct alignas(16) Word {
    std::byte b[16];
  };

  void repoint() {
    v_.segments = segments_.data();
    v_.spare = spare_.data();
    v_.transfers = transfers_.data();
    v_.expert_offsets = expert_offsets_.data();
    v_.rank_loads = rank_loads_.data();
    v_.max_segments = static_cast<std::int32_t>(segments_.size());
  }

  // Room for at least n segments (and transfers), keeping what is there.
  void grow(std::size_t n) {
    if (segments_.size() >= n) return;
    segments_.resize(n);
    spare_.resize(n);
    transfers_.resize(n);
    repoint();
  }

  std::vector<Segment> segments_;  // v_.segments points here (finish keeps it so)
  std::vector<Segment> spare_;
  std::vector<WeightTransfer> transfers_;
  std::vector<std::int32_t> expert_offsets_;
  std::vector<count_t> rank_loads_;
  std::vector<Word> workspace_;
  PlanScratch scratch_;
  PlanView v_;
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
