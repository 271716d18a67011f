#pragma once
// Replicated: EPLB-style balancing (DeepSeek's Expert Parallelism Load Balancer). Hot experts
// get extra copies of their weights (replicas) on other ranks, chosen from history loads;
// each batch then splits an expert's tokens over the ranks that hold it. Spilled tokens
// never need weights to travel, unlike LeastLoaded; the price is memory (S more expert
// slots per rank) and lag: the placement follows history, not the batch.
//
//   placement (rarely):  Replicated::place(history, ...)        natives fixed -> Topology
//                        Replicated::place_full(history, ...)   every slot free -> Topology
//   per batch:           Replicated{}.plan(loads, topo, out)
//   re-placement:        ReplacementPolicy::due(...), placement_moves(old, new)
//
// The algorithms, exactly (docs/planners.md has worked examples):
//
// Fill (EPLB's replicate-then-pack) over a pool of ranks and experts, some copies possibly
// already in place (pinned), every rank r with room[r] free slots:
//   1. Replicate (EPLB's replicate_experts): an expert of the pool without a copy gets one;
//      then repeat for every remaining free slot: add a copy of the pool expert with the
//      highest history load per copy h[e] / c[e], ties by lower id, among experts with
//      fewer copies than the pool has ranks (a rank never holds two copies of one expert).
//   2. Pack: a rank's estimated load starts as the sum of h[e] / c[e] over its pinned
//      copies. The other copies, by share h[e] / c[e] descending (ties by lower id), go
//      each to the pool rank with the lowest estimated load (ties by lower rank) that has
//      a free slot and does not hold the expert yet. This can get stuck: when every rank
//      with a free slot already holds the expert, that copy is dropped and the slot goes
//      instead to the expert with the highest h / c that some free rank lacks (ties by
//      lower id), on the least-loaded such rank. Every rank ends full, never with two
//      copies of one expert.
//
// place(history, base, slots_per_rank), natives fixed: natives stay where `base` puts them
// (pinned), and each rank gets slots_per_rank minus its natives free slots. While every
// node has at least slots_per_rank experts, each node is its own pool (an expert's copies
// never leave its native node, so its tokens cross no more nodes than under standard EP);
// otherwise one pool of every rank and expert.
// place(history, ranks, slots_per_rank, ranks_per_node): one node: natives at the default
// e / (N / P), then as above. Several nodes: replicas cannot carry load across nodes, so
// the natives are packed first (EPLB's hierarchical step, with groups of one expert):
// experts by history descending (ties by lower id) each to the node with the lowest
// history load that has room (N / nodes experts each; ties by lower node), then inside
// each node the same way onto ranks (N / P each). Against the default placement these
// native moves are weight moves too: placement_moves reports them.
//
// place_full(history, current or P, slots_per_rank, ..., groups), every slot free (as EPLB;
// P need not divide N, any ceil(N / P) <= slots_per_rank <= N): candidates
//   hierarchical:  (several nodes, groups dividing N, nodes dividing groups, slots_per_rank
//                  <= N / nodes, as EPLB) groups (consecutive ids, N / groups each; 0: one
//                  expert each) by history descending, each to the lightest node with room
//                  (groups / nodes each); then each node its own pool, nothing pinned;
//   global:        one pool of every rank and expert, nothing pinned (copies of an expert
//                  may span nodes);
//   sticky (with `current`): hierarchical and global again, but a copy goes first to the
//                  least-loaded rank that holds it under `current`, has room and stays at or
//                  under the mean estimate (and 1.05 x the mean, a second variant);
//   natives fixed: place(history, current, slots_per_rank), when current's natives fit.
// The plain global and hierarchical results have their ranks relabelled (a whole rank's
// contents to another rank; node blocks as wholes, for hierarchical) to keep as many copies
// where `current` has them as possible (two levels of optimal assignment), which leaves
// rank loads permuted. Each candidate is scored by the busiest rank of plan() on the
// history; among those within `tolerance` (default 0) of the best, the fewest
// placement_moves from `current` win, ties to the better balance, then to the earlier
// candidate. Natives: the expert's native under `current` if it still holds it, else a
// holder that held it, else its lowest holder.
//
// plan(loads, topo): experts with one holder put all their tokens there. Experts with
// several holders, by load descending (ties by lower id), water-fill their holders: the
// least-loaded holders are raised to a common level until the expert's tokens are used
// up; the remainder of the integer division goes one token each to the lowest-ranked of
// the filled holders. Then up to refine_passes (16) refining passes: each replicated
// expert in the same order takes its tokens back and water-fills again given all the
// others; they stop once the busiest rank is at its floor (the mean rounded up, or a
// rank's single-holder load) or a pass no longer lowers the sum of squared rank loads.
// (One pass alone leaves chains of replicas unbalanced: up to 1.4 x the refined max on
// EPLB-style placements.) Segments follow the holders in ascending rank, so each holder
// gets one contiguous slice. A plan never needs a weight transfer: only holders compute.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "llep/core/counts.hpp"
#include "llep/core/plan.hpp"
#include "llep/core/topology.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

/// The weight moves that take `from` to `to`: one (expert, src, dst) for every rank `to`
/// makes hold an expert that it did not hold under `from`, from the expert's native rank
/// under `from` (which has the weights). Copies `to` drops need no move. Sorted by
/// (expert, dst).
[[nodiscard]] inline std::vector<WeightTransfer> placement_moves(const Topology& from, const Topology& to) {
  LLEP_EXPECTS(from.ranks() == to.ranks() && from.experts() == to.experts(), "placements differ in shape: P = ",
               from.ranks(), ", N = ", from.experts(), " against P = ", to.ranks(), ", N = ", to.experts());
  std::vector<WeightTransfer> moves;
  for (int e = 0; e < to.experts(); ++e)
    for (const int r : to.holders(e))
      if (!from.holds(e, r)) moves.push_back(WeightTransfer{e, from.native_rank(e), r});
  return moves;
}

struct Replicated {
  static constexpr std::string_view name = "replicated";

  /// Refining passes of the per-batch split at most (see the top of this file): more
  /// balance for more time; 0 is a single water-fill.
  int refine_passes = 16;

  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    check_loads(loads, topo);
    LLEP_EXPECTS(refine_passes >= 0, "refine_passes = ", refine_passes, " must be >= 0");
    out.reset(topo, name);
    const auto P = static_cast<std::size_t>(topo.ranks());
    PlanScratch& s = out.scratch();
    auto& assigned = s.assigned;
    assigned.assign(P, 0);
    s.order.clear();
    for (int e = 0; e < topo.experts(); ++e) {
      const count_t l = loads[static_cast<std::size_t>(e)];
      if (l == 0) continue;
      const auto h = topo.holders(e);
      if (h.size() == 1) {
        out.add_segment(e, h[0], 0, l);
        assigned[static_cast<std::size_t>(h[0])] += l;
      } else {
        s.order.push_back(e);
      }
    }
    // Heaviest replicated experts first, so that lighter ones fill the gaps they leave.
    std::sort(s.order.begin(), s.order.end(), [&](std::int32_t a, std::int32_t b) {
      const count_t la = loads[static_cast<std::size_t>(a)], lb = loads[static_cast<std::size_t>(b)];
      return la != lb ? la > lb : a < b;
    });
    // No plan's busiest rank is below the mean (rounded up) or a rank's single-holder load.
    count_t total_load = 0;
    for (const count_t l : loads) total_load += l;
    const count_t floor_load = std::max(*std::max_element(assigned.begin(), assigned.end()),
                                        (total_load + static_cast<count_t>(P) - 1) / static_cast<count_t>(P));
    // Each replicated expert's amounts per holder, back to back in s.keys (counts >= 0);
    // expert i of s.order's from offset s.rank_tmp[i].
    auto& offset = s.rank_tmp;
    offset.assign(s.order.size() + 1, 0);
    for (std::size_t i = 0; i < s.order.size(); ++i)
      offset[i + 1] = offset[i] + static_cast<count_t>(topo.holders(s.order[i]).size());
    s.keys.assign(static_cast<std::size_t>(offset.back()), 0);
    auto refill = [&](std::size_t i, bool first) {
      const int e = s.order[i];
      const auto h = topo.holders(e);
      const auto a = std::span<std::uint64_t>(s.keys).subspan(static_cast<std::size_t>(offset[i]), h.size());
      if (!first)
        for (std::size_t j = 0; j < h.size(); ++j) s.assigned[static_cast<std::size_t>(h[j])] -= static_cast<count_t>(a[j]);
      water_fill(loads[static_cast<std::size_t>(e)], h, s, a);
    };
    for (std::size_t i = 0; i < s.order.size(); ++i) refill(i, true);
    // Refine: each expert in turn, its tokens taken back and water-filled again given all
    // the others. A refill never raises the busiest of its holders, so the busiest rank never gets busier; stop when it cannot get lower
    // (floor_load) or a pass no longer lowers the sum of squared rank loads.
    auto spread = [&] {
      long double sq = 0;
      for (const count_t a : s.assigned) sq += static_cast<long double>(a) * static_cast<long double>(a);
      return sq;
    };
    long double last = spread();
    for (int pass = 0; pass < refine_passes && s.order.size() > 1; ++pass) {
      if (*std::max_element(s.assigned.begin(), s.assigned.end()) <= floor_load) break;
      for (std::size_t i = 0; i < s.order.size(); ++i) refill(i, false);
      const long double now = spread();
      if (!(now < last)) break;
      last = now;
    }
    for (std::size_t off = 0; const std::int32_t e : s.order) {  // ascending rank: one contiguous slice each
      const auto h = topo.holders(e);
      count_t begin = 0;
      for (std::size_t i = 0; i < h.size(); ++i) {
        const auto a = static_cast<count_t>(s.keys[off + i]);
        if (a == 0) continue;
        out.add_segment(e, h[i], begin, begin + a);
        begin += a;
      }
      off += h.size();
    }
    // No budget is imposed: like StandardEp, the capacity is the busiest rank's load.
    const auto rl = out.rank_loads();
    out.set_capacity(std::max<count_t>(1, *std::max_element(rl.begin(), rl.end())));
    out.finish(topo);
  }

  /// Bounds over every routing with at most `max_pairs_per_rank` pairs per rank: every
  /// pair can land on one rank (an expert with one holder), no rank ever computes an
  /// expert it lacks, an expert has at most one segment per holder.
  [[nodiscard]] PlanBounds bounds(const Topology& topo, std::int64_t max_pairs_per_rank) const {
    std::int64_t segments = 0;
    for (int e = 0; e < topo.experts(); ++e) segments += static_cast<std::int64_t>(topo.holders(e).size());
    return PlanBounds{detail::total_pairs(topo, max_pairs_per_rank), 0, static_cast<int>(segments), 0};
  }

  /// A placement with `slots_per_rank` expert slots per rank (N / P natives + replicas)
  /// from history loads (EmaCounts::history_loads()); natives at the default placement
  /// with one node, packed by load onto nodes and ranks with several (see the top of
  /// this file).
  [[nodiscard]] static Topology place(std::span<const double> history, int ranks, int slots_per_rank,
                                      int ranks_per_node = 0) {
    LLEP_EXPECTS(ranks > 0, "ranks P = ", ranks, " must be > 0");
    const int N = static_cast<int>(history.size());
    const Topology flat(ranks, N, ranks_per_node);  // checks N, P and ranks_per_node
    check_history(history, N);
    if (flat.nodes() == 1) return place(history, flat, slots_per_rank);

    const int nodes = flat.nodes(), rpn = flat.ranks_per_node(), M = flat.experts_per_rank();
    const auto node_of = pack(history, nodes, N / nodes);
    std::vector<int> native(static_cast<std::size_t>(N));
    for (int n = 0; n < nodes; ++n) {  // LPT inside the node
      std::vector<int> experts;
      std::vector<double> h;
      for (int e = 0; e < N; ++e)
        if (node_of[static_cast<std::size_t>(e)] == n) experts.push_back(e), h.push_back(history[static_cast<std::size_t>(e)]);
      const auto rank_of = pack(h, rpn, M);
      for (std::size_t i = 0; i < experts.size(); ++i)
        native[static_cast<std::size_t>(experts[i])] = n * rpn + rank_of[i];
    }
    return place(history, Topology(ranks, std::move(native), rpn), slots_per_rank);
  }

  /// Natives-fixed mode: replicas for `base` (its natives and nodes kept, its replicas
  /// replaced) with `slots_per_rank` slots per rank; copies stay inside their native's node
  /// while every node has at least that many experts, else they may go to any rank.
  [[nodiscard]] static Topology place(std::span<const double> history, const Topology& base, int slots_per_rank) {
    const int N = base.experts(), P = base.ranks();
    check_history(history, N);
    std::vector<int> natives(static_cast<std::size_t>(P), 0), node_experts(static_cast<std::size_t>(base.nodes()), 0);
    for (int e = 0; e < N; ++e) {
      ++natives[static_cast<std::size_t>(base.native_rank(e))];
      ++node_experts[static_cast<std::size_t>(base.node_of(base.native_rank(e)))];
    }
    const int most = *std::max_element(natives.begin(), natives.end());
    LLEP_EXPECTS(slots_per_rank >= most && slots_per_rank <= N, "slots_per_rank = ", slots_per_rank,
                 " must be in [natives per rank, N] = [", most, ", ", N, "]");
    if (slots_per_rank == base.experts_per_rank() && most == slots_per_rank) return base.with_replicas({});

    Fill f(history, P);
    for (int e = 0; e < N; ++e) f.pin(base.native_rank(e), e);
    std::vector<int> room(static_cast<std::size_t>(P));
    for (int r = 0; r < P; ++r) room[static_cast<std::size_t>(r)] = slots_per_rank - natives[static_cast<std::size_t>(r)];
    // A rank holds distinct experts: inside the node while every node has enough of them.
    const bool per_node =
        *std::min_element(node_experts.begin(), node_experts.end()) >= slots_per_rank;
    for (int node = 0; node < (per_node ? base.nodes() : 1); ++node) {
      std::vector<int> ranks, experts;
      for (int r = 0; r < P; ++r)
        if (!per_node || base.node_of(r) == node) ranks.push_back(r);
      for (int e = 0; e < N; ++e)
        if (!per_node || base.node_of(base.native_rank(e)) == node) experts.push_back(e);
      f.fill(ranks, experts, room);
    }
    std::vector<std::vector<int>> replicas(static_cast<std::size_t>(P));
    for (int r = 0; r < P; ++r)
      for (const int e : f.lists[static_cast<std::size_t>(r)])
        if (base.native_rank(e) != r) replicas[static_cast<std::size_t>(r)].push_back(e);
    return base.with_replicas(std::move(replicas));
  }

  /// Full re-placement mode (every slot free, as EPLB): `slots_per_rank` slots on each of
  /// `current`'s ranks, any expert on any rank, from history loads; `groups` expert groups
  /// (EPLB's num_groups, 0: one expert each) for the hierarchical candidate. Among the
  /// candidates (see the top of this file) whose busiest rank is within `tolerance` (a
  /// fraction, 0: none) of the best, the fewest weight moves from `current`
  /// (placement_moves).
  [[nodiscard]] static Topology place_full(std::span<const double> history, const Topology& current, int slots_per_rank,
                                           int groups = 0, double tolerance = 0) {
    return full(history, &current, current.ranks(), slots_per_rank, current.ranks_per_node(), groups, tolerance);
  }

  /// Full re-placement from nothing: P = `ranks` (P need not divide N), natives at each
  /// expert's lowest holder.
  [[nodiscard]] static Topology place_full(std::span<const double> history, int ranks, int slots_per_rank,
                                           int ranks_per_node = 0, int groups = 0) {
    return full(history, nullptr, ranks, slots_per_rank, ranks_per_node, groups, 0);
  }

 private:
  static void check_history(std::span<const double> history, int N) {
    LLEP_EXPECTS(history.size() == static_cast<std::size_t>(N), "history loads hold ", history.size(),
                 " entries but the topology has N = ", N, " experts");
    for (std::size_t e = 0; e < history.size(); ++e)
      LLEP_EXPECTS(std::isfinite(history[e]) && history[e] >= 0, "history load ", history[e], " of expert ", e,
                   " must be a finite number >= 0");
  }

  // Expert ids by history descending, ties by lower id.
  static std::vector<int> by_history(std::span<const double> history) {
    std::vector<int> order(history.size());
    for (std::size_t e = 0; e < order.size(); ++e) order[e] = static_cast<int>(e);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return history[static_cast<std::size_t>(a)] > history[static_cast<std::size_t>(b)];
    });
    return order;
  }

  // Index in [0, n) with the lowest load among those `ok` accepts, ties by lower index;
  // -1 when none.
  template <class Ok>
  static int lightest(int n, std::span<const double> load, Ok ok) {
    int best = -1;
    for (int q = 0; q < n; ++q)
      if (ok(q) && (best < 0 || load[static_cast<std::size_t>(q)] < load[static_cast<std::size_t>(best)])) best = q;
    return best;
  }

  // EPLB's balanced packing: items by weight descending (ties by lower index), each to
  // the lightest of `bins` bins with fewer than `cap` items (ties by lower bin); the bin
  // of each item.
  static std::vector<int> pack(std::span<const double> weight, int bins, int cap) {
    std::vector<double> load(static_cast<std::size_t>(bins), 0.0);
    std::vector<int> count(static_cast<std::size_t>(bins), 0), bin(weight.size(), -1);
    for (const int i : by_history(weight)) {
      const int b = lightest(bins, load, [&](int q) { return count[static_cast<std::size_t>(q)] < cap; });
      bin[static_cast<std::size_t>(i)] = b;
      load[static_cast<std::size_t>(b)] += weight[static_cast<std::size_t>(i)];
      ++count[static_cast<std::size_t>(b)];
    }
    return bin;
  }

  // EPLB's replicate-then-pack over a pool of ranks and experts, with copies already in
  // place (pinned) counted: see the top of this file.
  struct Fill {
    std::span<const double> h;
    int N;
    std::vector<int> copies;              // per expert
    std::vector<double> est;              // estimated rank loads
    std::vector<std::vector<int>> lists;  // per rank: the experts it holds
    std::vector<char> held;               // P x N
    // Sticky packing: a copy goes to a rank that `sticky` has holding it, if one has room
    // and stays at or under `level` (estimated load), before the least-loaded rank.
    const Topology* sticky = nullptr;
    double level = 0;

    Fill(std::span<const double> history, int P)
        : h(history),
          N(static_cast<int>(history.size())),
          copies(history.size(), 0),
          est(static_cast<std::size_t>(P), 0.0),
          lists(static_cast<std::size_t>(P)),
          held(static_cast<std::size_t>(P) * history.size(), 0) {}

    char& holds(int r, int e) { return held[static_cast<std::size_t>(r) * static_cast<std::size_t>(N) + static_cast<std::size_t>(e)]; }
    void pin(int r, int e) {
      holds(r, e) = 1;
      lists[static_cast<std::size_t>(r)].push_back(e);
      ++copies[static_cast<std::size_t>(e)];
    }
    // a has a higher load per copy than b (ties by lower id); cross-multiplied, so that
    // hand-worked ties (100 / 2 against 50 / 1) are exact.
    [[nodiscard]] bool hotter(int a, int b) const {
      const double x = h[static_cast<std::size_t>(a)] * copies[static_cast<std::size_t>(b)],
                   y = h[static_cast<std::size_t>(b)] * copies[static_cast<std::size_t>(a)];
      return x != y ? x > y : a < b;
    }
    [[nodiscard]] double share(int e) const { return h[static_cast<std::size_t>(e)] / copies[static_cast<std::size_t>(e)]; }

    // Fills room[r] free slots of each of `ranks` (ascending) with distinct copies of
    // `experts` (ascending); every expert without a copy gets one. Needs room enough for
    // those and every rank's room no more than the pool's experts it lacks.
    void fill(const std::vector<int>& ranks, const std::vector<int>& experts, std::vector<int>& room) {
      const int R = static_cast<int>(ranks.size());
      std::vector<int> pinned(experts.size());
      int free = 0, missing = 0;
      for (const int r : ranks) free += room[static_cast<std::size_t>(r)];
      for (std::size_t i = 0; i < experts.size(); ++i) {
        auto& c = copies[static_cast<std::size_t>(experts[i])];
        pinned[i] = c;
        if (c == 0) ++missing, c = 1;
      }
      // 1. Replicate: each extra slot to the hottest expert per copy with fewer than R copies.
      for (int i = 0; i < free - missing; ++i) {
        int best = -1;
        for (const int e : experts)
          if (copies[static_cast<std::size_t>(e)] < R && (best < 0 || hotter(e, best))) best = e;
        ++copies[static_cast<std::size_t>(best)];  // one exists: room is at most R x |experts| copies
      }
      // 2. Pack, heaviest share first, each to the least-loaded rank with room that lacks it.
      for (const int r : ranks)
        for (const int e : lists[static_cast<std::size_t>(r)]) est[static_cast<std::size_t>(r)] += share(e);
      std::vector<int> items;
      for (std::size_t i = 0; i < experts.size(); ++i)
        for (int c = pinned[i]; c < copies[static_cast<std::size_t>(experts[i])]; ++c) items.push_back(experts[i]);
      std::stable_sort(items.begin(), items.end(), [&](int a, int b) { return hotter(a, b); });
      std::vector<double> pool_est(ranks.size());
      auto best_rank = [&](int e) {
        for (int q = 0; q < R; ++q) pool_est[static_cast<std::size_t>(q)] = est[static_cast<std::size_t>(ranks[static_cast<std::size_t>(q)])];
        auto free_for = [&](int c) {
          const int r = ranks[static_cast<std::size_t>(c)];
          return room[static_cast<std::size_t>(r)] > 0 && !holds(r, e);
        };
        if (sticky != nullptr) {  // a rank that holds e already, while it stays under the level
          const int q = lightest(R, pool_est, [&](int c) {
            return free_for(c) && sticky->holds(e, ranks[static_cast<std::size_t>(c)]) &&
                   pool_est[static_cast<std::size_t>(c)] + share(e) <= level;
          });
          if (q >= 0) return ranks[static_cast<std::size_t>(q)];
        }
        const int q = lightest(R, pool_est, free_for);
        return q < 0 ? -1 : ranks[static_cast<std::size_t>(q)];
      };
      auto put = [&](int e, int r) {
        lists[static_cast<std::size_t>(r)].push_back(e);
        holds(r, e) = 1;
        --room[static_cast<std::size_t>(r)];
        est[static_cast<std::size_t>(r)] += share(e);
      };
      for (const int e : items) {
        if (const int r = best_rank(e); r >= 0) {
          put(e, r);
          continue;
        }
        // Stuck: every rank with room holds e already. Give the slot to the hottest expert
        // some rank with room lacks; one exists, since such a rank holds fewer distinct
        // experts of the pool than the pool has.
        --copies[static_cast<std::size_t>(e)];
        int sub = -1;
        for (const int g : experts)
          if (best_rank(g) >= 0 && (sub < 0 || hotter(g, sub))) sub = g;
        ++copies[static_cast<std::size_t>(sub)];
        put(sub, best_rank(sub));
      }
    }
  };

  // Max rank load of Replicated's own plan of `history` (scaled to integers) on `t`.
  static count_t balance_of(std::span<const double> history, const Topology& t, Plan& plan) {
    double total = 0;
    for (const double x : history) total += x;
    std::vector<count_t> loads(history.size(), 0);
    if (total > 0)
      for (std::size_t e = 0; e < loads.size(); ++e) loads[e] = std::llround(history[e] * (1e12 / total));
    Replicated{}.plan(loads, t, plan);
    const auto rl = plan.rank_loads();
    return *std::max_element(rl.begin(), rl.end());
  }

  // Minimum-cost perfect assignment of rows to columns of an n x n matrix (Hungarian
  // method with potentials, O(n^3)): col[i] for each row i.
  static std::vector<int> assign(const std::vector<std::vector<long>>& cost) {
    const int n = static_cast<int>(cost.size());
    const long inf = std::numeric_limits<long>::max() / 4;
    std::vector<long> u(static_cast<std::size_t>(n) + 1, 0), v(static_cast<std::size_t>(n) + 1, 0);
    std::vector<int> p(static_cast<std::size_t>(n) + 1, 0), way(static_cast<std::size_t>(n) + 1, 0);
    for (int i = 1; i <= n; ++i) {
      p[0] = i;
      int j0 = 0;
      std::vector<long> minv(static_cast<std::size_t>(n) + 1, inf);
      std::vector<char> used(static_cast<std::size_t>(n) + 1, 0);
      do {
        used[static_cast<std::size_t>(j0)] = 1;
        const int i0 = p[static_cast<std::size_t>(j0)];
        long delta = inf;
        int j1 = 0;
        for (int j = 1; j <= n; ++j) {
          if (used[static_cast<std::size_t>(j)]) continue;
          const long cur = cost[static_cast<std::size_t>(i0 - 1)][static_cast<std::size_t>(j - 1)] -
                           u[static_cast<std::size_t>(i0)] - v[static_cast<std::size_t>(j)];
          if (cur < minv[static_cast<std::size_t>(j)]) minv[static_cast<std::size_t>(j)] = cur, way[static_cast<std::size_t>(j)] = j0;
          if (minv[static_cast<std::size_t>(j)] < delta) delta = minv[static_cast<std::size_t>(j)], j1 = j;
        }
        for (int j = 0; j <= n; ++j) {
          if (used[static_cast<std::size_t>(j)]) {
            u[static_cast<std::size_t>(p[static_cast<std::size_t>(j)])] += delta;
            v[static_cast<std::size_t>(j)] -= delta;
          } else {
            minv[static_cast<std::size_t>(j)] -= delta;
          }
        }
        j0 = j1;
      } while (p[static_cast<std::size_t>(j0)] != 0);
      do {
        const int j1 = way[static_cast<std::size_t>(j0)];
        p[static_cast<std::size_t>(j0)] = p[static_cast<std::size_t>(j1)];
        j0 = j1;
      } while (j0 != 0);
    }
    std::vector<int> col(static_cast<std::size_t>(n));
    for (int j = 1; j <= n; ++j) col[static_cast<std::size_t>(p[static_cast<std::size_t>(j)] - 1)] = j - 1;
    return col;
  }

  // Copies of `bin` that `t` already has on rank r.
  static long overlap(const std::vector<int>& bin, const Topology& t, int r) {
    long n = 0;
    for (const int e : bin) n += t.holds(e, r) ? 1 : 0;
    return n;
  }

  // Ranks relabelled so that as many copies as possible stay where `current` has them:
  // bins (rank contents) of one node block go to one node, and the blocks to nodes, each
  // level an assignment of most overlap. Rank loads only permute: balance is unchanged.
  static std::vector<std::vector<int>> relabel(std::vector<std::vector<int>> bins, const Topology& current,
                                               int block) {
    const int P = current.ranks(), width = block, units = P / block;
    // cost[b][n]: minus the most overlap of block b's bins with node n's ranks; match[b][n]
    // the matching that reaches it.
    std::vector<std::vector<long>> node_cost(static_cast<std::size_t>(units), std::vector<long>(static_cast<std::size_t>(units)));
    std::vector<std::vector<std::vector<int>>> match(static_cast<std::size_t>(units), std::vector<std::vector<int>>(static_cast<std::size_t>(units)));
    for (int b = 0; b < units; ++b)
      for (int n = 0; n < units; ++n) {
        std::vector<std::vector<long>> c(static_cast<std::size_t>(width), std::vector<long>(static_cast<std::size_t>(width)));
        for (int i = 0; i < width; ++i)
          for (int j = 0; j < width; ++j)
            c[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)] = -overlap(bins[static_cast<std::size_t>(b * width + i)], current, n * width + j);
        auto& m = match[static_cast<std::size_t>(b)][static_cast<std::size_t>(n)];
        m = assign(c);
        long sum = 0;
        for (int i = 0; i < width; ++i) sum += c[static_cast<std::size_t>(i)][static_cast<std::size_t>(m[static_cast<std::size_t>(i)])];
        node_cost[static_cast<std::size_t>(b)][static_cast<std::size_t>(n)] = sum;
      }
    const auto to_node = assign(node_cost);
    std::vector<std::vector<int>> out(static_cast<std::size_t>(P));
    for (int b = 0; b < units; ++b) {
      const int n = to_node[static_cast<std::size_t>(b)];
      for (int i = 0; i < width; ++i)
        out[static_cast<std::size_t>(n * width + match[static_cast<std::size_t>(b)][static_cast<std::size_t>(n)][static_cast<std::size_t>(i)])] =
            std::move(bins[static_cast<std::size_t>(b * width + i)]);
    }
    return out;
  }

  static Topology full(std::span<const double> history, const Topology* current, int P, int slots, int rpn_in,
                       int groups, double tolerance) {
    LLEP_EXPECTS(std::isfinite(tolerance) && tolerance >= 0, "tolerance = ", tolerance,
                 " must be a finite fraction >= 0");
    LLEP_EXPECTS(P > 0, "ranks P = ", P, " must be > 0");
    const int N = static_cast<int>(history.size());
    LLEP_EXPECTS(N > 0, "history loads hold 0 entries; N must be > 0");
    check_history(history, N);
    LLEP_EXPECTS(current == nullptr || (current->experts() == N && current->ranks() == P), "history loads hold ", N,
                 " entries but the topology has N = ", current ? current->experts() : N, " experts");
    const int rpn = rpn_in == 0 ? P : rpn_in;
    LLEP_EXPECTS(rpn > 0 && P % rpn == 0, "ranks_per_node = ", rpn_in, " must divide ranks P = ", P);
    const int nodes = P / rpn;
    LLEP_EXPECTS(static_cast<long>(slots) * P >= N && slots <= N, "slots_per_rank = ", slots,
                 " must be in [ceil(N / P), N] = [", (N + P - 1) / P, ", ", N, "]");
    const int g = groups == 0 ? N : groups;
    LLEP_EXPECTS(g > 0 && g <= N, "groups = ", groups, " must be in [0, N = ", N, "]");

    struct Candidate {
      std::vector<std::vector<int>> bins;
      int block;  // ranks per relabelling block: rpn (hierarchical) or P (global); 0: none (sticky)
    };
    std::vector<Candidate> cands;
    double total = 0;
    for (const double x : history) total += x;
    // Sticky variants (with `current`): copies stay where they are while their rank's
    // estimate stays within kStickySlack of the mean.
    const std::vector<double> slacks = current ? std::vector<double>{0.0, kStickySlack} : std::vector<double>{};
    // hierarchical (EPLB's): groups packed onto nodes, then a pool per node.
    if (nodes > 1 && N % g == 0 && g % nodes == 0 && slots <= N / nodes) {
      const int size = N / g, per_node = g / nodes;
      std::vector<double> load(static_cast<std::size_t>(g), 0.0);
      for (int e = 0; e < N; ++e) load[static_cast<std::size_t>(e / size)] += history[static_cast<std::size_t>(e)];
      const auto node_of = pack(load, nodes, per_node);
      std::vector<std::vector<int>> node_experts(static_cast<std::size_t>(nodes));
      for (int e = 0; e < N; ++e) node_experts[static_cast<std::size_t>(node_of[static_cast<std::size_t>(e / size)])].push_back(e);
      for (int v = -1; v < static_cast<int>(slacks.size()); ++v) {
        Fill f(history, P);
        if (v >= 0) f.sticky = current, f.level = total / P * (1 + slacks[static_cast<std::size_t>(v)]);
        std::vector<int> room(static_cast<std::size_t>(P), slots);
        for (int n = 0; n < nodes; ++n) {
          const auto& ex = node_experts[static_cast<std::size_t>(n)];
          std::vector<int> ranks;
          for (int r = n * rpn; r < (n + 1) * rpn; ++r) ranks.push_back(r);
          f.fill(ranks, ex, room);
        }
        cands.push_back({std::move(f.lists), v < 0 ? rpn : 0});
      }
    }

    for (int v = -1; v < static_cast<int>(slacks.size()); ++v) {  // global: one pool of every rank and expert
      Fill f(history, P);
      if (v >= 0) f.sticky = current, f.level = total / P * (1 + slacks[static_cast<std::size_t>(v)]);
      std::vector<int> ranks(static_cast<std::size_t>(P)), experts(static_cast<std::size_t>(N));
      for (int r = 0; r < P; ++r) ranks[static_cast<std::size_t>(r)] = r;
      for (int e = 0; e < N; ++e) experts[static_cast<std::size_t>(e)] = e;
      std::vector<int> room(static_cast<std::size_t>(P), slots);
      f.fill(ranks, experts, room);
      cands.push_back({std::move(f.lists), v < 0 ? P : 0});
    }
    // Natives: the rank that was native, else one that held the expert, else the lowest holder.
    auto natives_of = [&](const std::vector<std::vector<int>>& bins) {
      std::vector<int> native(static_cast<std::size_t>(N), -1);
      for (int r = P - 1; r >= 0; --r)
        for (const int e : bins[static_cast<std::size_t>(r)]) {
          auto pref = [&](int q) { return current == nullptr ? 2 : q == current->native_rank(e) ? 0 : current->holds(e, q) ? 1 : 2; };
          auto& n = native[static_cast<std::size_t>(e)];
          if (n < 0 || pref(r) <= pref(n)) n = r;
        }
      return native;
    };
    struct Scored {
      Topology t;
      count_t busiest;
      std::size_t moves;
    };
    std::vector<Scored> scored;
    Plan plan;
    auto consider = [&](Topology t) {
      const count_t m = balance_of(history, t, plan);
      const std::size_t moves = current ? placement_moves(*current, t).size() : 0;
      scored.push_back({std::move(t), m, moves});
    };
    for (auto& c : cands) {
      auto bins = current && c.block > 0 ? relabel(std::move(c.bins), *current, c.block) : std::move(c.bins);
      auto native = natives_of(bins);
      consider(Topology::from_held(P, N, std::move(bins), std::move(native), rpn));
    }
    // Natives-fixed, when `current`'s natives fit: fewest moves when it balances as well.
    if (current != nullptr) {
      std::vector<int> natives(static_cast<std::size_t>(P), 0);
      for (int e = 0; e < N; ++e) ++natives[static_cast<std::size_t>(current->native_rank(e))];
      if (*std::max_element(natives.begin(), natives.end()) <= slots) consider(place(history, *current, slots));
    }
    // The fewest moves among the candidates within `tolerance` of the best balance (ties:
    // the better balance, then the earlier candidate).
    count_t low = scored[0].busiest;
    for (const auto& c : scored) low = std::min(low, c.busiest);
    const auto within = static_cast<count_t>(static_cast<double>(low) * (1 + tolerance));
    std::size_t pick = scored.size();
    for (std::size_t i = 0; i < scored.size(); ++i) {
      const auto& c = scored[i];
      if (c.busiest > within) continue;
      if (pick == scored.size() || c.moves < scored[pick].moves ||
          (c.moves == scored[pick].moves && c.busiest < scored[pick].busiest))
        pick = i;
    }
    return std::move(scored[pick].t);
  }

  static constexpr double kStickySlack = 0.05;

  // Spreads `l` tokens over `holders` (ascending ranks) by water-filling: see the top of
  // this file. Writes each holder's amount to `amount` and adds it to s.assigned. Integer
  // steps only, none of which can overflow: every increment stays below `l`.
  static void water_fill(count_t l, std::span<const int> holders, PlanScratch& s, std::span<std::uint64_t> amount) {
    const std::size_t k = holders.size();
    auto load = [&](std::size_t i) { return s.assigned[static_cast<std::size_t>(holders[i])]; };
    auto& idx = s.pending;  // holder positions, least loaded first
    idx.resize(k);
    for (std::size_t i = 0; i < k; ++i) idx[i] = static_cast<count_t>(i);
    std::sort(idx.begin(), idx.end(), [&](count_t a, count_t b) {
      const count_t la = load(static_cast<std::size_t>(a)), lb = load(static_cast<std::size_t>(b));
      return la != lb ? la < lb : a < b;
    });
    // Raise the j least-loaded holders to the level of the j-th while the tokens last.
    std::size_t j = 1;
    count_t used = 0;  // tokens that lift the first j to load(idx[j - 1])
    for (; j < k; ++j) {
      const count_t gap = load(static_cast<std::size_t>(idx[j])) - load(static_cast<std::size_t>(idx[j - 1]));
      if (gap > (l - used) / static_cast<count_t>(j)) break;
      used += gap * static_cast<count_t>(j);
    }
    const count_t base = load(static_cast<std::size_t>(idx[j - 1]));
    const count_t each = (l - used) / static_cast<count_t>(j);
    count_t extra = (l - used) % static_cast<count_t>(j);
    std::fill(amount.begin(), amount.end(), 0);
    // Filled holders get base - load + each; the remainder one token each to the
    // lowest-ranked of them (idx[0..j) sorted by position is by rank).
    std::sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(j));
    for (std::size_t t = 0; t < j; ++t) {
      const auto i = static_cast<std::size_t>(idx[t]);
      const count_t a = base - load(i) + each + (extra > 0 ? 1 : 0);
      if (extra > 0) --extra;
      amount[i] = static_cast<std::uint64_t>(a);
      s.assigned[static_cast<std::size_t>(holders[i])] += a;
    }
  }
};

static_assert(check_planner<Replicated>());

/// When to re-place (the caller's loop asks after every step). Either trigger may be off.
struct ReplacementPolicy {
  std::uint64_t every_steps = 0;    ///< re-place after this many steps on one placement; 0: never by count
  double imbalance_threshold = 0;   ///< re-place when the plan's max / mean rank load reaches this; 0: never

  void check() const {
    LLEP_EXPECTS(imbalance_threshold == 0 || (std::isfinite(imbalance_threshold) && imbalance_threshold >= 1),
                 "imbalance_threshold = ", imbalance_threshold,
                 " must be 0 (off) or a finite number >= 1 (max / mean is never below 1)");
  }

  /// `steps` on the current placement so far and the imbalance observed under it
  /// (llep::imbalance(plan.rank_loads())).
  [[nodiscard]] bool due(std::uint64_t steps, double observed_imbalance) const {
    check();
    return (every_steps > 0 && steps >= every_steps) ||
           (imbalance_threshold > 0 && observed_imbalance >= imbalance_threshold);
  }
};

}  // namespace llep
