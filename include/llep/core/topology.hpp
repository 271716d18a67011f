#pragma once
// Topology: P ranks, N experts, where each expert's weights live, and how ranks group into
// nodes (for hierarchical policies).
//
// Weights residency: every expert has one native rank (its home, the source of every
// weight transfer), and a rank may also hold replicas, extra copies of other experts'
// weights (EPLB's redundant experts). Every rank holds the same number of slots (natives +
// replicas), so that memory stays even. At the default placement every rank holds N / P
// natives; a general placement (from_held, or natives plus replicas) may give ranks
// different numbers of natives and P need not divide N, as long as the slots are equal.
// A rank that holds an expert (native or replica) computes its tokens without a weight
// transfer.
#include <algorithm>
#include <cstddef>
#include <span>
#include <vector>

#include "llep/core/error.hpp"

namespace llep {

class Topology {
 public:
  /// P ranks, N experts, native rank of e is e / (N / P), one node holding every rank
  /// unless `ranks_per_node` says otherwise.
  Topology(int ranks, int experts, int ranks_per_node = 0) : ranks_(ranks), experts_(experts) {
    check_shape(ranks_per_node);
    check_default_placement();
    build_holders();
  }

  /// Custom native placement: `native[e]` is the rank holding expert e; each rank must own
  /// exactly N / P experts so that memory stays even.
  Topology(int ranks, std::vector<int> native, int ranks_per_node = 0)
      : Topology(ranks, static_cast<int>(native.size()), native, {}, ranks_per_node) {}

  /// Natives as given (empty `native`: the default e / (N / P)) plus replicas:
  /// `replicas[r]` lists the experts whose extra copies rank r holds. Every rank must hold
  /// the same number of slots, natives + replicas (even memory), no replica of its own
  /// natives, no expert twice. With explicit natives P need not divide N.
  Topology(int ranks, int experts, std::vector<int> native, std::vector<std::vector<int>> replicas,
           int ranks_per_node = 0)
      : ranks_(ranks), experts_(experts) {
    check_shape(ranks_per_node);
    if (native.empty()) {
      check_default_placement();
    } else {
      LLEP_EXPECTS(native.size() == static_cast<std::size_t>(experts), "native placement lists ", native.size(),
                   " experts but N = ", experts);
      for (std::size_t e = 0; e < native.size(); ++e)
        LLEP_EXPECTS(native[e] >= 0 && native[e] < ranks, "native rank ", native[e], " of expert ", e,
                     " is outside [0, ", ranks, ")");
      native_ = std::move(native);
    }
    set_replicas(std::move(replicas));
  }

  /// A placement given by what each rank holds: `held[r]` lists rank r's experts, natives
  /// and replicas (every rank the same number, no expert twice, every expert somewhere);
  /// `native[e]` names the holder that is e's home (empty: its lowest holder).
  [[nodiscard]] static Topology from_held(int ranks, int experts, std::vector<std::vector<int>> held,
                                          std::vector<int> native = {}, int ranks_per_node = 0) {
    LLEP_EXPECTS(ranks > 0 && held.size() == static_cast<std::size_t>(ranks), "held lists ", held.size(),
                 " ranks but P = ", ranks);
    LLEP_EXPECTS(experts > 0, "experts N = ", experts, " must be > 0");
    const auto N = static_cast<std::size_t>(experts);
    std::vector<int> lowest(N, -1);
    for (int r = ranks - 1; r >= 0; --r) {
      auto& list = held[static_cast<std::size_t>(r)];
      std::sort(list.begin(), list.end());
      for (std::size_t i = 0; i < list.size(); ++i) {
        const int e = list[i];
        LLEP_EXPECTS(e >= 0 && e < experts, "expert ", e, " held by rank ", r, " is outside [0, ", experts, ")");
        LLEP_EXPECTS(i == 0 || list[i - 1] != e, "rank ", r, " holds expert ", e, " twice");
        lowest[static_cast<std::size_t>(e)] = r;
      }
    }
    for (std::size_t e = 0; e < N; ++e)
      LLEP_EXPECTS(lowest[e] >= 0, "expert ", e, " is held by no rank; every expert needs a home");
    if (native.empty()) native = lowest;
    LLEP_EXPECTS(native.size() == N, "native placement lists ", native.size(), " experts but N = ", experts);
    std::vector<std::vector<int>> replicas(static_cast<std::size_t>(ranks));
    std::vector<char> home_held(N, 0);
    for (int r = 0; r < ranks; ++r)
      for (const int e : held[static_cast<std::size_t>(r)]) {
        if (native[static_cast<std::size_t>(e)] == r)
          home_held[static_cast<std::size_t>(e)] = 1;
        else
          replicas[static_cast<std::size_t>(r)].push_back(e);
      }
    for (std::size_t e = 0; e < N; ++e)
      LLEP_EXPECTS(home_held[e], "native rank ", native[e], " of expert ", e, " does not hold it");
    return Topology(ranks, experts, std::move(native), std::move(replicas), ranks_per_node);
  }

  /// This topology with its replicas replaced (natives and nodes kept).
  [[nodiscard]] Topology with_replicas(std::vector<std::vector<int>> replicas) const {
    Topology t = *this;
    t.set_replicas(std::move(replicas));
    return t;
  }

  [[nodiscard]] int ranks() const noexcept { return ranks_; }
  [[nodiscard]] int experts() const noexcept { return experts_; }
  /// N / P: natives per rank at the default placement (rounded down when a general
  /// placement has P not dividing N; slots_per_rank() is what every rank holds).
  [[nodiscard]] int experts_per_rank() const noexcept { return experts_ / ranks_; }
  [[nodiscard]] int ranks_per_node() const noexcept { return ranks_per_node_; }
  [[nodiscard]] int nodes() const noexcept { return ranks_ / ranks_per_node_; }
  [[nodiscard]] int node_of(int rank) const noexcept { return rank / ranks_per_node_; }
  /// Natives at e / (N / P) (replicas may still be present).
  [[nodiscard]] bool default_placement() const noexcept { return native_.empty(); }
  /// S: replicas per rank, the most any rank holds (0 without replication); the same on
  /// every rank unless the natives are uneven.
  [[nodiscard]] int replicas_per_rank() const noexcept { return replicas_per_rank_; }
  /// Weight slots per rank, natives + replicas: the same on every rank.
  [[nodiscard]] int slots_per_rank() const noexcept { return slots_; }
  [[nodiscard]] bool has_replicas() const noexcept { return replicas_per_rank_ > 0; }

  [[nodiscard]] int native_rank(int expert) const noexcept {
    return native_.empty() ? expert / experts_per_rank() : native_[static_cast<std::size_t>(expert)];
  }

  /// Experts native to `rank` (their home; replicas not included), ascending.
  template <class OutIt>
  void native_experts(int rank, OutIt out) const {
    for (int e = 0; e < experts_; ++e)
      if (native_rank(e) == rank) *out++ = e;
  }

  /// Experts whose replicas `rank` holds (not its natives), ascending.
  [[nodiscard]] std::span<const int> replica_experts(int rank) const noexcept {
    if (replica_offsets_.empty()) return {};
    const auto r = static_cast<std::size_t>(rank);
    return std::span<const int>(replica_).subspan(replica_offsets_[r], replica_offsets_[r + 1] - replica_offsets_[r]);
  }

  /// Whether `rank` holds `expert`'s weights, as its native rank or as a replica.
  [[nodiscard]] bool holds(int expert, int rank) const noexcept {
    return native_rank(expert) == rank || holds_replica(expert, rank);
  }

  /// Whether `rank` holds a replica of `expert` (its native rank does not count).
  [[nodiscard]] bool holds_replica(int expert, int rank) const noexcept {
    if (replicas_per_rank_ == 0) return false;  // the common case, on the planners' hot path
    const auto r = replica_experts(rank);
    return std::binary_search(r.begin(), r.end(), expert);
  }

  /// Replicas of `expert`: its copies besides the native one.
  [[nodiscard]] int replicas(int expert) const noexcept { return static_cast<int>(holders(expert).size()) - 1; }

  /// Ranks that hold `expert` (native included), ascending.
  [[nodiscard]] std::span<const int> holders(int expert) const noexcept {
    if (holder_offsets_.empty()) return std::span<const int>(holders_).subspan(static_cast<std::size_t>(expert), 1);
    const auto e = static_cast<std::size_t>(expert);
    return std::span<const int>(holders_).subspan(holder_offsets_[e], holder_offsets_[e + 1] - holder_offsets_[e]);
  }

  /// Experts `rank` holds (natives and replicas), ascending: the order of the weights a
  /// layer takes for that rank (MoeLayer::set_native_weights).
  template <class OutIt>
  void held_experts(int rank, OutIt out) const {
    for (int e = 0; e < experts_; ++e)
      if (holds(e, rank)) *out++ = e;
  }

  friend bool operator==(const Topology& a, const Topology& b) {
    return a.ranks_ == b.ranks_ && a.experts_ == b.experts_ && a.ranks_per_node_ == b.ranks_per_node_ &&
           a.native_ == b.native_ && a.replica_offsets_ == b.replica_offsets_ && a.replica_ == b.replica_;
  }

 private:
  void check_shape(int ranks_per_node) {
    LLEP_EXPECTS(ranks_ > 0, "ranks P = ", ranks_, " must be > 0");
    LLEP_EXPECTS(experts_ > 0, "experts N = ", experts_, " must be > 0");
    ranks_per_node_ = ranks_per_node == 0 ? ranks_ : ranks_per_node;
    LLEP_EXPECTS(ranks_per_node_ > 0 && ranks_ % ranks_per_node_ == 0, "ranks_per_node = ", ranks_per_node,
                 " must divide ranks P = ", ranks_);
  }

  void check_default_placement() {
    LLEP_EXPECTS(experts_ % ranks_ == 0, "experts N = ", experts_, " must be a multiple of ranks P = ", ranks_);
    slots_ = experts_ / ranks_;
  }

  // Validates and stores the replicas, and the slots: natives + replicas, equal on every rank.
  void set_replicas(std::vector<std::vector<int>> replicas) {
    LLEP_EXPECTS(replicas.empty() || replicas.size() == static_cast<std::size_t>(ranks_), "replicas list ",
                 replicas.size(), " ranks but the topology has P = ", ranks_);
    const auto P = static_cast<std::size_t>(ranks_);
    std::vector<int> natives(P, 0);
    for (int e = 0; e < experts_; ++e) ++natives[static_cast<std::size_t>(native_rank(e))];
    replicas.resize(P);
    replicas_per_rank_ = 0;
    replica_.clear();
    replica_offsets_.assign(P + 1, 0);
    for (int r = 0; r < ranks_; ++r) {
      auto& list = replicas[static_cast<std::size_t>(r)];
      std::sort(list.begin(), list.end());
      for (std::size_t i = 0; i < list.size(); ++i) {
        const int e = list[i];
        LLEP_EXPECTS(e >= 0 && e < experts_, "replica expert ", e, " on rank ", r, " is outside [0, ", experts_, ")");
        LLEP_EXPECTS(native_rank(e) != r, "rank ", r, " holds a replica of expert ", e,
                     " which is already native there");
        LLEP_EXPECTS(i == 0 || list[i - 1] != e, "rank ", r, " holds two replicas of expert ", e);
      }
      const auto held = [&](int q) { return natives[static_cast<std::size_t>(q)] + static_cast<int>(replicas[static_cast<std::size_t>(q)].size()); };
      LLEP_EXPECTS(held(r) == held(0), "rank ", r, " holds ", natives[static_cast<std::size_t>(r)], " natives + ",
                   list.size(), " replicas = ", held(r), " slots but rank 0 holds ", held(0),
                   "; every rank must hold the same number (even memory)");
      replicas_per_rank_ = std::max(replicas_per_rank_, static_cast<int>(list.size()));
      replica_.insert(replica_.end(), list.begin(), list.end());
      replica_offsets_[static_cast<std::size_t>(r) + 1] = replica_.size();
    }
    slots_ = natives[0] + static_cast<int>(replicas[0].size());
    if (replica_.empty()) replica_offsets_.clear();
    build_holders();
  }

  void build_holders() {
    holder_offsets_.clear();
    holders_.clear();
    if (replicas_per_rank_ == 0) {  // one holder each, the native rank: no offsets needed
      holders_.resize(static_cast<std::size_t>(experts_));
      for (int e = 0; e < experts_; ++e) holders_[static_cast<std::size_t>(e)] = native_rank(e);
      return;
    }
    // holders, by expert: a counting pass over (rank, expert) in rank order keeps each
    // expert's holders ascending.
    const auto N = static_cast<std::size_t>(experts_);
    holder_offsets_.assign(N + 1, 0);
    for (int r = 0; r < ranks_; ++r)
      for (int e = 0; e < experts_; ++e)
        if (holds(e, r)) ++holder_offsets_[static_cast<std::size_t>(e) + 1];
    for (std::size_t e = 0; e < N; ++e) holder_offsets_[e + 1] += holder_offsets_[e];
    holders_.assign(holder_offsets_[N], 0);
    std::vector<std::size_t> cursor(holder_offsets_.begin(), holder_offsets_.end() - 1);
    for (int r = 0; r < ranks_; ++r)
      for (int e = 0; e < experts_; ++e)
        if (holds(e, r)) holders_[cursor[static_cast<std::size_t>(e)]++] = r;
  }

  int ranks_;
  int experts_;
  int ranks_per_node_ = 0;
  std::vector<int> native_;  // empty: the default e / M placement
  int replicas_per_rank_ = 0;  // the most on any rank
  int slots_ = 0;
  // Rank r's replica experts, ascending: replica_[replica_offsets_[r] .. [r + 1]); no
  // offsets without replicas.
  std::vector<std::size_t> replica_offsets_;
  std::vector<int> replica_;
  // Derived from the above. Holders of expert e: holders_[holder_offsets_[e] ..
  // holder_offsets_[e + 1]), ascending; without replicas, no offsets and holders_[e] is
  // the native rank.
  std::vector<std::size_t> holder_offsets_;
  std::vector<int> holders_;
};

}  // namespace llep
