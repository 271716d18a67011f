#pragma once
// The Planner concept: a deterministic host function of (loads, topology) into a Plan.
#include <concepts>
#include <span>
#include <string_view>

#include "llep/core/plan.hpp"

namespace llep {

/// A load-balancing policy. `plan` must be deterministic, so every rank computes the same
/// plan from the same loads without a broadcast, and must leave `out` finished.
template <class P>
concept Planner = requires(const P& planner, std::span<const count_t> loads, const Topology& topo, Plan& out) {
  { planner.plan(loads, topo, out) } -> std::same_as<void>;
  { P::name } -> std::convertible_to<std::string_view>;
};

namespace detail {
template <class>
inline constexpr bool dependent_false = false;
}

/// Named in a static_assert so a type that is not a planner fails with an instruction.
template <class P>
constexpr bool check_planner() {
  static_assert(Planner<P>,
                "llep: this type is not a Planner. Give it `static constexpr std::string_view name` and "
                "`void plan(std::span<const llep::count_t> loads, const llep::Topology&, llep::Plan& out) "
                "const` that fills `out` and calls out.finish(topo).");
  return true;
}

}  // namespace llep
