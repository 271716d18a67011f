#pragma once
// CostAware LLEP: LeastLoaded's capacity, order and slice rules (least_loaded.hpp), but a
// slice spills to a helper only when the cost model says it pays off on the rank it
// relieves. docs/tuning.md states the rule; in short, for a slice of n rows of expert e
// from native rank s to helper q:
//
//   gain = ffn(k + n) - ffn(k)     the native's compute for those rows, k = the rows of e
//                                  the native keeps within capacity (max(room, 0))
//   cost = [q has no copy of e yet] * (weight_bytes / bw(s, q) + weight-round latency)
//        + 2 * n * row_bytes / bw(s, q)               (dispatch + combine of the rows)
//
// and the slice is taken when gain >= cost. bw(s, q) is the intra-node link when s and q
// share a node, else the inter-node link; the latency is the model's round latency (the
// inter-node one when the topology spans nodes). Token rows are charged as if they went
// native -> helper -> native; in the model they come from their source ranks, so this is
// conservative, and it is exactly what bounds the native's comm saving when a spill is
// undone (see "what is guaranteed" below).
//
// When LeastLoaded's candidate (the least-effective other rank, its slice, a forced slice
// included) does not pay off:
//   1. if that candidate is on another node, the least-effective other rank of the
//      native's own node is tried with its own LeastLoaded slice (never forced), since the
//      weight copy over NVLink is much cheaper;
//   2. otherwise (or if that fails too) the spill of this expert stops: every remaining
//      row stays on the native rank. Later slices of the same expert would be no larger
//      (each candidate has at most the first one's room), so they would pay off less.
// The native's rows of an expert are emitted as one segment [0, kept) and the accepted
// slices follow it in order, so the native runs one GEMM per expert, as the gain assumes.
//
// What is guaranteed (tests/sim/test_cost_aware.cpp):
//  - the plan is valid; free links (bandwidth +inf, latencies 0) give LeastLoaded's plan,
//    links slow enough that no weight copy pays give StandardEp's segments;
//  - undoing any one (expert, helper) spill (its segments moved to the native rank) never
//    lowers the native rank's modelled time (compute + comm), provided the FFN time is
//    subadditive, ffn(a + b) <= ffn(a) + ffn(b) (the roofline is; a measured curve is when
//    its FLOP/s does not fall with rows). The helper's time is not guarded: the rule is
//    local (this holds for spill_plan(), the rule's plan);
//  - plan() then keeps the fastest of the rule's plan, StandardEp's and LeastLoaded's as
//    the model predicts them in the loads-only view, so it never predicts a step slower
//    than the better of EP and LLA.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <ostream>
#include <span>
#include <string_view>
#include <utility>

#include "llep/core/plan.hpp"
#include "llep/plan/alg.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/planner.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/cost_model.hpp"

namespace llep {

struct CostAware {
  static constexpr std::string_view name = "cost_aware";

  double alpha = 1.0;                   ///< capacity factor, as LeastLoaded
  count_t min_tokens_per_gemm = 1024;   ///< LeastLoaded's m
  /// GEMM profile, links and element size. Shared, read-only: plan() only reads it. Its
  /// link bandwidths may be +infinity here (free links, for what-if planning), which
  /// CostModel::step itself does not accept.
  std::shared_ptr<const sim::CostModel> model;
  sim::FfnShape shape;                  ///< the layer's D, H (and the GEMM curve's name)

  /// The LeastLoaded rules this planner starts from.
  [[nodiscard]] LeastLoaded rules() const noexcept { return LeastLoaded{alpha, min_tokens_per_gemm}; }

  void check() const {
    rules().check();
    LLEP_EXPECTS(model != nullptr, "CostAware needs a cost model (model is null)");
    shape.check();
    const sim::LinkModel& k = model->link;
    // +inf bandwidth is allowed (free links); 0, negative and NaN are not.
    LLEP_EXPECTS(k.intra_bytes_per_s > 0 && k.inter_bytes_per_s > 0, "CostAware link bandwidths (",
                 k.intra_bytes_per_s, ", ", k.inter_bytes_per_s, " B/s) must be > 0");
    LLEP_EXPECTS(std::isfinite(k.intra_latency_s) && k.intra_latency_s >= 0 && std::isfinite(k.inter_latency_s) &&
                     k.inter_latency_s >= 0,
                 "CostAware link latencies (", k.intra_latency_s, ", ", k.inter_latency_s, " s) must be finite and >= 0");
    LLEP_EXPECTS(std::isfinite(model->elem_bytes) && model->elem_bytes > 0, "elem_bytes = ", model->elem_bytes,
                 " must be > 0");
    (void)ffn(1);  // a calibrated profile without a curve for this shape fails here, not mid-plan
  }

  /// Seconds of one FFN of `rows` rows of this layer under the model's GEMM profile.
  [[nodiscard]] double ffn(count_t rows) const {
    return model->gemm.ffn_seconds(static_cast<double>(rows), shape, model->elem_bytes);
  }

  /// The rule's terms for one slice (exposed so tests and tools can explain a plan).
  struct SpillTerms {
    double compute_saved_s = 0;  ///< ffn(kept + n) - ffn(kept): compute the native sheds
    double tokens_saved_s = 0;   ///< the native's dispatch + combine time for the n rows
    double weight_s = 0;         ///< weight copy + round latency (0 when the helper has them)
    double tokens_s = 0;         ///< the helper's dispatch + combine time for the n rows
    [[nodiscard]] double gain_s() const noexcept { return compute_saved_s + tokens_saved_s; }
    [[nodiscard]] double cost_s() const noexcept { return weight_s + tokens_s; }
    [[nodiscard]] bool pays() const noexcept { return gain_s() >= cost_s(); }
  };

  /// Dispatch + combine time of n rows of one expert received by one rank, in the
  /// loads-only view (every rank holds l[e] / P of the expert's pairs): the rows from the
  /// other ranks of its node over NVLink, those from other nodes over the network, the
  /// slower class deciding (as CostModel::round_seconds). The same for every rank.
  [[nodiscard]] double token_seconds(const Topology& topo, count_t n) const {
    const sim::LinkModel& k = model->link;
    const double P = topo.ranks(), rpn = topo.ranks_per_node();
    const double bytes = static_cast<double>(n) * static_cast<double>(shape.hidden) * model->elem_bytes;
    return 2.0 * bytes * std::max((rpn - 1) / P / k.intra_bytes_per_s, (P - rpn) / P / k.inter_bytes_per_s);
  }

  [[nodiscard]] SpillTerms terms(const Topology& topo, int native, int helper, count_t kept, count_t n,
                                 bool helper_has_weights) const {
    const sim::LinkModel& k = model->link;
    const double bw = topo.node_of(native) == topo.node_of(helper) ? k.intra_bytes_per_s : k.inter_bytes_per_s;
    const double latency = topo.nodes() > 1 ? k.inter_latency_s : k.intra_latency_s;  // as CostModel::round_seconds
    SpillTerms t;
    t.compute_saved_s = ffn(kept + n) - ffn(kept);
    t.tokens_saved_s = token_seconds(topo, n);
    t.weight_s = helper_has_weights ? 0.0 : model->expert_bytes(shape) / bw + latency;
    t.tokens_s = token_seconds(topo, n);
    return t;
  }

  /// Rows: a spill that does not pay leaves its rows on the native rank, so standard EP's
  /// P x B; foreign experts, segments and transfers: LeastLoaded's (its slices are
  /// LeastLoaded's, or fewer).
  [[nodiscard]] PlanBounds bounds(const Topology& topo, std::int64_t max_pairs_per_rank) const {
    PlanBounds b = rules().bounds(topo, max_pairs_per_rank);
    b.rows_per_rank = detail::total_pairs(topo, max_pairs_per_rank);
    b.foreign_experts_per_rank = detail::most_foreign(topo);
    return b;
  }

  [[nodiscard]] static std::size_t scratch_bytes(const Topology& topo) noexcept {
    return LeastLoaded::scratch_bytes(topo);
  }

  /// The guard: the rule's plan (spill_plan), standard EP's or LeastLoaded's (alpha, m),
  /// whichever the model predicts fastest in the loads-only view (predicted_step_seconds);
  /// on ties the rule's, then EP's. So CostAware never predicts a step slower than the
  /// better of EP and LeastLoaded. The policy is "cost_aware" whichever it keeps.
  void plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    check();
    check_loads(loads, topo);
    // Each candidate is made into `out` in turn and timed; the winner is made again
    // (planning is deterministic), so no second Plan is needed.
    spill_plan(loads, topo, out);
    const double own = predicted_step_seconds(out, loads, topo);
    StandardEp{}.plan(loads, topo, out);
    const double ep = predicted_step_seconds(out, loads, topo);
    rules().plan(loads, topo, out);
    const double lla = predicted_step_seconds(out, loads, topo);
    if (own <= ep && own <= lla)
      spill_plan(loads, topo, out);
    else if (ep <= lla)
      StandardEp{}.plan(loads, topo, out);
    // else LeastLoaded's plan is already in `out`. The plan is CostAware's choice:
    out.set_policy(name);
  }

  /// The model's step time of a plan in the loads-only view (every rank routes l[e] / P
  /// pairs of each expert): CostModel::step_seconds, which allocates nothing; its scratch
  /// is the plan's workspace.
  [[nodiscard]] double predicted_step_seconds(Plan& plan, std::span<const count_t> loads, const Topology& topo) const {
    return model->step_seconds(plan, loads, topo, shape,
                               plan.workspace(sim::CostModel::step_seconds_scratch(topo.ranks())));
  }

  /// The plan the slice rule makes, without the guard (what plan() starts from).
  void spill_plan(std::span<const count_t> loads, const Topology& topo, Plan& out) const {
    check();
    const int rpn = topo.ranks_per_node();
    const count_t m = min_tokens_per_gemm;
    // LeastLoaded's driver (alg::assign_then_spill); this hook keeps a slice only when it
    // pays off. effective[native] already holds the kept rows.
    rules().assign(loads, topo, out, name, [&](const count_t* eff, const alg::Spill& sp) -> alg::Slice {
      const int native = sp.native;
      const count_t r = sp.rows_left, kept = sp.kept;
      auto has_weights = [&](int q) {
        for (int j = 0; j < sp.num_slices; ++j)
          if (sp.slices[j].rank == q) return true;
        return false;
      };
      const int q = sp.least;
      const count_t n = alg::lla_slice(r, sp.cap - eff[q], m, true);
      if (terms(topo, native, q, kept, n, has_weights(q)).pays()) return {q, n};
      // A remote candidate that does not pay: the native node's least-effective rank.
      if (topo.node_of(q) != topo.node_of(native)) {
        const int first = topo.node_of(native) * rpn;
        const int q2 = alg::least_loaded_rank(eff, first, first + rpn, native);
        const count_t n2 = q2 < 0 ? 0 : alg::lla_slice(r, sp.cap - eff[q2], m, false);
        if (n2 > 0 && terms(topo, native, q2, kept, n2, has_weights(q2)).pays()) return {q2, n2};
      }
      // Last resort, LeastLoaded's own fallback: all r rows to the least-effective rank,
      // when it ends lighter than the native would and the whole remainder pays off.
      if (n < r && eff[q] < eff[native] && terms(topo, native, q, kept, r, has_weights(q)).pays()) return {q, r};
      return {native, 0};  // the rest stays native
    });
  }

  friend std::ostream& operator<<(std::ostream& os, const CostAware& c) {
    return os << "CostAware{alpha=" << c.alpha << ", min_tokens_per_gemm=" << c.min_tokens_per_gemm
              << ", shape=" << c.shape.name << "}";
  }
};

static_assert(check_planner<CostAware>());

}  // namespace llep
