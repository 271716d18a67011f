#pragma once
// The backward half of the expert-functor contract (ExpertBackward refines ExpertCompute).
// A functor without it still serves inference; code that runs backward calls
// expert_backward(), whose static_assert names what to add. The device-sized form
// (SizedExpertBackward, backward_sized) mirrors compute_sized's for a step that never
// waits for the host.
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

#include "llep/experts/expert_compute.hpp"
#include "llep/core/config.hpp"

namespace llep {

/// What a weight-gradient buffer holds after a backward call: only this call's gradient
/// (overwrite) or its old value plus this call's gradient (accumulate).
enum class GradMode { overwrite, accumulate };

/// One expert's share of a backward call. `in` and `grad_out` are the task's forward input
/// rows and the gradient of its output rows (rows x D each, row-major). Results:
///   grad_in       rows x D, overwritten; null skips the input gradient.
///   grad_weights  the expert's weight gradient in the serialised layout of
///                 experts/weight_layout.hpp, weight_elems() elements of G (T, or float for
///                 16-bit T: a fp32 main gradient); null skips the weight gradient.
///   saved         the task's first row in what compute(..., saved) stored in forward
///                 (saved_row_bytes() per row), or null to recompute it.
/// Tasks whose grad_weights point to the same buffer (two segments of one expert) sum into
/// it in task order; with GradMode::overwrite the buffer's old value counts for none of
/// them. A task with rows == 0 still writes its buffer (zeros under overwrite).
template <class T, class G = T>
struct ExpertGradTask {
  int expert = 0;
  const T* weights = nullptr;
  const T* in = nullptr;
  const T* grad_out = nullptr;
  T* grad_in = nullptr;
  G* grad_weights = nullptr;
  const void* saved = nullptr;
  count_t rows = 0;
};

/// An ExpertCompute functor that also runs backward, with weight gradients in its own
/// element type (G = value_type). Functors may accept other G too (CublasSwiGlu: float).
/// `backward_scratch_bytes(max rows of one task, total rows)` sizes backward's scratch;
/// `saved_row_bytes()` is what compute(exec, tasks, scratch, saved) keeps per row for
/// backward (0 if it keeps nothing).
template <class E, class Exec>
concept ExpertBackward =
    ExpertCompute<E, Exec> &&
    requires(const E& ex, Exec& exec, std::span<const ExpertTask<typename E::value_type>> tasks,
             std::span<const ExpertGradTask<typename E::value_type>> grad_tasks, void* scratch, count_t rows,
             GradMode mode) {
      { ex.saved_row_bytes() } -> std::convertible_to<std::size_t>;
      { ex.compute(exec, tasks, scratch, scratch) } -> std::same_as<void>;
      { ex.backward_scratch_bytes(rows, rows) } -> std::convertible_to<std::size_t>;
      { ex.backward(exec, grad_tasks, mode, scratch) } -> std::same_as<void>;
    };

/// Named in a static_assert (and by expert_backward) so a functor without backward fails
/// with an instruction.
template <class E, class Exec>
constexpr bool check_expert_backward() {
  static_assert(ExpertBackward<E, Exec>,
                "llep: this expert functor has no backward pass. Add `std::size_t saved_row_bytes() const`, "
                "`void compute(Exec&, std::span<const ExpertTask<T>>, void* scratch, void* saved) const`, "
                "`std::size_t backward_scratch_bytes(count_t max_task_rows, count_t total_rows) const` and "
                "`void backward(Exec&, std::span<const ExpertGradTask<T, G>>, GradMode, void* scratch) const` "
                "(see llep/experts/expert_backward.hpp), or train these experts elsewhere");
  return true;
}

/// Runs ex.backward; the one place that tells a functor without backward what it lacks.
template <class E, class Exec, class T, class G>
void expert_backward(const E& ex, Exec& exec, std::span<const ExpertGradTask<T, G>> tasks, GradMode mode,
                     void* scratch) {
  static_assert(check_expert_backward<E, Exec>());
  if constexpr (ExpertBackward<E, Exec>) ex.backward(exec, tasks, mode, scratch);  // one error, not two
}

/// Backward tasks whose number lives in the exec's memory, as SizedTasks for compute_sized
/// (experts/expert_compute.hpp): `tasks[0, *count)` are run, later entries of the array are
/// ignored; the bounds are host values that size grids and scratch, and the caller
/// guarantees 0 <= *count <= max_tasks, every task's rows <= max_task_rows and their sum
/// <= max_rows. Each task means what it means in backward (ExpertGradTask), except that
/// the sized form recomputes gate|up: `saved` must be null in every task (compute_sized
/// keeps nothing to read back; the host reference refuses a non-null one, device functors
/// do not read it). Rows of different tasks are disjoint in grad_in.
template <class T, class G = T>
struct SizedGradTasks {
  const ExpertGradTask<T, G>* tasks = nullptr;
  const std::int32_t* count = nullptr;
  int max_tasks = 0;
  count_t max_rows = 0;
  count_t max_task_rows = 0;
};

/// An ExpertBackward that also runs SizedGradTasks: `backward_sized(exec, sized, mode,
/// scratch)` reads the count and the tasks from exec memory, with `scratch` (exec memory)
/// of at least `sized_backward_scratch_bytes(max_tasks, max_rows)` bytes, and gives what
/// backward gives over the same tasks (null skips, tasks sharing a grad_weights buffer sum
/// in task order, GradMode, empty tasks still write their buffer). On a device it enqueues
/// work only: no host synchronisation, no allocation, so it can be captured in a CUDA graph.
template <class E, class Exec>
concept SizedExpertBackward =
    ExpertBackward<E, Exec> && requires(const E& ex, Exec& exec, SizedGradTasks<typename E::value_type> sized,
                                        void* scratch, int max_tasks, count_t rows, GradMode mode) {
      { ex.sized_backward_scratch_bytes(max_tasks, rows) } -> std::convertible_to<std::size_t>;
      { ex.backward_sized(exec, sized, mode, scratch) } -> std::same_as<void>;
    };

/// Named in a static_assert where a device-sized backward needs the sized form.
template <class E, class Exec>
constexpr bool check_sized_expert_backward() {
  static_assert(check_expert_backward<E, Exec>());
  static_assert(SizedExpertBackward<E, Exec>,
                "llep: this expert functor has no device-sized backward for this Exec. Add `std::size_t "
                "sized_backward_scratch_bytes(int max_tasks, llep::count_t max_rows) const` and `void "
                "backward_sized(Exec&, llep::SizedGradTasks<T, G> tasks, llep::GradMode, void* scratch) const` "
                "(read the count from memory, recompute gate|up, never sync or allocate), or use "
                "llep::GroupedSwiGlu on CudaExec.");
  return true;
}

namespace detail {
/// Whether task i is the first in `tasks` to write its grad_weights buffer: it overwrites
/// under GradMode::overwrite, later ones add. Quadratic in tasks, which are few per call.
template <class Task>
bool first_writer(std::span<const Task> tasks, std::size_t i) {
  for (std::size_t j = 0; j < i; ++j)
    if (tasks[j].grad_weights == tasks[i].grad_weights) return false;
  return true;
}
}  // namespace detail

}  // namespace llep
