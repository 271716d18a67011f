#pragma once
// What the device benchmarks share: `--reps N --rounds R` parsing and usage text, the
// device check (exit 77 without one), their scene (N = 384, P = 64, the paper's skews), the
// counts matrix on the device, and the median device time per launch of a batch of
// back-to-back launches, timed with CUDA events; the median of a sample.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/scenarios.hpp"
#include "llep/core/config.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/core/topology.hpp"

namespace llep::bench {

/// The median of `v` (the mean of the middle two for an even count); 0 when empty.
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n == 0 ? 0.0 : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct RepsRounds {
  int reps = 200;    ///< launches per timed batch
  int rounds = 21;   ///< timed batches; the median is reported
  int exit_code = -1;  ///< >= 0: main should return it (help printed, or a bad argument)
};

/// A device benchmark's help: its usage line, `about` (its own lines), then the options
/// start_device_bench reads.
inline void print_device_bench_usage(std::FILE* to, const char* tool, const char* about) {
  std::fprintf(to,
               "usage: %s [--reps N] [--rounds R]\n%s"
               "  --reps N    launches per timed batch (default 200)\n"
               "  --rounds R  timed batches; the median is reported (default 21)\n",
               tool, about);
}

/// Parses --reps N, --rounds R and --help (`usage` prints the tool's help to a stream),
/// then asks for a CUDA device: without one, prints SKIP and sets exit_code 77.
inline RepsRounds start_device_bench(int argc, char** argv, void (*usage)(std::FILE*)) {
  RepsRounds r;
  auto positive = [&](const char* flag, const char* v, int& out) {
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    if (*end != '\0' || x < 1 || x > 1000000) {
      std::fprintf(stderr, "error: %s '%s' is not an integer in [1, 1000000]\n", flag, v);
      r.exit_code = 2;
      return;
    }
    out = static_cast<int>(x);
  };
  for (int i = 1; i < argc && r.exit_code < 0; ++i) {
    if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      positive("--reps", argv[++i], r.reps);
    } else if (!std::strcmp(argv[i], "--rounds") && i + 1 < argc) {
      positive("--rounds", argv[++i], r.rounds);
    } else if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      usage(stdout);
      r.exit_code = 0;
    } else {
      std::fprintf(stderr, "error: unknown argument '%s' (see --help)\n", argv[i]);
      r.exit_code = 2;
    }
  }
  int devices = 0;
  if (r.exit_code < 0 && (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)) {
    std::printf("SKIP: no CUDA device\n");
    r.exit_code = 77;
  }
  return r;
}

/// The device benchmarks' scene: N = 384 experts over P = 64 ranks of 8 slots, each rank
/// routing GPT-OSS-120B's tokens x K under each of the paper's skews.
struct PaperScene {
  static constexpr int N = 384, P = 64;
  Topology topo{P, N, 8};
  const LayerShape& shape = kGptOss120b;

  /// Calls f(skew, counts) for each of the paper's skews (counts: P x N, llep::sim).
  template <class F>
  void for_each_skew(F&& f) const {
    for (const sim::Skew& skew : paper_routings()) f(skew, sim::skewed_counts(P, N, shape.pairs_per_rank(), skew));
  }
};

/// A device benchmark's main: the arguments (start_device_bench; its exit code if it
/// gives one), then body(reps, rounds, scene); 0.
template <class F>
int device_bench_main(int argc, char** argv, void (*usage)(std::FILE*), F&& body) {
  const RepsRounds args = start_device_bench(argc, argv, usage);
  if (args.exit_code >= 0) return args.exit_code;
  const PaperScene scene;
  body(args.reps, args.rounds, scene);
  return 0;
}

/// Calls body(stream, d_counts) with `counts` copied to the device and a new stream; frees
/// both after.
template <class F>
void with_device_counts(const std::vector<count_t>& counts, F&& body) {
  count_t* d_counts = nullptr;
  LLEP_CUDA_CHECK(cudaMalloc(&d_counts, counts.size() * sizeof(count_t)));
  LLEP_CUDA_CHECK(cudaMemcpy(d_counts, counts.data(), counts.size() * sizeof(count_t), cudaMemcpyHostToDevice));
  cudaStream_t s = nullptr;
  LLEP_CUDA_CHECK(cudaStreamCreate(&s));
  body(s, d_counts);
  LLEP_CUDA_CHECK(cudaStreamDestroy(s));
  LLEP_CUDA_CHECK(cudaFree(d_counts));
}

/// Median over `rounds` batches of `reps` launches on `s` of the device time per launch,
/// in microseconds, after 20 warm-up launches.
template <class F>
double median_us(cudaStream_t s, int reps, int rounds, F launch) {
  cudaEvent_t a = nullptr, b = nullptr;
  LLEP_CUDA_CHECK(cudaEventCreate(&a));
  LLEP_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < 20; ++i) launch();
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
  std::nth_element(us.begin(), us.begin() + rounds / 2, us.end());
  return us[static_cast<std::size_t>(rounds / 2)];
}

}  // namespace llep::bench
