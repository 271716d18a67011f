// llep-device-step-bench: device time of a step's control path without the host, per rank,
// at N = 384, P = 64 over the paper's skews (issue 14 item 7): the device planner from the
// counts matrix (plan_from_counts) followed by one rank's layout (DeviceLayout::build),
// the layout alone, and the rank's place table alone (PlaceTransfers, which SyncFreeLayer
// runs between the plan and the layout). The counts all-gather between ranks is not part of it (see
// tests/gpu/test_device_step.cu for the gather). The rank timed is 0 and the one the plan
// loads most (its receive side is the longest).
// Timed with CUDA events around `--reps` back-to-back launches on one stream; the median of
// `--rounds` such batches, divided by reps. Needs a CUDA device (exits 77 without one).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "../device_timing.cuh"
#include "common/scenarios.hpp"
#include "llep/device/device_layout.cuh"
#include "llep/device/transfer_places.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/device_planner.cuh"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

using llep::count_t;

// {plan + layout, layout alone, place table alone} for rank 0 and for the most loaded rank.
template <class P>
std::vector<double> times(const P& planner, const llep::Topology& topo, const std::vector<count_t>& counts, int reps,
                          int rounds) {
  const llep::DevicePlanner<P> dp(planner, topo);
  std::vector<double> out;
  llep::bench::with_device_counts(counts, [&](cudaStream_t s, count_t* d_counts) {
    dp.plan_from_counts(s, d_counts);
    llep::Plan plan;
    dp.download(s, plan);  // throws if the step failed
    const auto loads = plan.rank_loads();
    const int busiest = static_cast<int>(std::max_element(loads.begin(), loads.end()) - loads.begin());
    llep::CudaExec exec(s);
    std::byte* table = nullptr;
    llep::status_word_t* word = nullptr;
    LLEP_CUDA_CHECK(cudaMalloc(&table, llep::TransferPlaces::bytes(topo.ranks(), topo.experts())));
    LLEP_CUDA_CHECK(cudaMalloc(&word, sizeof(llep::status_word_t)));
    LLEP_CUDA_CHECK(cudaMemcpy(word, &llep::kStatusClear, sizeof llep::kStatusClear, cudaMemcpyHostToDevice));
    for (const int rank : {0, busiest}) {
      const llep::DeviceLayout dl(topo, rank);
      out.push_back(llep::bench::median_us(s, reps, rounds, [&] { dl.plan_and_build(s, dp, d_counts); }));
      out.push_back(llep::bench::median_us(s, reps, rounds, [&] { dl.build(s, d_counts, dp.view(), dp.status()); }));
      (void)dl.download(s);  // throws if the layout failed
      const auto places = llep::TransferPlaces::carve(table, dp.view(), rank, topo.ranks(), topo.experts());
      out.push_back(llep::bench::median_us(s, reps, rounds, [&] { llep::place_transfers(exec, places, word); }));
    }
    llep::status_word_t got = llep::kStatusClear;
    LLEP_CUDA_CHECK(cudaMemcpy(&got, word, sizeof got, cudaMemcpyDeviceToHost));
    llep::throw_if_set(got, 0, topo.experts());  // a valid plan is placed whole
    LLEP_CUDA_CHECK(cudaFree(word));
    LLEP_CUDA_CHECK(cudaFree(table));
  });
  return out;
}

void usage(std::FILE* to) {
  llep::bench::print_device_bench_usage(
      to, "llep-device-step-bench",
      "  Median device time of plan_from_counts + one rank's DeviceLayout::build, of the\n"
      "  layout alone and of the rank's place table (PlaceTransfers) alone, at N = 384,\n"
      "  P = 64 over the paper's skews (rank 0 and the busiest rank).\n");
}

void run(int reps, int rounds, const llep::bench::PaperScene& scene) {
  const llep::bench::LayerShape& shape = scene.shape;
  std::printf("# llep-device-step-bench: median us (%d rounds of %d launches), N=%d P=%d, %lld tokens x K=%d per rank\n",
              rounds, reps, scene.N, scene.P, static_cast<long long>(shape.tokens_per_rank), shape.top_k);
  std::printf("# plan+layout = plan_from_counts then DeviceLayout::build; layout = build alone; place = PlaceTransfers\n");
  std::printf("%-12s %-9s %13s %9s %9s %13s %9s %9s\n", "scenario", "planner", "r0_plan+lay", "r0_lay", "r0_place",
              "max_plan+lay", "max_lay", "max_place");
  scene.for_each_skew([&](const llep::sim::Skew& skew, const std::vector<count_t>& counts) {
    auto row = [&](const char* name, const std::vector<double>& t) {
      std::printf("%-12s %-9s %13.2f %9.2f %9.2f %13.2f %9.2f %9.2f\n", skew.name().c_str(), name, t[0], t[1], t[2],
                  t[3], t[4], t[5]);
      std::fflush(stdout);
    };
    row("ep", times(llep::StandardEp{}, scene.topo, counts, reps, rounds));
    row("llep", times(llep::bench::paper_lla(), scene.topo, counts, reps, rounds));
    row("adaptive", times(llep::bench::paper_llep(), scene.topo, counts, reps, rounds));
  });
}

}  // namespace

int main(int argc, char** argv) { return llep::bench::device_bench_main(argc, argv, usage, run); }
