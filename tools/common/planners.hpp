#pragma once
// Every planner the tools offer, by name, built from one set of settings: llep-plan plans
// one set of loads with the one named by --policy, llep-replay replays traces through all
// (or --planners) of them. Adding a planner to both tools is one entry in planners().
#include <cmath>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "llep/core/plan.hpp"
#include "llep/core/topology.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/cost_aware.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/node_aware.hpp"
#include "llep/plan/quota_search.hpp"
#include "llep/plan/replicated.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/cost_model.hpp"

namespace llep::examples {

struct PlannerSettings {
  double alpha = 1.0;
  count_t min_gemm = 1024;
  double lambda = 1.3;
  int replica_slots = 1;   ///< Replicated: replicas per rank besides its N / P natives
  double ema_decay = 0.5;  ///< Replicated: history h <- decay * l + (1 - decay) * h
  count_t cap_rows = 0;    ///< Capped (around LeastLoaded): rows per rank; 0: not offered
  std::shared_ptr<const sim::CostModel> model = std::make_shared<const sim::CostModel>();  ///< CostAware
  sim::FfnShape shape{"gpt-oss-120b", 2880, 2880};                                        ///< CostAware

  /// Checks every setting against the topology before any planner runs, so that a bad flag
  /// fails whatever the planner, and no arithmetic on a setting overflows. The replica
  /// slots must fit the topology only when Replicated runs (`replicated`).
  void check(const Topology& topo, bool replicated) const {
    LeastLoaded{alpha, min_gemm}.check();
    LLEP_EXPECTS(std::isfinite(lambda) && lambda > 0, "--lambda = ", lambda, " must be a finite number > 0");
    LLEP_EXPECTS(replica_slots >= 0, "--replica-slots = ", replica_slots, " must be >= 0");
    const int foreign = topo.experts() - topo.experts_per_rank();
    LLEP_EXPECTS(!replicated || replica_slots <= foreign, "--replica-slots = ", replica_slots,
                 ": slots_per_rank = N / P + ", replica_slots, " must be at most N = ", topo.experts());
    LLEP_EXPECTS(ema_decay > 0 && ema_decay <= 1, "--ema-decay = ", ema_decay, " must be in (0, 1]");
    LLEP_EXPECTS(cap_rows >= 0, "--cap-rows = ", cap_rows, " must be >= 0");
  }
};

/// What a planner that places weights itself (Replicated) reports beside its plan.
struct Placement {
  std::shared_ptr<const Topology> topo;  ///< the topology the plan was made on; null: the given one
  std::size_t moves = 0;                 ///< weight copies the placement made before this step
  int replica_slots = 0;                 ///< replicas resident on every rank
};

/// plan(loads, step, topo, out): `step` counts the calls in order (history planners use it).
struct PlannerEntry {
  std::string name;
  std::function<Placement(std::span<const count_t> loads, int step, const Topology& topo, Plan& out)> plan;
};

/// Wraps any stateless llep::Planner.
template <class P>
PlannerEntry stateless(P planner) {
  static_assert(check_planner<P>());
  return {std::string(P::name), [planner](std::span<const count_t> loads, int, const Topology& topo, Plan& out) {
            planner.plan(loads, topo, out);
            return Placement{};
          }};
}

/// EPLB-style replication over the calls in order: before every call, replicas are
/// re-placed (natives stay at the default placement) from the EMA of the earlier calls'
/// loads; the first call, having no history, is placed from its own loads (optimistic).
/// The copies a re-placement needs are reported as placement moves.
inline PlannerEntry replicated(const PlannerSettings& s) {
  struct State {
    std::vector<double> history;
    std::shared_ptr<const Topology> placed;
  };
  auto st = std::make_shared<State>();
  return {std::string(Replicated::name),
          [st, slots = s.replica_slots, decay = s.ema_decay](std::span<const count_t> loads, int step,
                                                               const Topology& topo, Plan& out) {
            const auto N = static_cast<std::size_t>(topo.experts());
            if (step == 0 || st->history.size() != N) st->history.assign(loads.begin(), loads.end());
            auto next = std::make_shared<const Topology>(
                Replicated::place(st->history, topo, topo.experts_per_rank() + slots));
            Placement pl{next, placement_moves(st->placed ? *st->placed : topo, *next).size(), slots};
            st->placed = next;
            Replicated{}.plan(loads, *next, out);
            for (std::size_t e = 0; e < N; ++e)  // this call joins the history of the next
              st->history[e] = decay * static_cast<double>(loads[e]) + (1 - decay) * st->history[e];
            return pl;
          }};
}

/// Every planner, in the tools' output order.
inline std::vector<PlannerEntry> planners(const PlannerSettings& s) {
  const LeastLoaded ll{.alpha = s.alpha, .min_tokens_per_gemm = s.min_gemm};
  std::vector<PlannerEntry> v;
  v.push_back(stateless(StandardEp{}));
  v.push_back(stateless(ll));
  v.push_back(stateless(Adaptive<LeastLoaded>{s.lambda, ll}));
  v.push_back(stateless(NodeAware{.alpha = s.alpha, .min_tokens_per_gemm = s.min_gemm}));
  v.push_back(stateless(QuotaSearch{.min_tokens_per_gemm = s.min_gemm}));
  v.push_back(stateless(CostAware{.alpha = s.alpha, .min_tokens_per_gemm = s.min_gemm, .model = s.model, .shape = s.shape}));
  v.push_back(replicated(s));
  if (s.cap_rows > 0) v.push_back(stateless(Capped<LeastLoaded>{ll, MemoryCap::rows(s.cap_rows)}));
  return v;
}

/// The names planners() offers (with Capped, which needs a cap), comma-separated.
inline std::string planner_names() {
  PlannerSettings s;
  s.cap_rows = 1;
  std::string names;
  for (const PlannerEntry& p : planners(s)) names += (names.empty() ? "" : ",") + p.name;
  return names;
}

}  // namespace llep::examples
