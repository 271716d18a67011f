#pragma once
// CublasSwiGlu: the device expert compute functor (ExpertCompute<E, CudaExec>). The same
// gated FFN as HostSwiGlu (experts/host_swiglu.hpp), with the weights read in place from
// the serialised layout of experts/weight_layout.hpp:
//   gu  = x W_gu + b_gu                 cuBLAS, fp32 accumulation, stored as gate_up_type
//   h   = Act(gate, up)                 one kernel, the same Act functor as the host, -> T
//   out = h W_down + b_down             cuBLAS, fp32 accumulation, b_down enters as C with
//                                       beta = 1, so out is rounded to T once
// Row-major matrices are column-major transposes, so each GEMM runs as C^T = B^T A^T:
//   gu^T [2H x rows] = W_gu^T [2H x D] x^T [D x rows]      (ld 2H, D, 2H)
//   out^T [D x rows] = W_down^T [D x H] h^T [H x rows]     (ld D, H, D)
// Compute type is CUBLAS_COMPUTE_32F for every T (fp32 inputs are never rounded to TF32).
//
// GemmMode::per_expert runs each task on its own (GEMM, kernel, GEMM): scratch is sized by
// the largest task, and gate|up is kept in float (no rounding before the activation).
// GemmMode::grouped runs all tasks in two cublasGemmGroupedBatchedEx calls (CUDA >= 12.5;
// one group per task) and one kernel between them: fewer launches, but scratch is sized
// by the total rows, plus the device pointer arrays; and gate|up is stored in T, because
// the grouped API takes C in the input type for 16-bit inputs (a float C is refused with
// CUBLAS_STATUS_NOT_SUPPORTED), which costs one extra rounding for bf16 / fp16.
//
// All memory comes from the caller's `scratch`; compute allocates no device memory (cuBLAS
// keeps its own per-handle workspace). The cuBLAS handle is created on the first compute
// with work, on the then-current device, and set to the exec's stream at every call.
// Each copy of the functor gets its own handle; one object must not run compute from two
// threads at once (the handle and the host staging arrays are per object).
//
// backward (ExpertBackward) runs per task, in either mode, from the saved gate|up (what
// compute(..., saved) kept: the GEMM output before biases, in gate_up_type) or recomputing it:
//   dh^T [H x rows]  = W_down [H x D] dy^T            dgrad of the down projection, float
//   a, dgu           = Act.grad(gate, up) * dh          one kernel, the host's Act::grad, -> T
//   dW_down^T [D x H] (+)= dy^T a                       wgrad, C in the gradient type GW
//   dW_gu^T [2H x D]  (+)= dgu^T x                      wgrad
//   db_gu, db_down   (+)= column sums of dgu, dy        one kernel, fp32 sums in row order
//   dx^T [D x rows]  = W_gu dgu^T                       dgrad of the gate|up projection
// GW is T or float (a fp32 main gradient for 16-bit weights); every GEMM accumulates in
// fp32. Tasks of one expert add into its gradient in task order (beta = 1 after the first).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <span>
#include <type_traits>
#include <vector>

#include "llep/experts/expert_compute.hpp"
#include "llep/core/carve.hpp"
#include "llep/core/config.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/core/error.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/experts/activation.hpp"
#include "llep/experts/device_element.cuh"
#include "llep/experts/expert_backward.hpp"
#include "llep/experts/swiglu_base.hpp"
#include "llep/experts/weight_layout.hpp"

namespace llep {

/// How CublasSwiGlu issues its GEMMs (see experts/cublas_swiglu.cuh).
enum class GemmMode { per_expert, grouped };

namespace detail::cublas_swiglu {

using llep::detail::element;

/// Where a run of rows (one task) starts in the gu / h buffers, and its biases and output.
template <class T>
struct TaskRows {
  std::int64_t row_begin = 0;
  const T* b_gu = nullptr;    // [2H], null without biases
  const T* b_down = nullptr;  // [D], null without biases
  T* out = nullptr;           // [rows x D]
};

/// One launch over rows * H activation elements, then (with biases) rows * D elements of
/// out filled with b_down, which GEMM2 then accumulates onto (beta = 1). With `table`
/// null every row belongs to `single`; otherwise to the table entry whose row_begin is
/// the last <= its row.
template <class T, class G, class Act>
struct GatedRows {
  const G* gu;  // [rows x 2H]
  T* h;         // [rows x H]
  Act act;
  std::size_t H, D, rows;
  const TaskRows<T>* table;
  std::int32_t n_table;
  TaskRows<T> single;

  __device__ const TaskRows<T>& task_of(std::int64_t r) const {
    if (table == nullptr) return single;
    std::int32_t lo = 0, hi = n_table;  // table[lo].row_begin <= r
    while (hi - lo > 1) {
      const std::int32_t mid = lo + (hi - lo) / 2;
      if (table[mid].row_begin <= r) lo = mid; else hi = mid;
    }
    return table[lo];
  }

  __device__ void operator()(std::size_t i) const {
    using E = element<T>;
    if (i < rows * H) {
      const std::size_t r = i / H, j = i % H;
      float gate = static_cast<float>(gu[r * 2 * H + j]), up = static_cast<float>(gu[r * 2 * H + H + j]);
      if constexpr (Act::has_bias) {
        const TaskRows<T>& t = task_of(static_cast<std::int64_t>(r));
        gate += E::to_float(t.b_gu[j]);
        up += E::to_float(t.b_gu[H + j]);
      }
      h[i] = E::from_float(act(gate, up));
    } else if constexpr (Act::has_bias) {
      const std::size_t k = i - rows * H, r = k / D, d = k % D;
      const TaskRows<T>& t = task_of(static_cast<std::int64_t>(r));
      t.out[(r - static_cast<std::size_t>(t.row_begin)) * D + d] = t.b_down[d];
    }
  }
};

/// Backward's element-wise step over rows * H: from gate|up (plus biases) and dh, the
/// activation a (-> T, for dW_down) and dgu = dh * (d_gate | d_up) (-> T, for the GEMMs).
template <class T, class G, class Act>
struct GatedRowsBackward {
  const G* gu;      // [rows x 2H], before biases
  const float* dh;  // [rows x H]
  const T* b_gu;    // [2H], null without biases
  T* a;             // [rows x H]
  T* dgu;           // [rows x 2H]
  Act act;
  std::size_t H;

  __device__ void operator()(std::size_t i) const {
    using E = element<T>;
    const std::size_t r = i / H, j = i % H;
    float gate = static_cast<float>(gu[r * 2 * H + j]), up = static_cast<float>(gu[r * 2 * H + H + j]);
    if constexpr (Act::has_bias) {
      gate += E::to_float(b_gu[j]);
      up += E::to_float(b_gu[H + j]);
    }
    const GluGrad<float> q = act.template grad<float>(gate, up);
    a[i] = E::from_float(q.value);
    dgu[r * 2 * H + j] = E::from_float(dh[i] * q.d_gate);
    dgu[r * 2 * H + H + j] = E::from_float(dh[i] * q.d_up);
  }
};

/// Bias gradients, one thread per column: b_gu (+)= column sums of dgu [rows x 2H], b_down
/// (+)= column sums of dy [rows x D], summed in fp32 in row order (deterministic).
template <class T, class GW>
struct BiasGrads {
  const T* dgu;
  const T* dy;
  GW* b_gu;
  GW* b_down;
  std::size_t H2, D, rows;
  bool add;

  __device__ void operator()(std::size_t c) const {
    const bool gate_up = c < H2;
    const std::size_t col = gate_up ? c : c - H2, stride = gate_up ? H2 : D;
    const T* src = (gate_up ? dgu : dy) + col;
    float s = 0.0f;
    for (std::size_t r = 0; r < rows; ++r) s += element<T>::to_float(src[r * stride]);
    GW* dst = (gate_up ? b_gu : b_down) + col;
    *dst = element<GW>::from_float(add ? element<GW>::to_float(*dst) + s : s);
  }
};

}  // namespace detail::cublas_swiglu

template <class T, class Act = SiluGlu, GemmMode Mode = GemmMode::per_expert>
class CublasSwiGlu : public SwiGluBase<T, Act> {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half> || std::is_same_v<T, float>,
                "llep: CublasSwiGlu<T> supports T = __nv_bfloat16, __half or float");
  static_assert(std::is_trivially_copyable_v<Act>, "llep: the activation functor must be trivially copyable");
#if (CUBLAS_VER_MAJOR * 100 + CUBLAS_VER_MINOR) < 1205
  static_assert(Mode != GemmMode::grouped, "llep: GemmMode::grouped needs cublasGemmGroupedBatchedEx (CUDA >= 12.5)");
#endif

 public:
  using value_type = T;
  /// Element type of the gate|up GEMM output. per_expert: float, so the pre-activation
  /// values are not rounded and h is the first value rounded to T. grouped: T (the
  /// grouped cuBLAS call supports no float output for 16-bit inputs).
  using gate_up_type = std::conditional_t<Mode == GemmMode::grouped, T, float>;
  static constexpr GemmMode mode = Mode;

  explicit CublasSwiGlu(ExpertShape shape, Act act = Act{}) : SwiGluBase<T, Act>(shape, act), state_(new State) {
    constexpr auto int_max = static_cast<std::size_t>(std::numeric_limits<int>::max());
    LLEP_EXPECTS(2 * shape_.h() <= int_max && shape_.d() <= int_max, "D = ", shape_.d(), ", 2H = ", 2 * shape_.h(),
                 " exceed cuBLAS's int dimensions");
  }
  // A copy gets its own cuBLAS handle (created at its first compute).
  CublasSwiGlu(const CublasSwiGlu& o) : SwiGluBase<T, Act>(o), state_(new State) {}
  CublasSwiGlu& operator=(const CublasSwiGlu& o) {
    if (this != &o) {
      SwiGluBase<T, Act>::operator=(o);
      state_.reset(new State);
    }
    return *this;
  }
  CublasSwiGlu(CublasSwiGlu&&) noexcept = default;
  CublasSwiGlu& operator=(CublasSwiGlu&&) noexcept = default;
  ~CublasSwiGlu() = default;

  /// per_expert: gu and h for the largest task. grouped: gu and h for all rows, plus the
  /// device pointer arrays and task table (at most one task per row). 256 bytes of slack
  /// align an unaligned `scratch`.
  [[nodiscard]] std::size_t scratch_bytes(count_t max_task_rows, count_t total_rows) const {
    this->check_scratch_request(max_task_rows, total_rows);
    if (max_task_rows == 0) return 0;
    const auto rows = static_cast<std::size_t>(Mode == GemmMode::grouped ? total_rows : max_task_rows);
    const Carve c = carve(rows, Mode == GemmMode::grouped ? rows : 0);
    return c.size + 256;
  }

  /// What compute(..., saved) keeps per row for backward: gate|up before biases.
  [[nodiscard]] std::size_t saved_row_bytes() const noexcept { return 2 * shape_.h() * sizeof(G); }

  /// Runs every task on exec's stream; `scratch` (device) holds scratch_bytes(max rows of
  /// one task, total rows of `tasks`). Returns before the work is done. With `saved`
  /// (device, total rows x saved_row_bytes(), tasks' rows back to back in task order),
  /// gate|up is kept there for backward instead of in scratch.
  void compute(CudaExec& exec, std::span<const ExpertTask<T>> tasks, void* scratch, void* saved = nullptr) const {
    count_t max_rows = 0, total = 0;
    this->scan_tasks(tasks, max_rows, total);
    std::size_t busy = 0;
    for (const ExpertTask<T>& t : tasks) busy += t.rows > 0;
    LLEP_EXPECTS(max_rows <= std::numeric_limits<int>::max(), "a task has ", max_rows,
                 " rows; cuBLAS takes at most 2^31 - 1");
    if (max_rows == 0) return;
    LLEP_EXPECTS(scratch != nullptr, "compute needs scratch (scratch_bytes = ", scratch_bytes(max_rows, total),
                 ") but got a null pointer");
    cublasHandle_t handle = handle_on(exec.stream());
    auto* base = static_cast<std::byte*>(scratch);
    base += (256 - reinterpret_cast<std::uintptr_t>(base) % 256) % 256;
    if constexpr (Mode == GemmMode::per_expert) {
      const Carve c = carve(static_cast<std::size_t>(max_rows), 0);
      auto* gu = reinterpret_cast<G*>(base + c.gu);
      auto* h = reinterpret_cast<T*>(base + c.h);
      auto* keep = static_cast<G*>(saved);
      std::size_t row = 0;
      for (const ExpertTask<T>& t : tasks) {
        if (t.rows > 0) run_one(exec, handle, t, keep ? keep + row * 2 * shape_.h() : gu, h);
        row += static_cast<std::size_t>(t.rows);
      }
    } else {
      run_grouped(exec, handle, tasks, static_cast<std::size_t>(total), busy, base, static_cast<G*>(saved));
    }
  }

  /// Scratch of backward, per task in either mode: gate|up (when not saved), dh, a and dgu
  /// for the largest task, plus 256 bytes of alignment slack.
  [[nodiscard]] std::size_t backward_scratch_bytes(count_t max_task_rows, count_t total_rows) const {
    this->check_scratch_request(max_task_rows, total_rows);
    if (max_task_rows == 0) return 0;
    return carve_backward(static_cast<std::size_t>(max_task_rows)).size + 256;
  }

  /// Input and weight gradients of every task on exec's stream (see ExpertGradTask); GW is
  /// T or float. Returns before the work is done.
  template <class GW>
  void backward(CudaExec& exec, std::span<const ExpertGradTask<T, GW>> tasks, GradMode mode, void* scratch) const {
    static_assert(std::is_same_v<GW, T> || std::is_same_v<GW, float>,
                  "llep: CublasSwiGlu weight gradients are in the weight type or float");
    count_t max_rows = 0, total = 0;
    this->scan_grad_tasks(tasks, max_rows, total);
    LLEP_EXPECTS(max_rows <= std::numeric_limits<int>::max(), "a backward task has ", max_rows,
                 " rows; cuBLAS takes at most 2^31 - 1");
    std::byte* base = nullptr;
    cublasHandle_t handle = nullptr;
    if (max_rows > 0) {
      LLEP_EXPECTS(scratch != nullptr, "backward needs scratch (backward_scratch_bytes = ",
                   backward_scratch_bytes(max_rows, total), ") but got a null pointer");
      base = static_cast<std::byte*>(scratch);
      base += (256 - reinterpret_cast<std::uintptr_t>(base) % 256) % 256;
      handle = handle_on(exec.stream());
    }
    for (std::size_t i = 0; i < tasks.size(); ++i) {
      const ExpertGradTask<T, GW>& t = tasks[i];
      const bool add = mode == GradMode::accumulate || !detail::first_writer(tasks, i);
      if (t.rows > 0) {
        grad_one(exec, handle, t, add, base);
      } else if (t.grad_weights != nullptr && !add) {  // all-zero bits are 0 in every GW
        LLEP_CUDA_CHECK(cudaMemsetAsync(t.grad_weights, 0, shape_.elems() * sizeof(GW), exec.stream()));
      }
    }
  }

 private:
  using SwiGluBase<T, Act>::shape_;
  using SwiGluBase<T, Act>::act_;
  using G = gate_up_type;
  using TaskRows = detail::cublas_swiglu::TaskRows<T>;
  static constexpr cudaDataType_t t_type = detail::cublas_swiglu::element<T>::type;
  static constexpr cudaDataType_t g_type = detail::cublas_swiglu::element<G>::type;

  // Byte offsets of the scratch regions, each 256-aligned.
  struct Carve {
    std::size_t gu = 0, h = 0, ptrs = 0, table = 0, size = 0;
  };
  [[nodiscard]] Carve carve(std::size_t rows, std::size_t tasks) const {
    Carve c;
    c.h = llep::Carve::align(rows * 2 * shape_.h() * sizeof(G));
    c.ptrs = c.h + llep::Carve::align(rows * shape_.h() * sizeof(T));
    c.table = c.ptrs + llep::Carve::align(tasks * 6 * sizeof(void*));
    c.size = c.table + tasks * sizeof(TaskRows);
    return c;
  }

  struct BackwardCarve {
    std::size_t gu = 0, dh = 0, a = 0, dgu = 0, size = 0;
  };
  [[nodiscard]] BackwardCarve carve_backward(std::size_t rows) const {
    const std::size_t H = shape_.h();
    BackwardCarve c;
    c.dh = llep::Carve::align(rows * 2 * H * sizeof(G));
    c.a = c.dh + llep::Carve::align(rows * H * sizeof(float));
    c.dgu = c.a + llep::Carve::align(rows * H * sizeof(T));
    c.size = c.dgu + rows * 2 * H * sizeof(T);
    return c;
  }

  struct State {
    cublasHandle_t handle = nullptr;
    // Host staging of the grouped calls (grown, never shrunk).
    std::vector<int> m1, n1, k1, lda1, ldb1, ldc1, m2, k2, lda2, ldb2, ldc2, ones;
    std::vector<float> alpha, beta1, beta2;
    std::vector<cublasOperation_t> op_n;
    std::vector<std::byte> device_image;  // pointer arrays and task table, copied at once
    State() = default;
    State(const State&) = delete;
    State& operator=(const State&) = delete;
    ~State() {
      if (handle != nullptr) (void)cublasDestroy(handle);
    }
  };

  cublasHandle_t handle_on(cudaStream_t stream) const {
    if (state_->handle == nullptr) {
      LLEP_CUBLAS_CHECK(cublasCreate(&state_->handle));
      LLEP_CUBLAS_CHECK(cublasSetPointerMode(state_->handle, CUBLAS_POINTER_MODE_HOST));
      // Default math: CUBLAS_COMPUTE_32F then never uses TF32 for fp32 inputs.
      LLEP_CUBLAS_CHECK(cublasSetMathMode(state_->handle, CUBLAS_DEFAULT_MATH));
    }
    LLEP_CUBLAS_CHECK(cublasSetStream(state_->handle, stream));
    return state_->handle;
  }

  [[nodiscard]] TaskRows task_rows(const ExpertTask<T>& t, std::int64_t row_begin) const {
    TaskRows r;
    r.row_begin = row_begin;
    r.out = t.out;
    if constexpr (Act::has_bias) {
      r.b_gu = t.weights + shape_.gate_up_bias_offset();
      r.b_down = t.weights + shape_.down_bias_offset();
    }
    return r;
  }

  void launch_gated(CudaExec& exec, const G* gu, T* h, std::size_t rows, const TaskRows* table, std::int32_t n_table,
                    TaskRows single) const {
    const std::size_t n = rows * shape_.h() + (Act::has_bias ? rows * shape_.d() : 0);
    exec.for_each_n(n, detail::cublas_swiglu::GatedRows<T, G, Act>{gu, h, act_, shape_.h(), shape_.d(), rows, table,
                                                                    n_table, single});
  }

  // gu^T [2H x rows] = W_gu^T x^T, no biases: the first GEMM of forward and of recompute.
  void gate_up_gemm(cublasHandle_t handle, const T* weights, const T* in, int rows, G* gu) const {
    const int D = shape_.hidden, H = shape_.intermediate;
    const float one = 1.0f, zero = 0.0f;
    LLEP_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, 2 * H, rows, D, &one,
                                   weights + shape_.gate_up_offset(), t_type, 2 * H, in, t_type, D, &zero, gu, g_type,
                                   2 * H, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  void run_one(CudaExec& exec, cublasHandle_t handle, const ExpertTask<T>& t, G* gu, T* h) const {
    const int D = shape_.hidden, H = shape_.intermediate, rows = static_cast<int>(t.rows);
    const float one = 1.0f, beta2 = Act::has_bias ? 1.0f : 0.0f;
    gate_up_gemm(handle, t.weights, t.in, rows, gu);
    launch_gated(exec, gu, h, static_cast<std::size_t>(rows), nullptr, 0, task_rows(t, 0));
    LLEP_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, D, rows, H, &one,
                                   t.weights + shape_.down_offset(), t_type, D, h, t_type, H, &beta2, t.out, t_type, D,
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  // Backward of one task with rows (see the header comment); `add`: beta = 1 for the
  // weight gradients.
  template <class GW>
  void grad_one(CudaExec& exec, cublasHandle_t handle, const ExpertGradTask<T, GW>& t, bool add,
                std::byte* base) const {
    namespace cs = detail::cublas_swiglu;
    const int D = shape_.hidden, H = shape_.intermediate, rows = static_cast<int>(t.rows);
    const auto Hz = shape_.h(), Dz = shape_.d(), rz = static_cast<std::size_t>(rows);
    const BackwardCarve c = carve_backward(rz);
    const G* gu = static_cast<const G*>(t.saved);
    if (gu == nullptr) {
      auto* fresh = reinterpret_cast<G*>(base + c.gu);
      gate_up_gemm(handle, t.weights, t.in, rows, fresh);
      gu = fresh;
    }
    auto* dh = reinterpret_cast<float*>(base + c.dh);
    auto* a = reinterpret_cast<T*>(base + c.a);
    auto* dgu = reinterpret_cast<T*>(base + c.dgu);
    const float one = 1.0f, zero = 0.0f, beta = add ? 1.0f : 0.0f;
    constexpr cudaDataType_t gw_type = cs::element<GW>::type;
    LLEP_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, H, rows, D, &one, t.weights + shape_.down_offset(),
                                   t_type, D, t.grad_out, t_type, D, &zero, dh, CUDA_R_32F, H, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
    const T* b_gu = Act::has_bias ? t.weights + shape_.gate_up_bias_offset() : nullptr;
    exec.for_each_n(rz * Hz, cs::GatedRowsBackward<T, G, Act>{gu, dh, b_gu, a, dgu, act_, Hz});
    if (GW* gw = t.grad_weights) {
      LLEP_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, D, H, rows, &one, t.grad_out, t_type, D, a,
                                     t_type, H, &beta, gw + shape_.down_offset(), gw_type, D, CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
      LLEP_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, 2 * H, D, rows, &one, dgu, t_type, 2 * H, t.in,
                                     t_type, D, &beta, gw + shape_.gate_up_offset(), gw_type, 2 * H,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      if constexpr (Act::has_bias)
        exec.for_each_n(2 * Hz + Dz, cs::BiasGrads<T, GW>{dgu, t.grad_out, gw + shape_.gate_up_bias_offset(),
                                                           gw + shape_.down_bias_offset(), 2 * Hz, Dz, rz, add});
    }
    if (t.grad_in != nullptr)
      LLEP_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, D, rows, 2 * H, &one,
                                     t.weights + shape_.gate_up_offset(), t_type, 2 * H, dgu, t_type, 2 * H, &zero,
                                     t.grad_in, t_type, D, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

  void run_grouped(CudaExec& exec, cublasHandle_t handle, std::span<const ExpertTask<T>> tasks, std::size_t total,
                   std::size_t busy, std::byte* base, G* saved) const {
#if (CUBLAS_VER_MAJOR * 100 + CUBLAS_VER_MINOR) >= 1205
    const int D = shape_.hidden, H = shape_.intermediate;
    const Carve c = carve(total, total);
    auto* gu = saved != nullptr ? saved : reinterpret_cast<G*>(base + c.gu);
    auto* h = reinterpret_cast<T*>(base + c.h);
    auto* d_ptrs = reinterpret_cast<void**>(base + c.ptrs);
    auto* d_table = reinterpret_cast<TaskRows*>(base + c.table);

    // Host arrays of the two grouped calls, one group of one GEMM per non-empty task.
    State& s = *state_;
    const std::size_t g = busy;
    LLEP_EXPECTS(g <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()), busy,
                 " tasks exceed the 2^31 - 1 groups of one grouped GEMM");
    auto fill = [g](std::vector<int>& v, int x) { v.assign(g, x); };
    fill(s.m1, 2 * H), fill(s.k1, D), fill(s.lda1, 2 * H), fill(s.ldb1, D), fill(s.ldc1, 2 * H);
    fill(s.m2, D), fill(s.k2, H), fill(s.lda2, D), fill(s.ldb2, H), fill(s.ldc2, D), fill(s.ones, 1);
    s.alpha.assign(g, 1.0f);
    s.beta1.assign(g, 0.0f);
    s.beta2.assign(g, Act::has_bias ? 1.0f : 0.0f);
    s.op_n.assign(g, CUBLAS_OP_N);
    s.n1.resize(g);
    // Device image: A1[g] B1[g] C1[g] A2[g] B2[g] C2[g], then the table at c.table - c.ptrs.
    const std::size_t table_at = c.table - c.ptrs, image = table_at + g * sizeof(TaskRows);
    s.device_image.resize(image);
    auto put = [&](std::size_t array, std::size_t at, const void* ptr) {
      std::memcpy(s.device_image.data() + (array * g + at) * sizeof(void*), &ptr, sizeof(void*));
    };
    std::size_t i = 0;
    std::int64_t row = 0;
    for (const ExpertTask<T>& t : tasks) {
      if (t.rows == 0) continue;
      s.n1[i] = static_cast<int>(t.rows);
      put(0, i, t.weights + shape_.gate_up_offset());
      put(1, i, t.in);
      put(2, i, gu + static_cast<std::size_t>(row) * 2 * shape_.h());
      put(3, i, t.weights + shape_.down_offset());
      put(4, i, h + static_cast<std::size_t>(row) * shape_.h());
      put(5, i, t.out);
      const TaskRows tr = task_rows(t, row);
      std::memcpy(s.device_image.data() + table_at + i * sizeof(TaskRows), &tr, sizeof(TaskRows));
      row += t.rows;
      ++i;
    }
    // Pageable source: the driver stages it before returning, so s may be reused next call.
    exec.from_host(d_ptrs, s.device_image.data(), image);

    const int groups = static_cast<int>(g);
    auto** p = d_ptrs;
    LLEP_CUBLAS_CHECK(cublasGemmGroupedBatchedEx(
        handle, s.op_n.data(), s.op_n.data(), s.m1.data(), s.n1.data(), s.k1.data(), s.alpha.data(), p, t_type,
        s.lda1.data(), p + g, t_type, s.ldb1.data(), s.beta1.data(), p + 2 * g, g_type, s.ldc1.data(), groups,
        s.ones.data(), CUBLAS_COMPUTE_32F));
    launch_gated(exec, gu, h, total, Act::has_bias ? d_table : nullptr, static_cast<std::int32_t>(g), TaskRows{});
    LLEP_CUBLAS_CHECK(cublasGemmGroupedBatchedEx(
        handle, s.op_n.data(), s.op_n.data(), s.m2.data(), s.n1.data(), s.k2.data(), s.alpha.data(), p + 3 * g,
        t_type, s.lda2.data(), p + 4 * g, t_type, s.ldb2.data(), s.beta2.data(), p + 5 * g, t_type, s.ldc2.data(),
        groups, s.ones.data(), CUBLAS_COMPUTE_32F));
#else
    (void)exec, (void)handle, (void)tasks, (void)total, (void)busy, (void)base, (void)saved;
#endif
  }

  std::unique_ptr<State> state_;
};

static_assert(ExpertCompute<CublasSwiGlu<float>, CudaExec>);
static_assert(ExpertCompute<CublasSwiGlu<__nv_bfloat16, GptOssGlu, GemmMode::grouped>, CudaExec>);
static_assert(ExpertBackward<CublasSwiGlu<float>, CudaExec>);
static_assert(ExpertBackward<CublasSwiGlu<__nv_bfloat16, GptOssGlu, GemmMode::grouped>, CudaExec>);

}  // namespace llep
