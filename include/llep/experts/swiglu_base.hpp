#pragma once
// What every SwiGLU expert functor holds, on host or device: one expert's shape and its
// gated activation, checked to agree (biases with gpt-oss, none with SiLU), its footprint
// (weight and row bytes), and the checks of compute and backward arguments.
#include <cstddef>
#include <span>

#include "llep/experts/expert_compute.hpp"
#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/experts/expert_backward.hpp"
#include "llep/experts/weight_layout.hpp"

namespace llep {

template <class T, class Act>
class SwiGluBase {
 public:
  using value_type = T;
  using activation_type = Act;

  explicit SwiGluBase(ExpertShape shape, Act act = Act{}) : shape_(shape), act_(act) {
    shape_.check();
    LLEP_EXPECTS(shape_.bias == Act::has_bias, "ExpertShape.bias = ", shape_.bias, " but activation ", Act::name,
                 (Act::has_bias ? " has" : " has no"), " biases; they must agree");
  }

  [[nodiscard]] int hidden() const noexcept { return shape_.hidden; }
  [[nodiscard]] int intermediate() const noexcept { return shape_.intermediate; }
  [[nodiscard]] std::size_t weight_elems() const noexcept { return shape_.elems(); }
  /// One expert's serialised weights in bytes: what a weight transfer moves.
  [[nodiscard]] std::size_t weight_bytes() const noexcept { return shape_.elems() * sizeof(T); }
  /// One hidden row (D elements) in bytes.
  [[nodiscard]] std::size_t row_bytes() const noexcept { return shape_.d() * sizeof(T); }
  [[nodiscard]] const ExpertShape& shape() const noexcept { return shape_; }
  [[nodiscard]] const Act& activation() const noexcept { return act_; }

 protected:
  /// The arguments of scratch_bytes(max_task_rows, total_rows), as every functor reads them.
  static void check_scratch_request(count_t max_task_rows, count_t total_rows) {
    LLEP_EXPECTS(max_task_rows >= 0, "max_task_rows = ", max_task_rows, " must be >= 0");
    LLEP_EXPECTS(total_rows >= max_task_rows, "total_rows = ", total_rows, " must be >= max_task_rows = ",
                 max_task_rows);
  }

  /// Validates the tasks of compute; returns the rows of the largest and of all tasks.
  static void scan_tasks(std::span<const ExpertTask<T>> tasks, count_t& max_rows, count_t& total) {
    max_rows = total = 0;
    for (const ExpertTask<T>& t : tasks) {
      LLEP_EXPECTS(t.rows >= 0, "task of expert ", t.expert, " has rows = ", t.rows, "; must be >= 0");
      if (t.rows == 0) continue;
      LLEP_EXPECTS(t.weights != nullptr && t.in != nullptr && t.out != nullptr, "task of expert ", t.expert,
                   " with ", t.rows, " rows has a null weights, in or out pointer");
      max_rows = t.rows > max_rows ? t.rows : max_rows;
      total += t.rows;
    }
  }

  /// Validates the tasks of backward likewise. A task with rows needs weights, in and
  /// grad_out; an empty one needs nothing (it only zeroes grad_weights under overwrite).
  template <class G>
  static void scan_grad_tasks(std::span<const ExpertGradTask<T, G>> tasks, count_t& max_rows, count_t& total) {
    max_rows = total = 0;
    for (const ExpertGradTask<T, G>& t : tasks) {
      LLEP_EXPECTS(t.rows >= 0, "backward task of expert ", t.expert, " has rows = ", t.rows, "; must be >= 0");
      if (t.rows == 0) continue;
      LLEP_EXPECTS(t.weights != nullptr && t.in != nullptr && t.grad_out != nullptr, "backward task of expert ",
                   t.expert, " with ", t.rows, " rows has a null weights, in or grad_out pointer");
      max_rows = t.rows > max_rows ? t.rows : max_rows;
      total += t.rows;
    }
  }

  ExpertShape shape_;
  Act act_;
};

}  // namespace llep
