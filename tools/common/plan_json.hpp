#pragma once
// JSON form of a Plan, shared by llep-plan and the tools and benches that print plans.
// Lives outside include/: the library itself does not depend on nlohmann/json.
#include <nlohmann/json.hpp>

#include <span>
#include <vector>

#include "llep/core/plan.hpp"

namespace llep::examples {

/// {"ranks", "experts", "capacity", "assignments", "weight_transfers", "rank_loads",
///  "imbalance_before", "imbalance_after", "chosen"} of a plan made for `loads` on `topo`.
/// assignments lists the experts with load, by id, each with its load and segments;
/// imbalance is max/mean rank load, before under native placement, after under the plan;
/// chosen is the policy that made the plan (for Adaptive: "ep" or its inner planner).
inline nlohmann::ordered_json plan_to_json(const Plan& plan, std::span<const count_t> loads, const Topology& topo) {
  using json = nlohmann::ordered_json;
  json out;
  out["ranks"] = plan.ranks();
  out["experts"] = plan.experts();
  out["capacity"] = plan.capacity();
  json assignments = json::array();
  for (int e = 0; e < plan.experts(); ++e) {
    const auto segs = plan.segments(e);
    if (segs.empty()) continue;
    json s = json::array();
    for (const Segment& seg : segs) s.push_back({{"rank", seg.rank}, {"begin", seg.begin}, {"end", seg.end}});
    assignments.push_back({{"expert", e}, {"load", loads[static_cast<std::size_t>(e)]}, {"segments", std::move(s)}});
  }
  out["assignments"] = std::move(assignments);
  json transfers = json::array();
  for (const WeightTransfer& t : plan.weight_transfers())
    transfers.push_back({{"expert", t.expert}, {"src", t.src}, {"dst", t.dst}});
  out["weight_transfers"] = std::move(transfers);
  out["rank_loads"] = std::vector<count_t>(plan.rank_loads().begin(), plan.rank_loads().end());
  std::vector<count_t> native(static_cast<std::size_t>(topo.ranks()));
  native_rank_loads(loads, topo, native);
  out["imbalance_before"] = imbalance(native);
  out["imbalance_after"] = imbalance(plan.rank_loads());
  out["chosen"] = plan.policy();
  return out;
}

}  // namespace llep::examples
