// README's example: choosing a planner for one skewed batch (built as choose-planner).
#include <iostream>
#include <vector>

#include "llep/plan/adaptive.hpp"
#include "llep/plan/least_loaded.hpp"

template <llep::Planner Planner>
bool show(const Planner& planner, const std::vector<llep::count_t>& loads, const llep::Topology& topo,
          llep::Plan& plan) {
  planner.plan(loads, topo, plan);  // deterministic: every rank computes the same plan
  const llep::Validation v = llep::validate(plan, loads, topo);
  std::cout << Planner::name << " -> " << plan.policy() << ": " << (v ? "valid" : v.message) << ", capacity "
            << plan.capacity() << ", " << plan.weight_transfers().size() << " weight transfers, rank loads";
  for (const llep::count_t l : plan.rank_loads()) std::cout << ' ' << l;
  std::cout << '\n';
  return v.ok;
}

int main() {
  const llep::Topology topo(/*ranks=*/4, /*experts=*/16);  // expert e lives on rank e / 4
  std::vector<llep::count_t> loads(16, 100);               // token-expert pairs per expert
  loads[0] = loads[1] = 3000;                              // two hot experts, both on rank 0
  const llep::LeastLoaded least_loaded{.alpha = 1.0, .min_tokens_per_gemm = 256};
  const llep::Adaptive<llep::LeastLoaded> adaptive{.lambda = 1.3, .inner = least_loaded};
  llep::Plan plan;  // reuse one Plan: once warm, planning allocates nothing
  bool ok = show(least_loaded, loads, topo, plan) && show(adaptive, loads, topo, plan);
  loads.assign(16, 100);  // a balanced batch: Adaptive keeps standard EP, moves no weights
  ok = ok && show(adaptive, loads, topo, plan);
  return ok ? 0 : 1;
}
