#pragma once
// Alg. 4's switch: when the native per-rank load ratio max/mean is below lambda, standard
// EP is good enough and moves no weights; otherwise use the inner planner.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <span>
#include <string_view>

#include "llep/core/plan.hpp"
#include "llep/plan/alg.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/planner.hpp"
#include "llep/plan/standard_ep.hpp"

namespace llep {

template <Planner Inner = LeastLoaded>
struct Adaptive {
  static constexpr std::string_view name = "adaptive";

  double lambda = 1.3;  ///< imbalance ratio at and above which Inner plans
  Inner inner{};

 private:
  [[nodiscard]] static std::size_t own_bytes(const Topology& topo) noexcept {
    alg::Carve c;
    (void)c.take<count_t>(static_cast<std::size_t>(topo.ranks()));
    (void)c.take<std::int32_t>(static_cast<std::size_t>(topo.experts()));
    return c.used;
  }

 public:

  /// The inner planner's bounds, or standard EP's when the native peak stays below
  /// lambda x mean <= lambda x B (so at most floor(lambda x B) rows), whichever is larger.
  [[nodiscard]] PlanBounds bounds(const Topology& topo, std::int64_t max_pairs_per_rank) const {
    const std::int64_t total = detail::total_pairs(topo, max_pairs_per_rank);
    PlanBounds ep = StandardEp::bounds(topo, max_pairs_per_rank);
    const double below = lambda * static_cast<double>(max_pairs_per_rank);
    if (below < static_cast<double>(total)) ep.rows_per_rank = static_cast<std::int64_t>(below);
    return detail::max_bounds(ep, plan_bounds(inner, topo, max_pairs_per_rank));
  }

  /// Bytes of scratch plan() carves from Plan::workspace: the native rank loads and
  /// natives, or the inner planner's, whichever is larger.
  [[nodiscard]] std::size_t scratch_bytes(const Topology& topo) const noexcept {
    return std::max(own_bytes(topo), planner_scratch_bytes(inner, topo));
  }

  /// True when `loads` are imbalanced enough for the inner planner; `load` (P entries)
  /// receives the native rank loads.
  [[nodiscard]] LLEP_HOST_DEVICE static bool use_inner(double lambda, const count_t* loads, alg::TopoView t,
                                                       count_t* load) noexcept {
    alg::native_loads(loads, t, load);
    return alg::imbalance(load, t.ranks) >= lambda;
  }

  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    LLEP_EXPECTS(std::isfinite(lambda) && lambda > 0, "lambda = ", lambda, " must be a finite number > 0");
    // A bad inner config fails on every call, not only on the skewed batches that reach it.
    if constexpr (requires { inner.check(); }) inner.check();
    check_loads(loads, topo);
    alg::Carve c{out.workspace(scratch_bytes(topo)).data()};
    count_t* load = c.take<count_t>(static_cast<std::size_t>(topo.ranks()));
    const alg::TopoView t = rank_view(topo, c.take<std::int32_t>(static_cast<std::size_t>(topo.experts())));
    if (use_inner(lambda, loads.data(), t, load))
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
