// A step's control path on the device for logical ranks of one process (issue 14 items 1, 3
// and 5): each PeerCopy rank histograms its ids on its stream, the counts matrix is
// all-gathered by peer copies (gather_counts), the device planner plans from it and the
// device layout builds from that plan, with no host copy in between. Checked afterwards
// against the host: every rank's gathered matrix is the brute-force one, its plan the host
// planner's and its layout the host Layout's, bit for bit. A bad id on one rank sets that
// rank's status word, and the host check throws the same llep::Error on every rank.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <random>
#include <string>
#include <vector>

#include "../layer/layout_reference.hpp"
#include "device_array.hpp"
#include "streams.hpp"
#include "llep/device/device_layout.cuh"
#include "llep/device/gather_counts.hpp"
#include "llep/device/status_word.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/device_planner.cuh"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/transport/peer_copy.cuh"

namespace {

using llep::count_t;


std::vector<std::vector<std::int32_t>> routing(std::mt19937_64& rng, int P, int N, bool skewed, int bad_rank) {
  std::vector<std::vector<std::int32_t>> ids(static_cast<std::size_t>(P));
  const int hot = static_cast<int>(rng() % static_cast<unsigned>(N));
  for (int r = 0; r < P; ++r) {
    auto& v = ids[static_cast<std::size_t>(r)];
    v.resize(rng() % 3000);
    for (auto& id : v) id = skewed && rng() % 10 < 7 ? hot : static_cast<std::int32_t>(rng() % static_cast<unsigned>(N));
    if (r == bad_rank) {
      if (v.empty()) v.push_back(0);
      v[v.size() / 2] = N + 3;
    }
  }
  return ids;
}

struct RankOut {
  std::vector<count_t> counts;
  llep::Plan plan;
  llep::DeviceLayout::Host layout;
  std::string error;
};

template <class Planner>
std::vector<RankOut> device_step(const Planner& planner, const llep::Topology& topo,
                                 const std::vector<std::vector<std::int32_t>>& ids) {
  const int P = topo.ranks(), N = topo.experts();
  gputest::Streams streams(P, 0);
  llep::PeerCopyGroup group(streams.ranks(0));
  std::vector<RankOut> out(static_cast<std::size_t>(P));
  llep::run_ranks(group, [&](llep::PeerCopy& t) {
    const auto r = static_cast<std::size_t>(t.rank());
    llep::CudaExec exec(t.stream());
    gputest::DeviceArray<std::int32_t> d_ids(ids[r]);
    gputest::DeviceArray<std::byte> memory(llep::gather_counts_bytes(P, N));
    gputest::DeviceArray<llep::status_word_t> words(llep::StatusWords::bytes(P) / sizeof(llep::status_word_t));
    llep::StatusWords status(exec, words.get(), P);
    const llep::DevicePlanner<Planner> dp(planner, topo);
    const llep::DeviceLayout dl(topo, t.rank());
    const llep::GatheredCounts g = llep::GatheredCounts::carve(memory.get(), N);
    // The step's control path: histogram, gather, plan, layout; nothing waits on the host.
    llep::gather_counts(exec, t, d_ids.get(), ids[r].size(), N, g, &status);
    dl.plan_and_build(t.stream(), dp, g.counts);
    // Then the host check and the downloads for the comparison.
    try {
      status.check(exec, t, N);
    } catch (const llep::Error& e) {
      out[r].error = e.what();
    }
    out[r].counts.resize(static_cast<std::size_t>(P) * static_cast<std::size_t>(N));
    exec.to_host(out[r].counts.data(), g.counts, out[r].counts.size() * sizeof(count_t));
    exec.synchronize();
    dp.download(t.stream(), out[r].plan);
    out[r].layout = dl.download(t.stream());
  });
  return out;
}

template <class Planner>
void check_step(const Planner& planner, const llep::Topology& topo, std::mt19937_64& rng, bool skewed) {
  const int P = topo.ranks(), N = topo.experts();
  const auto ids = routing(rng, P, N, skewed, -1);
  const auto out = device_step(planner, topo, ids);
  std::vector<count_t> C(static_cast<std::size_t>(P) * static_cast<std::size_t>(N), 0);
  for (int r = 0; r < P; ++r)
    for (const auto id : ids[static_cast<std::size_t>(r)])
      ++C[static_cast<std::size_t>(r) * static_cast<std::size_t>(N) + static_cast<std::size_t>(id)];
  std::vector<count_t> loads(static_cast<std::size_t>(N), 0);
  llep::loads_from_counts(llep::CountsView(C, P, N), loads);
  llep::Plan host;
  planner.plan(loads, topo, host);
  llep::Layout L;
  for (int r = 0; r < P; ++r) {
    CAPTURE(r);
    const RankOut& o = out[static_cast<std::size_t>(r)];
    CHECK(o.error.empty());
    REQUIRE(o.counts == C);
    REQUIRE(std::vector<llep::Segment>(o.plan.segments().begin(), o.plan.segments().end()) ==
            std::vector<llep::Segment>(host.segments().begin(), host.segments().end()));
    L.build(llep::CountsView(C, P, N), host, topo, r);
    testref::require_same(testref::tables_of_fields(o.layout), testref::tables_of(L));
  }
}

}  // namespace

TEST_CASE("counts gathered by peer copies feed the device planner and layout: the host's plan and layout") {
  std::mt19937_64 rng(99);
  for (const int P : {1, 2, 4, 8}) {
    CAPTURE(P);
    const llep::Topology topo(P, 8 * P);
    for (const bool skewed : {false, true}) {
      check_step(llep::StandardEp{}, topo, rng, skewed);
      check_step(llep::LeastLoaded{1.0, 16}, topo, rng, skewed);
      check_step(llep::Adaptive<>{1.3, llep::LeastLoaded{1.0, 16}}, topo, rng, skewed);
    }
  }
}

TEST_CASE("a bad id on one rank's device sets its status word; the host check fails every rank alike") {
  std::mt19937_64 rng(3);
  const int P = 4, N = 16;
  const llep::Topology topo(P, N);
  const auto ids = routing(rng, P, N, false, 2);
  const auto out = device_step(llep::LeastLoaded{}, topo, ids);
  const std::size_t at = ids[2].size() / 2;
  const std::string want = "llep: rank 2 routed expert id " + std::to_string(N + 3) + " outside [0, " +
                           std::to_string(N) + ") (pair " + std::to_string(at) + ", found on the device)";
  for (int r = 0; r < P; ++r) {
    CAPTURE(r);
    CHECK(out[static_cast<std::size_t>(r)].error.rfind(want, 0) == 0);
  }
}
