// llep-device-plan-bench: device time of one plan made by the device planner
// (include/llep/plan/device_planner.cuh) at N = 384, P = 64 over the paper's skews, for
// StandardEp, LeastLoaded and Adaptive, in two modes:
//   loads   the loads are already on the device (the count gather excluded);
//   counts  the kernel first sums the P x N counts matrix into the loads (gather included;
//           the all-gather of the counts between ranks is not part of it).
// Timed with CUDA events around `--reps` back-to-back launches on one stream; the median of
// `--rounds` such batches, divided by reps. Needs a CUDA device (exits 77 without one).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

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
  count_t* d_counts = nullptr;
  LLEP_CUDA_CHECK(cudaMalloc(&d_counts, counts.size() * sizeof(count_t)));
  LLEP_CUDA_CHECK(cudaMemcpy(d_counts, counts.data(), counts.size() * sizeof(count_t), cudaMemcpyHostToDevice));
  LLEP_CUDA_CHECK(cudaMemcpy(dp.loads(), loads.data(), loads.size() * sizeof(count_t), cudaMemcpyHostToDevice));
  cudaStream_t s = nullptr;
  LLEP_CUDA_CHECK(cudaStreamCreate(&s));
  cudaEvent_t a = nullptr, b = nullptr;
  LLEP_CUDA_CHECK(cudaEventCreate(&a));
  LLEP_CUDA_CHECK(cudaEventCreate(&b));
  auto launch = [&] { from_counts ? dp.plan_from_counts(s, d_counts) : dp.plan(s); };
  for (int i = 0; i < 20; ++i) launch();  // warm-up
  llep::Plan check;
  dp.download(s, check);  // throws if the step failed
  std::vector<double> us;
  for (int r = 0; r < rounds; ++r) {
    LLEP_CUDA_CHECK(cudaEventRecord(a, s));
    for (int i = 0; i < reps; ++i) launch();
    LLEP_CUDA_CHECK(cudaEventRecord(b, s));
    LLEP_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    LLEP_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    us.push_back(1000.0 * ms / reps);
  }
  LLEP_CUDA_CHECK(cudaEventDestroy(a));
  LLEP_CUDA_CHECK(cudaEventDestroy(b));
  LLEP_CUDA_CHECK(cudaStreamDestroy(s));
  LLEP_CUDA_CHECK(cudaFree(d_counts));
  std::nth_element(us.begin(), us.begin() + rounds / 2, us.end());
  return us[static_cast<std::size_t>(rounds / 2)];
}

int usage(std::FILE* to, int code) {
  std::fprintf(to,
               "usage: llep-device-plan-bench [--reps N] [--rounds R]\n"
               "  Median device time of one plan (ep, llep, adaptive) at N = 384, P = 64 over the\n"
               "  paper's skews; 'loads' excludes the count gather, 'counts' includes it.\n"
               "  --reps N    launches per timed batch (default 200)\n"
               "  --rounds R  timed batches; the median is reported (default 21)\n");
  return code;
}

int positive(const char* flag, const char* v) {
  char* end = nullptr;
  const long r = std::strtol(v, &end, 10);
  if (*end != '\0' || r < 1 || r > 1000000) {
    std::fprintf(stderr, "error: %s '%s' is not an integer in [1, 1000000]\n", flag, v);
    std::exit(2);
  }
  return static_cast<int>(r);
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 200, rounds = 21;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      reps = positive("--reps", argv[++i]);
    } else if (!std::strcmp(argv[i], "--rounds") && i + 1 < argc) {
      rounds = positive("--rounds", argv[++i]);
    } else if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      return usage(stdout, 0);
    } else {
      std::fprintf(stderr, "error: unknown argument '%s' (see --help)\n", argv[i]);
      return 2;
    }
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIP: no CUDA device\n");
    return 77;
  }
  const int N = 384, P = 64;
  const llep::Topology topo(P, N, 8);
  const llep::bench::LayerShape& shape = llep::bench::kGptOss120b;
  std::printf("# llep-device-plan-bench: median us per device plan (%d rounds of %d launches), N=%d P=%d\n", rounds,
              reps, N, P);
  std::printf("# loads: per rank %lld tokens x K=%d; 'loads' = count gather excluded, 'counts' = included\n",
              static_cast<long long>(shape.tokens_per_rank), shape.top_k);
  std::printf("%-12s %-7s %9s %9s %9s\n", "scenario", "mode", "ep_us", "llep_us", "adapt_us");
  for (const llep::sim::Skew& skew : llep::bench::paper_routings()) {
    const auto counts = llep::sim::skewed_counts(P, N, shape.pairs_per_rank(), skew);
    for (const bool from_counts : {false, true}) {
      std::printf("%-12s %-7s %9.2f %9.2f %9.2f\n", skew.name().c_str(), from_counts ? "counts" : "loads",
                  median_us(llep::StandardEp{}, topo, counts, from_counts, reps, rounds),
                  median_us(llep::bench::paper_lla(), topo, counts, from_counts, reps, rounds),
                  median_us(llep::bench::paper_llep(), topo, counts, from_counts, reps, rounds));
      std::fflush(stdout);
    }
  }
  return 0;
}
