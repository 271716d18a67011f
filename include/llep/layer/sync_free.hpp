#pragma once
// SyncFreeLayer: one rank's forward step, and its backward, in which the host only
// enqueues (issue 14). The
// counts, the plan, the layout, the transfer sizes and the GEMM sizes live in the exec's
// memory; every stage reads them there, so nothing waits for the host between stages and
// a step on a CUDA stream can be captured in a graph and replayed with new inputs, new
// routing and a new batch size (a word in exec memory) each time.
//
// The stages are those of MoeLayer (layer/stages.hpp) with the sizes read where they live:
//   count    the exchange's sync-free gather of every rank's histogram (N + 1 bins)
//   plan     PlanFromCounts (plan/plan_step.hpp), one block, the host planners' plan; then
//            PlaceTransfers, one thread: where each weight transfer's weights and gradient
//            live (device/transfer_places.hpp), read by the weights, the tasks and backward
//   layout   BuildLayout (layer/layout.hpp), one block, Layout::build's tables
//   gate     StepGate: the live counts; a failed plan or layout closes the step (every
//            count it reads becomes 0) and goes to the status word; a bad id skips only
//            its rank's combine (the counts leave it out everywhere)
//   dispatch sort by expert over the pair bound (bad ids and pairs past B after every
//            expert), AssignSendRowsFrom, the token rows into send order, the exchange's
//            all-to-all; the plan's weight pulls
//   compute  received rows into task order, TasksFromLayout, one compute_sized launch
//   combine  rows back to receive order, the reverse all-to-all, CombineTopK
// Every loop is exec.for_each_counted over a bound from the limits (a grid sized once)
// and a count read when it runs; every single-thread phase is exec.run_block. HostExec runs
// the same functors on the rank's thread, which is how the host suite tests this file.
//
// Errors: what can be checked on the host (shapes, limits, the configuration) throws
// llep::Error before anything is enqueued. What only the step knows (a bad id, a failed
// plan, a peer that never signals) goes to the rank's status word; check(), a collective
// host call, throws the same llep::Error on every rank. Until check() has passed, the
// outputs of the steps since the last check are not to be used.
//
// Backward (backward()) runs MoeLayer's backward in the same way: grad_out and the gates
// travel as the tokens did, the experts' sized backward runs over forward's inputs and
// outputs (still in the workspace), input and gate gradients return as the outputs did, and
// the exchange returns foreign experts' weight gradients to their native rank, which adds
// them in ascending helper rank: MoeLayer's bits.
//
// Scope: planners with a device form (has_device_form), topologies without replicas, exact
// weights (no codec). MoeLayer covers the rest with a host round trip.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "llep/core/carve.hpp"
#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/core/plan_view.hpp"
#include "llep/core/topology.hpp"
#include "llep/device/status_word.hpp"
#include "llep/device/step_exchange.hpp"
#include "llep/device/symmetric_exchange.hpp"
#include "llep/device/transfer_places.hpp"
#include "llep/exec/execution_space.hpp"
#include "llep/experts/expert_backward.hpp"
#include "llep/experts/expert_compute.hpp"
#include "llep/layer/layout.hpp"
#include "llep/layer/limits.hpp"
#include "llep/layer/row_ops.hpp"
#include "llep/plan/plan_step.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

/// The live sizes of one sync-free step, in exec memory: what every counted loop after the
/// gate reads. All zero when the step is closed.
struct LiveSizes {
  count_t pairs = 0;   ///< this rank's pairs (B x K)
  count_t rows = 0;    ///< rows this rank computes
  count_t tokens = 0;  ///< this rank's tokens (B)
};

/// One thread, after count, plan and layout: the live sizes of the step.
/// - A plan or layout that failed closes the step: its code goes to the status word, every
///   live size and every send and receive count becomes 0, so the exchanges move nothing
///   (yet still signal their peers) and nothing reads past what was written. A plan fails
///   on every rank alike (every rank plans the same counts).
/// - Bad ids on this rank (the histogram's last bin; the scan has recorded the first) leave
///   the step open for the others: the counts leave those pairs out on every rank, so the
///   exchanges stay consistent; only this rank's combine is skipped (its `out` is not
///   written).
struct StepGate {
  const count_t* bad = nullptr;  ///< this rank's ids outside [0, N)
  const StepStatus* plan_status = nullptr;
  const LayoutStatus* layout_status = nullptr;
  LayoutView* layout = nullptr;
  const count_t* tokens = nullptr;
  LiveSizes* live = nullptr;
  std::int32_t ranks = 0;
  status_word_t* word = nullptr;
  template <class Block>
  LLEP_HOST_DEVICE void operator()(const Block& b) const {
    if (b.tid != 0) return;
    const bool plan_ok = plan_status->good(), ok = plan_ok && layout_status->good();
    if (ok) {
      *live = LiveSizes{layout->pairs, layout->compute_rows, *bad == 0 ? *tokens : 0};
      return;
    }
    if (!plan_ok)
      note_status(word, status_code_word(StatusCode::plan_failed, layout->rank, static_cast<std::uint32_t>(plan_status->code)));
    else
      note_status(word, status_code_word(StatusCode::layout_failed, layout->rank,
                                         static_cast<std::uint32_t>(layout_status->code)));
    *live = LiveSizes{};
    layout->num_send_blocks = layout->num_tasks = layout->num_recv_chunks = 0;
    for (std::int32_t r = 0; r < ranks; ++r)
      layout->send_counts[r] = layout->send_offsets[r] = layout->recv_counts[r] = layout->recv_offsets[r] = 0;
  }
};

/// One thread: the layout's tasks as ExpertTask<T> for compute_sized, natives reading the
/// rank's weights at their slot, foreign experts the weights that arrived in their foreign
/// slot (the step's place table: foreign[expert]).
template <class T>
struct TasksFromLayout {
  const LayoutView* layout = nullptr;
  TransferPlaces places;  ///< this rank's, filled for the step's plan
  const std::int32_t* slot = nullptr;  ///< N entries: each expert's place among its native rank's
  const T* natives = nullptr;
  const T* foreign = nullptr;
  std::size_t weight_elems = 0;
  const T* in = nullptr;
  T* out = nullptr;
  std::size_t hidden = 0;
  std::int32_t foreign_capacity = 0;  ///< experts `foreign` holds
  ExpertTask<T>* tasks = nullptr;
  std::int32_t* count = nullptr;
  status_word_t* status = nullptr;
  template <class Block>
  LLEP_HOST_DEVICE void operator()(const Block& b) const {
    if (b.tid != 0) return;
    const std::int32_t n = layout->num_tasks;
    for (std::int32_t i = 0; i < n; ++i) {
      const ComputeTask& t = layout->tasks[i];
      const std::size_t off = static_cast<std::size_t>(t.row) * hidden;
      const std::int32_t j = t.native ? 0 : places.foreign[t.expert];
      // A plan past its planner's bound (or a task no transfer serves): no read past `foreign`.
      if (!t.native && (j < 0 || j >= foreign_capacity)) {
        note_status(status, past_bound_word(layout->rank, static_cast<std::uint64_t>(j) + 1));
        tasks[i] = ExpertTask<T>{t.expert, nullptr, in + off, out + off, 0};
        continue;
      }
      const T* w = t.native ? natives + static_cast<std::size_t>(slot[t.expert]) * weight_elems
                            : foreign + static_cast<std::size_t>(j) * weight_elems;
      tasks[i] = ExpertTask<T>{t.expert, w, in + off, out + off, t.rows};
    }
    *count = n;
  }
};

/// Backward, one thread: forward's tasks as two lists of ExpertGradTask for backward_sized.
/// `direct`: per native expert, ascending, its tasks (or one empty task, so its gradient
/// buffer is written), gradients into the caller's buffer at the expert's slot. `temps`: per
/// transfer to this rank in plan order (ascending expert), its foreign tasks (or one empty
/// task: a closed step still writes zeros where the native rank will read), gradients at
/// the place its weights arrived (at_dst) in the exchange's foreign_grads(). MoeLayer's
/// backward builds the same lists in the same order.
template <class T, class GW>
struct GradTasksFromLayout {
  const LayoutView* layout = nullptr;
  TransferPlaces places;                 ///< this rank's, filled for the step's plan
  const std::int32_t* native = nullptr;  ///< N entries: each expert's native rank
  std::int32_t experts = 0;
  const T* natives = nullptr;
  const T* foreign = nullptr;
  std::size_t weight_elems = 0;
  const T* in = nullptr;        ///< forward's expert inputs, task order
  const T* grad_out = nullptr;  ///< the rows' upstream gradients (gate applied)
  T* grad_in = nullptr;
  std::size_t hidden = 0;
  GW* grad_natives = nullptr;
  GW* grad_foreign = nullptr;
  std::int32_t foreign_capacity = 0;  ///< experts grad_foreign holds
  ExpertGradTask<T, GW>* direct = nullptr;
  ExpertGradTask<T, GW>* temps = nullptr;
  std::int32_t* counts = nullptr;  ///< [direct, temps]
  status_word_t* status = nullptr;
  template <class Block>
  LLEP_HOST_DEVICE void operator()(const Block& b) const {
    if (b.tid != 0) return;
    const std::int32_t n = layout->num_tasks, rank = layout->rank;
    auto task = [&](const ComputeTask& t, const T* w, GW* g) {
      const std::size_t off = static_cast<std::size_t>(t.row) * hidden;
      return ExpertGradTask<T, GW>{t.expert, w, in + off, grad_out + off, grad_in + off, g, nullptr, t.rows};
    };
    std::int32_t nd = 0, nt = 0, slot = 0;
    for (std::int32_t e = 0; e < experts; ++e) {
      if (native[e] != rank) continue;
      const std::size_t at = static_cast<std::size_t>(slot++) * weight_elems;
      const std::int32_t before = nd;
      for (std::int32_t i = 0; i < n; ++i)
        if (layout->tasks[i].native && layout->tasks[i].expert == e)
          direct[nd++] = task(layout->tasks[i], natives + at, grad_natives + at);
      if (nd == before) direct[nd++] = ExpertGradTask<T, GW>{e, nullptr, nullptr, nullptr, nullptr, grad_natives + at, nullptr, 0};
    }
    for (std::int32_t x = 0, count = places.count(); x < count; ++x) {
      RankTransfer m;
      if (!places.mine(x, false, m)) continue;
      const std::int32_t j = m.item;  // where its weights arrived
      if (j >= foreign_capacity) {  // a plan past its planner's bound: no write past grad_foreign
        note_status(status, past_bound_word(rank, static_cast<std::uint64_t>(j) + 1));
        break;
      }
      const std::size_t at = static_cast<std::size_t>(j) * weight_elems;
      const std::int32_t before = nt;
      for (std::int32_t i = 0; i < n; ++i)
        if (!layout->tasks[i].native && layout->tasks[i].expert == m.x.expert)
          temps[nt++] = task(layout->tasks[i], foreign + at, grad_foreign + at);
      if (nt == before)
        temps[nt++] = ExpertGradTask<T, GW>{m.x.expert, nullptr, nullptr, nullptr, nullptr, grad_foreign + at, nullptr, 0};
    }
    counts[0] = nd;
    counts[1] = nt;
  }
};

/// Backward, one thread: the order in which a native rank adds its helpers' gradients:
/// per native slot s, order[begin[s], begin[s + 1]) lists the places k (at_src) of the
/// transfers FROM this rank of that expert (where the exchange's `grads` put them),
/// ascending helper rank, as MoeLayer's backward adds them.
struct GradSumOrder {
  TransferPlaces places;  ///< this rank's, filled for the step's plan
  const std::int32_t* slot = nullptr;  ///< N entries: each expert's place among its native rank's
  std::int32_t natives = 0;
  std::int32_t capacity = 0;   ///< entries of order and helper
  std::int32_t* begin = nullptr;   ///< natives + 1
  std::int32_t* filled = nullptr;  ///< natives
  std::int32_t* order = nullptr;
  std::int32_t* helper = nullptr;  ///< order's helper ranks (the sort key)
  template <class Block>
  LLEP_HOST_DEVICE void operator()(const Block& b) const {
    if (b.tid != 0) return;
    for (std::int32_t s = 0; s <= natives; ++s) begin[s] = 0;
    const std::int32_t n = places.count();
    RankTransfer m;
    for (std::int32_t i = 0; i < n; ++i)  // the first `capacity` transfers from this rank (what `grads` received)
      if (places.mine(i, true, m) && m.item < capacity) ++begin[slot[m.x.expert] + 1];
    for (std::int32_t s = 0; s < natives; ++s) begin[s + 1] += begin[s], filled[s] = 0;
    for (std::int32_t i = 0; i < n; ++i) {
      if (!places.mine(i, true, m) || m.item >= capacity) continue;
      const std::int32_t s = slot[m.x.expert], first = begin[s];
      std::int32_t at = first + filled[s]++;
      for (; at > first && helper[at - 1] > m.x.dst; --at) order[at] = order[at - 1], helper[at] = helper[at - 1];
      order[at] = m.item;
      helper[at] = m.x.dst;
    }
  }
};

/// Backward, per element of the native experts' gradients: the helpers' gradients added in
/// GradSumOrder's order, each sum rounded as MoeLayer's AddGradient rounds it.
template <class GW>
struct SumGrads {
  GW* grads = nullptr;
  const GW* received = nullptr;
  const std::int32_t* begin = nullptr;
  const std::int32_t* order = nullptr;
  std::size_t weight_elems = 0;
  LLEP_HOST_DEVICE void operator()(std::size_t i) const {
    using A = accumulate_t<GW>;
    const std::size_t s = i / weight_elems, w = i % weight_elems;
    for (std::int32_t a = begin[s]; a < begin[s + 1]; ++a)
      grads[i] = static_cast<GW>(static_cast<A>(grads[i]) +
                                 static_cast<A>(received[static_cast<std::size_t>(order[a]) * weight_elems + w]));
  }
};

/// for_each_n over the pair bound: the sort keys, the id of a valid pair and `experts`
/// (after every expert) for a pair whose id is outside [0, N) or past *pairs, so that the
/// sort puts the step's valid pairs first in the order of a sort of them alone: the counts
/// (which leave bad ids out) and the layout then describe exactly the first layout->pairs
/// sorted pairs.
struct SortKeys {
  const std::int32_t* ids = nullptr;
  const count_t* pairs = nullptr;
  std::int32_t experts = 0;
  std::int32_t* keys = nullptr;
  LLEP_HOST_DEVICE void operator()(std::size_t i) const {
    const std::int32_t id = static_cast<count_t>(i) < *pairs ? ids[i] : -1;
    keys[i] = id >= 0 && id < experts ? id : experts;
  }
};

/// The step's token and pair counts in exec memory: `value` (the host's B) when `from` is
/// null, else *from, which must lie in [0, max] (else the step runs no tokens and the
/// status word says so).
struct StepCounts {
  const count_t* from = nullptr;
  count_t value = 0;
  count_t max = 0;
  std::int32_t top_k = 1;
  std::int32_t rank = 0;
  count_t* tokens = nullptr;  ///< tokens[0] = B, tokens[1] = B x K
  status_word_t* word = nullptr;
  LLEP_HOST_DEVICE void operator()(std::size_t) const {
    count_t b = from != nullptr ? *from : value;
    if (b < 0 || b > max) {
      note_status(word, status_code_word(StatusCode::batch_too_large, rank, static_cast<std::uint64_t>(b)));
      b = 0;
    }
    tokens[0] = b;
    tokens[1] = b * top_k;
  }
};

/// One rank's sync-free MoE forward (see the top of this file). Collective: every rank's
/// layer is built from the same topology, planner, functor shape and limits, each with its
/// own end of the same exchange X (device/step_exchange.hpp: SymmetricExchange over
/// symmetric memory, or CollectiveExchange over a transport's fixed-size collectives), and
/// every rank calls forward() for the same steps.
template <Planner Plnr, class Experts, ExecutionSpace Exec, class X = SymmetricExchange>
class SyncFreeLayer {
 public:
  using value_type = typename Experts::value_type;
  using T = value_type;
  static_assert(has_device_form<Plnr>,
                "llep: SyncFreeLayer plans in the step (PlanFromCounts): use a planner with a device form "
                "(StandardEp, LeastLoaded, Adaptive or Capped over them), or MoeLayer for the others");
  static_assert(check_sized_expert_compute<Experts, Exec>());
  static_assert(check_step_exchange<X, Exec>());

  /// The limits of this configuration for at most `max_tokens_per_rank` tokens a rank.
  [[nodiscard]] static LayerLimits make_limits(const Topology& topo, int top_k, const Plnr& planner,
                                               const Experts& experts, count_t max_tokens_per_rank) {
    LayerLimits l = base_limits(topo, top_k, planner, experts, max_tokens_per_rank);
    const auto pairs = static_cast<std::size_t>(l.max_pairs_per_rank());
    l.scratch_bytes = std::max(experts.sized_scratch_bytes(max_tasks(topo), l.plan.rows_per_rank),
                               exec_sort_scratch_bytes<Exec>(pairs, topo.experts() + 1));
    return l;
  }

  /// What the exchange holds at most in a step of these limits (build a CollectiveExchange
  /// from it). `grad_bytes`: grad_bytes<GW>(experts) when the layer runs backward, else 0.
  [[nodiscard]] static StepExchangeSizes exchange_sizes(const Topology& topo, const LayerLimits& l,
                                                        std::size_t grad_bytes = 0) {
    return StepExchangeSizes::of(topo, l, grad_bytes);
  }
  /// One expert's weight gradient in GW (backward's gradient type: T, or float for 16-bit T).
  template <class GW>
  [[nodiscard]] static std::size_t grad_bytes(const Experts& experts) {
    return experts.weight_elems() * sizeof(GW);
  }
  /// The layout of every rank's symmetric region (the same on every rank) for a
  /// SymmetricExchange: the counts slots, the two row tables, the rows this rank sends in
  /// dispatch and in combine, and its native experts' weights. Build the symmetric memory
  /// from it.
  [[nodiscard]] static SymmetricLayout symmetric_layout(const Topology& topo, const LayerLimits& l,
                                                        std::size_t grad_bytes = 0) {
    return SymmetricExchange::layout(exchange_sizes(topo, l, grad_bytes));
  }

  /// Bytes of this rank's own step memory (exec memory, `workspace` of the constructor).
  [[nodiscard]] static std::size_t workspace_bytes(const Topology& topo, const LayerLimits& l) {
    return Local::carve(nullptr, topo, l).bytes;
  }

  /// `exec` runs the steps (its workspace is not used: the layer's memory is `workspace`,
  /// workspace_bytes(topo, limits) of exec memory, 256-byte aligned, kept until the layer
  /// is gone). `exchange` is this rank's end of the step's exchange, built for
  /// exchange_sizes(topo, limits). The configuration is checked here, on the host.
  SyncFreeLayer(const Topology& topo, int top_k, Plnr planner, Experts experts, Exec exec, X exchange,
                const LayerLimits& limits, std::span<std::byte> workspace)
      : topo_(topo),
        top_k_(top_k),
        planner_(std::move(planner)),
        experts_(std::move(experts)),
        exec_(std::move(exec)),
        x_(std::move(exchange)),
        limits_(limits) {
    rank_ = x_.rank();
    LLEP_EXPECTS(!topo.has_replicas(), "SyncFreeLayer takes topologies without replicas (S = ",
                 topo.replicas_per_rank(), "); use MoeLayer");
    LLEP_EXPECTS(x_.sizes().ranks == topo.ranks() && rank_ >= 0 && rank_ < topo.ranks(), "the exchange (", x_.name(),
                 ") is rank ", rank_, " of ", x_.sizes().ranks, " but the topology has P = ", topo.ranks());
    LLEP_EXPECTS(limits == make_limits(topo, top_k, planner_, experts_, limits.max_tokens_per_rank), "rank ", rank_,
                 ": ", limits, " does not describe this layer; build them with SyncFreeLayer::make_limits");
    LLEP_EXPECTS(x_.sizes() == exchange_sizes(topo, limits, x_.sizes().grad_bytes), "rank ", rank_, ": the exchange (",
                 x_.name(), ") was built for other sizes than ", limits, "; build it from SyncFreeLayer::exchange_sizes");
    if constexpr (requires { planner_.check(); }) planner_.check();
    const std::size_t need = workspace_bytes(topo, limits);
    LLEP_EXPECTS(workspace.size() >= need && reinterpret_cast<std::uintptr_t>(workspace.data()) % Carve::alignment == 0,
                 "rank ", rank_, ": the sync-free workspace holds ", workspace.size(), " bytes at ",
                 static_cast<const void*>(workspace.data()), "; it needs ", need, ", ", Carve::alignment,
                 "-byte aligned (SyncFreeLayer::workspace_bytes)");
    mem_ = Local::carve(workspace.data(), topo, limits, rank_);
    // Tables that never change: the plan's and the layout's views, the natives, the slots.
    const int N = topo.experts();
    // slot[e]: e's place among its native rank's experts, where that rank's region has it.
    std::vector<std::int32_t> native(static_cast<std::size_t>(N)), slot(static_cast<std::size_t>(N));
    std::vector<std::int32_t> next(static_cast<std::size_t>(topo.ranks()), 0);
    native_ranks(topo, native.data());
    for (std::size_t e = 0; e < native.size(); ++e) slot[e] = next[static_cast<std::size_t>(native[e])]++;
    exec_.from_host(mem_.plan.view, &mem_.plan.fields, sizeof(PlanView));
    exec_.from_host(mem_.layout.view, &mem_.layout.fields, sizeof(LayoutView));
    exec_.from_host(mem_.plan.native, native.data(), native.size() * sizeof(std::int32_t));
    exec_.from_host(mem_.layout.native, native.data(), native.size() * sizeof(std::int32_t));
    exec_.from_host(mem_.slot, slot.data(), slot.size() * sizeof(std::int32_t));
    exec_.synchronize();  // the host vectors above go out of scope
    status_.emplace(exec_, mem_.status, topo.ranks());
  }

  /// Over symmetric memory: `view` is this rank's view of memory laid out as
  /// symmetric_layout(topo, limits, grad_bytes) (grad_bytes > 0 to run backward).
  SyncFreeLayer(const Topology& topo, int top_k, Plnr planner, Experts experts, Exec exec, const SymmetricView& view,
                const LayerLimits& limits, std::span<std::byte> workspace, SignalOptions signals = {},
                std::size_t grad_bytes = 0)
    requires std::same_as<X, SymmetricExchange>
      : SyncFreeLayer(topo, top_k, std::move(planner), std::move(experts), std::move(exec),
                      SymmetricExchange(view, exchange_sizes(topo, limits, grad_bytes), signals), limits, workspace) {}

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] const Topology& topology() const noexcept { return topo_; }
  [[nodiscard]] const LayerLimits& limits() const noexcept { return limits_; }
  [[nodiscard]] Exec& exec() noexcept { return exec_; }

  /// This rank's native experts' weights, where the exchange sends them from (its
  /// symmetric region, or the collective exchange's memory; exec memory), natives x
  /// weight_elems() elements in ascending expert id. Write them there (or call
  /// set_native_weights) before the first step; an update between steps is ordered by the
  /// exec like any other write.
  [[nodiscard]] std::span<T> native_weights() const noexcept {
    return {reinterpret_cast<T*>(x_.native_weights()), static_cast<std::size_t>(topo_.slots_per_rank()) * experts_.weight_elems()};
  }
  /// Copies `weights` (exec memory, natives x weight_elems()) into native_weights().
  void set_native_weights(std::span<const T> weights) {
    const auto mine = native_weights();
    LLEP_EXPECTS(weights.size() == mine.size(), "rank ", rank_, "'s weights hold ", weights.size(),
                 " elements; its ", topo_.slots_per_rank(), " natives of ", experts_.weight_elems(), " need ", mine.size());
    exec_.copy(mine.data(), weights.data(), weights.size_bytes());
  }

  /// hidden [B x D], topk_ids [B x K], topk_weights [B x K] -> out [B x D], in exec memory,
  /// B <= B_max of the limits. Enqueues the whole step on the exec and returns: nothing
  /// waits for the host (a CUDA exec's step can be captured; a replay runs this B). Results
  /// are valid once the exec has run the step and check() passed.
  template <class G>
  void forward(std::span<const T> hidden, std::span<const std::int32_t> topk_ids, std::span<const G> topk_weights,
               std::span<T> out) {
    const auto D = static_cast<std::size_t>(experts_.hidden());
    LLEP_EXPECTS(hidden.size() % D == 0, "hidden has ", hidden.size(), " elements, not a multiple of D = ", D);
    const std::size_t B = hidden.size() / D;
    LLEP_EXPECTS(static_cast<count_t>(B) <= limits_.max_tokens_per_rank, "rank ", rank_, " has B = ", B,
                 " tokens but the layer was built for at most B_max = ", limits_.max_tokens_per_rank);
    step(nullptr, B, hidden, topk_ids, topk_weights, out);
  }

  /// The same with the batch size in exec memory: *tokens (read when the step runs, in
  /// [0, B_max]) tokens of buffers that hold B_max: hidden [B_max x D], topk_ids and
  /// topk_weights [B_max x K], out [B_max x D]. A captured step replays with whatever
  /// *tokens holds then; launches are sized for B_max. A count outside [0, B_max] runs no
  /// tokens and check() names it.
  template <class G>
  void forward(const count_t* tokens, std::span<const T> hidden, std::span<const std::int32_t> topk_ids,
               std::span<const G> topk_weights, std::span<T> out) {
    LLEP_EXPECTS(tokens != nullptr, "rank ", rank_, ": forward with a null token count");
    step(tokens, static_cast<std::size_t>(limits_.max_tokens_per_rank), hidden, topk_ids, topk_weights, out);
  }

  /// The host check, a collective of every rank over a host-synchronising transport (the
  /// one the ranks were set up with: HostThreads, PeerCopy, Nccl): waits for this rank's
  /// steps, gathers every rank's status word and throws the same llep::Error on every rank
  /// when any rank recorded a bad id, a failed plan or layout, or a peer that never
  /// signalled since the last check.
  template <class Tr>
  void check(Tr& transport) {
    status_->check(exec_, transport, topo_.experts());
  }

  /// How the exchanges move bytes: the symmetric memory's provider ("host memory", "peer
  /// pointers", "NCCL symmetric window (LSA)"), or the collective exchange's name; every
  /// size is read where the step runs.
  [[nodiscard]] const char* exchange() const noexcept { return x_.name(); }

  /// The last step's plan, layout and gate, in exec memory (for tests and tools).
  [[nodiscard]] const PlanView* plan_view() const noexcept { return mem_.plan.view; }
  [[nodiscard]] const StepStatus* plan_status() const noexcept { return mem_.plan.status; }
  [[nodiscard]] const LayoutView* layout_view() const noexcept { return mem_.layout.view; }
  [[nodiscard]] const count_t* counts() const noexcept { return mem_.counts.counts; }

  // One step of at most `bound` tokens: B from the host (`tokens` null) or from exec memory.
  template <class G>
  void step(const count_t* tokens, std::size_t bound, std::span<const T> hidden, std::span<const std::int32_t> ids,
            std::span<const G> gates, std::span<T> out) {
    const auto D = static_cast<std::size_t>(experts_.hidden()), K = static_cast<std::size_t>(top_k_);
    LLEP_EXPECTS(hidden.size() == bound * D && ids.size() == bound * K && gates.size() == bound * K &&
                     out.size() == bound * D,
                 "rank ", rank_, ": ", bound, " tokens need ", bound * D, " hidden values, ", bound * K,
                 " ids and gates and ", bound * D, " outputs; got ", hidden.size(), ", ", ids.size(), ", ",
                 gates.size(), " and ", out.size());
    const std::size_t max_pairs = bound * K, row_bytes = limits_.row_bytes;
    const auto max_rows = static_cast<std::size_t>(limits_.plan.rows_per_rank);
    const int N = topo_.experts();
    const Local& m = mem_;
    bound_ = bound;
    backward_ready_ = true;
    const SharedCounts& c = m.counts;

    // 1-3. Count (every rank's histogram, exchanged), plan, layout, gate: all in exec memory.
    x_.begin_step(exec_);
    exec_.for_each_n(1, StepCounts{tokens, static_cast<count_t>(bound), limits_.max_tokens_per_rank, top_k_, rank_,
                                   m.tokens, status_->word()});
    count_ids(exec_, ids.data(), m.tokens + 1, max_pairs, N, c.local);
    status_->scan(exec_, ids.data(), m.tokens + 1, max_pairs, N);
    x_.share_counts(exec_, c, *status_);
    exec_.run_block(PlanFromCounts<Plnr>{planner_, c.counts, m.plan.loads, m.plan.topo_view(topo_), m.plan.scratch,
                                         m.plan.view, m.plan.status});
    place_transfers(exec_, m.places, status_->word());  // read by the weights, the tasks and backward
    exec_.run_block(BuildLayout<NativeHolds>{c.counts, m.plan.view, m.plan.status, NativeHolds{m.layout.native, rank_},
                                             m.layout.view, m.layout.status});
    exec_.run_block(StepGate{c.local + N, m.plan.status, m.layout.status, m.layout.view, m.tokens, m.live,
                             topo_.ranks(), status_->word()});

    // 4. Dispatch: pairs by expert (bad ids last), send rows, the all-to-all, the weights.
    exec_.for_each_n(max_pairs, SortKeys{ids.data(), m.tokens + 1, N, m.keys});
    sort_by_expert_in(exec_, m.keys, max_pairs, N + 1, m.order, std::span<std::byte>(m.scratch, m.scratch_bytes));
    exec_.for_each_counted(&m.live->pairs, 1, max_pairs,
                           AssignSendRowsFrom{m.layout.view, m.order, m.pair_row, m.row_pair});
    copy_rows_counted(exec_, true, x_.send_rows(SignalChannel::dispatch), hidden.data(), m.row_pair, &m.live->pairs,
                      max_pairs, row_bytes, static_cast<std::int32_t>(K));
    const LayoutView& f = m.layout.fields;  // the tables' addresses; their contents live in exec memory
    x_.rows(exec_,
            RowsStep{SignalChannel::dispatch, f.send_counts, f.send_offsets, f.recv_counts, f.recv_offsets, m.recv,
                     limits_.plan.rows_per_rank},
            *status_);
    x_.weights(exec_,
               WeightsStep{m.places, m.slot, reinterpret_cast<std::byte*>(m.foreign),
                           limits_.plan.foreign_experts_per_rank},
               *status_);

    // 5. Compute: received rows into task order, the tasks, one sized launch per GEMM.
    exec_.for_each_counted(&m.live->rows, 1, max_rows, AssignComputeRowsFrom{m.layout.view, m.compute_row});
    copy_rows_counted(exec_, false, m.expert_in, m.recv, m.compute_row, &m.live->rows, max_rows, row_bytes);
    exec_.run_block(TasksFromLayout<T>{m.layout.view, m.places, m.slot, native_weights().data(), m.foreign,
                                       experts_.weight_elems(), m.expert_in, m.expert_out, D,
                                       limits_.plan.foreign_experts_per_rank, m.tasks, m.task_count, status_->word()});
    experts_.compute_sized(exec_,
                           SizedTasks<T>{m.tasks, m.task_count, max_tasks(topo_), limits_.plan.rows_per_rank,
                                         limits_.plan.rows_per_rank},
                           m.scratch);

    // 6. Combine: outputs back to receive order, the reverse all-to-all, the sum over K.
    copy_rows_counted(exec_, true, x_.send_rows(SignalChannel::combine), m.expert_out, m.compute_row, &m.live->rows,
                      max_rows, row_bytes);
    x_.rows(exec_,
            RowsStep{SignalChannel::combine, f.recv_counts, f.recv_offsets, f.send_counts, f.send_offsets, m.gathered,
                     limits_.max_pairs_per_rank()},
            *status_);
    exec_.for_each_counted(&m.live->tokens, D, bound * D,
                           CombineTopK<T, G>{out.data(), reinterpret_cast<const T*>(m.gathered), m.pair_row,
                                             gates.data(), top_k_, D});
  }

  /// Bytes of exec memory backward needs (its `workspace`, 256-byte aligned) for gates of
  /// type G and weight gradients of type GW.
  template <class G, class GW>
  [[nodiscard]] std::size_t backward_workspace_bytes() const {
    return Back::template carve<G, GW>(nullptr, topo_, limits_, experts_).bytes;
  }

  /// The backward of the last forward, enqueued like it (nothing waits for the host; a
  /// CUDA exec's backward can be captured). grad_out [bound x D] is the gradient of forward's
  /// `out`, `gates` forward's topk_weights [bound x K], both in exec memory with forward's
  /// bound (B, or B_max for forward(tokens, ...)). Results: grad_hidden [bound x D] and
  /// grad_gates [bound x K] for the step's tokens (a rank with a bad id writes neither, as
  /// its forward wrote no `out`), and grad_weights, one gradient per native expert laid out
  /// as native_weights() (in GW: T, or float for 16-bit T), overwritten or accumulated per
  /// `mode`, with the helpers' gradients added in ascending helper rank: MoeLayer's
  /// backward bit for bit. Uses forward's inputs, outputs, weights and permutations as they
  /// are in the workspace: call it after that forward and before the next. The exchange
  /// must return gradients (StepExchangeBackward, built with grad_bytes<GW>(experts)) and
  /// the functor must have a sized backward (SizedExpertBackward). Collective; check()
  /// reports what the step found.
  template <class G, class GW>
  void backward(std::span<const T> grad_out, std::span<const G> gates, std::span<T> grad_hidden,
                std::span<G> grad_gates, std::span<GW> grad_weights, GradMode mode, std::span<std::byte> workspace) {
    static_assert(StepExchangeBackward<X, Exec>,
                  "llep: SyncFreeLayer::backward needs an exchange that returns weight gradients "
                  "(llep::StepExchangeBackward, e.g. SymmetricExchange)");
    static_assert(check_sized_expert_backward<Experts, Exec>());
    const auto D = static_cast<std::size_t>(experts_.hidden()), K = static_cast<std::size_t>(top_k_);
    const std::size_t W = experts_.weight_elems(), bound = bound_;
    LLEP_EXPECTS(backward_ready_, "rank ", rank_,
                 ": SyncFreeLayer::backward needs a forward before it (and runs once per forward)");
    LLEP_EXPECTS(grad_out.size() == bound * D && grad_hidden.size() == bound * D && gates.size() == bound * K &&
                     grad_gates.size() == bound * K,
                 "rank ", rank_, ": forward ran ", bound, " tokens, so backward needs ", bound * D,
                 " values in grad_out and grad_hidden and ", bound * K, " in gates and grad_gates; got ",
                 grad_out.size(), ", ", grad_hidden.size(), ", ", gates.size(), " and ", grad_gates.size());
    const auto natives = static_cast<std::size_t>(topo_.slots_per_rank());
    LLEP_EXPECTS(grad_weights.size() == natives * W, "rank ", rank_, ": grad_weights holds ", grad_weights.size(),
                 " elements; ", natives, " natives of ", W, " need ", natives * W);
    LLEP_EXPECTS(x_.sizes().grad_bytes == grad_bytes<GW>(experts_), "rank ", rank_, ": the exchange (", x_.name(),
                 ") holds gradients of ", x_.sizes().grad_bytes, " bytes; these are ", grad_bytes<GW>(experts_),
                 " (build it with exchange_sizes(topo, limits, grad_bytes<GW>(experts)))");
    const std::size_t need = backward_workspace_bytes<G, GW>();
    LLEP_EXPECTS(workspace.size() >= need && reinterpret_cast<std::uintptr_t>(workspace.data()) % Carve::alignment == 0,
                 "rank ", rank_, ": the backward workspace holds ", workspace.size(), " bytes at ",
                 static_cast<const void*>(workspace.data()), "; it needs ", need, ", ", Carve::alignment,
                 "-byte aligned (backward_workspace_bytes)");
    backward_ready_ = false;
    const auto b = Back::template carve<G, GW>(workspace.data(), topo_, limits_, experts_);
    const Local& m = mem_;
    const LayoutView& f = m.layout.fields;
    const std::size_t max_pairs = bound * K, row_bytes = limits_.row_bytes;
    const auto rows_bound = limits_.plan.rows_per_rank;
    const auto max_rows = static_cast<std::size_t>(rows_bound);
    const auto top_k = static_cast<std::int32_t>(K);
    auto dispatch = [&](const void* src, std::byte* dst, std::size_t unit, std::int32_t divisor) {
      x_.begin_step(exec_);  // a new epoch per use of a channel
      copy_rows_counted(exec_, true, x_.send_rows(SignalChannel::dispatch), src, m.row_pair, &m.live->pairs, max_pairs,
                        unit, divisor);
      x_.rows(exec_, RowsStep{SignalChannel::dispatch, f.send_counts, f.send_offsets, f.recv_counts, f.recv_offsets, m.recv,
                              rows_bound, unit},
              *status_);
      copy_rows_counted(exec_, false, dst, m.recv, m.compute_row, &m.live->rows, max_rows, unit);
    };
    auto combine = [&](const void* src, std::byte* dst, std::size_t unit) {
      copy_rows_counted(exec_, true, x_.send_rows(SignalChannel::combine), src, m.compute_row, &m.live->rows, max_rows,
                        unit);
      x_.rows(exec_, RowsStep{SignalChannel::combine, f.recv_counts, f.recv_offsets, f.send_counts, f.send_offsets, dst,
                              limits_.max_pairs_per_rank(), unit},
              *status_);
    };

    // 1. Dispatch the upstream gradients, then the gates, as forward dispatched the tokens.
    dispatch(grad_out.data(), reinterpret_cast<std::byte*>(b.grad_rows), row_bytes, top_k);
    dispatch(gates.data(), reinterpret_cast<std::byte*>(b.gate), sizeof(G), 1);

    // 2. Experts: the gates' gradients from forward's outputs, the rows scaled by their
    // gate, then backward over forward's inputs (input gradients over forward's outputs).
    exec_.for_each_counted(&m.live->rows, 1, max_rows, GateGradients<T, G>{b.grad_rows, m.expert_out, b.gate, b.gate_grad, D});
    const int foreign = limits_.plan.foreign_experts_per_rank, tasks = max_tasks(topo_);
    exec_.run_block(GradTasksFromLayout<T, GW>{m.layout.view, m.places, m.layout.native, topo_.experts(),
                                               native_weights().data(), m.foreign, W, m.expert_in, b.grad_rows,
                                               m.expert_out, D, grad_weights.data(),
                                               reinterpret_cast<GW*>(x_.foreign_grads()), foreign, b.direct, b.temps,
                                               b.counts, status_->word()});
    experts_.backward_sized(exec_, SizedGradTasks<T, GW>{b.direct, b.counts, tasks + static_cast<int>(natives), rows_bound, rows_bound},
                            mode, b.scratch);
    experts_.backward_sized(exec_, SizedGradTasks<T, GW>{b.temps, b.counts + 1, tasks + foreign, rows_bound, rows_bound},
                            GradMode::overwrite, b.scratch);

    // 3. Combine: input gradients (they carry their gate: unit weights in the sum over K).
    x_.begin_step(exec_);
    combine(m.expert_out, m.gathered, row_bytes);
    exec_.for_each_counted(&m.live->tokens, D, bound * D,
                           CombineTopK<T, G>{grad_hidden.data(), reinterpret_cast<const T*>(m.gathered), m.pair_row,
                                             nullptr, top_k, D});

    // 4. Weight gradients: each native rank adds its helpers', ascending helper rank.
    x_.grads(exec_, GradsStep{m.places, reinterpret_cast<std::byte*>(b.received), b.received_capacity}, *status_);
    exec_.run_block(GradSumOrder{m.places, m.slot, static_cast<std::int32_t>(natives), b.received_capacity,
                                 b.begin, b.filled, b.order, b.helper});
    exec_.for_each_n(natives * W, SumGrads<GW>{grad_weights.data(), b.received, b.begin, b.order, W});

    // 5. The gates' gradients back to their pairs.
    x_.begin_step(exec_);
    combine(b.gate_grad, reinterpret_cast<std::byte*>(b.gathered_gate_grad), sizeof(G));
    exec_.for_each_counted(&m.live->tokens, K, bound * K,
                           CopyRows<G, true>{grad_gates.data(), b.gathered_gate_grad, m.pair_row, 1, 1});
  }

 private:
  // Backward's own memory (the caller's, sized by backward_workspace_bytes).
  struct Back {
    template <class G, class GW>
    struct Tables {
      T* grad_rows = nullptr;  // rows x D, task order
      G *gate = nullptr, *gate_grad = nullptr, *gathered_gate_grad = nullptr;
      ExpertGradTask<T, GW>*direct = nullptr, *temps = nullptr;
      std::int32_t* counts = nullptr;
      GW* received = nullptr;
      std::int32_t received_capacity = 0;
      std::int32_t *begin = nullptr, *filled = nullptr, *order = nullptr, *helper = nullptr;
      std::byte* scratch = nullptr;
      std::size_t bytes = 0;
    };
    template <class G, class GW>
    [[nodiscard]] static Tables<G, GW> carve(std::byte* base, const Topology& topo, const LayerLimits& l,
                                             const Experts& experts) {
      const auto rows = static_cast<std::size_t>(l.plan.rows_per_rank), pairs = static_cast<std::size_t>(l.max_pairs_per_rank());
      const auto natives = static_cast<std::size_t>(topo.slots_per_rank()), tasks = static_cast<std::size_t>(max_tasks(topo));
      // Transfers from one rank: at most its natives to every other rank, and the plan's bound.
      const auto from = static_cast<std::int32_t>(std::min<std::size_t>(static_cast<std::size_t>(l.plan.transfers),
                                                                        natives * static_cast<std::size_t>(topo.ranks() - 1)));
      const std::size_t W = experts.weight_elems(), foreign = static_cast<std::size_t>(l.plan.foreign_experts_per_rank);
      const auto longest = static_cast<int>(tasks + std::max(natives, foreign));  // the longer task list
      Carve c;
      const std::size_t o_rows = c.take(rows * l.row_bytes), o_gate = c.take(rows * sizeof(G)),
                        o_gate_grad = c.take(rows * sizeof(G)), o_gathered = c.take(pairs * sizeof(G)),
                        o_direct = c.take((tasks + natives) * sizeof(ExpertGradTask<T, GW>)),
                        o_temps = c.take((tasks + foreign) * sizeof(ExpertGradTask<T, GW>)),
                        o_counts = c.take(2 * sizeof(std::int32_t)),
                        o_received = c.take(static_cast<std::size_t>(from) * W * sizeof(GW)),
                        o_begin = c.take((natives + 1) * sizeof(std::int32_t)),
                        o_filled = c.take(natives * sizeof(std::int32_t)),
                        o_order = c.take(static_cast<std::size_t>(from) * sizeof(std::int32_t)),
                        o_helper = c.take(static_cast<std::size_t>(from) * sizeof(std::int32_t)),
                        o_scratch = c.take(experts.sized_backward_scratch_bytes(longest, l.plan.rows_per_rank));
      Tables<G, GW> t;
      t.bytes = c.bytes;
      t.received_capacity = from;
      if (base == nullptr) return t;
      auto at = [&]<class U>(std::size_t o, U*& p) { p = reinterpret_cast<U*>(base + o); };
      at(o_rows, t.grad_rows);
      at(o_gate, t.gate);
      at(o_gate_grad, t.gate_grad);
      at(o_gathered, t.gathered_gate_grad);
      at(o_direct, t.direct);
      at(o_temps, t.temps);
      at(o_counts, t.counts);
      at(o_received, t.received);
      at(o_begin, t.begin);
      at(o_filled, t.filled);
      at(o_order, t.order);
      at(o_helper, t.helper);
      at(o_scratch, t.scratch);
      return t;
    }
  };

  [[nodiscard]] static int max_tasks(const Topology& topo) {
    return static_cast<int>(layout_capacity(topo.ranks(), topo.experts(), max_plan_segments(topo.ranks(), topo.experts())).tasks);
  }
  // This rank's own step memory.
  struct Local {
    PlanTables plan;
    LayoutTables layout;
    SharedCounts counts;  // this rank's histogram, C and every rank's bad count
    TransferPlaces places;  // where the plan's transfers put their weights and gradients
    std::int32_t *keys = nullptr, *order = nullptr, *pair_row = nullptr, *row_pair = nullptr;
    std::int32_t* compute_row = nullptr;
    std::int32_t* slot = nullptr;
    std::byte *recv = nullptr, *gathered = nullptr;
    T *expert_in = nullptr, *expert_out = nullptr, *foreign = nullptr;
    ExpertTask<T>* tasks = nullptr;
    std::int32_t* task_count = nullptr;
    LiveSizes* live = nullptr;
    count_t* tokens = nullptr;  // 2: the step's B and B x K
    status_word_t* status = nullptr;
    std::byte* scratch = nullptr;
    std::size_t scratch_bytes = 0;
    std::size_t bytes = 0;

    [[nodiscard]] static Local carve(std::byte* base, const Topology& topo, const LayerLimits& l, int rank = 0) {
      const int P = topo.ranks(), N = topo.experts();
      const auto pairs = static_cast<std::size_t>(l.max_pairs_per_rank());
      const auto rows = static_cast<std::size_t>(l.plan.rows_per_rank);
      const auto segs = max_plan_segments(P, N);
      Carve c;
      const std::size_t o_plan = c.take(PlanTables::carve<Plnr>(nullptr, P, N).bytes),
                        o_layout = c.take(LayoutTables::carve(nullptr, P, N, segs, 0).bytes),
                        o_counts = c.take(SharedCounts::bytes(P, N)),
                        o_places = c.take(TransferPlaces::bytes(P, N)),
                        o_keys = c.take(pairs * sizeof(std::int32_t)), o_order = c.take(pairs * sizeof(std::int32_t)),
                        o_pair_row = c.take(pairs * sizeof(std::int32_t)),
                        o_row_pair = c.take(pairs * sizeof(std::int32_t)),
                        o_compute_row = c.take(rows * sizeof(std::int32_t)),
                        o_slot = c.take(static_cast<std::size_t>(N) * sizeof(std::int32_t)),
                        o_recv = c.take(rows * l.row_bytes), o_gathered = c.take(pairs * l.row_bytes),
                        o_in = c.take(rows * l.row_bytes), o_out = c.take(rows * l.row_bytes),
                        o_foreign = c.take(static_cast<std::size_t>(l.plan.foreign_experts_per_rank) * l.weight_bytes),
                        o_tasks = c.take(static_cast<std::size_t>(max_tasks(topo)) * sizeof(ExpertTask<T>)),
                        o_live = c.take(sizeof(LiveSizes)), o_tokens = c.take(2 * sizeof(count_t)),
                        o_task_count = c.take(sizeof(std::int32_t)),
                        o_status = c.take(StatusWords::bytes(P)), o_scratch = c.take(l.scratch_bytes);
      Local m;
      m.bytes = c.bytes;
      m.scratch_bytes = l.scratch_bytes;
      if (base == nullptr) return m;
      m.plan = PlanTables::carve<Plnr>(base + o_plan, P, N);
      m.layout = LayoutTables::carve(base + o_layout, P, N, segs, rank);
      auto at = [&]<class U>(std::size_t o, U*& p) { p = reinterpret_cast<U*>(base + o); };
      m.counts = SharedCounts::carve(base + o_counts, P, N);
      m.places = TransferPlaces::carve(base + o_places, m.plan.view, rank, P, N);
      at(o_keys, m.keys);
      at(o_order, m.order);
      at(o_pair_row, m.pair_row);
      at(o_row_pair, m.row_pair);
      at(o_compute_row, m.compute_row);
      at(o_slot, m.slot);
      at(o_recv, m.recv);
      at(o_gathered, m.gathered);
      at(o_in, m.expert_in);
      at(o_out, m.expert_out);
      at(o_foreign, m.foreign);
      at(o_tasks, m.tasks);
      at(o_status, m.status);
      at(o_scratch, m.scratch);
      at(o_live, m.live);
      at(o_tokens, m.tokens);
      at(o_task_count, m.task_count);
      return m;
    }
  };

  Topology topo_;
  int top_k_;
  Plnr planner_;
  Experts experts_;
  Exec exec_;
  X x_;
  LayerLimits limits_;
  int rank_ = 0;
  std::size_t bound_ = 0;        // the last forward's token bound (B, or B_max)
  bool backward_ready_ = false;  // a forward was enqueued since the last backward
  Local mem_;
  std::optional<StatusWords> status_;
};

}  // namespace llep
