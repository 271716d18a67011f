#pragma once
// The ExpertCompute concept (DESIGN.md step 6, "compute"): an expert FFN family that runs
// a list of (expert, rows) tasks in an execution space. The layer calls `compute` twice a
// step: the experts this rank holds first, then the foreign ones once their weights came.
#include <concepts>
#include <cstddef>
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

}  // namespace llep
