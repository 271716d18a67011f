// A consumer of an installed (or subproject) llep: plans one skewed batch with LeastLoaded
// and checks the plan. Built by scripts/consumers.sh through Meson, CMake and pkg-config.
#include <iostream>
#include <vector>

#include "llep/plan/least_loaded.hpp"

int main() {
  const llep::Topology topo(/*ranks=*/4, /*experts=*/16);
  std::vector<llep::count_t> loads(16, 100);
  loads[0] = 3000;  // one hot expert on rank 0
  llep::Plan plan;
  llep::LeastLoaded{.alpha = 1.0, .min_tokens_per_gemm = 64}.plan(loads, topo, plan);
  const llep::Validation v = llep::validate(plan, loads, topo);
  std::cout << "plan_batch: " << (v ? "valid" : v.message) << ", capacity " << plan.capacity() << ", "
            << plan.weight_transfers().size() << " weight transfers\n";
  return v && !plan.weight_transfers().empty() ? 0 : 1;
}
