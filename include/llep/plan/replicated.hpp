#pragma once
// Replicated: EPLB-style balancing (DeepSeek's Expert Parallelism Load Balancer). Hot experts
// get extra copies of their weights (replicas) on other ranks, chosen from history loads;
// each batch then splits an expert's tokens over the ranks that hold it. Spilled tokens
// never need weights to travel, unlike LeastLoaded; the price is memory (S more expert
// slots per rank) and lag: the placement follows history, not the batch.
//
//   placement (rarely):  Replicated::place(history, ...)   -> Topology with replicas
//   per batch:           Replicated{}.plan(loads, topo, out)
//   re-placement:        ReplacementPolicy::due(...), placement_moves(old, new)
//
// The algorithms, exactly (docs/planners.md has worked examples):
//
// place(history, base, slots_per_rank): natives stay where `base` puts them; every node
// gets ranks_per_node * S extra slots (S = slots_per_rank - N / P), filled with copies of
// the node's own experts (an expert's copies never leave its native node, so its tokens
// cross no more nodes than under standard EP).
//   1. Replicate (EPLB's replicate_experts): repeat for every extra slot: add a copy of the
//      node expert with the highest history load per copy h[e] / c[e], ties by lower id,
//      among experts with fewer copies than the node has ranks.
//   2. Pack: a rank's estimated load starts as the sum of h[e] / c[e] over its natives.
//      Replicas, by share h[e] / c[e] descending (ties by lower id), go each to the rank of
//      the node with the lowest estimated load (ties by lower rank) that has a free slot
//      and does not hold the expert yet. Natives are fixed, so this can get stuck: when
//      every rank with a free slot already holds the expert, that copy is dropped and the
//      slot goes instead to the expert with the highest h / c that some free rank lacks
//      (ties by lower id), on the least-loaded such rank. Every rank ends with exactly S
//      replicas and never two copies of one expert.
// place(history, ranks, slots_per_rank, ranks_per_node): one node: natives at the default
// e / (N / P), then as above. Several nodes: replicas cannot carry load across nodes, so
// the natives are packed first (EPLB's hierarchical step, with groups of one expert):
// experts by history descending (ties by lower id) each to the node with the lowest
// history load that has room (N / nodes experts each; ties by lower node), then inside
// each node the same way onto ranks (N / P each). Against the default placement these
// native moves are weight moves too: placement_moves reports them.
//
// plan(loads, topo): experts with one holder put all their tokens there. Experts with
// several holders, by load descending (ties by lower id), water-fill their holders: the
// least-loaded holders are raised to a common level until the expert's tokens are used
// up; the remainder of the integer division goes one token each to the lowest-ranked of
// the filled holders. Segments follow the holders in ascending rank, so each holder gets
// one contiguous slice. A plan never needs a weight transfer: only holders compute.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "llep/core/counts.hpp"
#include "llep/core/plan.hpp"
#include "llep/core/topology.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

struct Replicated {
  static constexpr std::string_view name = "replicated";

  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    check_loads(loads, topo);
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
    for (const std::int32_t e : s.order) water_fill(e, loads[static_cast<std::size_t>(e)], topo.holders(e), s, out);
    // No budget is imposed: like StandardEp, the capacity is the busiest rank's load.
    const auto rl = out.rank_loads();
    out.set_capacity(std::max<count_t>(1, *std::max_element(rl.begin(), rl.end())));
    out.finish(topo);
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
    const auto order = by_history(history);
    std::vector<double> node_load(static_cast<std::size_t>(nodes), 0.0), rank_load(static_cast<std::size_t>(ranks), 0.0);
    std::vector<int> node_count(static_cast<std::size_t>(nodes), 0), rank_count(static_cast<std::size_t>(ranks), 0);
    std::vector<int> node_of(static_cast<std::size_t>(N)), native(static_cast<std::size_t>(N));
    for (const int e : order) {
      const int n = lightest(nodes, node_load, [&](int q) { return node_count[static_cast<std::size_t>(q)] < N / nodes; });
      node_of[static_cast<std::size_t>(e)] = n;
      node_load[static_cast<std::size_t>(n)] += history[static_cast<std::size_t>(e)];
      ++node_count[static_cast<std::size_t>(n)];
    }
    for (const int e : order) {  // still by history descending: LPT inside the node
      const int first = node_of[static_cast<std::size_t>(e)] * rpn;
      const std::span<double> loads(rank_load.data() + first, static_cast<std::size_t>(rpn));
      const int r = first + lightest(rpn, loads, [&](int q) { return rank_count[static_cast<std::size_t>(first + q)] < M; });
      native[static_cast<std::size_t>(e)] = r;
      rank_load[static_cast<std::size_t>(r)] += history[static_cast<std::size_t>(e)];
      ++rank_count[static_cast<std::size_t>(r)];
    }
    return place(history, Topology(ranks, std::move(native), rpn), slots_per_rank);
  }

  /// Replicas for `base` (its natives and nodes kept, its replicas replaced) with
  /// `slots_per_rank` slots per rank; what a re-placement uses when natives must not move.
  [[nodiscard]] static Topology place(std::span<const double> history, const Topology& base, int slots_per_rank) {
    const int N = base.experts(), P = base.ranks(), M = base.experts_per_rank(), rpn = base.ranks_per_node();
    check_history(history, N);
    // A rank holds distinct experts of its own node only: at most ranks_per_node * M.
    LLEP_EXPECTS(slots_per_rank >= M && slots_per_rank <= rpn * M, "slots_per_rank = ", slots_per_rank,
                 " must be in [N / P, ranks_per_node * N / P] = [", M, ", ", rpn * M, "]");
    const int S = slots_per_rank - M;
    if (S == 0) return base.with_replicas({});

    std::vector<int> copies(static_cast<std::size_t>(N), 1);
    std::vector<double> est(static_cast<std::size_t>(P), 0.0);  // estimated rank loads
    std::vector<std::vector<int>> replicas(static_cast<std::size_t>(P));
    std::vector<char> held(static_cast<std::size_t>(P) * static_cast<std::size_t>(N), 0);
    auto holds = [&](int r, int e) -> char& {
      return held[static_cast<std::size_t>(r) * static_cast<std::size_t>(N) + static_cast<std::size_t>(e)];
    };
    auto h = [&](int e) { return history[static_cast<std::size_t>(e)]; };
    // a has a higher load per copy than b (ties by lower id); cross-multiplied, so that
    // hand-worked ties (100 / 2 against 50 / 1) are exact.
    auto hotter = [&](int a, int b) {
      const double x = h(a) * copies[static_cast<std::size_t>(b)], y = h(b) * copies[static_cast<std::size_t>(a)];
      return x != y ? x > y : a < b;
    };

    for (int node = 0; node < base.nodes(); ++node) {
      const int first = node * rpn;
      std::vector<int> experts;  // the node's experts, ascending
      for (int e = 0; e < N; ++e)
        if (base.node_of(base.native_rank(e)) == node) experts.push_back(e);
      for (const int e : experts) holds(base.native_rank(e), e) = 1;

      // 1. Replicate: the copy counts.
      for (int i = 0; i < rpn * S; ++i) {
        int best = -1;
        for (const int e : experts)
          if (copies[static_cast<std::size_t>(e)] < rpn && (best < 0 || hotter(e, best))) best = e;
        ++copies[static_cast<std::size_t>(best)];  // one exists: rpn * slots <= rpn * (rpn * M) copies
      }

      // 2. Pack the replicas.
      for (const int e : experts)
        est[static_cast<std::size_t>(base.native_rank(e))] += h(e) / copies[static_cast<std::size_t>(e)];
      std::vector<int> items;
      for (const int e : experts)
        for (int c = 1; c < copies[static_cast<std::size_t>(e)]; ++c) items.push_back(e);
      std::stable_sort(items.begin(), items.end(), hotter);  // by share, then id
      const std::span<double> node_est(est.data() + first, static_cast<std::size_t>(rpn));
      auto room = [&](int q) { return static_cast<int>(replicas[static_cast<std::size_t>(first + q)].size()) < S; };
      auto put = [&](int e, int q) {
        const int r = first + q;
        replicas[static_cast<std::size_t>(r)].push_back(e);
        holds(r, e) = 1;
        est[static_cast<std::size_t>(r)] += h(e) / copies[static_cast<std::size_t>(e)];
      };
      for (const int e : items) {
        const int q = lightest(rpn, node_est, [&](int c) { return room(c) && !holds(first + c, e); });
        if (q >= 0) {
          put(e, q);
          continue;
        }
        // Stuck: every rank with room holds e already. Give the slot to the hottest expert
        // some rank with room lacks; one exists, since a rank with room holds fewer than
        // slots_per_rank <= rpn * M distinct experts of the node.
        --copies[static_cast<std::size_t>(e)];
        int sub = -1;
        for (const int f : experts) {
          bool fits = false;
          for (int r = 0; r < rpn && !fits; ++r) fits = room(r) && !holds(first + r, f);
          if (fits && (sub < 0 || hotter(f, sub))) sub = f;
        }
        ++copies[static_cast<std::size_t>(sub)];
        put(sub, lightest(rpn, node_est, [&](int q2) { return room(q2) && !holds(first + q2, sub); }));
      }
    }
    return base.with_replicas(std::move(replicas));
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

  // Spreads `l` tokens of expert `e` over its holders (ascending ranks) by water-filling:
  // see the top of this file. Integer steps only, none of which can overflow: every
  // increment stays below `l`.
  static void water_fill(int e, count_t l, std::span<const int> holders, PlanScratch& s, Plan& out) {
    const std::size_t k = holders.size();
    auto load = [&](std::size_t i) { return s.assigned[static_cast<std::size_t>(holders[i])]; };
    auto& idx = s.pending;     // holder positions, least loaded first
    auto& amount = s.rank_tmp;  // per holder position; -1: not filled
    idx.resize(k);
    amount.assign(k, -1);
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
    for (std::size_t t = 0; t < j; ++t) {
      const auto i = static_cast<std::size_t>(idx[t]);
      amount[i] = base - load(i) + each;
    }
    count_t begin = 0;
    for (std::size_t i = 0; i < k; ++i) {  // ascending rank: one contiguous slice each
      if (amount[i] < 0) continue;
      const count_t a = amount[i] + (extra > 0 ? 1 : 0);
      if (extra > 0) --extra;
      if (a == 0) continue;
      out.add_segment(e, holders[i], begin, begin + a);
      s.assigned[static_cast<std::size_t>(holders[i])] += a;
      begin += a;
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

}  // namespace llep
