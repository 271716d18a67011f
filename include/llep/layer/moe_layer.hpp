#pragma once
// MoeLayer: one rank's forward step, wiring the five policies (DESIGN.md, "Data flow of one
// forward step"). step() reads top to bottom: count, plan, layout, carve, dispatch,
// compute, combine; each stage is a function of layer/stages.hpp.
//
// Host synchronisation: the plan needs the counts on the host, so each step copies the
// gathered counts matrix to the host once; everything after that is stream-ordered. A
// device transport must order its work on the same stream as the execution space.
//
// Overlap: with a WeightsPathTransport (Nccl), expert weights travel on their own stream
// while the tokens move and the native experts compute; the foreign experts wait for them.
// Other transports move the weights before the tokens.
//
// Memory: each step carves one workspace (layer/limits.hpp) from the execution space.
// By default it grows to the largest step seen; after reserve(limits) it is sized for the
// worst case up front (or checked, when the engine gave the exec a fixed buffer) and no
// step within the limits allocates.
//
// Plan-ahead: prepare(next ids) runs the count, plan and layout stages for the next step
// and starts its weight transfers into caller memory; the next forward then only checks,
// with one all-gather of one word per rank, that every rank's routing is the prepared one,
// and skips the counts exchange, the planning and the weight transfers (see prepare()).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "llep/exec/execution_space.hpp"
#include "llep/experts/expert_compute.hpp"
#include "llep/plan/planner.hpp"
#include "llep/core/plan.hpp"
#include "llep/layer/check_plan.hpp"
#include "llep/layer/fingerprint.hpp"
#include "llep/layer/handle.hpp"
#include "llep/layer/layout.hpp"
#include "llep/layer/limits.hpp"
#include "llep/layer/report.hpp"
#include "llep/layer/row_ops.hpp"
#include "llep/layer/stages.hpp"
#include "llep/codec/codec.hpp"
#include "llep/codec/exchange.hpp"
#include "llep/codec/identity.hpp"
#include "llep/stats/routing_stats.hpp"
#include "llep/transport/transport.hpp"

namespace llep {

/// One rank's MoE layer. All five policies are constrained: Planner<Plnr>, Transport<Tr>,
/// ExecutionSpace<Exec>, ExpertCompute<Experts, Exec> and RoutingStats<Stats, Exec, Tr>.
template <class Stats, Planner Plnr, Transport Tr, class Experts, ExecutionSpace Exec,
          WeightCodec Codec = Identity<typename Experts::value_type>>
  requires ExpertCompute<Experts, Exec> && RoutingStats<Stats, Exec, Tr>
class MoeLayer {
 public:
  using value_type = typename Experts::value_type;
  using T = value_type;

  /// `transport` must outlive the layer; its rank is this layer's rank.
  MoeLayer(const Topology& topo, int top_k, Plnr planner, Experts experts, Tr& transport, Exec exec = Exec{},
           Stats stats = Stats{})
      : topo_(topo),
        top_k_(top_k),
        planner_(std::move(planner)),
        experts_(std::move(experts)),
        transport_(&transport),
        exec_(std::move(exec)),
        stats_(std::move(stats)) {
    static_assert(Tr::memory == Exec::memory,
                  "llep: the transport and the execution space must use the same memory (host with HostExec, "
                  "device with CudaExec)");
    LLEP_EXPECTS(top_k >= 1, "top_k K = ", top_k, " must be >= 1");
    LLEP_EXPECTS(transport.size() == topo.ranks(), "transport has ", transport.size(), " ranks but the topology has P = ",
                 topo.ranks());
    rank_ = transport.rank();
    build_slots();
  }

  /// Every expert this rank holds (Topology::holds: its natives and, with replication, its
  /// replicas), serialised (experts/weight_layout.hpp) back to back in ascending expert id,
  /// in the execution space's memory: Topology::slots_per_rank() experts. Without replicas
  /// these are the native experts. Not copied: must stay valid. Its size must be exactly
  /// slots_per_rank() x weight_elems().
  void set_native_weights(std::span<const T> weights) {
    check_weights(topo_, weights);
    native_weights_ = weights.data();
    drop_encoded_replicas();
    prepared_.stale = true;  // a prepared step holds copies of the old weights
  }

  /// Replicas kept encoded, for less memory: `natives` holds this rank's native experts
  /// (Topology::native_experts, ascending) in T, natives x weight_elems() elements;
  /// `replicas` its replicas (Topology::replica_experts, ascending), each encoded with the
  /// layer's codec (encode_replica), replicas x encoded_replica_bytes() bytes. A step
  /// decodes the replicas it computes into `decode_memory` (replicas x weight_elems()
  /// elements): step memory, which layers that run one after another may share, so the
  /// resident saving is replica_bytes_saved(). With a lossy codec, rows computed on a
  /// replica use decoded weights (within the codec's bound); with Identity nothing changes.
  /// Weights are only read in forward (spilled experts are sent from the natives). With a
  /// ForwardHandle, keep decode_memory until backward. Host layers only for now.
  void set_encoded_replicas(std::span<const T> natives, std::span<const std::byte> replicas,
                            std::span<T> decode_memory) {
    static_assert(Exec::memory == MemorySpace::host, "llep: encoded replicas are decoded on the host only for now");
    const std::size_t welems = experts_.weight_elems(), eb = encoded_replica_bytes();
    const auto held_replicas = topo_.replica_experts(rank_);
    const std::size_t R = held_replicas.size(), natives_held = static_cast<std::size_t>(topo_.slots_per_rank()) - R;
    LLEP_EXPECTS(natives.size() == natives_held * welems && (natives.data() != nullptr || natives.empty()), "rank ",
                 rank_, "'s natives hold ", natives.size(), " elements but it has ", natives_held,
                 " native experts of ", welems, " elements each");
    LLEP_EXPECTS(replicas.size() == R * eb, "rank ", rank_, "'s encoded replicas hold ", replicas.size(),
                 " bytes but it holds ", R, " replicas of ", eb, " encoded bytes each (codec '", Codec::name, "')");
    LLEP_EXPECTS(decode_memory.size() >= R * welems, "rank ", rank_, "'s replica decode memory holds ",
                 decode_memory.size(), " elements; its ", R, " replicas need ", R * welems);
    held_at_.assign(static_cast<std::size_t>(topo_.experts()), nullptr);
    replica_index_.assign(static_cast<std::size_t>(topo_.experts()), -1);
    decoded_.assign(R, 0);
    std::size_t n = 0;
    for (int e = 0; e < topo_.experts(); ++e)
      if (topo_.native_rank(e) == rank_) held_at_[static_cast<std::size_t>(e)] = natives.data() + n++ * welems;
    for (std::size_t j = 0; j < R; ++j) {
      const auto e = static_cast<std::size_t>(held_replicas[j]);
      held_at_[e] = decode_memory.data() + j * welems;
      replica_index_[e] = static_cast<int>(j);
    }
    native_weights_ = natives.data();
    encoded_replicas_ = replicas.data();
    replica_decode_ = decode_memory.data();
    replicas_encoded_ = true;
    replica_bytes_saved_ = R * (welems * sizeof(T) - std::min(welems * sizeof(T), eb));
    prepared_.stale = true;
  }
  /// Encoded bytes of one replica under the layer's codec.
  [[nodiscard]] std::size_t encoded_replica_bytes() const { return codec_.encoded_bytes(experts_.weight_elems()); }
  /// Encodes one expert's weights (weight_elems() elements) into encoded_replica_bytes() bytes.
  void encode_replica(std::span<const T> weights, std::span<std::byte> out) const { codec_.encode(weights, out); }
  /// Resident bytes the encoded replicas save against keeping them in T (0 otherwise).
  [[nodiscard]] std::size_t replica_bytes_saved() const noexcept { return replica_bytes_saved_; }

  /// A new placement (from Replicated::place, say) and this rank's weights under it, laid
  /// out as set_native_weights says. Same P and N; every rank must switch before the same
  /// step, after the weights moved (placement_moves lists them).
  void set_placement(const Topology& topo, std::span<const T> weights) {
    LLEP_EXPECTS(topo.ranks() == topo_.ranks() && topo.experts() == topo_.experts(), "new placement is for P = ",
                 topo.ranks(), ", N = ", topo.experts(), " but the layer has P = ", topo_.ranks(), ", N = ",
                 topo_.experts());
    check_weights(topo, weights);
    topo_ = topo;
    build_slots();
    native_weights_ = weights.data();
    drop_encoded_replicas();
    prepared_.stale = true;
    if (limits_) reserve(limits(limits_->max_tokens_per_rank));  // replicas change the bounds
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] const Topology& topology() const noexcept { return topo_; }
  [[nodiscard]] const Plan& plan() const noexcept { return plan_; }
  [[nodiscard]] const Layout& layout() const noexcept { return layout_; }
  [[nodiscard]] const StepReport& report() const noexcept { return report_; }
  [[nodiscard]] Stats& stats() noexcept { return stats_; }
  [[nodiscard]] Exec& exec() noexcept { return exec_; }
  [[nodiscard]] const Experts& experts() const noexcept { return experts_; }
  /// The codec of spilled experts' weights (Identity: exact, the default). Every rank must
  /// set the same codec before the same step.
  void set_codec(Codec codec) {
    LLEP_EXPECTS(!replicas_encoded_, "rank ", rank_,
                 ": set the codec before set_encoded_replicas (the replicas are encoded with it)");
    codec_ = std::move(codec);
    build_slots();  // the codec is part of the configuration fingerprint
    prepared_.stale = true;
  }
  [[nodiscard]] const Codec& codec() const noexcept { return codec_; }
  [[nodiscard]] int top_k() const noexcept { return top_k_; }
  [[nodiscard]] Tr& transport() noexcept { return *transport_; }
  /// With encoded replicas (set_encoded_replicas), where each held expert's weights are
  /// (N entries: the natives, the replicas' decode slots); empty otherwise.
  [[nodiscard]] std::span<const T* const> held_weights_at() const noexcept { return held_at_; }
  /// What set_native_weights / set_placement gave (null before).
  [[nodiscard]] const T* native_weights() const noexcept { return native_weights_; }

  // ---- Limits and memory -------------------------------------------------------------

  /// The limits of a layer of this configuration when no rank has more than
  /// `max_tokens_per_rank` tokens in a step.
  [[nodiscard]] static LayerLimits make_limits(const Topology& topo, int top_k, const Plnr& planner,
                                               const Experts& experts, count_t max_tokens_per_rank) {
    LayerLimits l = base_limits(topo, top_k, planner, experts, max_tokens_per_rank);
    l.scratch_bytes = std::max(experts.scratch_bytes(l.plan.rows_per_rank, l.plan.rows_per_rank),
                               exec_sort_scratch_bytes<Exec>(static_cast<std::size_t>(l.max_pairs_per_rank()), l.experts));
    if constexpr (requires { Stats::workspace_bytes(topo.ranks(), topo.experts()); })
      l.stats_bytes = Stats::workspace_bytes(topo.ranks(), topo.experts());
    return l;
  }
  /// make_limits for this layer.
  [[nodiscard]] LayerLimits limits(count_t max_tokens_per_rank) const {
    return make_limits(topo_, top_k_, planner_, experts_, max_tokens_per_rank);
  }
  /// Bytes of step memory no step within `limits` exceeds (for the exec's workspace),
  /// including what a forward after prepare() stages there on a device.
  [[nodiscard]] static std::size_t workspace_bytes(const LayerLimits& limits) {
    const auto words = static_cast<std::size_t>(std::max(limits.ranks + 1, limits.experts + 1)) * sizeof(std::int64_t);
    return std::max(llep::workspace_bytes(limits), words);
  }
  /// What reserve() sizes the exec's workspace to (an engine-owned buffer must hold it):
  /// workspace_bytes(limits), plus, for a lossy codec in a device layer, the encoded
  /// buffers of the worst step (codec/exchange.cuh).
  [[nodiscard]] std::size_t step_workspace_bytes(const LayerLimits& limits) const {
    if constexpr (device_codec) {
      const std::size_t sends = static_cast<std::size_t>(topo_.slots_per_rank());
      const auto receives = static_cast<std::size_t>(limits.plan.foreign_experts_per_rank);
      return align_up(workspace_bytes(limits)) +
             device_codec_scratch_bytes(codec_, experts_.weight_elems(), CodecExchangeCounts{sends, receives});
    } else {
      return workspace_bytes(limits);
    }
  }
  /// Bytes of the caller memory prepare() needs for any step within `limits`: the foreign
  /// experts' weights (and, on a device exec, the ids prepare_counts expands), in the
  /// execution space's memory.
  [[nodiscard]] static std::size_t prepare_bytes(const LayerLimits& limits) {
    const std::size_t weights = static_cast<std::size_t>(limits.plan.foreign_experts_per_rank) * limits.weight_bytes;
    if constexpr (Exec::memory == MemorySpace::host) return weights;
    else return align_up(weights) + static_cast<std::size_t>(limits.max_pairs_per_rank()) * sizeof(std::int32_t);
  }
  /// Bytes of ForwardHandle::memory no step within `limits` exceeds.
  [[nodiscard]] static std::size_t handle_bytes(const LayerLimits& limits, bool save_inputs) {
    return llep::handle_bytes(limits, save_inputs);
  }
  /// The same for the regions `keeps` names (ForwardHandle::keeps()).
  [[nodiscard]] static std::size_t handle_bytes(const LayerLimits& limits, HandleKeeps keeps) {
    return llep::handle_bytes(limits, keeps);
  }
  /// Bytes of ForwardHandle::saved_memory (the experts' pre-activations) no step within
  /// `limits` exceeds: rows x the functor's saved_row_bytes() (0 if it keeps none).
  [[nodiscard]] std::size_t saved_bytes(const LayerLimits& limits) const {
    return static_cast<std::size_t>(limits.plan.rows_per_rank) * saved_row_bytes();
  }

  /// Sizes everything a step uses for the worst case of `limits` (built by limits(B)):
  /// the exec's workspace grows to workspace_bytes(limits) now, or, when the engine gave
  /// the exec a fixed buffer, is checked to hold it. Afterwards a step with more than
  /// B_max tokens on a rank fails with llep::Error before any byte moves, and no step
  /// within the limits allocates (after the first, which sizes the count tables).
  void reserve(const LayerLimits& limits) {
    LLEP_EXPECTS(limits == this->limits(limits.max_tokens_per_rank), "rank ", rank_, ": ", limits,
                 " does not describe this layer; build the limits with MoeLayer::limits(max_tokens_per_rank)");
    const auto P = static_cast<std::size_t>(topo_.ranks());
    const auto segs = static_cast<std::size_t>(std::min<std::int64_t>(limits.plan.segments, limits.plan.rows_per_rank));
    const auto foreign = static_cast<std::size_t>(limits.plan.foreign_experts_per_rank);
    incoming_.reserve(foreign);
    weight_ops_.reserve(foreign + std::min<std::size_t>(static_cast<std::size_t>(limits.plan.transfers),
                                                        static_cast<std::size_t>(topo_.slots_per_rank()) * P));
    expert_tasks_.reserve(segs);
    bytes_.reserve(topo_.ranks());
    check_.reserve(topo_.ranks());
    max_rows_.reserve(P);
    const auto N1 = static_cast<std::size_t>(topo_.experts()) + 1;
    prepared_counts_.reserve(N1);
    hist_.reserve(N1);
    agree_.reserve(P);
    count_ids_.reserve(static_cast<std::size_t>(limits.max_pairs_per_rank()));
    if constexpr (!Codec::exact) {  // encode_exchange_decode's buffers at their bounds
      const std::size_t eb = codec_.encoded_bytes(experts_.weight_elems());
      encoded_.sent.reserve(static_cast<std::size_t>(topo_.slots_per_rank()) * eb);
      encoded_.received.reserve(foreign * eb);
      encoded_.ops.reserve(weight_ops_.capacity());
    }
    (void)exec_.workspace(step_workspace_bytes(limits));
    limits_ = limits;
  }
  /// The limits of the last reserve(), if any.
  [[nodiscard]] const std::optional<LayerLimits>& reserved_limits() const noexcept { return limits_; }

  // ---- The step ----------------------------------------------------------------------

  /// hidden [B x D], topk_ids [B x K], topk_weights [B x K] -> out [B x D], all in the
  /// execution space's memory. Collective: every rank calls it, with its own B (may be 0).
  ///
  /// Errors: a local error aborts the transport so that no other rank waits for this one;
  /// every rank's forward then throws llep::Error. With a RecoverableTransport (HostThreads,
  /// PeerCopy) each rank then waits, before it rethrows, until every rank has left the
  /// failed step and clears the abort, so the next step works on the same group. Other
  /// transports (Nccl) stay aborted: rebuild the communicator.
  template <class G>
  const StepReport& forward(std::span<const T> hidden, std::span<const std::int32_t> topk_ids,
                            std::span<const G> topk_weights, std::span<T> out) {
    return run(hidden, topk_ids, topk_weights, out, nullptr);
  }

  /// As forward, and fills `handle` (in caller memory) with what backward needs: the plan,
  /// the layout, the tasks, the permutations and, with handle.save_inputs, the experts'
  /// inputs (layer/handle.hpp).
  template <class G>
  const StepReport& forward(std::span<const T> hidden, std::span<const std::int32_t> topk_ids,
                            std::span<const G> topk_weights, std::span<T> out, ForwardHandle<T>& handle) {
    return run(hidden, topk_ids, topk_weights, out, &handle);
  }

  /// The configuration fingerprint this rank sends with its counts (layer/fingerprint.hpp).
  [[nodiscard]] std::uint64_t config_fingerprint() const noexcept { return config_; }

  // ---- Plan-ahead --------------------------------------------------------------------

  /// Plans the next step from its top-k ids (B x K, in the execution space's memory) and
  /// starts its weight transfers, so that the next forward finds the plan made and the
  /// spilled experts' weights arrived. Collective: every rank calls it, then every rank's
  /// next forward uses it. The result of that forward is bit for bit what it would be
  /// without prepare (same counts, so the same plan, layout and weights).
  ///
  /// `memory` (execution-space memory, at least prepare_bytes(limits), aligned for T)
  /// receives the foreign experts' weights and must stay untouched until that forward has
  /// returned (with a ForwardHandle, until its backward: the handle's tasks point there).
  /// With a WeightsPathTransport (Nccl, Mpi) the transfers run on the weights path and the
  /// forward joins them after its native experts; on other transports (HostThreads,
  /// PeerCopy) and with a lossy codec they complete inside prepare. The weights are read
  /// now: change them (set_native_weights) only before prepare; doing it after drops the
  /// prepared step.
  ///
  /// The routing statistics see the next step's ids here instead of in forward. A forward
  /// whose routing differs on any rank (its histogram is not the prepared one), or that
  /// follows set_native_weights, set_placement or set_codec, re-plans: every rank learns
  /// it from the same all-gathered word, so all of them run the full step (counts
  /// exchange, plan, weight transfers) and StepReport::prepare_mismatch says so. Errors
  /// are those of forward, on every rank; afterwards nothing is prepared.
  void prepare(std::span<const std::int32_t> next_ids, std::span<std::byte> memory) {
    guarded([&] { prepare_step(next_ids.data(), next_ids.size(), memory); });
  }

  /// prepare() from this rank's expert counts of the next step (N host entries, their sum
  /// B x K): the same as prepare() with any ids of that histogram.
  void prepare_counts(std::span<const count_t> next_counts, std::span<std::byte> memory) {
    guarded([&] {
      const int N = topo_.experts();
      LLEP_EXPECTS(next_counts.size() == static_cast<std::size_t>(N), "rank ", rank_, " passed ", next_counts.size(),
                   " expert counts to prepare_counts; N = ", N);
      count_ids_.clear();
      for (int e = 0; e < N; ++e) {
        const count_t c = next_counts[static_cast<std::size_t>(e)];
        LLEP_EXPECTS(c >= 0 && c <= INT32_MAX - static_cast<count_t>(count_ids_.size()), "rank ", rank_,
                     " passed count ", c, " for expert ", e, "; counts must be >= 0 and sum below 2^31");
        count_ids_.insert(count_ids_.end(), static_cast<std::size_t>(c), e);
      }
      const std::int32_t* ids = count_ids_.data();
      if constexpr (Exec::memory != MemorySpace::host) {  // the ids at the end of the memory, the weights before
        const std::size_t bytes = count_ids_.size() * sizeof(std::int32_t);
        LLEP_EXPECTS(bytes <= memory.size(), "rank ", rank_, ": prepare memory of ", memory.size(),
                     " bytes cannot hold ", count_ids_.size(), " ids; size it with MoeLayer::prepare_bytes(limits)");
        const std::size_t at = (memory.size() - bytes) / alignof(std::int32_t) * alignof(std::int32_t);
        auto* d = reinterpret_cast<std::int32_t*>(memory.data() + at);
        exec_.from_host(d, count_ids_.data(), bytes);
        ids = d;
        memory = memory.first(at);
      }
      prepare_step(ids, count_ids_.size(), memory);
    });
  }

  /// True between a successful prepare() and the forward that consumes it.
  [[nodiscard]] bool prepared() const noexcept { return prepared_.active; }

 private:
  template <class G>
  const StepReport& run(std::span<const T> hidden, std::span<const std::int32_t> topk_ids,
                        std::span<const G> topk_weights, std::span<T> out, ForwardHandle<T>* handle) {
    guarded([&] {
      if (handle) handle->filled = false;
      step(hidden, topk_ids, topk_weights, out, handle);
    });
    return report_;
  }

  // A collective call: a local error aborts the transport (no peer waits for this rank),
  // every rank recovers where it can, and nothing stays prepared.
  template <class F>
  void guarded(F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      prepared_ = {};
      transport_->abort(e.what());
      if constexpr (RecoverableTransport<Tr>) (void)transport_->recover();
      throw;
    }
  }

  [[nodiscard]] static constexpr std::size_t align_up(std::size_t n) noexcept {
    return (n + WorkspaceLayout::alignment - 1) / WorkspaceLayout::alignment * WorkspaceLayout::alignment;
  }

  // Checks shared by forward and prepare; returns B.
  std::size_t check_routing(std::size_t pairs) const {
    const auto K = static_cast<std::size_t>(top_k_);
    LLEP_EXPECTS(pairs % K == 0, "rank ", rank_, " routed ", pairs, " ids, not a multiple of K = ", K);
    const std::size_t B = pairs / K;
    LLEP_EXPECTS(native_weights_ != nullptr, "rank ", rank_,
                 " has no native expert weights: call set_native_weights first");
    LLEP_EXPECTS(pairs <= static_cast<std::size_t>(INT32_MAX), "B x K = ", pairs, " pairs exceed 2^31 on rank ", rank_);
    LLEP_EXPECTS(!limits_ || static_cast<count_t>(B) <= limits_->max_tokens_per_rank, "rank ", rank_, " has B = ", B,
                 " tokens but the layer was reserved for at most B_max = ", limits_->max_tokens_per_rank);
    return B;
  }

  // Stages 1-3 of a step: count (collective), plan, layout. A prepare sends a different
  // fingerprint than a forward, so a rank that prepares while another forwards fails the
  // counts exchange on every rank instead of pairing mismatched collectives later.
  void count_plan_layout(std::span<const std::int32_t> ids, std::size_t B, bool preparing) {
    constexpr std::uint64_t kPrepareSalt = 0x9e3779b97f4a7c15ULL;
    const std::uint64_t config = preparing ? config_ ^ kPrepareSalt : config_;
    count_stage(stats_, exec_, *transport_, ids, StepShape{topo_.experts(), top_k_, static_cast<count_t>(B), config});
    plan_stage(planner_, stats_.loads(), topo_, plan_, check_);
    layout_stage(stats_.counts(), plan_, topo_, rank_, layout_);
  }

  // A lossy codec in a device layer encodes into device scratch after the step's
  // workspace carve (codec/exchange.cuh); every other layer needs none.
  static constexpr bool device_codec = !Codec::exact && Exec::memory == MemorySpace::device;

  // Device scratch of this plan's codec exchange (0 unless device_codec).
  [[nodiscard]] std::size_t codec_scratch_bytes() const {
    if constexpr (device_codec) {
      static_assert(
          requires { device_codec_scratch_bytes(std::declval<const Codec&>(), std::size_t{}, CodecExchangeCounts{}); },
          "llep: a lossy codec in a device layer needs llep/codec/exchange.cuh; include it (nvcc) with the layer");
      return device_codec_scratch_bytes(codec_, experts_.weight_elems(),
                                        codec_exchange_counts(plan_.weight_transfers(), rank_));
    } else {
      return 0;
    }
  }

  // Stage 4a: the plan's weight transfers, exact or through a lossy codec (encoded on the
  // wire, decoded on arrival: codec/exchange.hpp on the host, codec/exchange.cuh on a device).
  void move_weights(const WeightsOnRank<T>& weights, std::span<std::byte> codec_scratch) {
    llep::move_weights(codec_, exec_, *transport_, plan_, rank_, weights, codec_scratch, encoded_, weight_ops_);
  }

  // This rank's histogram of `ids` (N bins and one for ids outside [0, N)), on the host.
  std::span<const count_t> local_histogram(const std::int32_t* ids, std::size_t pairs) {
    const int N = topo_.experts();
    hist_.resize(static_cast<std::size_t>(N) + 1);
    if constexpr (Exec::memory == MemorySpace::host) {
      exec_.histogram(ids, pairs, N, hist_.data());
    } else {
      auto* d = reinterpret_cast<count_t*>(exec_.workspace(hist_.size() * sizeof(count_t)));
      exec_.histogram(ids, pairs, N, d);
      exec_.to_host(hist_.data(), d, hist_.size() * sizeof(count_t));
      exec_.synchronize();
    }
    return hist_;
  }

  void prepare_step(const std::int32_t* ids, std::size_t pairs, std::span<std::byte> memory) {
    if (prepared_.weights_pending) {  // an unconsumed prepare: its transfers land first
      if constexpr (WeightsPathTransport<Tr>) transport_->join_weights();
    }
    prepared_ = {};
    const std::size_t B = check_routing(pairs);
    const auto hist = local_histogram(ids, pairs);
    prepared_counts_.assign(hist.begin(), hist.end());
    count_plan_layout(std::span<const std::int32_t>(ids, pairs), B, true);
    const StepSizes sizes = step_sizes(layout_, plan_, rank_, incoming_);
    if (limits_) check_within_limits(sizes);
    // Every local check before the transfers: once they start, no rank may fail alone.
    const std::size_t welems = experts_.weight_elems();
    const std::size_t need = static_cast<std::size_t>(sizes.foreign_experts) * welems * sizeof(T);
    LLEP_EXPECTS(need <= memory.size(), "rank ", rank_, ": prepare memory holds ", memory.size(), " bytes but the ",
                 sizes.foreign_experts, " foreign experts of the prepared step need ", need,
                 " (size it with MoeLayer::prepare_bytes(limits))");
    LLEP_EXPECTS(need == 0 || reinterpret_cast<std::uintptr_t>(memory.data()) % alignof(T) == 0, "rank ", rank_,
                 ": prepare memory is not aligned for the layer's element type (", alignof(T), " bytes)");
    T* foreign = reinterpret_cast<T*>(memory.data());
    const std::size_t cx = codec_scratch_bytes();  // the workspace is free here: the counts are on the host
    std::byte* scratch = cx > 0 ? exec_.workspace(cx) : nullptr;
    move_weights(WeightsOnRank<T>{native_weights_, foreign, native_slot_, incoming_, welems, held_at_},
                 std::span<std::byte>(scratch, cx));
    prepared_.active = true;
    prepared_.weights_pending = WeightsPathTransport<Tr> && Codec::exact;  // on every rank alike
    prepared_.foreign = foreign;
  }

  // Whether every rank's routing is the prepared one: one all-gathered word per rank, so
  // every rank decides the same. Consumes the prepared step either way.
  bool take_prepared(const std::int32_t* ids, std::size_t pairs) {
    const Prepared p = prepared_;
    prepared_.active = false;
    prepared_.weights_pending = false;
    const auto hist = local_histogram(ids, pairs);
    const bool mine =
        !p.stale && std::equal(hist.begin(), hist.end(), prepared_counts_.begin(), prepared_counts_.end());
    const std::int64_t word = mine ? kPreparedMatch : kPreparedMismatch;
    const auto P = static_cast<std::size_t>(topo_.ranks());
    agree_.resize(P);
    if constexpr (Tr::memory == MemorySpace::device) {
      auto* d = reinterpret_cast<std::int64_t*>(exec_.workspace((P + 1) * sizeof(std::int64_t)));
      exec_.from_host(d, &word, sizeof word);
      transport_->all_gather(d, sizeof word, d + 1);
      exec_.to_host(agree_.data(), d + 1, P * sizeof word);
      exec_.synchronize();
    } else {
      transport_->all_gather(&word, sizeof word, agree_.data());
    }
    bool all = true;
    for (std::size_t r = 0; r < P; ++r) {
      LLEP_EXPECTS(agree_[r] == kPreparedMatch || agree_[r] == kPreparedMismatch, "rank ", r,
                   " is not in a prepared step: every rank must call prepare() before the same forward");
      all = all && agree_[r] == kPreparedMatch;
    }
    if (!all && p.weights_pending) {  // the prefetch lands in memory this step will not read
      if constexpr (WeightsPathTransport<Tr>) transport_->join_weights();
    }
    return all;
  }

  template <class G>
  void step(std::span<const T> hidden, std::span<const std::int32_t> ids, std::span<const G> gates, std::span<T> out,
            ForwardHandle<T>* handle) {
    const auto D = static_cast<std::size_t>(experts_.hidden());
    const auto K = static_cast<std::size_t>(top_k_);
    const int N = topo_.experts();
    LLEP_EXPECTS(hidden.size() % D == 0, "hidden has ", hidden.size(), " elements, not a multiple of D = ", D);
    const std::size_t B = hidden.size() / D;
    LLEP_EXPECTS(ids.size() == B * K, "topk_ids has ", ids.size(), " entries; B x K = ", B, " x ", K);
    LLEP_EXPECTS(gates.size() == B * K, "topk_weights has ", gates.size(), " entries; B x K = ", B, " x ", K);
    LLEP_EXPECTS(out.size() == B * D, "out has ", out.size(), " elements; B x D = ", B, " x ", D);
    (void)check_routing(ids.size());
    const std::size_t row_bytes = D * sizeof(T);

    // 0. Plan-ahead: with a prepare() pending, every rank checks its routing against it.
    const bool was_prepared = prepared_.active;
    const bool use_prepared = was_prepared && take_prepared(ids.data(), ids.size());
    T* const prefetched = use_prepared ? prepared_.foreign : nullptr;
    // 1-3. Count (one device-to-host copy), plan (the same on every rank), layout.
    if (!use_prepared) count_plan_layout(ids, B, false);

    // Step memory: the workspace, and the regions a handle keeps in its own memory.
    const StepSizes sizes = step_sizes(layout_, plan_, rank_, incoming_);
    if (limits_) check_within_limits(sizes);
    const std::size_t welems = experts_.weight_elems();
    std::size_t max_task = 0;
    for (const ComputeTask& t : layout_.tasks()) max_task = std::max(max_task, static_cast<std::size_t>(t.rows));
    const std::size_t scratch =
        std::max(experts_.scratch_bytes(static_cast<count_t>(max_task), static_cast<count_t>(sizes.rows)),
                 exec_sort_scratch_bytes<Exec>(static_cast<std::size_t>(sizes.pairs), N));
    // A prepared step's foreign weights are in the prepare memory: no region for them.
    const std::uint32_t skip = use_prepared ? WorkspaceLayout::bit(WorkspaceRegion::foreign_weights) : 0u;
    const std::uint32_t kept = handle ? handle_regions(handle->keeps()) & ~skip : 0u;
    const WorkspaceLayout ws(sizes, row_bytes, welems * sizeof(T), scratch,
                             WorkspaceLayout::all_regions & ~kept & ~skip);
    const WorkspaceLayout hs(sizes, row_bytes, welems * sizeof(T), scratch, kept);
    LLEP_EXPECTS(!handle || hs.total() <= handle->memory.size(), "rank ", rank_, ": the forward handle's memory holds ",
                 handle ? handle->memory.size() : 0, " bytes but this step keeps ", hs.total(),
                 " (size it with MoeLayer::handle_bytes(limits, handle.keeps()))");
    const std::size_t cx = use_prepared ? 0 : codec_scratch_bytes();
    std::byte* base = exec_.workspace(cx > 0 ? align_up(ws.total()) + cx : ws.total());
    const StepBuffers<T> buf = StepBuffers<T>::carve(ws, base, ws.total(), hs, handle ? handle->memory.data() : nullptr,
                                                     handle ? handle->memory.size() : 0, kept);
    const WeightsOnRank<T> weights{native_weights_, use_prepared ? prefetched : buf.foreign_weights, native_slot_,
                                   incoming_, welems, held_at_};
    std::byte* saved = handle && !handle->saved_memory.empty() ? handle->saved_memory.data() : nullptr;
    const std::size_t saved_need = static_cast<std::size_t>(sizes.rows) * saved_row_bytes();
    LLEP_EXPECTS(!saved || (saved_row_bytes() > 0 && saved_need <= handle->saved_memory.size()),
                 "rank ", rank_, ": the forward handle's saved_memory holds ", saved ? handle->saved_memory.size() : 0,
                 " bytes but this step's ", sizes.rows, " rows keep ", saved_need,
                 " (size it with MoeLayer::saved_bytes(limits); the functor must keep pre-activations)");
    bytes_.assign(layout_, row_bytes);

    // 4. Dispatch: the plan's weight transfers (already under way when prepared), then the tokens.
    if (!use_prepared) move_weights(weights, std::span<std::byte>(cx > 0 ? base + align_up(ws.total()) : nullptr, cx));
    dispatch_tokens(exec_, *transport_, layout_, buf, hidden.data(), ids.data(), N, top_k_, row_bytes, bytes_);
    if (replicas_encoded_) decode_replicas();
    // 5. Compute: natives, then foreign experts once their weights are here.
    compute_stage(exec_, *transport_, experts_, layout_, buf, weights, row_bytes, expert_tasks_, saved,
                  saved_row_bytes());
    // 6. Combine: reverse all-to-all and the weighted sum over K.
    combine_stage(exec_, *transport_, layout_, buf, bytes_, gates, out, top_k_, D, row_bytes);

    fill_report(ws.total(), row_bytes, welems * sizeof(T));
    report_.prepared = use_prepared;
    report_.prepare_mismatch = was_prepared && !use_prepared;
    report_.weight_bytes_prefetched = use_prepared ? report_.weight_bytes_received : 0;
    report_.replica_bytes_saved = replica_bytes_saved_;
    if (handle) fill_handle(*handle, buf, weights, saved);
  }

  void drop_encoded_replicas() {
    replicas_encoded_ = false;
    encoded_replicas_ = nullptr;
    replica_decode_ = nullptr;
    replica_bytes_saved_ = 0;
    held_at_.clear();
  }

  // The replicas this step computes, decoded once each (host codec).
  void decode_replicas() {
    if constexpr (Exec::memory == MemorySpace::host) {
      const std::size_t welems = experts_.weight_elems(), eb = encoded_replica_bytes();
      std::fill(decoded_.begin(), decoded_.end(), 0);
      for (const ComputeTask& t : layout_.tasks()) {
        const int j = t.native ? replica_index_[static_cast<std::size_t>(t.expert)] : -1;
        if (j < 0 || decoded_[static_cast<std::size_t>(j)]) continue;
        const auto uj = static_cast<std::size_t>(j);
        codec_.decode(std::span<const std::byte>(encoded_replicas_ + uj * eb, eb),
                      std::span<T>(replica_decode_ + uj * welems, welems));
        decoded_[uj] = 1;
      }
    }
  }

  [[nodiscard]] std::size_t saved_row_bytes() const {
    if constexpr (requires { experts_.saved_row_bytes(); }) return experts_.saved_row_bytes();
    else return 0;
  }

  void check_within_limits(const StepSizes& s) const {
    const StepSizes worst = worst_case_sizes(*limits_);
    LLEP_EXPECTS(s.rows <= worst.rows && s.foreign_experts <= worst.foreign_experts &&
                     s.send_blocks <= worst.send_blocks && s.recv_chunks <= worst.recv_chunks,
                 "planner '", Plnr::name, "' gave rank ", rank_, " ", s.rows, " rows, ", s.foreign_experts,
                 " foreign experts, ", s.send_blocks, " send blocks and ", s.recv_chunks,
                 " receive chunks, beyond its bounds (", worst.rows, ", ", worst.foreign_experts, ", ",
                 worst.send_blocks, ", ", worst.recv_chunks, ") for ", *limits_);
  }

  void fill_handle(ForwardHandle<T>& h, const StepBuffers<T>& b, const WeightsOnRank<T>& w, const std::byte* saved) {
    h.plan = plan_;
    h.layout = layout_;
    h.tasks.clear();
    for (const ComputeTask& t : layout_.tasks())
      h.tasks.push_back(HandleTask<T>{t.expert, t.native,
                                      t.native            ? w.held_expert(t.expert)
                                      : h.refetch_weights ? nullptr  // in the step's workspace: fetched again
                                                          : w.foreign_expert(t.expert),
                                      t.row, t.rows, t.begin});
    std::int32_t saved_row = 0;  // compute_stage's order: natives, then foreign experts
    for (const bool native : {true, false})
      for (HandleTask<T>& t : h.tasks)
        if (t.native == native) t.saved_row = saved_row, saved_row += t.rows;
    h.saved = saved;
    h.saved_bytes = saved ? static_cast<std::size_t>(layout_.compute_rows()) * saved_row_bytes() : 0;
    h.top_k = top_k_;
    h.pairs = layout_.pairs();
    h.rows = layout_.compute_rows();
    h.order = b.order;
    h.pair_row = b.pair_row;
    h.row_pair = b.row_pair;
    h.compute_row = b.compute_row;
    h.expert_inputs = h.save_inputs ? b.expert_in : nullptr;
    h.expert_outputs = h.save_outputs ? b.expert_out : nullptr;
    h.filled = true;
  }

  void fill_report(std::size_t workspace, std::size_t row_bytes, std::size_t weight_bytes) {
    const int P = topo_.ranks();
    StepReport& r = report_;
    r.policy = plan_.policy();
    r.rank = rank_;
    r.capacity = plan_.capacity();
    r.native_rows.assign(static_cast<std::size_t>(P), 0);
    r.foreign_rows.assign(static_cast<std::size_t>(P), 0);
    max_rows_.assign(static_cast<std::size_t>(P), 0);
    for (const Segment& s : plan_.segments()) {
      // Rows on a rank that holds the expert (native or replica) count as native rows:
      // no weights moved for them.
      auto& bucket = topo_.holds(s.expert, s.rank) ? r.native_rows : r.foreign_rows;
      bucket[static_cast<std::size_t>(s.rank)] += s.size();
      max_rows_[static_cast<std::size_t>(s.rank)] = std::max(max_rows_[static_cast<std::size_t>(s.rank)], s.size());
    }
    r.peak_bytes.assign(static_cast<std::size_t>(P), 0);
    for (int q = 0; q < P; ++q) {
      const auto rows = r.rows(q);
      r.peak_bytes[static_cast<std::size_t>(q)] = static_cast<std::size_t>(rows) * 2 * row_bytes +
                                                  experts_.scratch_bytes(max_rows_[static_cast<std::size_t>(q)], rows);
    }
    for (const WeightTransfer& w : plan_.weight_transfers()) r.peak_bytes[static_cast<std::size_t>(w.dst)] += weight_bytes;
    r.weight_transfers = plan_.weight_transfers().size();
    r.imbalance_after = imbalance(plan_.rank_loads());
    max_rows_.resize(static_cast<std::size_t>(P));
    native_rank_loads(stats_.loads(), topo_, max_rows_);
    r.imbalance_before = imbalance(max_rows_);
    r.token_bytes_sent = r.token_bytes_received = 0;
    for (int q = 0; q < P; ++q) {
      if (q == rank_) continue;
      const auto uq = static_cast<std::size_t>(q);
      r.token_bytes_sent += bytes_.send_bytes[uq] + bytes_.recv_bytes[uq];
      r.token_bytes_received += bytes_.recv_bytes[uq] + bytes_.send_bytes[uq];
    }
    r.weight_bytes_sent = r.weight_bytes_received = 0;
    for (const P2pOp& op : weight_ops_) (op.kind == P2pOp::Kind::send ? r.weight_bytes_sent : r.weight_bytes_received) += op.bytes;
    r.workspace_bytes = workspace;
    (void)row_bytes;
  }

  void check_weights(const Topology& topo, std::span<const T> weights) const {
    const std::size_t want = static_cast<std::size_t>(topo.slots_per_rank()) * experts_.weight_elems();
    LLEP_EXPECTS(weights.size() == want && (weights.data() != nullptr || want == 0), "rank ", rank_,
                 "'s weights hold ", weights.size(), " elements but it holds ", topo.slots_per_rank(),
                 " experts (natives and replicas) of ", experts_.weight_elems(), " elements each = ", want);
  }

  // Slot of each expert this rank holds in its weights, -1 for the others; and the
  // configuration fingerprint, which depends on the placement.
  void build_slots() {
    config_ = llep::config_fingerprint(topo_, top_k_, planner_,
                                       {experts_.hidden(), experts_.intermediate(),
                                        static_cast<std::int64_t>(experts_.weight_elems()),
                                        static_cast<std::int64_t>(sizeof(T)),
                                        codec_fingerprint(codec_, experts_.weight_elems())});
    native_slot_.assign(static_cast<std::size_t>(topo_.experts()), -1);
    int slot = 0;
    for (int e = 0; e < topo_.experts(); ++e)
      if (topo_.holds(e, rank_)) native_slot_[static_cast<std::size_t>(e)] = slot++;
  }

  Topology topo_;
  int top_k_;
  Plnr planner_;
  Experts experts_;
  Tr* transport_;
  Exec exec_;
  Stats stats_;
  int rank_ = 0;
  const T* native_weights_ = nullptr;
  std::vector<int> native_slot_;
  std::uint64_t config_ = 0;
  Plan plan_;
  PlanCheckScratch check_;
  Layout layout_;
  StepReport report_;
  std::vector<int> incoming_;
  std::vector<P2pOp> weight_ops_;
  Codec codec_{};
  EncodedWeights encoded_;
  std::vector<ExpertTask<T>> expert_tasks_;
  ByteCounts bytes_;
  std::vector<count_t> max_rows_;
  std::optional<LayerLimits> limits_;
  // Plan-ahead: between prepare() and the next forward, plan_, layout_, incoming_,
  // weight_ops_ and the stats hold the prepared step.
  struct Prepared {
    bool active = false;           // a prepare() waits for the next forward
    bool stale = false;            // weights, placement or codec changed since: re-plan
    bool weights_pending = false;  // exchange_weights started, not joined yet
    T* foreign = nullptr;          // the foreign experts' weights, in the prepare memory
  };
  static constexpr std::int64_t kPreparedMatch = 0x6c6c65702d707231;     // "llep-pr1"
  static constexpr std::int64_t kPreparedMismatch = 0x6c6c65702d707230;  // "llep-pr0"
  Prepared prepared_;
  // Encoded replicas (set_encoded_replicas): where each held expert's weights are.
  std::vector<const T*> held_at_;
  std::vector<int> replica_index_;
  std::vector<char> decoded_;
  bool replicas_encoded_ = false;
  const std::byte* encoded_replicas_ = nullptr;
  T* replica_decode_ = nullptr;
  std::size_t replica_bytes_saved_ = 0;
  std::vector<count_t> prepared_counts_, hist_;
  std::vector<std::int64_t> agree_;
  std::vector<std::int32_t> count_ids_;
};

}  // namespace llep
