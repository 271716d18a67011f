// llep-device-plan-bench: device time of one plan made by the device planner
// (include/llep/plan/device_planner.cuh) at N = 384, P = 64 over the paper's skews, for
// StandardEp, LeastLoaded and Adaptive, in two modes:
//   loads   the loads are already on the device (the count gather excluded);
//   counts  the kernel first sums the P x N counts matrix into the loads (gather included;
//           the all-gather of the counts between ranks is not part of it).
// Timed with CUDA events around `--reps` back-to-back launches on one stream; the median of
// `--rounds` such batches, divided by reps. Needs a CUDA device (exits 77 without one).
#include <cuda_runtime.h>

#include <cstdio>
#include <string>
#include <vector>

#include "../device_timing.cuh"
#include "common/scenarios.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/device_planner.cuh"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

using llep::count_t;

template <class P>
double median_us(const P& planner, const llep::Topology& topo, const std::vector<count_t>& counts, bool from_counts,
                 int reps, int rounds) {
  const llep::DevicePlanner<P> dp(planner, topo);
  std::vector<count_t> loads(static_cast<std::size_t>(topo.experts()), 0);
  llep::loads_from_counts(llep::CountsView(counts, topo.ranks(), topo.experts()), loads);
  double us = 0;
  llep::bench::with_device_counts(counts, [&](cudaStream_t s, count_t* d_counts) {
    LLEP_CUDA_CHECK(cudaMemcpy(dp.loads(), loads.data(), loads.size() * sizeof(count_t), cudaMemcpyHostToDevice));
    auto launch = [&] { from_counts ? dp.plan_from_counts(s, d_counts) : dp.plan(s); };
    launch();
    llep::Plan check;
    dp.download(s, check);  // throws if the step failed
    us = llep::bench::median_us(s, reps, rounds, launch);
  });
  return us;
}

void usage(std::FILE* to) {
  llep::bench::print_device_bench_usage(
      to, "llep-device-plan-bench",
      "  Median device time of one plan (ep, llep, adaptive) at N = 384, P = 64 over the\n"
      "  paper's skews; 'loads' excludes the count gather, 'counts' includes it.\n");
}

void run(int reps, int rounds, const llep::bench::PaperScene& scene) {
  const llep::bench::LayerShape& shape = scene.shape;
  std::printf("# llep-device-plan-bench: median us per device plan (%d rounds of %d launches), N=%d P=%d\n", rounds,
              reps, scene.N, scene.P);
  std::printf("# loads: per rank %lld tokens x K=%d; 'loads' = count gather excluded, 'counts' = included\n",
              static_cast<long long>(shape.tokens_per_rank), shape.top_k);
  std::printf("%-12s %-7s %9s %9s %9s\n", "scenario", "mode", "ep_us", "llep_us", "adapt_us");
  scene.for_each_skew([&](const llep::sim::Skew& skew, const std::vector<count_t>& counts) {
    for (const bool from_counts : {false, true}) {
      std::printf("%-12s %-7s %9.2f %9.2f %9.2f\n", skew.name().c_str(), from_counts ? "counts" : "loads",
                  median_us(llep::StandardEp{}, scene.topo, counts, from_counts, reps, rounds),
                  median_us(llep::bench::paper_lla(), scene.topo, counts, from_counts, reps, rounds),
                  median_us(llep::bench::paper_llep(), scene.topo, counts, from_counts, reps, rounds));
      std::fflush(stdout);
    }
  });
}

}  // namespace

int main(int argc, char** argv) { return llep::bench::device_bench_main(argc, argv, usage, run); }
