#pragma once
// Memory known before the step (two-phase, as CUB and CUTLASS do). LayerLimits holds what
// an engine knows before any batch; workspace_bytes(limits) bounds every step within them,
// so the engine can supply the step memory once and no step allocates.
//
// The workspace of one step is one buffer carved into named regions (FlashInfer's
// allocator style). The same carve is sized for a step's actual figures (StepSizes) and for
// the worst case of the limits, so the bound is the carve of the worst case.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <string_view>

#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/core/topology.hpp"
#include "llep/layer/layout.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

/// What an engine knows before any batch. Build it with MoeLayer::limits(max_tokens), or
/// fill it by hand; MoeLayer::reserve checks that it describes the layer.
struct LayerLimits {
  count_t max_tokens_per_rank = 0;  ///< B_max
  int top_k = 0;                    ///< K
  int hidden = 0;                   ///< D
  int intermediate = 0;             ///< H
  int ranks = 0;                    ///< P
  int experts = 0;                  ///< N
  std::size_t row_bytes = 0;        ///< one hidden row, D x element size
  std::size_t weight_bytes = 0;     ///< one expert's serialised weights
  std::size_t scratch_bytes = 0;    ///< the expert functor's scratch at the bounds
  std::size_t stats_bytes = 0;      ///< what the routing statistics stage in the workspace
  PlanBounds plan;                  ///< the planner's bounds (plan_bounds, plan/planner.hpp)

  [[nodiscard]] count_t max_pairs_per_rank() const noexcept { return max_tokens_per_rank * top_k; }
  friend bool operator==(const LayerLimits& a, const LayerLimits& b) noexcept {
    return a.max_tokens_per_rank == b.max_tokens_per_rank && a.top_k == b.top_k && a.hidden == b.hidden &&
           a.intermediate == b.intermediate && a.ranks == b.ranks && a.experts == b.experts &&
           a.row_bytes == b.row_bytes && a.weight_bytes == b.weight_bytes && a.scratch_bytes == b.scratch_bytes &&
           a.stats_bytes == b.stats_bytes && a.plan.rows_per_rank == b.plan.rows_per_rank &&
           a.plan.foreign_experts_per_rank == b.plan.foreign_experts_per_rank &&
           a.plan.segments == b.plan.segments && a.plan.transfers == b.plan.transfers;
  }
  friend std::ostream& operator<<(std::ostream& os, const LayerLimits& l) {
    return os << "LayerLimits{B_max = " << l.max_tokens_per_rank << ", K = " << l.top_k << ", D = " << l.hidden
              << ", H = " << l.intermediate << ", P = " << l.ranks << ", N = " << l.experts
              << ", rows/rank <= " << l.plan.rows_per_rank << ", foreign experts/rank <= "
              << l.plan.foreign_experts_per_rank << "}";
  }
};

/// Bytes of one expert's serialised weights: the functor's weight_bytes() when it has one
/// (a packed format), else weight_elems() elements.
template <class Experts>
[[nodiscard]] std::size_t expert_weight_bytes(const Experts& experts) {
  if constexpr (requires { experts.weight_bytes(); }) return experts.weight_bytes();
  else return experts.weight_elems() * sizeof(typename Experts::value_type);
}

/// The limits of a layer of this configuration when no rank has more than
/// `max_tokens_per_rank` tokens in a step, but for the scratch and staging that depend on
/// how the layer runs (each layer's make_limits adds them).
template <class Plnr, class Experts>
[[nodiscard]] LayerLimits base_limits(const Topology& topo, int top_k, const Plnr& planner, const Experts& experts,
                                      count_t max_tokens_per_rank) {
  LLEP_EXPECTS(max_tokens_per_rank >= 0 && max_tokens_per_rank <= INT32_MAX / std::max(top_k, 1),
               "max tokens per rank = ", max_tokens_per_rank, " must be in [0, 2^31 / K] (K = ", top_k, ")");
  LayerLimits l;
  l.max_tokens_per_rank = max_tokens_per_rank;
  l.top_k = top_k;
  l.hidden = experts.hidden();
  l.intermediate = experts.intermediate();
  l.ranks = topo.ranks();
  l.experts = topo.experts();
  l.row_bytes = static_cast<std::size_t>(experts.hidden()) * sizeof(typename Experts::value_type);
  l.weight_bytes = expert_weight_bytes(experts);
  l.plan = llep::plan_bounds(planner, topo, max_tokens_per_rank * top_k);
  l.plan.rows_per_rank = std::min<std::int64_t>(l.plan.rows_per_rank, INT32_MAX);
  return l;
}

/// The named regions of one step's workspace, in carve order.
enum class WorkspaceRegion {
  send,             ///< pairs x row: tokens in send order; combine's receive buffer
  recv,             ///< rows x row: rows received; combine's send buffer
  expert_in,        ///< rows x row: received rows in task order (the experts' input)
  expert_out,       ///< rows x row: the experts' output
  foreign_weights,  ///< foreign experts x weight bytes: weights received this step
  scratch,          ///< the expert functor's scratch
  order,            ///< pairs x int32: pairs sorted by expert
  pair_row,         ///< pairs x int32: pair -> send row
  row_pair,         ///< pairs x int32: send row -> pair
  compute_row,      ///< rows x int32: received row -> compute row
  send_blocks,      ///< Layout::send_blocks, in the exec's memory
  recv_chunks,      ///< Layout::recv_chunks, in the exec's memory
};
inline constexpr std::size_t kWorkspaceRegions = 12;

[[nodiscard]] constexpr std::string_view region_name(WorkspaceRegion r) noexcept {
  constexpr std::array<std::string_view, kWorkspaceRegions> names{
      "send", "recv", "expert_in", "expert_out", "foreign_weights", "scratch",
      "order", "pair_row", "row_pair", "compute_row", "send_blocks", "recv_chunks"};
  return names[static_cast<std::size_t>(r)];
}

/// A step's figures that size the workspace.
struct StepSizes {
  std::int64_t pairs = 0;          ///< B x K on this rank
  std::int64_t rows = 0;           ///< rows this rank computes
  int foreign_experts = 0;         ///< experts whose weights this rank receives
  std::int64_t send_blocks = 0;
  std::int64_t recv_chunks = 0;
};

/// Offsets of every region in one buffer, 256-byte aligned.
class WorkspaceLayout {
 public:
  static constexpr std::size_t alignment = 256;

  /// Bit i selects WorkspaceRegion i; regions left out take no bytes.
  static constexpr std::uint32_t all_regions = (1u << kWorkspaceRegions) - 1;
  [[nodiscard]] static constexpr std::uint32_t bit(WorkspaceRegion r) noexcept {
    return 1u << static_cast<unsigned>(r);
  }

  WorkspaceLayout() = default;
  WorkspaceLayout(const StepSizes& s, std::size_t row_bytes, std::size_t weight_bytes, std::size_t scratch_bytes,
                  std::uint32_t regions = all_regions) {
    const auto pairs = static_cast<std::size_t>(s.pairs), rows = static_cast<std::size_t>(s.rows);
    const std::array<std::size_t, kWorkspaceRegions> bytes{
        pairs * row_bytes,
        rows * row_bytes,
        rows * row_bytes,
        rows * row_bytes,
        static_cast<std::size_t>(s.foreign_experts) * weight_bytes,
        scratch_bytes,
        pairs * sizeof(std::int32_t),
        pairs * sizeof(std::int32_t),
        pairs * sizeof(std::int32_t),
        rows * sizeof(std::int32_t),
        static_cast<std::size_t>(s.send_blocks) * sizeof(SendBlock),
        static_cast<std::size_t>(s.recv_chunks) * sizeof(RecvChunk)};
    std::size_t at = 0;
    for (std::size_t i = 0; i < kWorkspaceRegions; ++i) {
      at = (at + alignment - 1) / alignment * alignment;
      offset_[i] = at;
      bytes_[i] = (regions >> i) & 1u ? bytes[i] : 0;
      at += bytes_[i];
    }
    total_ = at;
  }

  [[nodiscard]] std::size_t offset(WorkspaceRegion r) const noexcept { return offset_[static_cast<std::size_t>(r)]; }
  [[nodiscard]] std::size_t bytes(WorkspaceRegion r) const noexcept { return bytes_[static_cast<std::size_t>(r)]; }
  [[nodiscard]] std::size_t total() const noexcept { return total_; }

  /// The region at `base`, after checking that it lies inside `capacity` bytes: an
  /// overflow names the region, its bytes and offset, and the capacity.
  template <class U>
  [[nodiscard]] U* at(std::byte* base, std::size_t capacity, WorkspaceRegion r) const {
    const std::size_t off = offset(r), n = bytes(r);
    LLEP_EXPECTS(off + n <= capacity, "workspace region '", region_name(r), "' of ", n, " bytes at offset ", off,
                 " does not fit in a workspace of ", capacity, " bytes");
    return reinterpret_cast<U*>(base + off);
  }

 private:
  std::array<std::size_t, kWorkspaceRegions> offset_{}, bytes_{};
  std::size_t total_ = 0;
};

/// The worst-case step under `limits`: every figure at its bound.
[[nodiscard]] inline StepSizes worst_case_sizes(const LayerLimits& l) {
  const std::int64_t pairs = l.max_pairs_per_rank();
  const std::int64_t rows = l.plan.rows_per_rank;
  // A send block is a non-empty run of this rank's pairs inside one segment; a receive
  // chunk a non-empty run of received rows inside one (task, source): layout_capacity.
  const LayoutCapacity cap = layout_capacity(l.ranks, l.experts, l.plan.segments);
  const std::int64_t blocks = std::min(pairs, cap.send_blocks);
  const std::int64_t chunks = std::min(rows, cap.recv_chunks);
  return StepSizes{pairs, rows, l.plan.foreign_experts_per_rank, blocks, chunks};
}

/// What a ForwardHandle keeps in its memory from forward to backward besides the
/// permutations (ForwardHandle::keeps() gives its flags). Each kept region is memory held
/// between the passes; each one left out costs backward work instead: the inputs are
/// dispatched again, the foreign weights fetched again from their holders, the outputs
/// recomputed by one more expert forward.
struct HandleKeeps {
  bool inputs = false;          ///< the experts' inputs, rows x D (ForwardHandle::save_inputs)
  bool foreign_weights = true;  ///< the foreign experts' weights (!ForwardHandle::refetch_weights)
  bool outputs = false;         ///< the experts' outputs, rows x D (ForwardHandle::save_outputs)
};

/// The regions a ForwardHandle keeps in its own memory (they outlive the step).
[[nodiscard]] constexpr std::uint32_t handle_regions(HandleKeeps keeps) noexcept {
  using W = WorkspaceLayout;
  return W::bit(WorkspaceRegion::order) | W::bit(WorkspaceRegion::pair_row) | W::bit(WorkspaceRegion::row_pair) |
         W::bit(WorkspaceRegion::compute_row) |
         (keeps.foreign_weights ? W::bit(WorkspaceRegion::foreign_weights) : 0u) |
         (keeps.inputs ? W::bit(WorkspaceRegion::expert_in) : 0u) |
         (keeps.outputs ? W::bit(WorkspaceRegion::expert_out) : 0u);
}
[[nodiscard]] constexpr std::uint32_t handle_regions(bool save_inputs) noexcept {
  return handle_regions(HandleKeeps{save_inputs});
}

/// Bytes of handle memory (ForwardHandle::memory) no step within `limits` exceeds.
[[nodiscard]] inline std::size_t handle_bytes(const LayerLimits& limits, HandleKeeps keeps) {
  return WorkspaceLayout(worst_case_sizes(limits), limits.row_bytes, limits.weight_bytes, limits.scratch_bytes,
                         handle_regions(keeps))
      .total();
}
[[nodiscard]] inline std::size_t handle_bytes(const LayerLimits& limits, bool save_inputs) {
  return handle_bytes(limits, HandleKeeps{save_inputs});
}

/// Bytes of workspace no step within `limits` exceeds: the carve of the worst case, or
/// what the routing statistics stage there, whichever is larger.
[[nodiscard]] inline std::size_t workspace_bytes(const LayerLimits& limits) {
  const WorkspaceLayout worst(worst_case_sizes(limits), limits.row_bytes, limits.weight_bytes, limits.scratch_bytes);
  return std::max(worst.total(), limits.stats_bytes);
}

}  // namespace llep
