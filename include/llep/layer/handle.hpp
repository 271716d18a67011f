#pragma once
// ForwardHandle: what a forward step leaves behind for later stages (backward), in caller
// memory, as DeepEP's dispatch handle serves combine. MoeLayer::forward(..., handle) fills
// it; the layer keeps no pointer to it.
//
// Host side (the handle object): the plan, the layout, and one HandleTask per compute
// task. Exec side (`memory`, caller-owned, in the execution space's memory, at least
// MoeLayer::handle_bytes(limits, keeps()) bytes): the permutations, the received foreign
// weights (unless refetch_weights), with save_inputs the experts' inputs, with
// save_outputs their outputs. These regions are carved from `memory` instead of the step's
// workspace, so they outlive the step (the workspace is reused by the next step or the
// next layer). With `saved_memory`, forward also keeps the experts' pre-activations
// (ExpertBackward's `saved`) there, and backward does not recompute them. Each option
// trades memory held between the passes against work in backward; BackwardReport gives
// the bytes each one held.
//
// For a backward pass, per task: `expert`, whether its weights are `native`, the
// `weights` it used (native weights or the copy in `memory`), its rows [row, row + rows) of
// the compute buffer (= of expert_inputs), which are pairs [begin, begin + rows) of the
// expert in global position order. Between pairs and rows: pair_row[t * K + k] is the
// pair's send row (row_pair the inverse), the all-to-all moves send rows by the layout's
// send/recv counts and offsets, and compute_row[recv row] is the row's compute row.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/core/plan.hpp"
#include "llep/layer/layout.hpp"
#include "llep/layer/limits.hpp"

namespace llep {

/// One compute task of a step, as backward needs it.
template <class T>
struct HandleTask {
  std::int32_t expert = 0;
  bool native = true;        ///< weights held by this rank (native or replica), not received
  const T* weights = nullptr;  ///< the serialised weights the task used (exec memory); null for a
                               ///< foreign task under refetch_weights (backward fetches them)
  std::int32_t row = 0;      ///< first row in the compute buffer / expert_inputs
  std::int32_t rows = 0;
  count_t begin = 0;         ///< first pair of the expert (global position order)
  std::int32_t saved_row = 0;  ///< first row in ForwardHandle::saved (forward's compute order)
};

template <class T>
struct ForwardHandle {
  ForwardHandle() = default;
  explicit ForwardHandle(std::span<std::byte> memory_, bool save_inputs_ = false)
      : memory(memory_), save_inputs(save_inputs_) {}

  // Set by the caller before forward.
  std::span<std::byte> memory;  ///< exec-space memory of at least MoeLayer::handle_bytes(...)
  bool save_inputs = false;     ///< keep the experts' inputs (rows x D) in `memory`
  /// Exec-space memory (aligned for the functor's accumulator) in which forward keeps the
  /// experts' pre-activations, rows x saved_row_bytes(), at least MoeLayer::saved_bytes(limits);
  /// empty keeps none and backward recomputes them.
  std::span<std::byte> saved_memory;
  /// Do not keep the received foreign weights from forward to backward: forward receives
  /// them into its step workspace, and backward fetches them again from their holders (the
  /// plan's weight transfers once more, into backward's workspace). Less handle memory
  /// (MoeLayer::handle_bytes(limits, keeps())), one more weight exchange. Every rank must
  /// choose the same, before forward.
  bool refetch_weights = false;
  /// Keep the experts' outputs (rows x D) in `memory`: backward reads them for the gate
  /// gradients instead of running the experts' forward once more.
  bool save_outputs = false;

  /// The regions this handle keeps in `memory`; size it with handle_bytes(limits, keeps()).
  [[nodiscard]] HandleKeeps keeps() const noexcept { return HandleKeeps{save_inputs, !refetch_weights, save_outputs}; }

  // Filled by forward.
  Plan plan;
  Layout layout;
  std::vector<HandleTask<T>> tasks;  ///< in compute-buffer order
  int top_k = 0;
  count_t pairs = 0;                        ///< B x K of this rank
  count_t rows = 0;                         ///< rows this rank computed
  const std::int32_t* order = nullptr;      ///< pairs sorted by expert: order[j] = flat pair index
  const std::int32_t* pair_row = nullptr;   ///< flat pair -> send row
  const std::int32_t* row_pair = nullptr;   ///< send row -> flat pair
  const std::int32_t* compute_row = nullptr;  ///< receive row -> compute row
  const T* expert_inputs = nullptr;         ///< rows x D in task order, when save_inputs
  const T* expert_outputs = nullptr;        ///< rows x D in task order, when save_outputs
  const std::byte* saved = nullptr;         ///< the pre-activations, when saved_memory is set
  std::size_t saved_bytes = 0;              ///< bytes of them: rows x saved_row_bytes()
  bool filled = false;                      ///< the last forward with this handle succeeded
};

}  // namespace llep
