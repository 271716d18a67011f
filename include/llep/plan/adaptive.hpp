#pragma once
// Alg. 4's switch: when the native per-rank load ratio max/mean is below lambda, standard
// EP is good enough and moves no weights; otherwise use the inner planner.
#include <cmath>
#include <ostream>
#include <span>
#include <string_view>

#include "llep/core/plan.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/planner.hpp"
#include "llep/plan/standard_ep.hpp"

namespace llep {

template <Planner Inner = LeastLoaded>
struct Adaptive {
  static constexpr std::string_view name = "adaptive";

  double lambda = 1.3;  ///< imbalance ratio at and above which Inner plans
  Inner inner{};

  /// True when `loads` are imbalanced enough for the inner planner.
  [[nodiscard]] bool use_inner(std::span<const count_t> loads, const Topology& topo, PlanScratch& s) const {
    s.rank_tmp.resize(static_cast<std::size_t>(topo.ranks()));
    native_rank_loads(loads, topo, s.rank_tmp);
    return imbalance(s.rank_tmp) >= lambda;
  }

  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    LLEP_EXPECTS(std::isfinite(lambda) && lambda > 0, "lambda = ", lambda, " must be a finite number > 0");
    // A bad inner config fails on every call, not only on the skewed batches that reach it.
    if constexpr (requires { inner.check(); }) inner.check();
    check_loads(loads, topo);
    if (use_inner(loads, topo, out.scratch()))
      inner.plan(loads, topo, out);
    else
      StandardEp{}.plan(loads, topo, out);
  }

  friend constexpr bool operator==(const Adaptive&, const Adaptive&) = default;
  friend std::ostream& operator<<(std::ostream& os, const Adaptive& c) {
    return os << "Adaptive{lambda=" << c.lambda << ", inner=" << c.inner << "}";
  }
};

static_assert(check_planner<Adaptive<>>());

}  // namespace llep
