#pragma once
// Standard expert parallelism: every expert's tokens on its native rank.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "llep/core/plan.hpp"
#include "llep/plan/alg.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

struct StandardEp {
  static constexpr std::string_view name = "ep";

  /// Every expert on its native rank: a rank computes at most all P x B pairs (every
  /// one routed to its experts), none foreign; one segment per expert, no transfer.
  [[nodiscard]] static PlanBounds bounds(const Topology& topo, std::int64_t max_pairs_per_rank) {
    return PlanBounds{detail::total_pairs(topo, max_pairs_per_rank), 0, topo.experts(), 0};
  }

  [[nodiscard]] static std::size_t scratch_bytes(const Topology& topo) noexcept {
    return static_cast<std::size_t>(topo.experts()) * sizeof(std::int32_t);
  }

  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    check_loads(loads, topo);
    out.reset(topo, name);
    // No budget is imposed: the capacity is what the busiest rank must hold.
    auto* native = reinterpret_cast<std::int32_t*>(out.workspace(scratch_bytes(topo)).data());
    alg::standard_ep(loads.data(), topo_view(topo, native), out.view());
    out.finish(topo, native);
  }

  friend constexpr bool operator==(const StandardEp&, const StandardEp&) = default;
};

static_assert(check_planner<StandardEp>());

}  // namespace llep
