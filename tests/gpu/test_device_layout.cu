// The device layout (include/llep/device/device_layout.cuh) against the host Layout: the
// counts matrix goes to the device once, the device planner plans from it and the layout
// kernel builds every rank's tables from it with no host step between; the tables that come
// back are the host Layout's of the host plan, bit for bit, for every planner with a device
// form, on random and adversarial loads split over the ranks in random and extreme ways.
// A plan that failed on the device leaves no layout, and download() says so.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../common/loads.hpp"
#include "../layer/layout_reference.hpp"
#include "device_array.hpp"
#include "llep/device/device_layout.cuh"
#include "llep/layer/layout.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/device_planner.cuh"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

using llep::count_t;

template <class P>
void compare(const P& planner, const llep::Topology& topo, int vectors, std::mt19937_64& rng, long& layouts,
             int& refused) {
  const int R = topo.ranks(), N = topo.experts();
  const llep::DevicePlanner<P> dp(planner, topo);
  std::vector<std::unique_ptr<llep::DeviceLayout>> dl;
  for (int r = 0; r < R; ++r) dl.push_back(std::make_unique<llep::DeviceLayout>(topo, r));
  cudaStream_t stream = nullptr;
  LLEP_CUDA_CHECK(cudaStreamCreate(&stream));
  gputest::DeviceArray<count_t> d_counts(static_cast<std::size_t>(R) * static_cast<std::size_t>(N));
  llep::Plan host;
  llep::Layout L;
  for (int i = 0; i < vectors; ++i) {
    std::string kind;
    const auto loads = testloads::random_loads(rng, N, kind);
    const int mode = i % 5;
    CAPTURE(kind);
    CAPTURE(mode);
    const auto C = testref::split_counts(rng, loads, R, mode);
    d_counts.upload(C);
    for (int r = 0; r < R; ++r) dl[static_cast<std::size_t>(r)]->plan_and_build(stream, dp, d_counts.get());
    bool host_refused = false;
    try {
      planner.plan(loads, topo, host);
    } catch (const llep::Error&) {
      host_refused = true;
    }
    for (int r = 0; r < R; ++r) {
      CAPTURE(r);
      if (host_refused) {
        CHECK_THROWS_WITH_AS((void)dl[static_cast<std::size_t>(r)]->download(stream), doctest::Contains("has no layout"),
                             llep::Error);
        continue;
      }
      std::string host_error;
      try {
        L.build(llep::CountsView(C, R, N), host, topo, r);
      } catch (const llep::Error& e) {
        host_error = e.what();
      }
      if (!host_error.empty()) {  // 2^31 rows: the device refuses with the same message
        CHECK_THROWS_WITH_AS((void)dl[static_cast<std::size_t>(r)]->download(stream), host_error.c_str(), llep::Error);
        continue;
      }
      testref::require_same(testref::tables_of_fields(dl[static_cast<std::size_t>(r)]->download(stream)), testref::tables_of(L));
      ++layouts;
    }
    refused += host_refused ? 1 : 0;
  }
  LLEP_CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace

TEST_CASE("device layouts from device counts and device plans are the host layouts, bit for bit") {
  std::mt19937_64 rng(2614);
  long layouts = 0;
  int refused = 0;
  for (const llep::Topology& topo : {llep::Topology(4, 16, 2), llep::Topology(8, 32), llep::Topology(64, 384, 8)}) {
    const int n = topo.ranks() >= 64 ? 20 : 200;
    const llep::LeastLoaded lla{1.0, 1024};
    compare(llep::StandardEp{}, topo, n, rng, layouts, refused);
    compare(lla, topo, n, rng, layouts, refused);
    compare(llep::LeastLoaded{1.25, 0}, topo, n, rng, layouts, refused);
    compare(llep::Adaptive<>{1.3, lla}, topo, n, rng, layouts, refused);
    compare(llep::Capped<>{lla, llep::MemoryCap{4096, 1, 100, false}}, topo, n, rng, layouts, refused);
  }
  MESSAGE(layouts, " device layouts equal, ", refused, " plans refused on both sides");
  CHECK(layouts > 10000);
  CHECK(refused > 0);  // the no-plan path was exercised
}
