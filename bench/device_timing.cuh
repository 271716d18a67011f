#pragma once
// What the device benchmarks share: `--reps N --rounds R` parsing, the device check (exit
// 77 without one), and the median device time per launch of a batch of back-to-back
// launches, timed with CUDA events.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "llep/core/cuda_check.hpp"

namespace llep::bench {

struct RepsRounds {
  int reps = 200;    ///< launches per timed batch
  int rounds = 21;   ///< timed batches; the median is reported
  int exit_code = -1;  ///< >= 0: main should return it (help printed, or a bad argument)
};

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
