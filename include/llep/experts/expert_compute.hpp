#pragma once
// The ExpertCompute concept (DESIGN.md step 6, "compute"): an expert FFN family that runs
// a list of (expert, rows) tasks in an execution space. The layer calls `compute` twice a
// step: the experts this rank holds first, then the foreign ones once their weights came.
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

#include "llep/core/config.hpp"

namespace llep {

/// One expert's share of work: `rows` rows of `in` (row-major, hidden size D) through the
/// expert whose serialised weights start at `weights`, into `out` (rows x D).
template <class T>
struct ExpertTask {
  int expert = 0;
  const T* weights = nullptr;
  const T* in = nullptr;
  T* out = nullptr;
  count_t rows = 0;
};

/// An expert FFN family. Weights of one expert serialise to `weight_elems()` contiguous
/// elements, which is what a weight transfer moves. `compute` runs every task; `exec` says
/// where (host, or a CUDA stream) and `scratch` is caller-owned memory of at least
/// `scratch_bytes(max rows of one task, total rows)` bytes.
template <class E, class Exec>
concept ExpertCompute = requires(const E& ex, Exec& exec, std::span<const ExpertTask<typename E::value_type>> tasks,
                                 void* scratch, count_t rows) {
  typename E::value_type;
  { ex.hidden() } -> std::convertible_to<int>;
  { ex.intermediate() } -> std::convertible_to<int>;
  { ex.weight_elems() } -> std::convertible_to<std::size_t>;
  { ex.scratch_bytes(rows, rows) } -> std::convertible_to<std::size_t>;
  { ex.compute(exec, tasks, scratch) } -> std::same_as<void>;
};

/// Named in a static_assert so a type that is not an expert functor fails with an
/// instruction.
template <class E, class Exec>
constexpr bool check_expert_compute() {
  static_assert(ExpertCompute<E, Exec>,
                "llep: this type is not an ExpertCompute for this Exec. Give it `using value_type = T`, `int "
                "hidden() const`, `int intermediate() const`, `std::size_t weight_elems() const`, `std::size_t "
                "scratch_bytes(llep::count_t max_task_rows, llep::count_t total_rows) const` and `void compute(Exec&, "
                "std::span<const llep::ExpertTask<T>> tasks, void* scratch) const`.");
  return true;
}

/// Tasks whose number lives in the exec's memory (device memory for CudaExec), for a step
/// that never waits for the host (issue 14): `tasks[0, *count)` are run, later entries of
/// the array are ignored. The bounds are host values (the layer's limits) that size grids
/// and scratch; the caller guarantees 0 <= *count <= max_tasks, every task's rows <=
/// max_task_rows and their sum <= max_rows. A task of 0 rows is legal (its pointers are
/// not read). Rows of different tasks are disjoint in `in` and in `out`.
template <class T>
struct SizedTasks {
  const ExpertTask<T>* tasks = nullptr;
  const std::int32_t* count = nullptr;
  int max_tasks = 0;
  count_t max_rows = 0;
  count_t max_task_rows = 0;
};

/// An ExpertCompute that also runs SizedTasks: `compute_sized(exec, sized, scratch)` reads
/// the count and the tasks from exec memory, with `scratch` (exec memory) of at least
/// `sized_scratch_bytes(max_tasks, max_rows)` bytes. On a device it enqueues work only: no
/// host synchronisation, no allocation, so it can be captured in a CUDA graph.
template <class E, class Exec>
concept SizedExpertCompute =
    ExpertCompute<E, Exec> && requires(const E& ex, Exec& exec, SizedTasks<typename E::value_type> sized,
                                       void* scratch, int max_tasks, count_t rows) {
      { ex.sized_scratch_bytes(max_tasks, rows) } -> std::convertible_to<std::size_t>;
      { ex.compute_sized(exec, sized, scratch) } -> std::same_as<void>;
    };

/// Named in a static_assert where a device-sized step needs the sized form.
template <class E, class Exec>
constexpr bool check_sized_expert_compute() {
  static_assert(check_expert_compute<E, Exec>());
  static_assert(SizedExpertCompute<E, Exec>,
                "llep: this expert functor has no device-sized form for this Exec. Add `std::size_t "
                "sized_scratch_bytes(int max_tasks, llep::count_t max_rows) const` and `void compute_sized(Exec&, "
                "llep::SizedTasks<T> tasks, void* scratch) const` (read the count from memory, never sync or "
                "allocate), or use llep::GroupedSwiGlu on CudaExec.");
  return true;
}

}  // namespace llep
