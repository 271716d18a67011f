#pragma once
// Standard expert parallelism: every expert's tokens on its native rank.
#include <algorithm>
#include <span>
#include <string_view>

#include "llep/core/plan.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

struct StandardEp {
  static constexpr std::string_view name = "ep";

  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    check_loads(loads, topo);
    out.reset(topo, name);
    for (int e = 0; e < topo.experts(); ++e) {
      const count_t l = loads[static_cast<std::size_t>(e)];
      if (l > 0) out.add_segment(e, topo.native_rank(e), 0, l);
    }
    // No budget is imposed: the capacity is what the busiest rank must hold.
    const auto rl = out.rank_loads();
    out.set_capacity(std::max<count_t>(1, *std::max_element(rl.begin(), rl.end())));
    out.finish(topo);
  }

  friend constexpr bool operator==(const StandardEp&, const StandardEp&) = default;
};

static_assert(check_planner<StandardEp>());

}  // namespace llep
