// The shared layout routine (layout_prefix + layout_block, layer/layout.hpp), which
// Layout::build runs on the host and device/device_layout.cuh runs in a kernel, against
// the host layout as it was before (tests/layer/layout_reference.hpp, kept verbatim):
// every table of every rank is the same, bit for bit, for every planner over random and
// adversarial loads (tests/common/loads.hpp) split over the ranks in random and extreme
// ways, with and without replicas. Also: the device form (NativeHolds, buffers of exactly
// layout_capacity entries from the plan's bound) gives the same tables and never writes
// past its buffers, also when its per-expert and per-source phases run in shuffled order
// (as the kernel's threads may); and the failures come back as statuses that name the rank.
#include <doctest/doctest.h>

#include <cstring>
#include <algorithm>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../common/errors.hpp"
#include "../common/loads.hpp"
#include "layout_reference.hpp"
#include "llep/layer/layout.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/cost_aware.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/node_aware.hpp"
#include "llep/plan/quota_search.hpp"
#include "llep/plan/replicated.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

using llep::count_t;

struct Tally {
  long layouts = 0, refused = 0;
};

// The device form: buffers of exactly layout_capacity(P, N, bound) entries with a guard
// after each, NativeHolds instead of the Topology.
struct DeviceForm {
  std::vector<count_t> prefix, counts4;
  std::vector<llep::SendBlock> blocks;
  std::vector<llep::ComputeTask> tasks;
  std::vector<llep::RecvChunk> chunks;
  std::vector<std::int32_t> native, chunk_first;
  llep::LayoutView view;
  static constexpr std::int32_t guard = 0x5a5a5a5a;

  DeviceForm(const llep::Topology& topo, std::int64_t segments) {
    const int P = topo.ranks(), N = topo.experts();
    const llep::LayoutCapacity cap = llep::layout_capacity(P, N, segments);
    prefix.assign(static_cast<std::size_t>(P) * static_cast<std::size_t>(N), -1);
    counts4.assign(4 * static_cast<std::size_t>(P), -1);
    blocks.assign(static_cast<std::size_t>(cap.send_blocks) + 1, llep::SendBlock{guard, guard, guard, guard, guard});
    tasks.assign(static_cast<std::size_t>(cap.tasks) + 1, llep::ComputeTask{guard, guard, guard, guard, false});
    chunks.assign(static_cast<std::size_t>(cap.recv_chunks) + 1, llep::RecvChunk{guard, guard, guard, guard, guard});
    for (int e = 0; e < N; ++e) native.push_back(topo.native_rank(e));
    chunk_first.assign(static_cast<std::size_t>(P) + 1, -1);
    view.prefix = prefix.data();
    view.send_counts = counts4.data();
    view.send_offsets = counts4.data() + P;
    view.recv_counts = counts4.data() + 2 * P;
    view.recv_offsets = counts4.data() + 3 * P;
    view.send_blocks = blocks.data();
    view.tasks = tasks.data();
    view.recv_chunks = chunks.data();
    view.recv_chunk_first = chunk_first.data();
    view.max_send_blocks = static_cast<std::int32_t>(cap.send_blocks);
    view.max_tasks = static_cast<std::int32_t>(cap.tasks);
    view.max_recv_chunks = static_cast<std::int32_t>(cap.recv_chunks);
  }
  [[nodiscard]] bool guards_intact() const {
    return blocks.back().expert == guard && tasks.back().expert == guard && chunks.back().src == guard;
  }
};

std::vector<int> shuffled(int n, std::mt19937_64& rng) {
  std::vector<int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  std::shuffle(v.begin(), v.end(), rng);
  return v;
}

// Every rank's layout of `planner`'s plan of the loads, split over the ranks `mode`'s way:
// the shared routine (Layout) against the reference, and (no replicas) the device form.
template <class Planner>
void check(const Planner& planner, const llep::Topology& topo, const std::vector<count_t>& loads, int mode,
           std::mt19937_64& rng, Tally& tally) {
  llep::Plan plan;
  try {
    planner.plan(loads, topo, plan);
  } catch (const llep::Error&) {
    return;  // Capped refusing: no plan, no layout
  }
  const int P = topo.ranks(), N = topo.experts();
  const auto C = testref::split_counts(rng, loads, P, mode);
  const llep::CountsView counts(C, P, N);
  const std::int64_t bound = llep::max_plan_segments(P, N, topo.replicas_per_rank());
  REQUIRE(static_cast<std::int64_t>(plan.segments().size()) <= bound);
  llep::Layout L;
  testref::RefLayout R;
  for (int rank = 0; rank < P; ++rank) {
    CAPTURE(rank);
    const std::string got = testutil::error_of([&] { L.build(counts, plan, topo, rank); });
    const std::string want = testutil::error_of([&] { R.build(counts, plan, topo, rank); });
    REQUIRE((got == testutil::kNoError) == (want == testutil::kNoError));  // both refuse (2^31) or neither
    if (got != testutil::kNoError) {
      ++tally.refused;
      continue;
    }
    testref::require_same(testref::tables_of(L), testref::tables_of(R));
    ++tally.layouts;
    if (!topo.has_replicas()) {
      DeviceForm d(topo, bound);
      d.view.rank = rank;
      const llep::LayoutStatus st =
          llep::layout_step(C.data(), plan.view(), llep::NativeHolds{d.native.data(), rank}, d.view);
      REQUIRE(st.good());
      REQUIRE(d.guards_intact());
      testref::require_same(testref::tables_of(d.view, P), testref::tables_of(L));
      // The kernel's schedule: the per-expert and per-source phases in any order (threads).
      DeviceForm k(topo, bound);
      k.view.rank = rank;
      const llep::PlanView& pv = plan.view();
      for (const int e : shuffled(N, rng)) llep::layout_prefix(C.data(), P, N, e, e + 1, k.view.prefix);
      REQUIRE(llep::layout_front(C.data(), pv, llep::NativeHolds{k.native.data(), rank}, k.view).good());
      for (const int q : shuffled(P, rng)) llep::layout_recv_count(C.data(), N, q, k.view);
      REQUIRE(llep::layout_recv_scan(P, k.view).good());
      for (const int q : shuffled(P, rng)) llep::layout_recv_write(C.data(), N, q, k.view);
      REQUIRE(k.guards_intact());
      testref::require_same(testref::tables_of(k.view, P), testref::tables_of(L));
    }
  }
}

template <class Planner>
void sweep(const Planner& planner, const llep::Topology& topo, int vectors, std::mt19937_64& rng, Tally& tally) {
  for (int i = 0; i < vectors; ++i) {
    std::string kind;
    const auto loads = testloads::random_loads(rng, topo.experts(), kind);
    CAPTURE(kind);
    check(planner, topo, loads, i % 5, rng, tally);
  }
}

}  // namespace

TEST_CASE("the shared layout routine gives the reference host layout's tables, bit for bit, under every planner") {
  std::mt19937_64 rng(1414);
  Tally tally;
  auto model = std::make_shared<llep::sim::CostModel>();
  const llep::sim::FfnShape shape{"small", 1024, 512};
  for (const auto& [P, N, rpn] : {std::tuple{1, 4, 1}, std::tuple{2, 8, 2}, std::tuple{4, 16, 2},
                                  std::tuple{8, 32, 4}, std::tuple{16, 64, 8}}) {
    const llep::Topology topo(P, N, rpn);
    const int n = P >= 16 ? 300 : 1000;
    sweep(llep::StandardEp{}, topo, n, rng, tally);
    sweep(llep::LeastLoaded{1.0, 0}, topo, n, rng, tally);
    sweep(llep::LeastLoaded{1.0, 64}, topo, n, rng, tally);
    sweep(llep::LeastLoaded{0.7, 3}, topo, n, rng, tally);
    sweep(llep::Adaptive<>{1.3, llep::LeastLoaded{1.0, 2}}, topo, n, rng, tally);
    sweep(llep::NodeAware{1.0, 4}, topo, n, rng, tally);
    sweep(llep::QuotaSearch{2}, topo, n, rng, tally);
    sweep(llep::Capped<>{llep::LeastLoaded{1.0, 0}, llep::MemoryCap::rows(200000)}, topo, n, rng, tally);
    sweep(llep::CostAware{1.0, 0, model, shape}, topo, n, rng, tally);
    sweep(llep::Replicated{}, topo, n, rng, tally);
  }
  // Replicas: rank r also holds expert 2 ((r + 1) mod P), so hot experts split over holders.
  for (const int P : {2, 4, 8}) {
    std::vector<std::vector<int>> replicas(static_cast<std::size_t>(P));
    for (int r = 0; r < P; ++r) replicas[static_cast<std::size_t>(r)] = {2 * ((r + 1) % P)};
    const llep::Topology topo(P, 2 * P, {}, replicas);
    sweep(llep::Replicated{}, topo, 1000, rng, tally);
    sweep(llep::LeastLoaded{1.0, 0}, topo, 1000, rng, tally);
    sweep(llep::StandardEp{}, topo, 1000, rng, tally);
  }
  MESSAGE(tally.layouts, " rank layouts equal, ", tally.refused, " refused by both (2^31 rows)");
  CHECK(tally.layouts > 200000);
}

TEST_CASE("layout_block reports a table too small instead of writing past it") {
  const llep::Topology topo(4, 8);
  const std::vector<count_t> loads{50, 1, 2, 3, 4, 5, 6, 7};
  llep::Plan plan;
  llep::LeastLoaded{1.0, 0}.plan(loads, topo, plan);
  std::mt19937_64 rng(3);
  const auto C = testref::split_counts(rng, loads, 4, 2);
  int short_tables = 0;
  for (int rank = 0; rank < 4; ++rank) {
    DeviceForm d(topo, llep::max_plan_segments(4, 8));
    d.view.rank = rank;
    REQUIRE(llep::layout_step(C.data(), plan.view(), llep::NativeHolds{d.native.data(), rank}, d.view).good());
    const int blocks = d.view.num_send_blocks, tasks = d.view.num_tasks, chunks = d.view.num_recv_chunks;
    // One entry short in each table in turn: that table's status, and no write past it.
    for (int which = 0; which < 3; ++which) {
      const int need = which == 0 ? blocks : which == 1 ? tasks : chunks;
      if (need == 0) continue;
      DeviceForm s(topo, llep::max_plan_segments(4, 8));
      s.view.rank = rank;
      std::int32_t* room = which == 0 ? &s.view.max_send_blocks : which == 1 ? &s.view.max_tasks : &s.view.max_recv_chunks;
      *room = need - 1;
      if (which == 0) s.blocks[static_cast<std::size_t>(need - 1)].expert = DeviceForm::guard;
      if (which == 1) s.tasks[static_cast<std::size_t>(need - 1)].expert = DeviceForm::guard;
      if (which == 2) s.chunks[static_cast<std::size_t>(need - 1)].src = DeviceForm::guard;
      const llep::LayoutStatus st =
          llep::layout_step(C.data(), plan.view(), llep::NativeHolds{s.native.data(), rank}, s.view);
      CHECK(st.code == llep::LayoutStatus::table_overflow);
      CHECK(st.value == which);
      CHECK(st.rank == rank);
      if (which == 0) CHECK(s.blocks[static_cast<std::size_t>(need - 1)].expert == DeviceForm::guard);
      if (which == 1) CHECK(s.tasks[static_cast<std::size_t>(need - 1)].expert == DeviceForm::guard);
      if (which == 2) CHECK(s.chunks[static_cast<std::size_t>(need - 1)].src == DeviceForm::guard);
      CHECK_THROWS_WITH_AS(llep::check_layout_status(st), doctest::Contains("ran out of room"), llep::Error);
      ++short_tables;
    }
  }
  CHECK(short_tables >= 8);
}

TEST_CASE("a rank with 2^31 pairs or more is refused by status and by Layout, naming the rank") {
  const llep::Topology topo(2, 2);
  const std::vector<count_t> loads{count_t{1} << 31, 4};
  llep::Plan plan;
  llep::StandardEp{}.plan(loads, topo, plan);
  const std::vector<count_t> C{count_t{1} << 31, 1, 0, 3};  // rank 0 sends 2^31 + 1 pairs
  DeviceForm d(topo, llep::max_plan_segments(2, 2));
  d.view.rank = 0;
  const llep::LayoutStatus st = llep::layout_step(C.data(), plan.view(), llep::NativeHolds{d.native.data(), 0}, d.view);
  CHECK(st.code == llep::LayoutStatus::pairs_overflow);
  CHECK(st.value == (count_t{1} << 31) + 1);
  llep::Layout L;
  CHECK_THROWS_WITH_AS(L.build(llep::CountsView(C, 2, 2), plan, topo, 0),
                       doctest::Contains("rank 0 has 2147483649 pairs"), llep::Error);
  CHECK(L.send_blocks().empty());
  // Rank 1 sends 3 pairs and computes expert 1's 4 rows: within bounds.
  L.build(llep::CountsView(C, 2, 2), plan, topo, 1);
  CHECK(L.pairs() == 3);
}
