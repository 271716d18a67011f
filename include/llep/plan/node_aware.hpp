#pragma once
// Node-aware Least-Loaded Assignment: LeastLoaded's rules (capacity, visiting order,
// pending loads, native keep, the min_tokens_per_gemm slice rule), but a spill looks for
// room inside the expert's native node before it crosses to another node, because
// intra-node links (NVLink) are several times faster than the network between nodes.
//
// Standalone rather than a wrapper NodeAware<Inner>: where a slice goes is the core of the
// LLA loop, so no outer layer can change it without re-planning. With one node it is
// LeastLoaded exactly (tests/plan/test_node_aware.cpp checks that plan for plan).
#include <algorithm>
#include <cstddef>
#include <ostream>
#include <span>
#include <string_view>

#include "llep/core/plan.hpp"
#include "llep/plan/alg.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

struct NodeAware {
  static constexpr std::string_view name = "node-aware";

  double alpha = 1.0;                  ///< capacity factor, as in LeastLoaded
  count_t min_tokens_per_gemm = 1024;  ///< smallest slice worth a GEMM, as in LeastLoaded

  void check() const { base().check(); }
  [[nodiscard]] LeastLoaded base() const noexcept { return LeastLoaded{alpha, min_tokens_per_gemm}; }

  /// LeastLoaded's: a forced slice here too needs every other rank's room below m.
  [[nodiscard]] PlanBounds bounds(const Topology& topo, std::int64_t max_pairs_per_rank) const {
    return base().bounds(topo, max_pairs_per_rank);
  }

  [[nodiscard]] static std::size_t scratch_bytes(const Topology& topo) noexcept {
    return LeastLoaded::scratch_bytes(topo);
  }

  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    const LeastLoaded lla = base();
    const int P = topo.ranks(), per_node = topo.ranks_per_node();
    const count_t m = min_tokens_per_gemm;
    // As in LeastLoaded, only the least-effective rank of a group can qualify (it has the
    // most room), so one candidate per group: the native node's ranks, then the others.
    lla.assign(loads, topo, out, name, [&](const count_t* effective, const alg::Spill& s) -> alg::Slice {
      const int first = s.native / per_node * per_node;
      const int in_node = alg::least_loaded_rank(effective, first, first + per_node, s.native);
      const int off_node = alg::least_loaded_rank(effective, 0, P, s.native, first, first + per_node);
      for (const int q : {in_node, off_node}) {
        if (q < 0) continue;
        const count_t c = alg::lla_slice(s.rows_left, s.cap - effective[q], m, false);
        if (c > 0) return {q, c};
      }
      // Nobody qualifies: force the rest, inside the node when it has another rank.
      return {in_node >= 0 ? in_node : off_node, s.rows_left};
    });
  }

  friend constexpr bool operator==(const NodeAware&, const NodeAware&) = default;
  friend std::ostream& operator<<(std::ostream& os, const NodeAware& c) {
    return os << "NodeAware{alpha=" << c.alpha << ", min_tokens_per_gemm=" << c.min_tokens_per_gemm << "}";
  }
};

static_assert(check_planner<NodeAware>());

/// Rows (token-expert pairs) a plan computes on a node other than the node of the expert's
/// native rank: each crosses the inter-node network twice (dispatch and combine). Multiply
/// by the row bytes (D * element size) for bytes per direction.
[[nodiscard]] inline count_t cross_node_rows(const Plan& plan, const Topology& topo) noexcept {
  count_t rows = 0;
  for (const Segment& s : plan.segments())
    if (topo.node_of(s.rank) != topo.node_of(topo.native_rank(s.expert))) rows += s.size();
  return rows;
}

/// Weight transfers of a plan whose source and destination are on different nodes;
/// multiply by the bytes of one expert's weights.
[[nodiscard]] inline std::size_t cross_node_transfers(const Plan& plan, const Topology& topo) noexcept {
  std::size_t n = 0;
  for (const WeightTransfer& w : plan.weight_transfers())
    if (topo.node_of(w.src) != topo.node_of(w.dst)) ++n;
  return n;
}

}  // namespace llep
