// The CUDA consumer: a .cu file that includes llep's CUDA execution space (compiled by
// nvcc) and plans one batch on the host. It needs no device to build or to run.
#include <iostream>
#include <vector>

#include "llep/exec/cuda.cuh"
#include "llep/plan/least_loaded.hpp"

int main() {
  const llep::Topology topo(/*ranks=*/2, /*experts=*/8);
  std::vector<llep::count_t> loads(8, 10);
  loads[1] = 500;
  llep::Plan plan;
  llep::LeastLoaded{.alpha = 1.0, .min_tokens_per_gemm = 16}.plan(loads, topo, plan);
  const llep::Validation v = llep::validate(plan, loads, topo);
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  std::cout << "plan_batch_cu: " << (v ? "valid" : v.message) << ", capacity " << plan.capacity() << ", "
            << devices << " CUDA devices (none needed)\n";
  return v && !plan.weight_transfers().empty() ? 0 : 1;
}
