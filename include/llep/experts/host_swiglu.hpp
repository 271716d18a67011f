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
//
// backward (ExpertBackward) runs the same blocks in reverse, from the saved pre-activations
// (gate|up including biases, in acc_type) or recomputing them:
//   dh = dy W_down^T;  (a, da/dgate, da/dup) = Act.grad(gate, up);  dgu = dh * (da/dgate | da/dup)
//   dW_down += a^T dy;  db_down += sum dy;  dW_gu += x^T dgu;  db_gu += sum dgu;  dx = dgu W_gu^T
// in a fixed order (tasks, then blocks of rows, then rows), so results are reproducible.
// backward_sized (SizedExpertBackward) is the host reference of the device-sized backward:
// it reads the count and runs backward over those tasks.
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#include "llep/core/accumulate.hpp"
#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/exec/host.hpp"
#include "llep/experts/activation.hpp"
#include "llep/experts/expert_backward.hpp"
#include "llep/experts/expert_compute.hpp"
#include "llep/experts/swiglu_base.hpp"
#include "llep/experts/weight_layout.hpp"

namespace llep {

template <class T, class Act = SiluGlu>
class HostSwiGlu : public SwiGluBase<T, Act> {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "llep: HostSwiGlu<T> supports T = float or double");

 public:
  using value_type = T;
  using acc_type = accumulate_t<T>;

  /// Rows computed together: enough to reuse each weight row several times, few enough
  /// that the block's accumulators ((2H + D) per row) stay in L1/L2 for common sizes.
  static constexpr count_t row_block = 16;

  explicit HostSwiGlu(ExpertShape shape, Act act = Act{}) : SwiGluBase<T, Act>(shape, act) {}

  /// Accumulators for one block of rows, plus slack to align them; independent of
  /// `total_rows` because tasks run one after another and blocks reuse the same memory.
  [[nodiscard]] std::size_t scratch_bytes(count_t max_task_rows, count_t total_rows) const {
    this->check_scratch_request(max_task_rows, total_rows);
    if (max_task_rows == 0) return 0;
    const auto rows = static_cast<std::size_t>(max_task_rows < row_block ? max_task_rows : row_block);
    return rows * row_elems() * sizeof(acc_type) + alignof(acc_type);
  }

  /// What compute(..., saved) keeps per row for backward: gate|up with biases, in acc_type.
  [[nodiscard]] std::size_t saved_row_bytes() const noexcept { return 2 * shape_.h() * sizeof(acc_type); }

  /// Runs every task; `scratch` holds scratch_bytes(max rows of one task, total rows).
  /// With `saved` (aligned for acc_type, total rows x saved_row_bytes(), tasks' rows back
  /// to back in task order), the pre-activations are kept there for backward.
  void compute(HostExec& /*exec*/, std::span<const ExpertTask<T>> tasks, void* scratch,
               void* saved = nullptr) const {
    count_t max_rows = 0, total = 0;
    this->scan_tasks(tasks, max_rows, total);
    if (max_rows == 0) return;
    acc_type* acc = aligned_scratch(scratch, scratch_bytes(max_rows, max_rows));
    auto* keep = static_cast<acc_type*>(saved);
    LLEP_EXPECTS(reinterpret_cast<std::uintptr_t>(saved) % alignof(acc_type) == 0,
                 "saved pre-activations must be aligned to ", alignof(acc_type), " bytes");
    std::size_t row = 0;
    for (const ExpertTask<T>& t : tasks)
      for (count_t r0 = 0; r0 < t.rows; r0 += row_block) {
        const count_t n = t.rows - r0 < row_block ? t.rows - r0 : row_block;
        const std::size_t off = static_cast<std::size_t>(r0) * shape_.d();
        block(t.weights, t.in + off, t.out + off, static_cast<std::size_t>(n), acc,
              keep ? keep + row * 2 * shape_.h() : nullptr);
        row += static_cast<std::size_t>(n);
      }
  }

  /// Scratch of compute_sized: compute's at the bounds (a block of rows, whatever the tasks).
  [[nodiscard]] std::size_t sized_scratch_bytes(int max_tasks, count_t max_rows) const {
    LLEP_EXPECTS(max_tasks >= 0, "max_tasks = ", max_tasks, " must be >= 0");
    return scratch_bytes(max_rows, max_rows);
  }

  /// The host reference of the device-sized contract (SizedTasks): reads the count from
  /// memory, checks it and the rows against the bounds, then runs compute.
  void compute_sized(HostExec& exec, SizedTasks<T> sized, void* scratch) const {
    compute(exec, sized_span(sized, "compute_sized", &SwiGluBase<T, Act>::scan_tasks), scratch);
  }
  /// Scratch of backward: (gate|up, h) accumulators for one block of rows, plus alignment.
  [[nodiscard]] std::size_t backward_scratch_bytes(count_t max_task_rows, count_t total_rows) const {
    this->check_scratch_request(max_task_rows, total_rows);
    if (max_task_rows == 0) return 0;
    const auto rows = static_cast<std::size_t>(max_task_rows < row_block ? max_task_rows : row_block);
    return rows * 3 * shape_.h() * sizeof(acc_type) + alignof(acc_type);
  }

  /// Input and weight gradients of every task (see ExpertGradTask for the contract). G is
  /// the weight-gradient element type (float or double); sums are formed in acc_type.
  template <class G>
  void backward(HostExec& /*exec*/, std::span<const ExpertGradTask<T, G>> tasks, GradMode mode,
                void* scratch) const {
    static_assert(std::is_floating_point_v<G>, "llep: HostSwiGlu weight gradients are float or double");
    count_t max_rows = 0, total = 0;
    this->scan_grad_tasks(tasks, max_rows, total);
    const std::size_t H = shape_.h();
    for (std::size_t i = 0; i < tasks.size(); ++i) {
      G* gw = tasks[i].grad_weights;
      if (gw != nullptr && mode == GradMode::overwrite && detail::first_writer(tasks, i))
        for (std::size_t k = 0; k < shape_.elems(); ++k) gw[k] = G(0);
    }
    if (max_rows == 0) return;
    acc_type* acc = aligned_scratch(scratch, backward_scratch_bytes(max_rows, max_rows));
    for (const ExpertGradTask<T, G>& t : tasks) {
      const auto* saved = static_cast<const acc_type*>(t.saved);
      LLEP_EXPECTS(reinterpret_cast<std::uintptr_t>(saved) % alignof(acc_type) == 0, "saved pre-activations of expert ",
                   t.expert, " must be aligned to ", alignof(acc_type), " bytes");
      for (count_t r0 = 0; r0 < t.rows; r0 += row_block) {
        const auto n = static_cast<std::size_t>(t.rows - r0 < row_block ? t.rows - r0 : row_block);
        const auto r = static_cast<std::size_t>(r0);
        grad_block(t, r, n, saved ? saved + r * 2 * H : nullptr, acc);
      }
    }
  }

  /// Scratch of backward_sized: backward's at the bounds.
  [[nodiscard]] std::size_t sized_backward_scratch_bytes(int max_tasks, count_t max_rows) const {
    LLEP_EXPECTS(max_tasks >= 0, "max_tasks = ", max_tasks, " must be >= 0");
    return backward_scratch_bytes(max_rows, max_rows);
  }

  /// The host reference of the device-sized backward (SizedGradTasks): reads the count,
  /// checks it and the rows against the bounds, refuses a saved pointer (the sized form
  /// recomputes gate|up), then runs backward.
  template <class G>
  void backward_sized(HostExec& exec, SizedGradTasks<T, G> sized, GradMode mode, void* scratch) const {
    const auto tasks = sized_span(sized, "backward_sized", &SwiGluBase<T, Act>::template scan_grad_tasks<G>);
    for (const ExpertGradTask<T, G>& t : tasks)
      LLEP_EXPECTS(t.saved == nullptr, "backward_sized recomputes gate|up, but the task of expert ", t.expert,
                   " has a saved pointer; pass null (see SizedGradTasks)");
    backward(exec, tasks, mode, scratch);
  }

 private:
  using SwiGluBase<T, Act>::shape_;
  using SwiGluBase<T, Act>::act_;
  [[nodiscard]] std::size_t row_elems() const noexcept { return 2 * shape_.h() + shape_.d(); }

  // Aligns up inside the slack that (backward_)scratch_bytes added.
  static acc_type* aligned_scratch(void* scratch, std::size_t needed) {
    LLEP_EXPECTS(scratch != nullptr, "HostSwiGlu needs scratch (", needed, " bytes) but got a null pointer");
    const auto addr = reinterpret_cast<std::uintptr_t>(scratch);
    const std::uintptr_t pad = (alignof(acc_type) - addr % alignof(acc_type)) % alignof(acc_type);
    return reinterpret_cast<acc_type*>(static_cast<std::byte*>(scratch) + pad);
  }

  // The tasks of a sized call (SizedTasks or SizedGradTasks): the count read from memory
  // and checked, and the tasks' rows (validated by `scan`) checked against the bounds.
  template <class Sized, class Task>
  static std::span<const Task> sized_span(const Sized& sized, const char* call,
                                          void (*scan)(std::span<const Task>, count_t&, count_t&)) {
    LLEP_EXPECTS(sized.count != nullptr, call, " needs a count pointer");
    const std::int32_t n = *sized.count;
    LLEP_EXPECTS(n >= 0 && n <= sized.max_tasks, "task count = ", n, " must be in [0, max_tasks = ", sized.max_tasks,
                 "]");
    LLEP_EXPECTS(n == 0 || sized.tasks != nullptr, call, " has ", n, " tasks but a null task array");
    const std::span<const Task> tasks(sized.tasks, static_cast<std::size_t>(n));
    count_t max_rows = 0, total = 0;
    scan(tasks, max_rows, total);
    LLEP_EXPECTS(max_rows <= sized.max_task_rows && total <= sized.max_rows, "tasks of up to ", max_rows,
                 " rows, ", total, " in all, exceed the bounds max_task_rows = ", sized.max_task_rows,
                 ", max_rows = ", sized.max_rows);
    return tasks;
  }

  // gate|up = x W_gu + b_gu for n rows of x [n x D], into g (row stride `stride`).
  void gate_up(const T* w, const T* x, std::size_t n, acc_type* g, std::size_t stride) const {
    using A = acc_type;
    const std::size_t D = shape_.d(), H2 = 2 * shape_.h();
    const T* w_gu = w + shape_.gate_up_offset();
    const T* b_gu = shape_.bias ? w + shape_.gate_up_bias_offset() : nullptr;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < H2; ++j) g[i * stride + j] = b_gu ? static_cast<A>(b_gu[j]) : A(0);
    for (std::size_t k = 0; k < D; ++k) {
      const T* wk = w_gu + k * H2;
      for (std::size_t i = 0; i < n; ++i) {
        const A xv = static_cast<A>(x[i * D + k]);
        A* gi = g + i * stride;
        for (std::size_t j = 0; j < H2; ++j) gi[j] += xv * static_cast<A>(wk[j]);
      }
    }
  }

  // n (<= row_block) rows of x [n x D] into y [n x D]. acc holds n rows of (2H gate|up, D out).
  // With `keep`, gate|up of the n rows is copied there (n x 2H) before the activation.
  void block(const T* w, const T* x, T* y, std::size_t n, acc_type* acc, acc_type* keep) const {
    using A = acc_type;
    const std::size_t D = shape_.d(), H = shape_.h(), H2 = 2 * H, stride = row_elems();
    const T* w_down = w + shape_.down_offset();
    const T* b_down = shape_.bias ? w + shape_.down_bias_offset() : nullptr;

    gate_up(w, x, n, acc, stride);
    if (keep != nullptr)
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < H2; ++j) keep[i * H2 + j] = acc[i * stride + j];
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

  // Backward of rows [r, r + n) of task t. acc holds n rows of (2H gate|up -> dgu, H dh -> a).
  template <class G>
  void grad_block(const ExpertGradTask<T, G>& t, std::size_t r, std::size_t n, const acc_type* saved,
                  acc_type* acc) const {
    using A = acc_type;
    const std::size_t D = shape_.d(), H = shape_.h(), H2 = 2 * H, stride = 3 * H;
    const T* x = t.in + r * D;
    const T* dy = t.grad_out + r * D;
    const T* w_gu = t.weights + shape_.gate_up_offset();
    const T* w_down = t.weights + shape_.down_offset();

    if (saved != nullptr) {
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < H2; ++j) acc[i * stride + j] = saved[i * H2 + j];
    } else {
      gate_up(t.weights, x, n, acc, stride);
    }
    // dh = dy W_down^T, then (gate|up) -> dgu and dh -> a.
    for (std::size_t j = 0; j < H; ++j) {
      const T* wj = w_down + j * D;
      for (std::size_t i = 0; i < n; ++i) {
        A s = A(0);
        for (std::size_t d = 0; d < D; ++d) s += static_cast<A>(dy[i * D + d]) * static_cast<A>(wj[d]);
        acc[i * stride + H2 + j] = s;
      }
    }
    for (std::size_t i = 0; i < n; ++i) {
      A* g = acc + i * stride;
      for (std::size_t j = 0; j < H; ++j) {
        const GluGrad<A> q = act_.grad(g[j], g[H + j]);
        const A dh = g[H2 + j];
        g[j] = dh * q.d_gate;
        g[H + j] = dh * q.d_up;
        g[H2 + j] = q.value;
      }
    }
    if (G* gw = t.grad_weights) {
      G* gw_down = gw + shape_.down_offset();
      // Each gradient row is streamed once per block; rows add in order within it.
      for (std::size_t j = 0; j < H; ++j) {  // dW_down += a^T dy
        G* row = gw_down + j * D;
        for (std::size_t i = 0; i < n; ++i) {
          const A a = acc[i * stride + H2 + j];
          for (std::size_t d = 0; d < D; ++d) row[d] += static_cast<G>(a * static_cast<A>(dy[i * D + d]));
        }
      }
      G* gw_gu = gw + shape_.gate_up_offset();
      for (std::size_t k = 0; k < D; ++k) {  // dW_gu += x^T dgu
        G* row = gw_gu + k * H2;
        for (std::size_t i = 0; i < n; ++i) {
          const A xv = static_cast<A>(x[i * D + k]);
          const A* dg = acc + i * stride;
          for (std::size_t c = 0; c < H2; ++c) row[c] += static_cast<G>(xv * dg[c]);
        }
      }
      if (shape_.bias) {
        G* gb_gu = gw + shape_.gate_up_bias_offset();
        G* gb_down = gw + shape_.down_bias_offset();
        for (std::size_t i = 0; i < n; ++i) {
          for (std::size_t c = 0; c < H2; ++c) gb_gu[c] += static_cast<G>(acc[i * stride + c]);
          for (std::size_t d = 0; d < D; ++d) gb_down[d] += static_cast<G>(dy[i * D + d]);
        }
      }
    }
    if (T* dx = t.grad_in != nullptr ? t.grad_in + r * D : nullptr)  // dx = dgu W_gu^T
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t k = 0; k < D; ++k) {
          const T* wk = w_gu + k * H2;
          const A* dg = acc + i * stride;
          A s = A(0);
          for (std::size_t c = 0; c < H2; ++c) s += dg[c] * static_cast<A>(wk[c]);
          dx[i * D + k] = static_cast<T>(s);
        }
  }

};

static_assert(ExpertBackward<HostSwiGlu<float>, HostExec>);
static_assert(check_sized_expert_compute<HostSwiGlu<float>, HostExec>());
static_assert(ExpertBackward<HostSwiGlu<double, GptOssGlu>, HostExec>);
static_assert(check_sized_expert_backward<HostSwiGlu<float>, HostExec>());

}  // namespace llep
