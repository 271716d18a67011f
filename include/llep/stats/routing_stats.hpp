#pragma once
// The RoutingStats concept (DESIGN.md step 2, "count"): a rank's top-k ids become its row
// C[p][.] of the counts matrix, exchanged so that every rank holds the full C and the loads.
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <span>
#include <string_view>

#include "llep/core/config.hpp"
#include "llep/core/counts.hpp"

namespace llep {

/// The shape of one rank's routing for one step: N experts, top-K, B_p tokens (so the ids
/// hold B_p * K entries). N and K must agree across ranks; B_p may differ. `config` is a
/// fingerprint of the caller's configuration (the layer's: P, N, K, placement, replicas,
/// expert shape, planner and its settings); it must agree across ranks too, so a rank
/// configured differently fails the step on every rank instead of computing garbage.
struct StepShape {
  int experts = 0;            // N
  int top_k = 0;              // K
  count_t tokens = 0;         // B_p
  std::uint64_t config = 0;   // configuration fingerprint, 0 when the caller has none

  friend bool operator==(const StepShape&, const StepShape&) = default;
  friend std::ostream& operator<<(std::ostream& os, const StepShape& s) {
    return os << "StepShape{N = " << s.experts << ", K = " << s.top_k << ", B_p = " << s.tokens
              << ", config = " << s.config << "}";
  }
};

/// Local facts a rank found about its routing that the whole group must hear, so that every
/// rank throws the same llep::Error instead of one rank throwing alone and the others hanging.
struct RouteFlags {
  bool nonfinite_weights = false;  // a top-k weight is NaN or infinite

  friend bool operator==(const RouteFlags&, const RouteFlags&) = default;
};

/// Routing statistics over an execution space `Exec` and a transport `T`. `update` is a
/// collective: every rank calls it with its ids (B_p * K entries in Exec's memory), and
/// afterwards every rank's `counts()` is the same C[P][N] and `loads()` the same l[N];
/// `local_counts()` is this rank's row. Bad input on any rank throws the same llep::Error
/// on every rank.
template <class S, class Exec, class T>
concept RoutingStats = requires(S& s, const S& cs, Exec& exec, T& transport, const std::int32_t* ids, std::size_t pairs,
                                StepShape shape, RouteFlags flags) {
  { S::name } -> std::convertible_to<std::string_view>;
  { s.update(exec, transport, ids, pairs, shape) } -> std::same_as<void>;
  { s.update(exec, transport, ids, pairs, shape, flags) } -> std::same_as<void>;
  { cs.counts() } -> std::convertible_to<CountsView>;
  { cs.loads() } -> std::convertible_to<std::span<const count_t>>;
  { cs.local_counts() } -> std::convertible_to<std::span<const count_t>>;
};

/// Statistics that also keep a history of past loads (for history-based planners).
template <class S, class Exec, class T>
concept HistoryStats = RoutingStats<S, Exec, T> && requires(const S& cs) {
  { cs.history_loads() } -> std::convertible_to<std::span<const double>>;
};

/// Named in a static_assert so a type that is not a RoutingStats fails with an instruction.
template <class S, class Exec, class T>
constexpr bool check_routing_stats() {
  static_assert(RoutingStats<S, Exec, T>,
                "llep: this type is not a RoutingStats for this Exec and Transport. Give it "
                "`static constexpr std::string_view name`, `void update(Exec&, Transport&, const std::int32_t* "
                "ids, std::size_t pairs, llep::StepShape, llep::RouteFlags = {})` (a collective that fills the "
                "full counts matrix on every rank), `llep::CountsView counts() const`, "
                "`std::span<const llep::count_t> loads() const` and `std::span<const llep::count_t> "
                "local_counts() const`.");
  return true;
}

/// As check_routing_stats, plus `std::span<const double> history_loads() const`.
template <class S, class Exec, class T>
constexpr bool check_history_stats() {
  static_assert(check_routing_stats<S, Exec, T>());
  static_assert(HistoryStats<S, Exec, T>,
                "llep: this type is not a HistoryStats. Add `std::span<const double> history_loads() const`, "
                "one smoothed load per expert.");
  return true;
}

}  // namespace llep
