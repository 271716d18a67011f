// The device planner (include/llep/plan/device_planner.cuh) against the host planners:
// on random and adversarial loads the plan made in the kernel is the host plan, bit for
// bit (policy, capacity, segments, transfers, rank loads), from loads and from a counts
// matrix summed on the device; a refusal on the host is a failed status on the device.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <random>
#include <string>
#include <vector>

#include "../common/loads.hpp"
#include "device_array.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/device_planner.cuh"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

using llep::count_t;

void same(const llep::Plan& dev, const llep::Plan& host) {
  REQUIRE(dev.policy() == host.policy());
  REQUIRE(dev.capacity() == host.capacity());
  REQUIRE(std::vector<llep::Segment>(dev.segments().begin(), dev.segments().end()) ==
          std::vector<llep::Segment>(host.segments().begin(), host.segments().end()));
  REQUIRE(std::vector<llep::WeightTransfer>(dev.weight_transfers().begin(), dev.weight_transfers().end()) ==
          std::vector<llep::WeightTransfer>(host.weight_transfers().begin(), host.weight_transfers().end()));
  REQUIRE(std::vector<count_t>(dev.rank_loads().begin(), dev.rank_loads().end()) ==
          std::vector<count_t>(host.rank_loads().begin(), host.rank_loads().end()));
}

template <class P>
void compare(const P& planner, const llep::Topology& topo, int vectors, std::mt19937_64& rng, int& refused) {
  const llep::DevicePlanner<P> dp(planner, topo);
  cudaStream_t stream = nullptr;
  LLEP_CUDA_CHECK(cudaStreamCreate(&stream));
  llep::Plan host, dev;
  for (int i = 0; i < vectors; ++i) {
    std::string kind;
    const auto loads = testloads::random_loads(rng, topo.experts(), kind);
    CAPTURE(kind);
    CAPTURE(loads);
    LLEP_CUDA_CHECK(cudaMemcpy(dp.loads(), loads.data(), loads.size() * sizeof(count_t), cudaMemcpyHostToDevice));
    dp.plan(stream);
    bool host_refused = false;
    try {
      planner.plan(loads, topo, host);
    } catch (const llep::Error&) {
      host_refused = true;
    }
    if (host_refused) {
      CHECK_THROWS_AS(dp.download(stream, dev), llep::Error);
      ++refused;
      continue;
    }
    dp.download(stream, dev);
    REQUIRE(llep::validate(dev, loads, topo).ok);
    same(dev, host);
  }
  LLEP_CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace

TEST_CASE("device plans are the host plans, bit for bit, for every planner with a device form") {
  std::mt19937_64 rng(1414);
  int refused = 0;
  for (const llep::Topology& topo : {llep::Topology(8, 32), llep::Topology(64, 384, 8), llep::Topology(4, 16, 2)}) {
    const llep::LeastLoaded lla{1.0, 1024};
    compare(llep::StandardEp{}, topo, 300, rng, refused);
    compare(lla, topo, 300, rng, refused);
    compare(llep::LeastLoaded{1.25, 0}, topo, 300, rng, refused);
    compare(llep::Adaptive<>{1.3, lla}, topo, 300, rng, refused);
    compare(llep::Capped<>{lla, llep::MemoryCap{4096, 1, 100, false}}, topo, 300, rng, refused);
  }
  CHECK(refused > 0);  // the failure path was exercised
}

TEST_CASE("the device planner sums a counts matrix on the device, then plans") {
  const int P = 64, N = 384;
  const llep::Topology topo(P, N);
  std::mt19937_64 rng(7);
  std::vector<count_t> counts(static_cast<std::size_t>(P) * N);
  for (auto& c : counts) c = static_cast<count_t>(rng() % 300);
  for (int p = 0; p < P; ++p) counts[static_cast<std::size_t>(p) * N + 5] += 5000;  // a hot expert
  std::vector<count_t> loads(static_cast<std::size_t>(N), 0);
  llep::loads_from_counts(llep::CountsView(counts, P, N), loads);
  const llep::Adaptive<> planner{};
  const llep::DevicePlanner<llep::Adaptive<>> dp(planner, topo);
  gputest::DeviceArray<count_t> d_counts(counts);
  dp.plan_from_counts(nullptr, d_counts.get());
  llep::Plan host, dev;
  dp.download(nullptr, dev);
  planner.plan(loads, topo, host);
  same(dev, host);
}
