// Layout vs. a brute-force assignment of every pair: each pair's global position decides
// its segment, hence its destination and its compute row; the layout's tables and the
// shared row functors must move every pair exactly there.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <random>
#include <tuple>
#include <vector>

#include "llep/exec/host.hpp"
#include "llep/layer/layout.hpp"
#include "llep/layer/row_ops.hpp"
#include "llep/plan/adaptive.hpp"

namespace {

struct Routing {
  int P, N, K;
  std::vector<std::vector<std::int32_t>> ids;  // per rank, B_p * K
  std::vector<llep::count_t> C;                // P x N
  std::vector<llep::count_t> loads;
};

Routing random_routing(std::mt19937& rng, int P, int N, int K, bool skewed) {
  Routing r{P, N, K, {}, std::vector<llep::count_t>(static_cast<std::size_t>(P * N), 0), {}};
  std::uniform_int_distribution<int> tokens(0, 40), expert(0, N - 1), coin(0, 99);
  const int hot = expert(rng);
  for (int p = 0; p < P; ++p) {
    const int B = (coin(rng) < 15) ? 0 : tokens(rng);  // some ranks empty
    std::vector<std::int32_t> ids(static_cast<std::size_t>(B * K));
    for (auto& id : ids) id = (skewed && coin(rng) < 90) ? hot : expert(rng);
    for (auto id : ids) ++r.C[static_cast<std::size_t>(p * N + id)];
    r.ids.push_back(std::move(ids));
  }
  r.loads.assign(static_cast<std::size_t>(N), 0);
  llep::loads_from_counts(llep::CountsView(r.C, P, N), r.loads);
  return r;
}

// Brute force: where pair (src, flat) must be computed.
struct Where {
  int dst;
  int expert;
  llep::count_t position;  // global position within the expert
};

std::vector<std::vector<Where>> brute_force(const Routing& r, const llep::Plan& plan) {
  std::vector<std::vector<Where>> out(static_cast<std::size_t>(r.P));
  std::vector<llep::count_t> seen(static_cast<std::size_t>(r.N), 0);  // pairs of e on ranks so far
  for (int s = 0; s < r.P; ++s) {
    const auto& ids = r.ids[static_cast<std::size_t>(s)];
    std::vector<llep::count_t> local(static_cast<std::size_t>(r.N), 0);
    for (std::size_t f = 0; f < ids.size(); ++f) {
      const int e = ids[f];
      const llep::count_t g = seen[static_cast<std::size_t>(e)] + local[static_cast<std::size_t>(e)]++;
      int dst = -1;
      for (const auto& seg : plan.segments(e))
        if (seg.begin <= g && g < seg.end) dst = seg.rank;
      REQUIRE(dst >= 0);
      out[static_cast<std::size_t>(s)].push_back(Where{dst, e, g});
    }
    for (int e = 0; e < r.N; ++e) seen[static_cast<std::size_t>(e)] += local[static_cast<std::size_t>(e)];
  }
  return out;
}

template <class Planner>
void check_layouts(const Routing& r, const Planner& planner) {
  const llep::Topology topo(r.P, r.N);
  llep::Plan plan;
  planner.plan(r.loads, topo, plan);
  REQUIRE(llep::validate(plan, r.loads, topo));
  const auto where = brute_force(r, plan);
  const llep::CountsView C(r.C, r.P, r.N);

  std::vector<llep::Layout> layouts(static_cast<std::size_t>(r.P));
  for (int p = 0; p < r.P; ++p) layouts[static_cast<std::size_t>(p)].build(C, plan, topo, p);

  // Tags travel as rows: (source rank, flat pair index), through the real functors.
  using Tag = std::pair<std::int32_t, std::int32_t>;
  llep::HostExec exec;
  std::vector<std::vector<Tag>> send(static_cast<std::size_t>(r.P));
  for (int s = 0; s < r.P; ++s) {
    const auto& L = layouts[static_cast<std::size_t>(s)];
    const auto& ids = r.ids[static_cast<std::size_t>(s)];
    const std::size_t n = ids.size();
    REQUIRE(L.pairs() == static_cast<llep::count_t>(n));
    // Brute-force send counts per destination.
    std::vector<llep::count_t> want(static_cast<std::size_t>(r.P), 0);
    for (const Where& w : where[static_cast<std::size_t>(s)]) ++want[static_cast<std::size_t>(w.dst)];
    CHECK(std::vector<llep::count_t>(L.send_counts().begin(), L.send_counts().end()) == want);

    std::vector<std::int32_t> order(n), pair_row(n, -1), row_pair(n, -1);
    exec.sort_by_expert(ids.data(), n, r.N, order.data());
    exec.for_each_n(n, llep::AssignSendRows{L.send_blocks().data(), static_cast<std::int32_t>(L.send_blocks().size()),
                                            order.data(), pair_row.data(), row_pair.data()});
    std::vector<Tag> tags(n);
    for (std::size_t f = 0; f < n; ++f) tags[f] = {s, static_cast<std::int32_t>(f)};
    send[static_cast<std::size_t>(s)].assign(n, Tag{-1, -1});
    llep::copy_rows(exec, true, send[static_cast<std::size_t>(s)].data(), tags.data(), row_pair.data(), n, sizeof(Tag));
    // Each pair sits inside its destination's block, blocks in (expert, position) order.
    for (std::size_t f = 0; f < n; ++f) {
      const Where& w = where[static_cast<std::size_t>(s)][f];
      const auto row = pair_row[f];
      CHECK(row >= L.send_offsets()[static_cast<std::size_t>(w.dst)]);
      CHECK(row < L.send_offsets()[static_cast<std::size_t>(w.dst)] + L.send_counts()[static_cast<std::size_t>(w.dst)]);
      CHECK(send[static_cast<std::size_t>(s)][static_cast<std::size_t>(row)] == Tag{s, static_cast<std::int32_t>(f)});
    }
  }

  // All-to-all by hand, then the receive-to-compute permutation.
  for (int d = 0; d < r.P; ++d) {
    const auto& L = layouts[static_cast<std::size_t>(d)];
    std::vector<Tag> recv;
    for (int s = 0; s < r.P; ++s) {
      const auto& Ls = layouts[static_cast<std::size_t>(s)];
      REQUIRE(L.recv_counts()[static_cast<std::size_t>(s)] == Ls.send_counts()[static_cast<std::size_t>(d)]);
      REQUIRE(L.recv_offsets()[static_cast<std::size_t>(s)] == static_cast<llep::count_t>(recv.size()));
      const auto b = send[static_cast<std::size_t>(s)].begin() + Ls.send_offsets()[static_cast<std::size_t>(d)];
      recv.insert(recv.end(), b, b + Ls.send_counts()[static_cast<std::size_t>(d)]);
    }
    const std::size_t rows = recv.size();
    REQUIRE(static_cast<llep::count_t>(rows) == L.compute_rows());
    REQUIRE(L.compute_rows() == plan.rank_loads()[static_cast<std::size_t>(d)]);
    std::vector<std::int32_t> crow(rows, -1);
    exec.for_each_n(rows, llep::AssignComputeRows{L.recv_chunks().data(), static_cast<std::int32_t>(L.recv_chunks().size()),
                                                  crow.data()});
    std::vector<Tag> compute(rows, Tag{-1, -1});
    llep::copy_rows(exec, false, compute.data(), recv.data(), crow.data(), rows, sizeof(Tag));
    // Every task's rows hold exactly its segment's pairs, in global position order.
    std::size_t next = 0;
    for (const auto& task : L.tasks()) {
      CHECK(static_cast<std::size_t>(task.row) == next);
      CHECK(task.native == (topo.native_rank(task.expert) == d));
      for (std::int32_t i = 0; i < task.rows; ++i) {
        const Tag t = compute[static_cast<std::size_t>(task.row + i)];
        REQUIRE(t.first >= 0);
        const Where& w = where[static_cast<std::size_t>(t.first)][static_cast<std::size_t>(t.second)];
        CHECK(w.dst == d);
        CHECK(w.expert == task.expert);
        CHECK(w.position == task.begin + i);
      }
      next += static_cast<std::size_t>(task.rows);
    }
    CHECK(next == rows);
  }
}

}  // namespace

TEST_CASE("layout moves every pair to the rank and row the plan gives it") {
  std::mt19937 rng(12345);
  for (int P : {1, 2, 3, 4, 8})
    for (int mult : {1, 4, 16})
      for (int K : {1, 2, 4})
        for (bool skewed : {false, true})
          for (int rep = 0; rep < 3; ++rep) {
            const auto r = random_routing(rng, P, P * mult, K, skewed);
            CAPTURE(P);
            CAPTURE(mult);
            CAPTURE(K);
            CAPTURE(skewed);
            check_layouts(r, llep::StandardEp{});
            check_layouts(r, llep::LeastLoaded{1.0, 0});
            check_layouts(r, llep::LeastLoaded{0.5, 3});
            check_layouts(r, llep::Adaptive<>{1.3, llep::LeastLoaded{1.0, 2}});
          }
}

TEST_CASE("layout rejects counts or plans of another shape") {
  const llep::Topology topo(2, 4);
  std::vector<llep::count_t> C(8, 1), loads(4, 2);
  llep::Plan plan;
  llep::StandardEp{}.plan(loads, topo, plan);
  llep::Layout L;
  std::vector<llep::count_t> small(6, 1);
  CHECK_THROWS_AS(L.build(llep::CountsView(small, 2, 3), plan, topo, 0), llep::Error);
  CHECK_THROWS_WITH_AS(L.build(llep::CountsView(C, 2, 4), plan, topo, 2), doctest::Contains("rank 2"), llep::Error);
}
