// CublasSwiGlu (bf16, fp16, fp32; SiluGlu and GptOssGlu; per_expert and grouped GEMMs)
// against HostSwiGlu<double>, the independent host reference, on the same T-valued inputs
// and weights. Tasks include empty ones, repeated experts and outputs in a different order
// than inputs; every output element must be written; the same call twice gives the same
// bits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <type_traits>
#include <vector>

#include "device_array.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/exec/host.hpp"
#include "llep/experts/activation.hpp"
#include "llep/experts/cublas_swiglu.cuh"
#include "llep/experts/host_swiglu.hpp"
#include "llep/experts/weight_layout.hpp"

namespace {

using gputest::DeviceArray;

double to_double(float v) { return v; }
double to_double(__half v) { return __half2float(v); }
double to_double(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
T from_float(float v) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else return v;
}

// Tolerance on max|out - ref| / max|ref|. Inputs and weights are the same T values on both
// sides and the GEMMs accumulate in fp32, so the error comes from the roundings to T:
// h (before the down projection) and out, plus gate|up in grouped mode (stored in T there;
// the activations' slopes are O(1) on this data, so it adds about u to h). With unit
// roundoff u (bf16: 8 significant bits, u = 2^-8 = 3.9e-3; fp16: 11 bits, u = 4.9e-4;
// fp32: 6e-8),
// out's rounding is <= u * max|ref|, and h's errors enter the down projection's sum of H
// products with random signs, adding about u * max|ref| / sqrt(3) at the worst element.
// So the expected ratio is ~1-3 u; the bounds below are ~8 u (bf16) and ~10 u (fp16),
// while a wrong layout, bias or activation gives O(1). fp32's 1e-4 (accumulation over
// D <= 128 terms: ~1e-6) also fails if TF32 (u = 2^-11) were used. Measured on an H100:
// worst 5e-3 (bf16), 6e-4 (fp16), 5e-7 (fp32).
template <class T>
constexpr double tolerance() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return 3e-2;
  else if constexpr (std::is_same_v<T, __half>) return 5e-3;
  else return 1e-4;
}

template <class T, class Act, llep::GemmMode Mode>
struct Config {
  using type = T;
  using act = Act;
  static constexpr llep::GemmMode mode = Mode;
};

template <class Act>
Act test_activation() {
  // A low clamp so that gpt-oss's clamping of gate and up actually happens.
  if constexpr (std::is_same_v<Act, llep::GptOssGlu>) return llep::GptOssGlu{0.75f, 1.702f};
  else return Act{};
}

template <class T, class Act, llep::GemmMode Mode>
void check_against_host(llep::ExpertShape shape, std::vector<llep::count_t> task_rows, std::uint32_t seed) {
  CAPTURE(shape.hidden);
  CAPTURE(shape.intermediate);
  std::mt19937 rng(seed);
  const std::size_t D = shape.d(), H = shape.h(), W = shape.elems();
  const int experts = 3;
  const Act act = test_activation<Act>();

  // Weights scaled by 1/sqrt(fan-in) so every stage stays O(1); rounded to T once, and the
  // reference reads exactly those values.
  std::vector<T> w(experts * W);
  std::vector<double> w_ref(w.size());
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int e = 0; e < experts; ++e)
    for (std::size_t i = 0; i < W; ++i) {
      const std::size_t at = static_cast<std::size_t>(e) * W + i;
      float scale = 1.0f;
      if (i < shape.down_offset()) scale = 1.7f / std::sqrt(static_cast<float>(D));
      else if (i < shape.gate_up_bias_offset()) scale = 1.7f / std::sqrt(static_cast<float>(H));
      else scale = 0.5f;
      w[at] = from_float<T>(u(rng) * scale);
      w_ref[at] = to_double(w[at]);
    }
  llep::count_t total = 0, max_rows = 0;
  for (llep::count_t r : task_rows) total += r, max_rows = std::max(max_rows, r);
  const auto rows = static_cast<std::size_t>(total);
  std::vector<T> x(rows * D);
  std::vector<double> x_ref(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    x[i] = from_float<T>(u(rng));
    x_ref[i] = to_double(x[i]);
  }

  // Task i reads input rows in order but writes its output rows at the mirrored position,
  // so outputs are not in input order (the grouped kernel must find each task's out).
  const std::size_t n_tasks = task_rows.size();
  std::vector<std::size_t> in_row(n_tasks), out_row(n_tasks);
  for (std::size_t i = 0, at = 0; i < n_tasks; at += static_cast<std::size_t>(task_rows[i]), ++i) in_row[i] = at;
  for (std::size_t i = n_tasks, at = 0; i-- > 0; at += static_cast<std::size_t>(task_rows[i])) out_row[i] = at;

  // Reference.
  std::vector<double> want(rows * D, 0.0);
  {
    llep::ExpertShape ref_shape = shape;
    llep::HostSwiGlu<double, Act> ref(ref_shape, act);
    std::vector<llep::ExpertTask<double>> tasks;
    for (std::size_t i = 0; i < n_tasks; ++i)
      tasks.push_back({static_cast<int>(i % experts), w_ref.data() + (i % experts) * W, x_ref.data() + in_row[i] * D,
                       want.data() + out_row[i] * D, task_rows[i]});
    std::vector<std::byte> scratch(ref.scratch_bytes(max_rows, total));
    llep::HostExec host;
    ref.compute(host, std::span<const llep::ExpertTask<double>>(tasks), scratch.data());
  }

  // Device.
  DeviceArray<T> d_w(w), d_x(x), d_out(rows * D);
  d_out.fill_bytes(0xff);  // NaN in every type: each output element must be written
  std::vector<llep::ExpertTask<T>> tasks;
  for (std::size_t i = 0; i < n_tasks; ++i)
    tasks.push_back({static_cast<int>(i % experts), d_w.get() + (i % experts) * W, d_x.get() + in_row[i] * D,
                     d_out.get() + out_row[i] * D, task_rows[i]});
  const llep::CublasSwiGlu<T, Act, Mode> experts_fn(shape, act);
  // A copy gets its own handle and must compute the same.
  const llep::CublasSwiGlu<T, Act, Mode> gpu = experts_fn;
  const std::size_t scratch_bytes = gpu.scratch_bytes(max_rows, total);
  // Offset by 8 bytes: the functor must align the scratch itself.
  DeviceArray<std::byte> scratch(scratch_bytes + 8);
  llep::CudaExec exec;
  gpu.compute(exec, std::span<const llep::ExpertTask<T>>(tasks), scratch.get() + 8);
  exec.synchronize();
  const std::vector<T> first = d_out.download();
  gpu.compute(exec, std::span<const llep::ExpertTask<T>>(tasks), scratch.get() + 8);
  exec.synchronize();
  const std::vector<T> second = d_out.download();
  CHECK(std::memcmp(first.data(), second.data(), first.size() * sizeof(T)) == 0);

  double max_ref = 0, max_err = 0;
  std::size_t non_finite = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double got = to_double(first[i]);
    if (!std::isfinite(got)) ++non_finite;
    max_ref = std::max(max_ref, std::abs(want[i]));
    max_err = std::max(max_err, std::abs(got - want[i]));
  }
  CHECK(non_finite == 0);
  REQUIRE(max_ref > 0.1);  // the data is not degenerate
  CAPTURE(max_err);
  CAPTURE(max_ref);
  CHECK(max_err / max_ref <= tolerance<T>());
}

}  // namespace

#define LLEP_SWIGLU_CONFIGS(T)                                                                           \
  Config<T, llep::SiluGlu, llep::GemmMode::per_expert>, Config<T, llep::SiluGlu, llep::GemmMode::grouped>, \
      Config<T, llep::GptOssGlu, llep::GemmMode::per_expert>, Config<T, llep::GptOssGlu, llep::GemmMode::grouped>

TEST_CASE_TEMPLATE("CublasSwiGlu matches HostSwiGlu<double>", C, LLEP_SWIGLU_CONFIGS(__nv_bfloat16),
                   LLEP_SWIGLU_CONFIGS(__half), LLEP_SWIGLU_CONFIGS(float)) {
  using T = typename C::type;
  using Act = typename C::act;
  constexpr llep::GemmMode mode = C::mode;
  const bool bias = Act::has_bias;
  // Sizes a tensor-core kernel likes, then odd ones (no multiple of 8 anywhere).
  SUBCASE("D = 128, H = 64") {
    check_against_host<T, Act, mode>(llep::ExpertShape{128, 64, bias}, {5, 0, 33, 1, 64, 17, 0}, 1);
  }
  SUBCASE("D = 72, H = 40") { check_against_host<T, Act, mode>(llep::ExpertShape{72, 40, bias}, {7, 130, 2}, 2); }
  SUBCASE("D = 33, H = 21") { check_against_host<T, Act, mode>(llep::ExpertShape{33, 21, bias}, {1, 1, 0, 9}, 3); }
  SUBCASE("one task") { check_against_host<T, Act, mode>(llep::ExpertShape{64, 96, bias}, {250}, 4); }
}

TEST_CASE("CublasSwiGlu: shapes, scratch and no-work calls") {
  using E = llep::CublasSwiGlu<__nv_bfloat16, llep::SiluGlu>;
  CHECK_THROWS_AS(E(llep::ExpertShape{64, 32, true}), llep::Error);  // SiluGlu has no biases
  CHECK_THROWS_AS(E(llep::ExpertShape{0, 32, false}), llep::Error);
  const E e(llep::ExpertShape{64, 32, false});
  CHECK(e.hidden() == 64);
  CHECK(e.intermediate() == 32);
  CHECK(e.weight_elems() == llep::ExpertShape{64, 32, false}.elems());
  CHECK(e.scratch_bytes(0, 0) == 0);
  CHECK_THROWS_AS((void)e.scratch_bytes(5, 4), llep::Error);
  // per_expert scratch follows the largest task, grouped scratch the total rows.
  const llep::CublasSwiGlu<__nv_bfloat16, llep::SiluGlu, llep::GemmMode::grouped> g(llep::ExpertShape{64, 32, false});
  CHECK(e.scratch_bytes(10, 1000) == e.scratch_bytes(10, 10));
  CHECK(g.scratch_bytes(10, 1000) > g.scratch_bytes(10, 10));
  CHECK(e.scratch_bytes(10, 10) >= 10 * (2 * 32 * sizeof(float) + 32 * sizeof(__nv_bfloat16)));
  static_assert(std::is_same_v<E::gate_up_type, float>);

  llep::CudaExec exec;
  std::vector<llep::ExpertTask<__nv_bfloat16>> none{{0, nullptr, nullptr, nullptr, 0}};
  e.compute(exec, std::span<const llep::ExpertTask<__nv_bfloat16>>(none), nullptr);  // no rows: nothing to do
  std::vector<llep::ExpertTask<__nv_bfloat16>> bad{{0, nullptr, nullptr, nullptr, 3}};
  CHECK_THROWS_AS(e.compute(exec, std::span<const llep::ExpertTask<__nv_bfloat16>>(bad), nullptr), llep::Error);
  exec.synchronize();
}
