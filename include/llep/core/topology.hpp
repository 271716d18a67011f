#pragma once
// Topology: P ranks, N experts, where each expert's weights live, and how ranks group into
// nodes (for hierarchical policies).
//
// Weights residency: every expert has one native rank (its home, the source of every
// weight transfer), and a rank may also hold replicas, extra copies of other experts'
// weights (EPLB's redundant experts). Every rank holds the same number of slots,
// N / P natives + S replicas, so that memory stays even. A rank that holds an expert
// (native or replica) computes its tokens without a weight transfer.
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
    LLEP_EXPECTS(ranks > 0, "ranks P = ", ranks, " must be > 0");
    LLEP_EXPECTS(experts > 0, "experts N = ", experts, " must be > 0");
    LLEP_EXPECTS(experts % ranks == 0, "experts N = ", experts, " must be a multiple of ranks P = ",
                 ranks);
    ranks_per_node_ = ranks_per_node == 0 ? ranks : ranks_per_node;
    LLEP_EXPECTS(ranks_per_node_ > 0 && ranks % ranks_per_node_ == 0, "ranks_per_node = ",
                 ranks_per_node, " must divide ranks P = ", ranks);
    build_holders();
  }

  /// Custom native placement: `native[e]` is the rank holding expert e; each rank must own
  /// exactly N / P experts so that memory stays even.
  Topology(int ranks, std::vector<int> native, int ranks_per_node = 0)
      : Topology(ranks, static_cast<int>(native.size()), ranks_per_node) {
    std::vector<int> owned(static_cast<std::size_t>(ranks), 0);
    for (std::size_t e = 0; e < native.size(); ++e) {
      LLEP_EXPECTS(native[e] >= 0 && native[e] < ranks, "native rank ", native[e], " of expert ", e,
                   " is outside [0, ", ranks, ")");
      ++owned[static_cast<std::size_t>(native[e])];
    }
    for (int r = 0; r < ranks; ++r)
      LLEP_EXPECTS(owned[static_cast<std::size_t>(r)] == experts_per_rank(), "rank ", r, " owns ",
                   owned[static_cast<std::size_t>(r)], " experts; every rank must own N / P = ",
                   experts_per_rank());
    native_ = std::move(native);
    build_holders();
  }

  /// Natives as given (empty `native`: the default e / (N / P)) plus replicas:
  /// `replicas[r]` lists the experts whose extra copies rank r holds. Every rank must hold
  /// the same number S of replicas (even memory), none of its own natives, no expert twice.
  Topology(int ranks, int experts, std::vector<int> native, std::vector<std::vector<int>> replicas,
           int ranks_per_node = 0)
      : Topology(native.empty() ? Topology(ranks, experts, ranks_per_node)
                                : Topology(ranks, std::move(native), ranks_per_node)) {
    LLEP_EXPECTS(experts_ == experts, "native placement lists ", experts_, " experts but N = ", experts);
    set_replicas(std::move(replicas));
  }

  /// This topology with its replicas replaced (natives and nodes kept).
  [[nodiscard]] Topology with_replicas(std::vector<std::vector<int>> replicas) const {
    Topology t = *this;
    t.set_replicas(std::move(replicas));
    return t;
  }

  [[nodiscard]] int ranks() const noexcept { return ranks_; }
  [[nodiscard]] int experts() const noexcept { return experts_; }
  [[nodiscard]] int experts_per_rank() const noexcept { return experts_ / ranks_; }
  [[nodiscard]] int ranks_per_node() const noexcept { return ranks_per_node_; }
  [[nodiscard]] int nodes() const noexcept { return ranks_ / ranks_per_node_; }
  [[nodiscard]] int node_of(int rank) const noexcept { return rank / ranks_per_node_; }
  /// Natives at e / (N / P) (replicas may still be present).
  [[nodiscard]] bool default_placement() const noexcept { return native_.empty(); }
  /// S: replicas per rank (0 without replication).
  [[nodiscard]] int replicas_per_rank() const noexcept { return replicas_per_rank_; }
  /// Weight slots per rank: N / P natives + S replicas.
  [[nodiscard]] int slots_per_rank() const noexcept { return experts_per_rank() + replicas_per_rank_; }
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

  /// Experts whose replicas `rank` holds (not its natives), ascending; S of them.
  [[nodiscard]] std::span<const int> replica_experts(int rank) const noexcept {
    const auto S = static_cast<std::size_t>(replicas_per_rank_);
    return std::span<const int>(replica_).subspan(static_cast<std::size_t>(rank) * S, S);
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
           a.native_ == b.native_ && a.replicas_per_rank_ == b.replicas_per_rank_ && a.replica_ == b.replica_;
  }

 private:
  void set_replicas(std::vector<std::vector<int>> replicas) {
    LLEP_EXPECTS(replicas.empty() || replicas.size() == static_cast<std::size_t>(ranks_), "replicas list ",
                 replicas.size(), " ranks but the topology has P = ", ranks_);
    const std::size_t S = replicas.empty() ? 0 : replicas[0].size();
    LLEP_EXPECTS(S <= static_cast<std::size_t>(experts_ - experts_per_rank()), "rank 0 holds ", S,
                 " replicas; a rank can hold at most N - N / P = ", experts_ - experts_per_rank());
    replicas_per_rank_ = static_cast<int>(S);
    replica_.clear();
    if (S == 0) {
      for (std::size_t r = 0; r < replicas.size(); ++r)
        LLEP_EXPECTS(replicas[r].empty(), "rank ", r, " holds ", replicas[r].size(),
                     " replicas but rank 0 holds 0; every rank must hold the same number");
      build_holders();
      return;
    }
    replica_.reserve(S * static_cast<std::size_t>(ranks_));
    for (int r = 0; r < ranks_; ++r) {
      auto& list = replicas[static_cast<std::size_t>(r)];
      LLEP_EXPECTS(list.size() == S, "rank ", r, " holds ", list.size(), " replicas but rank 0 holds ", S,
                   "; every rank must hold the same number (even memory)");
      std::sort(list.begin(), list.end());
      for (std::size_t i = 0; i < S; ++i) {
        const int e = list[i];
        LLEP_EXPECTS(e >= 0 && e < experts_, "replica expert ", e, " on rank ", r, " is outside [0, ", experts_, ")");
        LLEP_EXPECTS(native_rank(e) != r, "rank ", r, " holds a replica of expert ", e,
                     " which is already native there");
        LLEP_EXPECTS(i == 0 || list[i - 1] != e, "rank ", r, " holds two replicas of expert ", e);
      }
      replica_.insert(replica_.end(), list.begin(), list.end());
    }
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
  int replicas_per_rank_ = 0;
  std::vector<int> replica_;  // P x S, each rank's replica experts ascending
  // Derived from the above. Holders of expert e: holders_[holder_offsets_[e] ..
  // holder_offsets_[e + 1]), ascending; without replicas, no offsets and holders_[e] is
  // the native rank.
  std::vector<std::size_t> holder_offsets_;
  std::vector<int> holders_;
};

}  // namespace llep
