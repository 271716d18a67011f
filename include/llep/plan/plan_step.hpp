#pragma once
// One planning step as plain data, for the host and the device alike: the planners with a
// device form (StandardEp, LeastLoaded, Adaptive and Capped over them) run here from the
// shared pieces of alg.hpp into a PlanView over caller memory, with no allocation and no
// exception (failures come back as a StepStatus). device_planner.cuh runs this routine in
// a kernel; the host build of the same routine is what tests/plan/test_plan_step.cpp
// compares, bit for bit, with each planner's plan().
//
// Config checks (alpha, lambda, the cap) are the host's job before a launch: plan_step
// assumes a planner whose check() passed and loads that are >= 0.
#include <cstddef>
#include <cstdint>

#include "llep/core/carve.hpp"
#include "llep/core/config.hpp"
#include "llep/core/plan_view.hpp"
#include "llep/core/topology.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/alg.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/standard_ep.hpp"

namespace llep {

/// The device form of a planner: `available`, scratch_bytes(P, N) and run(...). A planner
/// without one keeps the primary template, which plan_step refuses at compile time.
template <class P>
struct DeviceStep {
  static constexpr bool available = false;
};

template <class P>
inline constexpr bool has_device_form = DeviceStep<P>::available;

namespace detail {
LLEP_HOST_DEVICE inline void step_begin(PlanView& out, alg::TopoView t, const char* name, int n) noexcept {
  out.begin(t.ranks, t.experts, name, n);
}
LLEP_HOST_DEVICE inline StepStatus step_finish(PlanView& out, alg::TopoView t) noexcept {
  if (out.dropped > 0) return StepStatus{StepStatus::segments_overflow};
  // No replicas in a device topology: a rank holds an expert only as its native.
  out.finish([t](int e) { return t.native_rank(e); }, [](int, int) { return false; });
  return {};
}
}  // namespace detail

template <>
struct DeviceStep<StandardEp> {
  static constexpr bool available = true;
  LLEP_HOST_DEVICE static std::size_t scratch_bytes(int, int) noexcept { return 0; }
  LLEP_HOST_DEVICE static StepStatus run(const StandardEp&, const count_t* loads, alg::TopoView t, std::byte*,
                                         PlanView& out) noexcept {
    detail::step_begin(out, t, "ep", 2);
    alg::standard_ep(loads, t, out);
    return detail::step_finish(out, t);
  }
};

template <>
struct DeviceStep<LeastLoaded> {
  static constexpr bool available = true;
  LLEP_HOST_DEVICE static std::size_t scratch_bytes(int P, int N) noexcept {
    alg::Carve c;
    (void)alg::SpillScratch::take(c, P, N);
    return c.used;
  }
  LLEP_HOST_DEVICE static StepStatus run(const LeastLoaded& p, const count_t* loads, alg::TopoView t,
                                         std::byte* scratch, PlanView& out) noexcept {
    count_t total = 0;
    for (int e = 0; e < t.experts; ++e) total += loads[e];
    bool ok = false;
    const count_t cap = alg::capacity(p.alpha, total, t.ranks, &ok);
    if (!ok) return StepStatus{StepStatus::capacity_overflow};
    detail::step_begin(out, t, "llep", 4);
    out.capacity = cap;
    alg::Carve c{scratch};
    const alg::SpillScratch spill = alg::SpillScratch::take(c, t.ranks, t.experts);
    alg::assign_then_spill(loads, t, cap, spill, out, alg::LeastLoadedSpill{p.min_tokens_per_gemm},
                           [](int, int) { return false; });
    return detail::step_finish(out, t);
  }
};

template <class Inner>
  requires(DeviceStep<Inner>::available)
struct DeviceStep<Adaptive<Inner>> {
  static constexpr bool available = true;
  LLEP_HOST_DEVICE static std::size_t scratch_bytes(int P, int N) noexcept {
    const std::size_t own = (static_cast<std::size_t>(P) * sizeof(count_t) + 15) / 16 * 16;
    const std::size_t inner = DeviceStep<Inner>::scratch_bytes(P, N);
    return own > inner ? own : inner;
  }
  LLEP_HOST_DEVICE static StepStatus run(const Adaptive<Inner>& p, const count_t* loads, alg::TopoView t,
                                         std::byte* scratch, PlanView& out) noexcept {
    // The decision's rank loads live in the scratch the chosen planner then reuses.
    if (Adaptive<Inner>::use_inner(p.lambda, loads, t, reinterpret_cast<count_t*>(scratch)))
      return DeviceStep<Inner>::run(p.inner, loads, t, scratch, out);
    return DeviceStep<StandardEp>::run(StandardEp{}, loads, t, scratch, out);
  }
};

template <class Inner>
  requires(DeviceStep<Inner>::available)
struct DeviceStep<Capped<Inner>> {
  static constexpr bool available = true;
  LLEP_HOST_DEVICE static std::size_t scratch_bytes(int P, int N) noexcept {
    alg::Carve c;
    (void)c.take<count_t>(static_cast<std::size_t>(P));
    (void)alg::CappedScratch::take(c, P, N);
    const std::size_t inner = DeviceStep<Inner>::scratch_bytes(P, N);
    return c.used > inner ? c.used : inner;
  }
  LLEP_HOST_DEVICE static StepStatus run(const Capped<Inner>& p, const count_t* loads, alg::TopoView t,
                                         std::byte* scratch, PlanView& out) noexcept {
    count_t total = 0, have = 0;
    for (int e = 0; e < t.experts; ++e) total += loads[e];
    if (!alg::cap_holds(p.cap, total, t.ranks, &have)) return StepStatus{StepStatus::cap_too_small};
    const StepStatus inner = DeviceStep<Inner>::run(p.inner, loads, t, scratch, out);
    if (!inner.good()) return inner;
    alg::Carve c{scratch};
    count_t* usage = c.take<count_t>(static_cast<std::size_t>(t.ranks));
    if (alg::fits(out, p.cap, usage)) return inner;
    const alg::CappedScratch s = alg::CappedScratch::take(c, t.ranks, t.experts);
    detail::step_begin(out, t, "capped", 6);
    const alg::CappedStuck stuck = alg::capped_fill(loads, t, p.cap, s, out);
    if (stuck.expert >= 0) return StepStatus{StepStatus::cap_stuck, stuck.expert, stuck.rows_left, stuck.copies};
    return detail::step_finish(out, t);
  }
};

/// Scratch plan_step needs for P ranks and N experts.
template <class P>
[[nodiscard]] LLEP_HOST_DEVICE std::size_t plan_step_scratch_bytes(int ranks, int experts) noexcept {
  static_assert(has_device_form<P>,
                "llep: this planner has no device form (DeviceStep<P>): only StandardEp, LeastLoaded, and "
                "Adaptive and Capped over them plan on the device; plan on the host with planner.plan()");
  return DeviceStep<P>::scratch_bytes(ranks, experts);
}

/// One planning step into `out` (buffers sized by max_plan_segments(P, N), its rank loads P,
/// its expert offsets N + 1): the plan planner.plan() makes for the same loads.
template <class P>
LLEP_HOST_DEVICE StepStatus plan_step(const P& planner, const count_t* loads, alg::TopoView topo, std::byte* scratch,
                                      PlanView& out) noexcept {
  static_assert(has_device_form<P>,
                "llep: this planner has no device form (DeviceStep<P>): only StandardEp, LeastLoaded, and "
                "Adaptive and Capped over them plan on the device; plan on the host with planner.plan()");
  return DeviceStep<P>::run(planner, loads, topo, scratch, out);
}

/// loads[e] = sum over ranks of counts[p][e] (row-major P x N), one expert a thread, then
/// plan_step on thread 0 once every load is in: the device planner's kernel (one block,
/// exec.run_block) and, through a SerialBlock, the host's run of the same code.
template <class P>
struct PlanFromCounts {
  P planner;
  const count_t* counts = nullptr;
  count_t* loads = nullptr;
  alg::TopoView topo;
  std::byte* scratch = nullptr;
  PlanView* out = nullptr;
  StepStatus* status = nullptr;
  LLEP_EXEC_CHECK_DISABLE
  template <class Block>
  LLEP_HOST_DEVICE void operator()(const Block& b) const {
    for (int e = b.tid; e < topo.experts; e += b.threads) {
      count_t l = 0;
      for (int p = 0; p < topo.ranks; ++p) l += counts[static_cast<std::size_t>(p) * topo.experts + e];
      loads[e] = l;
    }
    b.sync();
    if (b.tid == 0) *status = plan_step(planner, loads, topo, scratch, *out);
  }
};

/// Where one plan of P ranks and N experts lives in a region of exec memory (carved by
/// PlanTables::carve from plan_tables_bytes): the plan's buffers, its view, a status, the
/// natives, the loads and the planner's scratch. `fields` is what *view must hold (the
/// caller uploads it, and `natives`, once).
struct PlanTables {
  PlanView fields;
  PlanView* view = nullptr;
  StepStatus* status = nullptr;
  std::int32_t* native = nullptr;
  count_t* loads = nullptr;
  std::byte* scratch = nullptr;
  std::size_t bytes = 0;

  template <class P>
  [[nodiscard]] static PlanTables carve(std::byte* base, int ranks, int experts) {
    const auto R = static_cast<std::size_t>(ranks), N = static_cast<std::size_t>(experts);
    const auto segs = static_cast<std::size_t>(max_plan_segments(ranks, experts));
    Carve c;
    const std::size_t o_seg = c.take(segs * sizeof(Segment)), o_spare = c.take(segs * sizeof(Segment)),
                      o_tr = c.take(segs * sizeof(WeightTransfer)), o_off = c.take((N + 1) * sizeof(std::int32_t)),
                      o_rl = c.take(R * sizeof(count_t)), o_view = c.take(sizeof(PlanView)),
                      o_status = c.take(sizeof(StepStatus)), o_native = c.take(N * sizeof(std::int32_t)),
                      o_loads = c.take(N * sizeof(count_t)),
                      o_scratch = c.take(plan_step_scratch_bytes<P>(ranks, experts));
    PlanTables t;
    t.bytes = c.bytes;
    if (base == nullptr) return t;
    PlanView& v = t.fields;
    v.segments = reinterpret_cast<Segment*>(base + o_seg);
    v.spare = reinterpret_cast<Segment*>(base + o_spare);
    v.transfers = reinterpret_cast<WeightTransfer*>(base + o_tr);
    v.expert_offsets = reinterpret_cast<std::int32_t*>(base + o_off);
    v.rank_loads = reinterpret_cast<count_t*>(base + o_rl);
    v.max_segments = static_cast<std::int32_t>(segs);
    v.ranks = ranks;
    v.experts = experts;
    t.view = reinterpret_cast<PlanView*>(base + o_view);
    t.status = reinterpret_cast<StepStatus*>(base + o_status);
    t.native = reinterpret_cast<std::int32_t*>(base + o_native);
    t.loads = reinterpret_cast<count_t*>(base + o_loads);
    t.scratch = base + o_scratch;
    return t;
  }

  /// The topology as the planner reads it, natives from `native`.
  [[nodiscard]] alg::TopoView topo_view(const Topology& topo) const noexcept {
    return alg::TopoView{topo.ranks(), topo.experts(), topo.ranks_per_node(), native,
                         topo.default_placement() ? topo.experts() / topo.ranks() : 0};
  }
};

/// Bytes of exec memory for PlanTables of P ranks and N experts.
template <class P>
[[nodiscard]] std::size_t plan_tables_bytes(int ranks, int experts) {
  return PlanTables::carve<P>(nullptr, ranks, experts).bytes;
}

}  // namespace llep
