#pragma once
// Topology: P ranks, N experts, where each expert's weights live, and how ranks group into
// nodes (for hierarchical policies).
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
  }

  [[nodiscard]] int ranks() const noexcept { return ranks_; }
  [[nodiscard]] int experts() const noexcept { return experts_; }
  [[nodiscard]] int experts_per_rank() const noexcept { return experts_ / ranks_; }
  [[nodiscard]] int ranks_per_node() const noexcept { return ranks_per_node_; }
  [[nodiscard]] int nodes() const noexcept { return ranks_ / ranks_per_node_; }
  [[nodiscard]] int node_of(int rank) const noexcept { return rank / ranks_per_node_; }
  [[nodiscard]] bool default_placement() const noexcept { return native_.empty(); }

  [[nodiscard]] int native_rank(int expert) const noexcept {
    return native_.empty() ? expert / experts_per_rank() : native_[static_cast<std::size_t>(expert)];
  }

  /// Experts whose weights live on `rank`, ascending.
  template <class OutIt>
  void native_experts(int rank, OutIt out) const {
    for (int e = 0; e < experts_; ++e)
      if (native_rank(e) == rank) *out++ = e;
  }

  friend bool operator==(const Topology&, const Topology&) = default;

 private:
  int ranks_;
  int experts_;
  int ranks_per_node_ = 0;
  std::vector<int> native_;  // empty: the default e / M placement
};

}  // namespace llep
