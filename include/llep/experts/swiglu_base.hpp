#pragma once
// What every SwiGLU expert functor holds, on host or device: one expert's shape and its
// gated activation, checked to agree (biases with gpt-oss, none with SiLU).
#include <cstddef>

#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/experts/weight_layout.hpp"

namespace llep {

template <class Act>
class SwiGluBase {
 public:
  using activation_type = Act;

  explicit SwiGluBase(ExpertShape shape, Act act = Act{}) : shape_(shape), act_(act) {
    shape_.check();
    LLEP_EXPECTS(shape_.bias == Act::has_bias, "ExpertShape.bias = ", shape_.bias, " but activation ", Act::name,
                 (Act::has_bias ? " has" : " has no"), " biases; they must agree");
  }

  [[nodiscard]] int hidden() const noexcept { return shape_.hidden; }
  [[nodiscard]] int intermediate() const noexcept { return shape_.intermediate; }
  [[nodiscard]] std::size_t weight_elems() const noexcept { return shape_.elems(); }
  [[nodiscard]] const ExpertShape& shape() const noexcept { return shape_; }
  [[nodiscard]] const Act& activation() const noexcept { return act_; }

 protected:
  /// The arguments of scratch_bytes(max_task_rows, total_rows), as every functor reads them.
  static void check_scratch_request(count_t max_task_rows, count_t total_rows) {
    LLEP_EXPECTS(max_task_rows >= 0, "max_task_rows = ", max_task_rows, " must be >= 0");
    LLEP_EXPECTS(total_rows >= max_task_rows, "total_rows = ", total_rows, " must be >= max_task_rows = ",
                 max_task_rows);
  }

  ExpertShape shape_;
  Act act_;
};

}  // namespace llep
