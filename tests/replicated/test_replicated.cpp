// Replicated (EPLB-style): the placement against hand-worked cases, its invariants on random
// histories, the per-batch water-filling against an independent token-by-token reference,
// validate() with replicas, re-placement moves and the policy that says when.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <limits>
#include <string>
#include <random>
#include <vector>

#include "llep/plan/least_loaded.hpp"
#include "llep/plan/replicated.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

using llep::count_t;
using Lists = std::vector<std::vector<int>>;

Lists replica_lists(const llep::Topology& t) {
  Lists out;
  for (int r = 0; r < t.ranks(); ++r) {
    const auto s = t.replica_experts(r);
    out.emplace_back(s.begin(), s.end());
  }
  return out;
}

std::vector<int> natives(const llep::Topology& t) {
  std::vector<int> out;
  for (int e = 0; e < t.experts(); ++e) out.push_back(t.native_rank(e));
  return out;
}

// Every rank holds exactly `slots` distinct experts, all of its own node, and holders()
// agrees with holds().
void check_placement(const llep::Topology& t, int slots) {
  for (int r = 0; r < t.ranks(); ++r) {
    std::vector<int> held;
    t.held_experts(r, std::back_inserter(held));
    CHECK(static_cast<int>(held.size()) == slots);
    CHECK(std::adjacent_find(held.begin(), held.end()) == held.end());
    for (const int e : held) CHECK(t.node_of(t.native_rank(e)) == t.node_of(r));
  }
  for (int e = 0; e < t.experts(); ++e) {
    const auto h = t.holders(e);
    CHECK(std::is_sorted(h.begin(), h.end()));
    CHECK(std::find(h.begin(), h.end(), t.native_rank(e)) != h.end());
    CHECK(t.replicas(e) == static_cast<int>(h.size()) - 1);
    for (int r = 0; r < t.ranks(); ++r) CHECK(t.holds(e, r) == (std::find(h.begin(), h.end(), r) != h.end()));
  }
}

count_t max_load(std::span<const count_t> rl) { return *std::max_element(rl.begin(), rl.end()); }

// Independent reference of the per-batch split: single-holder experts stay; replicated
// experts, by load descending (ties by lower id), hand out their tokens one at a time, each
// to the least-loaded holder (ties by lower rank), then refine (below); slices in
// ascending holder rank.
std::vector<llep::Segment> reference_split(const std::vector<count_t>& loads, const llep::Topology& t) {
  const int N = t.experts();
  std::vector<count_t> rank(static_cast<std::size_t>(t.ranks()), 0);
  std::vector<llep::Segment> segs;
  std::vector<int> order;
  for (int e = 0; e < N; ++e) {
    const count_t l = loads[static_cast<std::size_t>(e)];
    if (l == 0) continue;
    if (t.holders(e).size() == 1) {
      segs.push_back({e, t.native_rank(e), 0, l});
      rank[static_cast<std::size_t>(t.native_rank(e))] += l;
    } else {
      order.push_back(e);
    }
  }
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return loads[static_cast<std::size_t>(a)] > loads[static_cast<std::size_t>(b)];
  });
  // got[e][r]: tokens of replicated expert e on rank r. Token by token, each to the
  // least-loaded holder; then up to 16 passes in which each expert takes its tokens back
  // and hands them out again the same way, until the busiest rank is at its floor or a
  // pass no longer lowers the sum of squared rank loads.
  std::vector<std::vector<count_t>> got(static_cast<std::size_t>(N), std::vector<count_t>(static_cast<std::size_t>(t.ranks()), 0));
  auto hand_out = [&](int e) {
    auto& g = got[static_cast<std::size_t>(e)];
    for (count_t i = 0; i < loads[static_cast<std::size_t>(e)]; ++i) {
      int best = -1;
      for (const int r : t.holders(e))
        if (best < 0 || rank[static_cast<std::size_t>(r)] < rank[static_cast<std::size_t>(best)]) best = r;
      ++rank[static_cast<std::size_t>(best)];
      ++g[static_cast<std::size_t>(best)];
    }
  };
  auto squares = [&] {
    long double sq = 0;
    for (const count_t x : rank) sq += static_cast<long double>(x) * static_cast<long double>(x);
    return sq;
  };
  // The busiest rank cannot go below the mean (rounded up) or a single-holder load.
  count_t total = 0;
  for (const count_t l : loads) total += l;
  const count_t floor_load = std::max(max_load(rank), (total + t.ranks() - 1) / t.ranks());
  for (const int e : order) hand_out(e);
  long double last = squares();
  for (int pass = 0; pass < 16 && order.size() > 1 && max_load(rank) > floor_load; ++pass) {
    for (const int e : order) {
      auto& g = got[static_cast<std::size_t>(e)];
      for (int r = 0; r < t.ranks(); ++r) rank[static_cast<std::size_t>(r)] -= g[static_cast<std::size_t>(r)];
      std::fill(g.begin(), g.end(), 0);
      hand_out(e);
    }
    if (!(squares() < last)) break;
    last = squares();
  }
  for (const int e : order) {
    count_t b = 0;
    for (const int r : t.holders(e))
      if (const count_t n = got[static_cast<std::size_t>(e)][static_cast<std::size_t>(r)]; n > 0) {
        segs.push_back({e, r, b, b + n});
        b += n;
      }
  }
  std::sort(segs.begin(), segs.end(), llep::segment_order);
  return segs;
}


}  // namespace

TEST_CASE("Topology with replicas: holds, holders, slots, and the rules it enforces") {
  // P = 2, N = 4: natives r0 {0, 1}, r1 {2, 3}; r0 also holds 3, r1 holds 0.
  const llep::Topology t(2, 4, {}, Lists{{3}, {0}});
  CHECK(t.replicas_per_rank() == 1);
  CHECK(t.slots_per_rank() == 3);
  CHECK(t.holds(3, 0));
  CHECK(t.holds(0, 1));
  CHECK_FALSE(t.holds(1, 1));
  CHECK(std::vector<int>(t.holders(0).begin(), t.holders(0).end()) == std::vector<int>{0, 1});
  CHECK(std::vector<int>(t.holders(1).begin(), t.holders(1).end()) == std::vector<int>{0});
  CHECK(t.replicas(0) == 1);
  CHECK(t.replicas(2) == 0);
  std::vector<int> held;
  t.held_experts(1, std::back_inserter(held));
  CHECK(held == std::vector<int>{0, 2, 3});
  CHECK(t == llep::Topology(2, 4).with_replicas({{3}, {0}}));
  CHECK_FALSE(t == llep::Topology(2, 4));
  // No replicas: holders are the natives.
  const llep::Topology plain(2, std::vector<int>{1, 0, 0, 1});
  CHECK(plain.holders(0).size() == 1);
  CHECK(plain.holders(0)[0] == 1);
  CHECK(plain.slots_per_rank() == 2);

  CHECK_THROWS_WITH_AS(llep::Topology(2, 4, {}, Lists{{3}, {0, 1}}), doctest::Contains("rank 1 holds 2 natives + 2 replicas = 4 slots but rank 0 holds 3"),
                       llep::Error);
  CHECK_THROWS_WITH_AS(llep::Topology(2, 4, {}, Lists{{1}, {0}}),
                       doctest::Contains("replica of expert 1 which is already native"), llep::Error);
  CHECK_THROWS_WITH_AS(llep::Topology(2, 4, {}, Lists{{2, 2}, {0, 1}}), doctest::Contains("two replicas of expert 2"),
                       llep::Error);
  CHECK_THROWS_WITH_AS(llep::Topology(2, 4, {}, Lists{{4}, {0}}), doctest::Contains("replica expert 4"), llep::Error);
  CHECK_THROWS_WITH_AS(llep::Topology(2, 4, {}, Lists{{2}}), doctest::Contains("replicas list 1 ranks"), llep::Error);
}

TEST_CASE("EPLB placement, one node: hand-worked, no fallback") {
  // P = 4, N = 4 (one native each, r = e), 2 slots per rank: S = 1, 4 extra copies.
  // Replicate by history per copy, at most 4 copies each:
  //   80, 40, 20, 20        -> expert 0: 2 copies (share 40)
  //   40, 40, 20, 20 (tie)  -> expert 0: 3 copies (26.7)
  //   26.7, 40, 20, 20      -> expert 1: 2 copies (20)
  //   26.7, 20, 20, 20      -> expert 0: 4 copies (20)
  // Pack: estimated loads start at the native shares [20, 20, 20, 20]. Replicas by share,
  // ties by id: 0, 0, 0, 1. Copies of 0 go to r1, r2, r3 (least loaded, lower rank, not
  // already holding 0); the copy of 1 to r0, the only rank left with a free slot.
  const std::vector<double> history{80, 40, 20, 20};
  const auto t = llep::Replicated::place(history, 4, 2);
  CHECK(natives(t) == std::vector<int>{0, 1, 2, 3});
  CHECK(replica_lists(t) == Lists{{1}, {0}, {0}, {0}});
  check_placement(t, 2);
  // S = 0: no replicas at all.
  CHECK(llep::Replicated::place(history, 4, 1) == llep::Topology(4, 4));
}

TEST_CASE("EPLB placement, one node: a stuck replica gives its slot to the next hottest expert") {
  // P = 2, N = 4: natives r0 {0, 1}, r1 {2, 3}; 3 slots: S = 1, 2 extra copies, at most 2
  // copies each. Replicate: 60 -> expert 0 (2 copies, share 30); expert 0 is at 2 copies,
  // so 20 -> expert 1 (2 copies, share 10).
  // Pack: estimates r0 = 30 + 10 = 40, r1 = 10 + 10 = 20. The copy of 0 (share 30) can
  // only go to r1. The copy of 1 (10): the only rank with a free slot is r0, which holds 1
  // natively: stuck. Its slot goes to the hottest expert r0 lacks: 2 and 3 tie at 10 per
  // copy, so 2 (lower id).
  const std::vector<double> history{60, 20, 10, 10};
  const auto t = llep::Replicated::place(history, 2, 3);
  CHECK(replica_lists(t) == Lists{{2}, {0}});
  check_placement(t, 3);
}

TEST_CASE("EPLB placement with nodes: natives packed onto nodes, then ranks, then replicas inside each node") {
  // P = 4 in 2 nodes of 2, N = 8 (M = 2), 3 slots (S = 1).
  // history 50 40 30 20 10 10 5 5 (experts 0..7); nodes take 4 experts each, by history
  // descending to the lighter node (ties: lower node):
  //   0 -> n0 (50|0), 1 -> n1 (50|40), 2 -> n1 (50|70), 3 -> n0 (70|70), 4 -> n0 (80|70),
  //   5 -> n1 (80|80), 6 -> n0 (85|80), 7 -> n1 (85|85)
  // Node 0 {0, 3, 4, 6} onto r0, r1 (2 each): 0 -> r0 (50), 3 -> r1 (20), 4 -> r1 (30),
  //   r1 is full, 6 -> r0 (55).
  // Node 1 {1, 2, 5, 7} onto r2, r3: 1 -> r2 (40), 2 -> r3 (30), 5 -> r3 (40),
  //   7 -> r2 (tie 40|40, lower rank; 45).
  // Replicas, 2 extra slots per node, at most 2 copies each:
  //   node 0: 0 (50 -> share 25), then 3 (20 -> 10). Estimates r0 = 25 + 5 = 30,
  //     r1 = 10 + 10 = 20; copy of 0 -> r1 (r0 holds it), copy of 3 -> r0.
  //   node 1: 1 (40 -> 20), then 2 (30 -> 15). Estimates r2 = 20 + 5 = 25, r3 = 15 + 10 = 25;
  //     copy of 1 -> r3 (r2 holds it), copy of 2 -> r2.
  const std::vector<double> history{50, 40, 30, 20, 10, 10, 5, 5};
  const auto t = llep::Replicated::place(history, 4, 3, 2);
  CHECK(natives(t) == std::vector<int>{0, 2, 3, 1, 1, 3, 0, 2});
  CHECK(replica_lists(t) == Lists{{3}, {0}, {2}, {1}});
  CHECK(t.ranks_per_node() == 2);
  check_placement(t, 3);

  // From the default placement (r0 {0, 1}, r1 {2, 3}, r2 {4, 5}, r3 {6, 7}), every new
  // holder that held nothing of the expert needs the weights, from the old native rank.
  const auto moves = llep::placement_moves(llep::Topology(4, 8, 2), t);
  const std::vector<llep::WeightTransfer> want{{0, 0, 1}, {1, 0, 2}, {1, 0, 3}, {2, 1, 2}, {2, 1, 3},
                                               {3, 1, 0}, {4, 2, 1}, {5, 2, 3}, {6, 3, 0}, {7, 3, 2}};
  CHECK(moves == want);
  CHECK(llep::placement_moves(t, t).empty());
  // Re-placing over t keeps its natives: only replicas move. Expert 6 turns hot in node 0:
  // replicate 6 (100 -> 50) then 0 (50 -> 25); estimates r0 = 25 + 50 = 75, r1 = 20 + 10 = 30;
  // the copy of 6 goes to r1, the copy of 0 has room only on r0, which holds it: stuck, the
  // slot goes to the hottest expert r0 lacks, 3 (20). Node 1 as before.
  std::vector<double> drift = history;
  drift[6] = 100;
  const auto t2 = llep::Replicated::place(drift, t, 3);
  CHECK(natives(t2) == natives(t));
  CHECK(replica_lists(t2) == Lists{{3}, {6}, {2}, {1}});
  CHECK(llep::placement_moves(t, t2) == std::vector<llep::WeightTransfer>{{6, 0, 1}});
}

TEST_CASE("EPLB placement: every rank the same slots, no duplicates, copies inside the node, on random histories") {
  std::mt19937_64 rng(11);
  for (int it = 0; it < 400; ++it) {
    const int P = std::vector<int>{1, 2, 4, 6, 8}[rng() % 5];
    std::vector<int> divisors;
    for (int d = 1; d <= P; ++d)
      if (P % d == 0) divisors.push_back(d);
    const int rpn = divisors[rng() % divisors.size()];
    const int M = 1 + static_cast<int>(rng() % 3), N = P * M;
    const int slots = M + static_cast<int>(rng() % static_cast<unsigned>(rpn * M - M + 1));
    std::vector<double> history(static_cast<std::size_t>(N));
    for (auto& h : history) h = rng() % 3 == 0 ? 0.0 : static_cast<double>(rng() % 1000);
    if (rng() % 2) history[rng() % history.size()] = 1e6;  // one hot expert
    INFO("P = ", P, ", ranks/node = ", rpn, ", N = ", N, ", slots = ", slots);
    const auto t = llep::Replicated::place(history, P, slots, rpn);
    check_placement(t, slots);
    // Re-placing with the same history over t reproduces it (deterministic, natives kept).
    CHECK(llep::Replicated::place(history, t, slots) == t);
  }
}

TEST_CASE("EPLB placement: bad input is llep::Error naming the value") {
  const std::vector<double> h{1, 2, 3, 4};
  CHECK_THROWS_WITH_AS((void)llep::Replicated::place(h, 2, 1), doctest::Contains("slots_per_rank = 1"), llep::Error);
  CHECK_THROWS_WITH_AS((void)llep::Replicated::place(h, 2, 5), doctest::Contains("[2, 4]"), llep::Error);
  CHECK_THROWS_WITH_AS((void)llep::Replicated::place(h, 2, 5, 1), doctest::Contains("[2, 4]"), llep::Error);
  CHECK_THROWS_WITH_AS((void)llep::Replicated::place(h, 3, 2), doctest::Contains("multiple of ranks P = 3"),
                       llep::Error);
  const std::vector<double> neg{1, -2, 3, 4};
  CHECK_THROWS_WITH_AS((void)llep::Replicated::place(neg, 2, 3), doctest::Contains("history load -2 of expert 1"),
                       llep::Error);
  const std::vector<double> none;  // an EmaCounts that saw no step yet
  CHECK_THROWS_WITH_AS((void)llep::Replicated::place(none, llep::Topology(2, 4), 3),
                       doctest::Contains("history loads hold 0 entries"), llep::Error);
  CHECK_THROWS_AS((void)llep::placement_moves(llep::Topology(2, 4), llep::Topology(2, 8)), llep::Error);
}

TEST_CASE("Replicated splits by water-filling, and that beats an even split over the holders") {
  // P = 2, N = 4: natives r0 {0, 1}, r1 {2, 3}; r1 also holds expert 0, r0 expert 2.
  // loads 12, 6, 0, 2: single-holder experts first: r0 = 6 (expert 1), r1 = 2 (expert 3).
  // Expert 0 (12 tokens) water-fills r0 and r1: 4 lift r1 to 6, the other 8 split 4 | 4:
  // r0 computes [0, 4), r1 [4, 12); both end at 10. An even split (6 | 6) ends at 12 | 8.
  const llep::Topology t(2, 4, {}, Lists{{2}, {0}});
  const std::vector<count_t> loads{12, 6, 0, 2};
  llep::Plan plan;
  llep::Replicated{}.plan(loads, t, plan);
  REQUIRE(llep::validate(plan, loads, t));
  const auto s0 = plan.segments(0);
  REQUIRE(s0.size() == 2);
  CHECK(s0[0] == llep::Segment{0, 0, 0, 4});
  CHECK(s0[1] == llep::Segment{0, 1, 4, 12});
  CHECK(std::vector<count_t>(plan.rank_loads().begin(), plan.rank_loads().end()) == std::vector<count_t>{10, 10});
  CHECK(plan.weight_transfers().empty());
  CHECK(plan.policy() == "replicated");
  CHECK(plan.capacity() == 10);
  const count_t even_max = std::max<count_t>(6 + 6, 2 + 6);
  CHECK(max_load(plan.rank_loads()) < even_max);

  // The remainder of the level goes to the lowest-ranked filled holders: 3 tokens over
  // three idle holders of expert 0 -> 1 | 1 | 1; 5 tokens -> 2 | 2 | 1.
  const llep::Topology three(3, 3, {}, Lists{{1}, {0}, {0}});
  llep::Replicated{}.plan(std::vector<count_t>{5, 0, 0}, three, plan);
  CHECK(plan.segments(0)[0] == llep::Segment{0, 0, 0, 2});
  CHECK(plan.segments(0)[1] == llep::Segment{0, 1, 2, 4});
  CHECK(plan.segments(0)[2] == llep::Segment{0, 2, 4, 5});
}

TEST_CASE("Replicated plans are valid, transfer-free, and equal a token-by-token reference, on random placements") {
  std::mt19937_64 rng(5);
  llep::Plan plan, other;
  for (int it = 0; it < 600; ++it) {
    const int P = std::vector<int>{1, 2, 3, 4, 8}[rng() % 5];
    const int M = 1 + static_cast<int>(rng() % 3), N = P * M;
    const int rpn = (P % 2 == 0 && rng() % 2) ? P / 2 : P;
    const int slots = M + static_cast<int>(rng() % static_cast<unsigned>(rpn * M - M + 1));
    std::vector<double> history(static_cast<std::size_t>(N));
    for (auto& h : history) h = static_cast<double>(rng() % 100);
    // Half the time a custom native placement underneath.
    llep::Topology base(P, N, rpn);
    if (rng() % 2) {
      std::vector<int> nat(static_cast<std::size_t>(N));
      for (int e = 0; e < N; ++e) nat[static_cast<std::size_t>(e)] = e % P;
      std::shuffle(nat.begin(), nat.end(), rng);
      base = llep::Topology(P, std::move(nat), rpn);
    }
    const auto topo = llep::Replicated::place(history, base, slots);
    std::vector<count_t> loads(static_cast<std::size_t>(N));
    for (auto& l : loads) l = rng() % 4 == 0 ? 0 : static_cast<count_t>(rng() % 60);
    if (rng() % 3 == 0) loads[rng() % loads.size()] += 500;
    INFO("P = ", P, ", N = ", N, ", slots = ", slots, ", iteration ", it);
    llep::Replicated{}.plan(loads, topo, plan);
    const auto v = llep::validate(plan, loads, topo);
    INFO(v.message);
    REQUIRE(v);
    CHECK(plan.weight_transfers().empty());
    for (const auto& s : plan.segments()) CHECK(topo.holds(s.expert, s.rank));
    const auto want = reference_split(loads, topo);
    CHECK(std::vector<llep::Segment>(plan.segments().begin(), plan.segments().end()) == want);
    // Within bounds(): one segment per holder at most, no foreign expert, no transfer.
    count_t total = 0;
    for (const count_t l : loads) total += l;
    const auto b = llep::plan_bounds(llep::Replicated{}, topo, (total + P - 1) / P);
    CHECK(static_cast<int>(plan.segments().size()) <= b.segments);
    CHECK(max_load(plan.rank_loads()) <= b.rows_per_rank);
    CHECK(b.foreign_experts_per_rank == 0);
    CHECK(b.transfers == 0);
    // Refining never makes the busiest rank busier than the single water-fill pass.
    const count_t refined = max_load(plan.rank_loads());
    llep::Replicated{.refine_passes = 0}.plan(loads, topo, other);
    REQUIRE(llep::validate(other, loads, topo));
    CHECK(refined <= max_load(other.rank_loads()));
    // Without replicas it is standard EP.
    llep::Replicated{}.plan(loads, base, plan);
    llep::StandardEp{}.plan(loads, base, other);
    CHECK(std::vector<llep::Segment>(plan.segments().begin(), plan.segments().end()) ==
          std::vector<llep::Segment>(other.segments().begin(), other.segments().end()));
    // Another planner on the replicated topology: transfers only to ranks that lack the
    // expert, and validate agrees.
    llep::LeastLoaded{1.0, 0}.plan(loads, topo, other);
    REQUIRE(llep::validate(other, loads, topo));
    for (const auto& w : other.weight_transfers()) CHECK_FALSE(topo.holds(w.expert, w.dst));
  }
}

TEST_CASE("validate with replicas: a segment on a replica holder needs no transfer, one elsewhere does") {
  const llep::Topology t(2, 4, {}, Lists{{2}, {0}});
  const std::vector<count_t> loads{4, 0, 4, 0};
  const std::vector<count_t> rl{4, 4};
  llep::Plan plan;
  // Expert 0 half on r1 (replica), expert 2 half on r0 (replica): no transfers.
  const std::vector<llep::Segment> segs{{0, 0, 0, 2}, {0, 1, 2, 4}, {2, 0, 0, 2}, {2, 1, 2, 4}};
  plan.assign(t, "hand", 4, segs, {}, rl);
  CHECK(llep::validate(plan, loads, t));
  const std::vector<llep::WeightTransfer> extra{{0, 0, 1}};
  plan.assign(t, "hand", 4, segs, extra, rl);
  CHECK(llep::validate(plan, loads, t).message.find("extra weight transfer (expert 0, 0 -> 1)") != std::string::npos);
  // Without the replicas the same segments need (0, 0 -> 1) and (2, 1 -> 0).
  plan.assign(llep::Topology(2, 4), "hand", 4, segs, {}, rl);
  CHECK(llep::validate(plan, loads, llep::Topology(2, 4)).message.find("missing weight transfer (expert 0, 0 -> 1)") !=
        std::string::npos);
  // finish() derives the same.
  llep::Plan fresh;
  fresh.reset(t, "hand");
  for (const auto& s : segs) fresh.add_segment(s.expert, s.rank, s.begin, s.end);
  fresh.finish(t);
  CHECK(fresh.weight_transfers().empty());
  fresh.finish(llep::Topology(2, 4));
  CHECK(std::vector<llep::WeightTransfer>(fresh.weight_transfers().begin(), fresh.weight_transfers().end()) ==
        std::vector<llep::WeightTransfer>{{0, 0, 1}, {2, 1, 0}});
}

TEST_CASE("Replicated: a negative refine_passes is llep::Error") {
  llep::Plan plan;
  CHECK_THROWS_WITH_AS(llep::Replicated{.refine_passes = -1}.plan(std::vector<count_t>{1, 1}, llep::Topology(1, 2), plan),
                       doctest::Contains("refine_passes = -1"), llep::Error);
}

TEST_CASE("ReplacementPolicy: every R steps, or when the imbalance reaches the threshold") {
  const llep::ReplacementPolicy never{};
  CHECK_FALSE(never.due(1'000'000, 50.0));
  const llep::ReplacementPolicy every{100, 0};
  CHECK_FALSE(every.due(99, 9.0));
  CHECK(every.due(100, 1.0));
  const llep::ReplacementPolicy skew{0, 1.5};
  CHECK_FALSE(skew.due(5, 1.49));
  CHECK(skew.due(5, 1.5));
  const llep::ReplacementPolicy bad{0, 0.5};
  CHECK_THROWS_WITH_AS((void)bad.due(1, 1.0), doctest::Contains("imbalance_threshold = 0.5"), llep::Error);
  const llep::ReplacementPolicy nan{0, std::numeric_limits<double>::quiet_NaN()};
  CHECK_THROWS_AS(nan.check(), llep::Error);
}
