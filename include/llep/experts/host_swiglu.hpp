#pragma once
// HostSwiGlu: the host expert compute functor (ExpertCompute<E, HostExec>). Each task's
// rows go through one gated FFN,
//   h   = Act(x W_gate + b_gate, x W_up + b_up)     (per element, H wide)
//   out = h W_down + b_down                           (D wide)
// with the weights read in place from the serialised layout of weight_layout.hpp.
// Accumulation is in accumulate_t<T>. Rows are processed in small blocks in i-k-j order:
// every weight row is streamed once per block and reused across the block's rows, and the
// innermost loop runs over contiguous columns, so the compiler vectorises it. Rows never
// mix, so a NaN in one input row stays in that output row.
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#include "llep/core/concepts.hpp"
#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/exec/host.hpp"
#include "llep/experts/activation.hpp"
#include "llep/experts/swiglu_base.hpp"
#include "llep/experts/weight_layout.hpp"
#include "llep/layer/row_ops.hpp"

namespace llep {

template <class T, class Act = SiluGlu>
class HostSwiGlu : public SwiGluBase<Act> {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "llep: HostSwiGlu<T> supports T = float or double");

 public:
  using value_type = T;
  using acc_type = accumulate_t<T>;

  /// Rows computed together: enough to reuse each weight row several times, few enough
  /// that the block's accumulators ((2H + D) per row) stay in L1/L2 for common sizes.
  static constexpr count_t row_block = 16;

  explicit HostSwiGlu(ExpertShape shape, Act act = Act{}) : SwiGluBase<Act>(shape, act) {}

  /// Accumulators for one block of rows, plus slack to align them; independent of
  /// `total_rows` because tasks run one after another and blocks reuse the same memory.
  [[nodiscard]] std::size_t scratch_bytes(count_t max_task_rows, count_t total_rows) const {
    this->check_scratch_request(max_task_rows, total_rows);
    if (max_task_rows == 0) return 0;
    const auto rows = static_cast<std::size_t>(max_task_rows < row_block ? max_task_rows : row_block);
    return rows * row_elems() * sizeof(acc_type) + alignof(acc_type);
  }

  /// Runs every task; `scratch` holds scratch_bytes(max rows of one task, total rows).
  void compute(HostExec& /*exec*/, std::span<const ExpertTask<T>> tasks, void* scratch) const {
    count_t max_rows = 0;
    for (const ExpertTask<T>& t : tasks) {
      LLEP_EXPECTS(t.rows >= 0, "task of expert ", t.expert, " has rows = ", t.rows, "; must be >= 0");
      if (t.rows == 0) continue;
      LLEP_EXPECTS(t.weights != nullptr && t.in != nullptr && t.out != nullptr, "task of expert ", t.expert,
                   " with ", t.rows, " rows has a null weights, in or out pointer");
      if (t.rows > max_rows) max_rows = t.rows;
    }
    if (max_rows == 0) return;
    LLEP_EXPECTS(scratch != nullptr, "compute needs scratch (scratch_bytes = ", scratch_bytes(max_rows, max_rows),
                 ") but got a null pointer");
    // Align up inside the slack that scratch_bytes added.
    const auto addr = reinterpret_cast<std::uintptr_t>(scratch);
    const std::uintptr_t pad = (alignof(acc_type) - addr % alignof(acc_type)) % alignof(acc_type);
    auto* acc = reinterpret_cast<acc_type*>(static_cast<std::byte*>(scratch) + pad);

    for (const ExpertTask<T>& t : tasks)
      for (count_t r0 = 0; r0 < t.rows; r0 += row_block) {
        const count_t n = t.rows - r0 < row_block ? t.rows - r0 : row_block;
        const std::size_t off = static_cast<std::size_t>(r0) * shape_.d();
        block(t.weights, t.in + off, t.out + off, static_cast<std::size_t>(n), acc);
      }
  }

 private:
  using SwiGluBase<Act>::shape_;
  using SwiGluBase<Act>::act_;
  [[nodiscard]] std::size_t row_elems() const noexcept { return 2 * shape_.h() + shape_.d(); }

  // n (<= row_block) rows of x [n x D] into y [n x D]. acc holds n rows of (2H gate|up, D out).
  void block(const T* w, const T* x, T* y, std::size_t n, acc_type* acc) const {
    using A = acc_type;
    const std::size_t D = shape_.d(), H = shape_.h(), H2 = 2 * H, stride = row_elems();
    const T* w_gu = w + shape_.gate_up_offset();
    const T* w_down = w + shape_.down_offset();
    const T* b_gu = shape_.bias ? w + shape_.gate_up_bias_offset() : nullptr;
    const T* b_down = shape_.bias ? w + shape_.down_bias_offset() : nullptr;

    // gate | up = x W_gu + b_gu
    for (std::size_t i = 0; i < n; ++i) {
      A* g = acc + i * stride;
      for (std::size_t j = 0; j < H2; ++j) g[j] = b_gu ? static_cast<A>(b_gu[j]) : A(0);
    }
    for (std::size_t k = 0; k < D; ++k) {
      const T* wk = w_gu + k * H2;
      for (std::size_t i = 0; i < n; ++i) {
        const A xv = static_cast<A>(x[i * D + k]);
        A* g = acc + i * stride;
        for (std::size_t j = 0; j < H2; ++j) g[j] += xv * static_cast<A>(wk[j]);
      }
    }
    // h = Act(gate, up), written over the gate half; out accumulators start at b_down.
    for (std::size_t i = 0; i < n; ++i) {
      A* g = acc + i * stride;
      for (std::size_t j = 0; j < H; ++j) g[j] = act_(g[j], g[H + j]);
      A* o = g + H2;
      for (std::size_t d = 0; d < D; ++d) o[d] = b_down ? static_cast<A>(b_down[d]) : A(0);
    }
    // out = h W_down + b_down
    for (std::size_t j = 0; j < H; ++j) {
      const T* wj = w_down + j * D;
      for (std::size_t i = 0; i < n; ++i) {
        const A hv = acc[i * stride + j];
        A* o = acc + i * stride + H2;
        for (std::size_t d = 0; d < D; ++d) o[d] += hv * static_cast<A>(wj[d]);
      }
    }
    for (std::size_t i = 0; i < n; ++i) {
      const A* o = acc + i * stride + H2;
      for (std::size_t d = 0; d < D; ++d) y[i * D + d] = static_cast<T>(o[d]);
    }
  }

};

}  // namespace llep
