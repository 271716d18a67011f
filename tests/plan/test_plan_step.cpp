// plan_step (plan_step.hpp), the routine the device planner runs, built for the host: on
// 100k random and adversarial load vectors its plan is the host planner's, bit for bit
// (policy, capacity, segments, transfers, rank loads), and where the host planner refuses
// (Capped) it reports the same refusal.
#include <doctest/doctest.h>

#include <cstddef>
#include <random>
#include <string>
#include <vector>

#include "../common/loads.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/plan_step.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

using llep::count_t;

// A PlanView over its own vectors, sized as the device planner sizes its buffers.
struct Buffers {
  std::vector<llep::Segment> segments, spare;
  std::vector<llep::WeightTransfer> transfers;
  std::vector<std::int32_t> offsets, native;
  std::vector<count_t> rank_loads;
  std::vector<std::byte> scratch;
  llep::PlanView view;
  llep::alg::TopoView topo;
  template <class P>
  Buffers(const P&, const llep::Topology& t) {
    const auto most = static_cast<std::size_t>(llep::max_plan_segments(t.ranks(), t.experts()));
    segments.resize(most);
    spare.resize(most);
    transfers.resize(most);
    offsets.resize(static_cast<std::size_t>(t.experts()) + 1);
    rank_loads.resize(static_cast<std::size_t>(t.ranks()));
    scratch.resize(llep::plan_step_scratch_bytes<P>(t.ranks(), t.experts()));
    native.resize(static_cast<std::size_t>(t.experts()));
    for (int e = 0; e < t.experts(); ++e) native[static_cast<std::size_t>(e)] = t.native_rank(e);
    topo = llep::alg::TopoView{t.ranks(), t.experts(), t.ranks_per_node(), native.data()};
    view.segments = segments.data();
    view.spare = spare.data();
    view.transfers = transfers.data();
    view.expert_offsets = offsets.data();
    view.rank_loads = rank_loads.data();
    view.max_segments = static_cast<std::int32_t>(most);
  }
};

template <class P>
void same_plan(const P& planner, Buffers& b, const std::vector<count_t>& loads, const llep::Topology& topo,
               llep::Plan& host, long& compared, long& refused) {
  std::string error;
  try {
    planner.plan(loads, topo, host);
  } catch (const llep::Error& e) {
    error = e.what();
  }
  const llep::StepStatus st = llep::plan_step(planner, loads.data(), b.topo, b.scratch.data(), b.view);
  if (!error.empty()) {
    CAPTURE(error);
    REQUIRE_FALSE(st.good());  // both refuse
    ++refused;
    return;
  }
  REQUIRE(st.good());
  const llep::PlanView& v = b.view;
  REQUIRE(std::string_view(v.policy) == host.policy());
  REQUIRE(v.capacity == host.capacity());
  REQUIRE(v.finished);
  const auto segs = host.segments();
  REQUIRE(static_cast<std::size_t>(v.num_segments) == segs.size());
  for (std::size_t i = 0; i < segs.size(); ++i) REQUIRE(v.segments[i] == segs[i]);
  const auto trs = host.weight_transfers();
  REQUIRE(static_cast<std::size_t>(v.num_transfers) == trs.size());
  for (std::size_t i = 0; i < trs.size(); ++i) REQUIRE(v.transfers[i] == trs[i]);
  for (int r = 0; r < topo.ranks(); ++r) REQUIRE(v.rank_loads[r] == host.rank_loads()[static_cast<std::size_t>(r)]);
  for (int e = 0; e < topo.experts(); ++e) {
    const auto se = host.segments(e);
    REQUIRE(v.expert_offsets[e + 1] - v.expert_offsets[e] == static_cast<std::int32_t>(se.size()));
  }
  ++compared;
}

}  // namespace

TEST_CASE("plan_step on the host is each planner's plan, bit for bit, over 100k load vectors") {
  std::mt19937_64 rng(14);
  long compared = 0, refused = 0, vectors = 0;
  llep::Plan host;
  std::vector<int> permuted(64);  // natives not at e / (N / P): expert e on rank (5e) % 16
  for (int e = 0; e < 64; ++e) permuted[static_cast<std::size_t>(e)] = (5 * e) % 16;
  const llep::Topology topos[] = {llep::Topology(8, 32), llep::Topology(64, 384), llep::Topology(4, 16, 2),
                                  llep::Topology(16, permuted, 4), llep::Topology(3, 9)};
  for (const llep::Topology& topo : topos) {
    const llep::StandardEp ep{};
    const llep::LeastLoaded lla0{1.0, 0}, lla{1.0, 1024}, lla_loose{1.25, 64};
    const llep::Adaptive<> adaptive{1.3, lla};
    const llep::Capped<> capped{lla, llep::MemoryCap{4096, 1, 100, false}};
    const llep::Capped<llep::StandardEp> capped_ep{ep, llep::MemoryCap::rows(20000)};
    Buffers b_ep(ep, topo), b_ll(lla, topo), b_ad(adaptive, topo), b_cap(capped, topo), b_cep(capped_ep, topo);
    for (int i = 0; i < 3000; ++i) {
      std::string kind;
      const auto loads = testloads::random_loads(rng, topo.experts(), kind);
      CAPTURE(kind);
      CAPTURE(loads);
      same_plan(ep, b_ep, loads, topo, host, compared, refused);
      same_plan(lla0, b_ll, loads, topo, host, compared, refused);
      same_plan(lla, b_ll, loads, topo, host, compared, refused);
      same_plan(lla_loose, b_ll, loads, topo, host, compared, refused);
      same_plan(adaptive, b_ad, loads, topo, host, compared, refused);
      same_plan(capped, b_cap, loads, topo, host, compared, refused);
      same_plan(capped_ep, b_cep, loads, topo, host, compared, refused);
      vectors += 7;
      if (kind == "uniform" || kind == "zipf") {  // a total a hard cap may just hold
        auto scaled = loads;
        for (auto& x : scaled) x /= 50;
        same_plan(capped, b_cap, scaled, topo, host, compared, refused);
        same_plan(lla, b_ll, scaled, topo, host, compared, refused);
        vectors += 2;
      }
    }
  }
  MESSAGE(compared, " plans identical, ", refused, " refused by both, of ", vectors);
  CHECK(vectors >= 100000);
  CHECK(compared > 90000);
  CHECK(refused > 0);  // the refusal path was exercised
}
