// CublasSwiGlu (bf16, fp16, fp32; SiluGlu and GptOssGlu; per_expert and grouped GEMMs)
// and GroupedSwiGlu (llep's own device-sized grouped GEMMs) against HostSwiGlu<double>, the independent host reference, on the same T-valued inputs
// and weights. Tasks include empty ones, repeated experts and outputs in a different order
// than inputs; every output element must be written; the same call twice gives the same
// bits. Backward likewise against HostSwiGlu<double>::backward: weight gradients in T and
// in float, saved or recomputed gate|up, overwrite and accumulate, one expert in several
// tasks.
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
#include "llep/experts/expert_backward.hpp"
#include "llep/experts/cublas_swiglu.cuh"
#include "llep/experts/grouped_swiglu.cuh"
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

template <class T>
std::vector<double> as_double(const std::vector<T>& v) {
  std::vector<double> d(v.size());
  std::transform(v.begin(), v.end(), d.begin(), [](T x) { return to_double(x); });
  return d;
}

// max|got - ref| / max|ref|, counting non-finite results; the reference must exceed
// `floor` somewhere (the data is not degenerate).
double max_ratio(const std::vector<double>& got, const std::vector<double>& ref, std::size_t& non_finite,
                 double floor) {
  double max_ref = 0, max_err = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) ++non_finite;
    max_ref = std::max(max_ref, std::abs(ref[i]));
    max_err = std::max(max_err, std::abs(got[i] - ref[i]));
  }
  REQUIRE(max_ref > floor);
  return max_err / max_ref;
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

// One random problem: 3 experts' weights and the tasks' inputs, rounded to T once (the
// references read exactly those values). Weights are scaled by 1/sqrt(fan-in) so every
// stage stays O(1). Task i reads input rows in order but writes its output rows at the
// mirrored position, so outputs are not in input order (the grouped kernels must find each
// task's out).
template <class T>
struct Problem {
  static constexpr int experts = 3;
  std::vector<T> w, x;
  std::vector<double> w_ref, x_ref;
  std::vector<std::size_t> in_row, out_row;
  llep::count_t total = 0, max_rows = 0;

  Problem(const llep::ExpertShape& shape, const std::vector<llep::count_t>& task_rows, std::uint32_t seed) {
    std::mt19937 rng(seed);
    const std::size_t D = shape.d(), H = shape.h(), W = shape.elems();
    w.resize(experts * W);
    w_ref.resize(w.size());
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
    for (llep::count_t r : task_rows) total += r, max_rows = std::max(max_rows, r);
    x.resize(static_cast<std::size_t>(total) * D);
    x_ref.resize(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      x[i] = from_float<T>(u(rng));
      x_ref[i] = to_double(x[i]);
    }
    const std::size_t n_tasks = task_rows.size();
    in_row.resize(n_tasks);
    out_row.resize(n_tasks);
    for (std::size_t i = 0, at = 0; i < n_tasks; at += static_cast<std::size_t>(task_rows[i]), ++i) in_row[i] = at;
    for (std::size_t i = n_tasks, at = 0; i-- > 0; at += static_cast<std::size_t>(task_rows[i])) out_row[i] = at;
  }

  /// Task i is expert i % 3 reading x at in_row[i] and writing `out` at out_row[i].
  template <class V>
  std::vector<llep::ExpertTask<V>> tasks(const llep::ExpertShape& shape, const std::vector<llep::count_t>& task_rows,
                                         const V* weights, const V* in, V* out) const {
    const std::size_t D = shape.d(), W = shape.elems();
    std::vector<llep::ExpertTask<V>> t;
    for (std::size_t i = 0; i < task_rows.size(); ++i)
      t.push_back({static_cast<int>(i % experts), weights + (i % experts) * W, in + in_row[i] * D, out + out_row[i] * D,
                   task_rows[i]});
    return t;
  }
};

// Experts: CublasSwiGlu in either mode, or GroupedSwiGlu.
template <class T, class Act, class Experts>
void check_against_host(llep::ExpertShape shape, std::vector<llep::count_t> task_rows, std::uint32_t seed) {
  CAPTURE(shape.hidden);
  CAPTURE(shape.intermediate);
  const std::size_t D = shape.d();
  const Act act = test_activation<Act>();
  const Problem<T> pb(shape, task_rows, seed);
  const llep::count_t total = pb.total, max_rows = pb.max_rows;
  const auto rows = static_cast<std::size_t>(total);

  // Reference.
  std::vector<double> want(rows * D, 0.0);
  {
    llep::ExpertShape ref_shape = shape;
    llep::HostSwiGlu<double, Act> ref(ref_shape, act);
    const auto tasks = pb.tasks(shape, task_rows, pb.w_ref.data(), pb.x_ref.data(), want.data());
    std::vector<std::byte> scratch(ref.scratch_bytes(max_rows, total));
    llep::HostExec host;
    ref.compute(host, std::span<const llep::ExpertTask<double>>(tasks), scratch.data());
  }

  // Device.
  DeviceArray<T> d_w(pb.w), d_x(pb.x), d_out(rows * D);
  d_out.fill_bytes(0xff);  // NaN in every type: each output element must be written
  const auto tasks = pb.tasks(shape, task_rows, d_w.get(), d_x.get(), d_out.get());
  const Experts experts_fn(shape, act);
  // A copy (for cuBLAS: with its own handle) must compute the same.
  const Experts gpu = experts_fn;
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

  std::size_t non_finite = 0;
  const double ratio = max_ratio(as_double(first), want, non_finite, 0.1);
  CHECK(non_finite == 0);
  CAPTURE(ratio);
  CHECK(ratio <= tolerance<T>());
}

}  // namespace

// Backward: the same data recipe as check_against_host plus an upstream gradient dy; task
// i is expert i % 3, so with more than 3 tasks an expert's gradient sums several tasks.
// Tolerance on max|got - ref| / max|ref| per result array, as forward's: the roundings to T
// of a and dgu (inputs of the GEMMs, errors ~u each, entering sums of random sign) and of
// the result (u; none for float gradients) give ~1-3 u; the bound is tolerance<T>() (8-10 u),
// while a wrong transpose, derivative or bias gives O(1).
// Experts: CublasSwiGlu in either mode, or GroupedSwiGlu (which keeps nothing in forward:
// `save` then hands it pointers it must not read).
template <class T, class Act, class Experts, class GW>
void check_backward(llep::ExpertShape shape, std::vector<llep::count_t> task_rows, bool save, llep::GradMode mode,
                    std::uint32_t seed) {
  CAPTURE(shape.hidden);
  CAPTURE(shape.intermediate);
  CAPTURE(save);
  CAPTURE(mode == llep::GradMode::accumulate);
  std::mt19937 rng(seed);
  const std::size_t D = shape.d(), H = shape.h(), W = shape.elems();
  const int experts = 3;
  const Act act = test_activation<Act>();
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto make = [&](std::size_t n, auto scale_of, std::vector<double>& ref) {
    std::vector<T> v(n);
    ref.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      v[i] = from_float<T>(u(rng) * scale_of(i));
      ref[i] = to_double(v[i]);
    }
    return v;
  };
  std::vector<double> w_ref, x_ref, dy_ref;
  const std::vector<T> w = make(experts * W, [&](std::size_t at) {
    const std::size_t i = at % W;
    if (i < shape.down_offset()) return 1.7f / std::sqrt(static_cast<float>(D));
    if (i < shape.gate_up_bias_offset()) return 1.7f / std::sqrt(static_cast<float>(H));
    return 0.5f;
  }, w_ref);
  llep::count_t total = 0, max_rows = 0;
  for (llep::count_t r : task_rows) total += r, max_rows = std::max(max_rows, r);
  const auto rows = static_cast<std::size_t>(total);
  const std::vector<T> x = make(rows * D, [](std::size_t) { return 1.0f; }, x_ref);
  const std::vector<T> dy = make(rows * D, [](std::size_t) { return 1.0f; }, dy_ref);
  const bool acc = mode == llep::GradMode::accumulate;
  std::vector<GW> old(experts * W);
  for (GW& v : old) v = from_float<GW>(acc ? 0.1f * u(rng) : 0.0f);

  // Reference gradients in double from the same values.
  std::vector<double> want_dx(rows * D), want_gw(old.size());
  for (std::size_t i = 0; i < old.size(); ++i) want_gw[i] = to_double(old[i]);
  {
    const llep::HostSwiGlu<double, Act> ref(shape, act);
    std::vector<llep::ExpertGradTask<double>> tasks;
    for (std::size_t i = 0, at = 0; i < task_rows.size(); at += static_cast<std::size_t>(task_rows[i]), ++i)
      tasks.push_back({static_cast<int>(i % experts), w_ref.data() + (i % experts) * W, x_ref.data() + at * D,
                       dy_ref.data() + at * D, want_dx.data() + at * D, want_gw.data() + (i % experts) * W, nullptr,
                       task_rows[i]});
    std::vector<std::byte> scratch(ref.backward_scratch_bytes(max_rows, total));
    llep::HostExec host;
    ref.backward(host, std::span<const llep::ExpertGradTask<double>>(tasks), mode, scratch.data());
  }

  // Device: forward (keeping gate|up when `save`), then backward twice.
  const Experts gpu(shape, act);
  DeviceArray<T> d_w(w), d_x(x), d_dy(dy), d_out(rows * D), d_dx(rows * D);
  DeviceArray<std::byte> saved(rows * gpu.saved_row_bytes() + 256);
  DeviceArray<std::byte> scratch(std::max(gpu.scratch_bytes(max_rows, total),
                                          gpu.backward_scratch_bytes(max_rows, total)) + 8);
  llep::CudaExec exec;
  std::vector<std::size_t> first_row;
  for (std::size_t i = 0, at = 0; i < task_rows.size(); at += static_cast<std::size_t>(task_rows[i]), ++i)
    first_row.push_back(at);
  if (save) {
    std::vector<llep::ExpertTask<T>> fwd;
    for (std::size_t i = 0; i < task_rows.size(); ++i)
      fwd.push_back({static_cast<int>(i % experts), d_w.get() + (i % experts) * W, d_x.get() + first_row[i] * D,
                     d_out.get() + first_row[i] * D, task_rows[i]});
    gpu.compute(exec, std::span<const llep::ExpertTask<T>>(fwd), scratch.get() + 8, saved.get());
    exec.synchronize();
    const std::vector<T> kept = d_out.download();
    gpu.compute(exec, std::span<const llep::ExpertTask<T>>(fwd), scratch.get() + 8);
    exec.synchronize();
    const std::vector<T> plain = d_out.download();
    CHECK(std::memcmp(kept.data(), plain.data(), kept.size() * sizeof(T)) == 0);  // saving changes nothing
  }
  DeviceArray<GW> d_gw(old.size());
  std::vector<llep::ExpertGradTask<T, GW>> tasks;
  for (std::size_t i = 0; i < task_rows.size(); ++i)
    tasks.push_back({static_cast<int>(i % experts), d_w.get() + (i % experts) * W, d_x.get() + first_row[i] * D,
                     d_dy.get() + first_row[i] * D, d_dx.get() + first_row[i] * D, d_gw.get() + (i % experts) * W,
                     save ? saved.get() + first_row[i] * gpu.saved_row_bytes() : nullptr, task_rows[i]});
  auto run = [&] {
    d_gw.upload(old);
    if (!acc) d_gw.fill_bytes(0xff);  // NaN: overwrite must not read it
    d_dx.fill_bytes(0xff);
    gpu.backward(exec, std::span<const llep::ExpertGradTask<T, GW>>(tasks), mode, scratch.get() + 8);
    exec.synchronize();
    std::vector<double> dx, gw;
    for (const T& v : d_dx.download()) dx.push_back(to_double(v));
    for (const GW& v : d_gw.download()) gw.push_back(to_double(v));
    return std::pair{dx, gw};
  };
  const auto first = run();
  const auto second = run();
  CHECK(first == second);  // bit-identical (no NaN is expected; a NaN also fails below)
  auto ratio = [](const std::vector<double>& got, const std::vector<double>& ref, std::size_t& bad) {
    return max_ratio(got, ref, bad, 0.05);
  };
  std::size_t non_finite = 0;
  const double e_dx = ratio(first.first, want_dx, non_finite);
  CHECK(non_finite == 0);
  // Per expert and per region (W_gu, W_down, biases): each must be right on its own scale.
  for (int e = 0; e < experts && static_cast<std::size_t>(e) < task_rows.size(); ++e) {  // experts with tasks
    const std::size_t regions[] = {shape.gate_up_offset(), shape.down_offset(), shape.gate_up_bias_offset(), W};
    for (std::size_t k = 0; k + 1 < std::size(regions); ++k) {
      if (regions[k] == regions[k + 1]) continue;
      const auto at = static_cast<std::ptrdiff_t>(static_cast<std::size_t>(e) * W + regions[k]);
      const auto end = static_cast<std::ptrdiff_t>(static_cast<std::size_t>(e) * W + regions[k + 1]);
      const std::vector<double> got(first.second.begin() + at, first.second.begin() + end);
      const std::vector<double> ref(want_gw.begin() + at, want_gw.begin() + end);
      CAPTURE(e);
      CAPTURE(k);
      CHECK(ratio(got, ref, non_finite) <= tolerance<T>());
    }
  }
  CHECK(non_finite == 0);
  CAPTURE(e_dx);
  CHECK(e_dx <= tolerance<T>());
}

template <class T, class Act, class Experts>
void check_backward_all(llep::ExpertShape shape, std::vector<llep::count_t> rows, std::uint32_t seed) {
  using llep::GradMode;
  check_backward<T, Act, Experts, T>(shape, rows, false, GradMode::overwrite, seed);
  check_backward<T, Act, Experts, T>(shape, rows, true, GradMode::accumulate, seed + 1);
  check_backward<T, Act, Experts, float>(shape, rows, true, GradMode::overwrite, seed + 2);
  check_backward<T, Act, Experts, float>(shape, rows, false, GradMode::accumulate, seed + 3);
}

#define LLEP_SWIGLU_CONFIGS(T)                                                                           \
  Config<T, llep::SiluGlu, llep::GemmMode::per_expert>, Config<T, llep::SiluGlu, llep::GemmMode::grouped>, \
      Config<T, llep::GptOssGlu, llep::GemmMode::per_expert>, Config<T, llep::GptOssGlu, llep::GemmMode::grouped>

TEST_CASE_TEMPLATE("CublasSwiGlu matches HostSwiGlu<double>", C, LLEP_SWIGLU_CONFIGS(__nv_bfloat16),
                   LLEP_SWIGLU_CONFIGS(__half), LLEP_SWIGLU_CONFIGS(float)) {
  using T = typename C::type;
  using Act = typename C::act;
  using E = llep::CublasSwiGlu<T, Act, C::mode>;
  const bool bias = Act::has_bias;
  // Sizes a tensor-core kernel likes, then odd ones (no multiple of 8 anywhere).
  SUBCASE("D = 128, H = 64") {
    check_against_host<T, Act, E>(llep::ExpertShape{128, 64, bias}, {5, 0, 33, 1, 64, 17, 0}, 1);
  }
  SUBCASE("D = 72, H = 40") { check_against_host<T, Act, E>(llep::ExpertShape{72, 40, bias}, {7, 130, 2}, 2); }
  SUBCASE("D = 33, H = 21") { check_against_host<T, Act, E>(llep::ExpertShape{33, 21, bias}, {1, 1, 0, 9}, 3); }
  SUBCASE("one task") { check_against_host<T, Act, E>(llep::ExpertShape{64, 96, bias}, {250}, 4); }
}

TEST_CASE_TEMPLATE("CublasSwiGlu::backward matches HostSwiGlu<double>::backward", C,
                   LLEP_SWIGLU_CONFIGS(__nv_bfloat16), LLEP_SWIGLU_CONFIGS(__half), LLEP_SWIGLU_CONFIGS(float)) {
  using T = typename C::type;
  using Act = typename C::act;
  using E = llep::CublasSwiGlu<T, Act, C::mode>;
  const bool bias = Act::has_bias;
  // Tasks 0 and 3 (expert 0) and 1 and 4 (expert 1) sum into one gradient each.
  SUBCASE("D = 128, H = 64") {
    check_backward_all<T, Act, E>(llep::ExpertShape{128, 64, bias}, {5, 0, 33, 64, 17}, 11);
  }
  SUBCASE("D = 33, H = 21") { check_backward_all<T, Act, E>(llep::ExpertShape{33, 21, bias}, {1, 9, 0, 2}, 12); }
  SUBCASE("one large task") { check_backward_all<T, Act, E>(llep::ExpertShape{64, 96, bias}, {250}, 13); }
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
  CHECK(e.weight_bytes() == e.weight_elems() * sizeof(__nv_bfloat16));
  CHECK(e.row_bytes() == 64 * sizeof(__nv_bfloat16));
  CHECK(e.backward_scratch_bytes(0, 0) == 0);
  CHECK(e.backward_scratch_bytes(10, 1000) == e.backward_scratch_bytes(10, 10));
  using GT = llep::ExpertGradTask<__nv_bfloat16, float>;
  std::vector<GT> no_dy{{0, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 3}};
  CHECK_THROWS_AS(e.backward(exec, std::span<const GT>(no_dy), llep::GradMode::overwrite, nullptr), llep::Error);
  std::vector<GT> empty{{0, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 0}};
  e.backward(exec, std::span<const GT>(empty), llep::GradMode::overwrite, nullptr);  // nothing to write
  exec.synchronize();
}

// GroupedSwiGlu: the same host-reference checks as CublasSwiGlu (ExpertCompute path), on
// shapes around its 128 x 64 tiles and 16-byte loads: D, H multiples of 8 (vector loads),
// and not (element loads); several row and column tiles, empty tasks, K tails.
template <class T, class Act>
struct GroupedConfig {
  using type = T;
  using act = Act;
};
#define LLEP_GROUPED_CONFIGS(T) GroupedConfig<T, llep::SiluGlu>, GroupedConfig<T, llep::GptOssGlu>

TEST_CASE_TEMPLATE("GroupedSwiGlu matches HostSwiGlu<double>", C, LLEP_GROUPED_CONFIGS(__nv_bfloat16),
                   LLEP_GROUPED_CONFIGS(__half), LLEP_GROUPED_CONFIGS(float)) {
  using T = typename C::type;
  using Act = typename C::act;
  using E = llep::GroupedSwiGlu<T, Act>;
  static_assert(llep::SizedExpertCompute<E, llep::CudaExec>);
  const bool bias = Act::has_bias;
  SUBCASE("D = 128, H = 64") {
    check_against_host<T, Act, E>(llep::ExpertShape{128, 64, bias}, {5, 0, 33, 1, 64, 17, 0}, 21);
  }
  SUBCASE("D = 72, H = 40") { check_against_host<T, Act, E>(llep::ExpertShape{72, 40, bias}, {7, 130, 2}, 22); }
  SUBCASE("D = 33, H = 21") { check_against_host<T, Act, E>(llep::ExpertShape{33, 21, bias}, {1, 1, 0, 9}, 23); }
  SUBCASE("D = 200, H = 150: several column tiles, element loads") {
    check_against_host<T, Act, E>(llep::ExpertShape{200, 150, bias}, {300, 0, 129, 1, 128}, 24);
  }
  SUBCASE("D = 256, H = 96: tiles of exactly 128 rows") {
    check_against_host<T, Act, E>(llep::ExpertShape{256, 96, bias}, {128, 256, 0, 127}, 25);
  }
}

namespace {

// GroupedSwiGlu against CublasSwiGlu (per_expert: gate|up kept in fp32, h and out rounded
// to T once each, as GroupedSwiGlu does). Both accumulate in fp32 in different orders, so
// they differ where that order moves a rounding to T: at most one ulp of out (u * max|out|)
// plus h elements one ulp apart entering the down projection (u * |h| * O(1/sqrt(H)) each,
// random signs). Expected ~1-2 u; the bound is 4 u (bf16 u = 2^-8, fp16 u = 2^-11). fp32:
// only the summation order differs (~sqrt(K) * 6e-8 ~ 1e-6); 2e-5 also fails with TF32
// (u = 2^-11 ~ 5e-4).
template <class T>
constexpr double vs_cublas_tolerance() {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return 4.0 / 256;
  else if constexpr (std::is_same_v<T, __half>) return 4.0 / 2048;
  else return 2e-5;
}

// The device-sized path: the task array in device memory carries `past` more tasks after
// the count (their rows would write into `guard`, which must stay untouched); the count is
// written on the exec's stream right before each call; the bounds exceed the real sizes.
// compute_sized must give the bits of compute over the same tasks, agree with cuBLAS, and
// with a smaller count leave the later tasks' output rows as they were; a CUDA graph of
// one call replays both counts.
template <class T, class Act>
void check_sized(llep::ExpertShape shape, std::vector<llep::count_t> task_rows, int past, std::uint32_t seed) {
  CAPTURE(shape.hidden);
  CAPTURE(shape.intermediate);
  const std::size_t D = shape.d();
  const Act act = test_activation<Act>();
  const Problem<T> pb(shape, task_rows, seed);
  const auto rows = static_cast<std::size_t>(pb.total);
  DeviceArray<T> d_w(pb.w), d_x(pb.x), ref_out(rows * D), plain_out(rows * D), sized_out(rows * D), guard(64 * D);
  guard.fill_bytes(0x5a);
  const std::vector<T> guard_before = guard.download();
  llep::CudaExec exec;

  const llep::CublasSwiGlu<T, Act> cublas(shape, act);
  const llep::GroupedSwiGlu<T, Act> grouped(shape, act);
  DeviceArray<std::byte> scratch(std::max(cublas.scratch_bytes(pb.max_rows, pb.total),
                                          grouped.scratch_bytes(pb.max_rows, pb.total)) + 8);
  const auto ref_tasks = pb.tasks(shape, task_rows, d_w.get(), d_x.get(), ref_out.get());
  cublas.compute(exec, std::span<const llep::ExpertTask<T>>(ref_tasks), scratch.get() + 8);
  plain_out.fill_bytes(0xff);
  const auto plain_tasks = pb.tasks(shape, task_rows, d_w.get(), d_x.get(), plain_out.get());
  grouped.compute(exec, std::span<const llep::ExpertTask<T>>(plain_tasks), scratch.get() + 8);
  exec.synchronize();
  const std::vector<T> want = ref_out.download(), plain = plain_out.download();

  auto tasks = pb.tasks(shape, task_rows, d_w.get(), d_x.get(), sized_out.get());
  for (int i = 0; i < past; ++i) tasks.push_back({0, d_w.get(), d_x.get(), guard.get(), 1 + 17 * i % 64});
  const int max_tasks = static_cast<int>(tasks.size());
  const llep::count_t max_rows = pb.total + 300, max_task_rows = pb.max_rows + 5;
  DeviceArray<llep::ExpertTask<T>> d_tasks(tasks);
  DeviceArray<std::int32_t> d_count(1);
  DeviceArray<std::byte> sized_scratch(grouped.sized_scratch_bytes(max_tasks, max_rows) + 8);
  const llep::SizedTasks<T> sized{d_tasks.get(), d_count.get(), max_tasks, max_rows, max_task_rows};
  auto run = [&](std::int32_t count, const llep::CudaGraph* graph = nullptr) {
    sized_out.fill_bytes(0xff);
    exec.from_host(d_count.get(), &count, sizeof count);
    if (graph != nullptr) graph->launch(exec.stream());
    else grouped.compute_sized(exec, sized, sized_scratch.get() + 8);
    exec.synchronize();
    return sized_out.download();
  };
  const auto n = static_cast<std::int32_t>(task_rows.size());
  const std::vector<T> got = run(n);
  CHECK(std::memcmp(got.data(), plain.data(), got.size() * sizeof(T)) == 0);
  std::size_t non_finite = 0;
  const double ratio = max_ratio(as_double(got), as_double(want), non_finite, 0.1);
  CHECK(non_finite == 0);
  CAPTURE(ratio);
  CHECK(ratio <= vs_cublas_tolerance<T>());
  const std::vector<T> guard_after = guard.download();
  CHECK(std::memcmp(guard_before.data(), guard_after.data(), guard_before.size() * sizeof(T)) == 0);
  // One or three blocks along the rows, each looping over row tiles: the same bits.
  for (int row_blocks : {1, 3}) {
    CAPTURE(row_blocks);
    const llep::GroupedSwiGlu<T, Act> looping(shape, act, row_blocks);
    sized_out.fill_bytes(0xff);
    const std::int32_t all = static_cast<std::int32_t>(task_rows.size());
    exec.from_host(d_count.get(), &all, sizeof all);
    looping.compute_sized(exec, sized, sized_scratch.get() + 8);
    exec.synchronize();
    const std::vector<T> looped = sized_out.download();
    CHECK(std::memcmp(looped.data(), got.data(), got.size() * sizeof(T)) == 0);
  }

  // Half the tasks: theirs are the same bits, the others' rows stay NaN (0xff bytes).
  const std::int32_t k = n / 2;
  const std::vector<T> part = run(k);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < task_rows.size(); ++i)
    for (std::size_t e = 0; e < static_cast<std::size_t>(task_rows[i]) * D; ++e) {
      const std::size_t at = pb.out_row[i] * D + e;
      if (static_cast<std::int32_t>(i) < k) wrong += std::memcmp(&part[at], &got[at], sizeof(T)) != 0;
      else wrong += std::isfinite(to_double(part[at]));
    }
  CHECK(wrong == 0);

  // Captured once in a CUDA graph (a host sync or an allocation inside would break the
  // capture), then replayed with either count: the bits of the eager calls.
  const llep::CudaGraph replay(exec.stream(), [&] { grouped.compute_sized(exec, sized, sized_scratch.get() + 8); });
  const std::vector<T> replay_part = run(k, &replay), replay_all = run(n, &replay);
  CHECK(std::memcmp(replay_part.data(), part.data(), part.size() * sizeof(T)) == 0);
  CHECK(std::memcmp(replay_all.data(), got.data(), got.size() * sizeof(T)) == 0);
}

}  // namespace

TEST_CASE_TEMPLATE("GroupedSwiGlu::compute_sized: count in device memory, bounds above the sizes, vs CublasSwiGlu", C,
                   LLEP_GROUPED_CONFIGS(__nv_bfloat16), LLEP_GROUPED_CONFIGS(__half), LLEP_GROUPED_CONFIGS(float)) {
  using T = typename C::type;
  using Act = typename C::act;
  const bool bias = Act::has_bias;
  SUBCASE("D = 256, H = 192") { check_sized<T, Act>(llep::ExpertShape{256, 192, bias}, {300, 0, 129, 1, 64}, 3, 31); }
  SUBCASE("D = 100, H = 70") { check_sized<T, Act>(llep::ExpertShape{100, 70, bias}, {0, 5, 200, 0, 77, 1}, 2, 32); }
  SUBCASE("many one-row tasks") {
    check_sized<T, Act>(llep::ExpertShape{64, 32, bias}, std::vector<llep::count_t>(300, 1), 1, 33);
  }
  SUBCASE("one task over many tiles") { check_sized<T, Act>(llep::ExpertShape{128, 256, bias}, {1000}, 4, 34); }
}

TEST_CASE("GroupedSwiGlu: shapes, scratch and no-work calls") {
  using E = llep::GroupedSwiGlu<__nv_bfloat16, llep::SiluGlu>;
  CHECK_THROWS_AS(E(llep::ExpertShape{64, 32, true}), llep::Error);  // SiluGlu has no biases
  CHECK_THROWS_AS(E(llep::ExpertShape{64, 32, false}, llep::SiluGlu{}, -1), llep::Error);
  const E e(llep::ExpertShape{64, 32, false});
  CHECK(e.weight_elems() == llep::ExpertShape{64, 32, false}.elems());
  CHECK(e.scratch_bytes(0, 0) == 0);
  CHECK(e.sized_scratch_bytes(0, 100) == 0);
  CHECK(e.sized_scratch_bytes(4, 100) >= 100 * 32 * sizeof(__nv_bfloat16));
  CHECK(e.scratch_bytes(10, 1000) > e.scratch_bytes(10, 10));  // h for every row
  CHECK_THROWS_AS((void)e.scratch_bytes(5, 4), llep::Error);
  CHECK_THROWS_AS((void)e.sized_scratch_bytes(-1, 4), llep::Error);
  llep::CudaExec exec;
  std::vector<llep::ExpertTask<__nv_bfloat16>> none{{0, nullptr, nullptr, nullptr, 0}};
  e.compute(exec, std::span<const llep::ExpertTask<__nv_bfloat16>>(none), nullptr);  // no rows: nothing to do
  std::vector<llep::ExpertTask<__nv_bfloat16>> bad{{0, nullptr, nullptr, nullptr, 3}};
  CHECK_THROWS_AS(e.compute(exec, std::span<const llep::ExpertTask<__nv_bfloat16>>(bad), nullptr), llep::Error);
  // Zero bounds launch nothing and read nothing; positive bounds need the pointers.
  e.compute_sized(exec, llep::SizedTasks<__nv_bfloat16>{nullptr, nullptr, 0, 0, 0}, nullptr);
  CHECK_THROWS_AS(e.compute_sized(exec, llep::SizedTasks<__nv_bfloat16>{nullptr, nullptr, 2, 10, 5}, nullptr),
                  llep::Error);
  exec.synchronize();
}

// GroupedSwiGlu::backward (its ExpertBackward: the tasks uploaded, then backward_sized)
// against HostSwiGlu<double>::backward with CublasSwiGlu's tolerances, on shapes around
// its tiles: several row and column tiles of the row stages and of the weight tiles
// (H, D past 128 and 64), K tails, element loads (D = 33), one expert in several tasks.
TEST_CASE_TEMPLATE("GroupedSwiGlu::backward matches HostSwiGlu<double>::backward", C,
                   LLEP_GROUPED_CONFIGS(__nv_bfloat16), LLEP_GROUPED_CONFIGS(__half), LLEP_GROUPED_CONFIGS(float)) {
  using T = typename C::type;
  using Act = typename C::act;
  using E = llep::GroupedSwiGlu<T, Act>;
  static_assert(llep::SizedExpertBackward<E, llep::CudaExec>);
  const bool bias = Act::has_bias;
  SUBCASE("D = 200, H = 150") {
    check_backward_all<T, Act, E>(llep::ExpertShape{200, 150, bias}, {5, 0, 300, 64, 129, 1}, 41);
  }
  SUBCASE("D = 33, H = 21") { check_backward_all<T, Act, E>(llep::ExpertShape{33, 21, bias}, {1, 9, 0, 2}, 42); }
}

namespace {

// The device-sized backward: the task array in device memory carries `past` more tasks
// after the count (their rows would write into guard buffers, which must stay untouched);
// the count is written on the exec's stream before each call; the bounds exceed the real
// sizes; task i is expert i % 3 (shared gradient buffers), every fourth task has no
// grad_in. backward_sized must give the bits of backward over tasks[0, count) (which
// uploads only the tasks with rows: empty tasks and the chain of a shared buffer must not
// change a bit), the same bits for 1 or 3 blocks along the rows, and the same bits when one
// call captured in a CUDA graph is replayed with either count.
template <class T, class Act, class GW>
void check_backward_sized(llep::ExpertShape shape, std::vector<llep::count_t> task_rows, int past,
                          llep::GradMode mode, std::uint32_t seed) {
  CAPTURE(shape.hidden);
  CAPTURE(shape.intermediate);
  CAPTURE(mode == llep::GradMode::accumulate);
  const std::size_t D = shape.d(), W = shape.elems();
  const Act act = test_activation<Act>();
  const Problem<T> pb(shape, task_rows, seed);
  const auto rows = static_cast<std::size_t>(pb.total);
  std::mt19937 rng(seed + 100);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<T> dy(pb.x.size());
  for (T& v : dy) v = from_float<T>(u(rng));
  const bool acc = mode == llep::GradMode::accumulate;
  std::vector<GW> old(Problem<T>::experts * W);
  for (GW& v : old) v = from_float<GW>(0.1f * u(rng));
  DeviceArray<T> d_w(pb.w), d_x(pb.x), d_dy(dy), d_dx(rows * D), guard(64 * D);
  DeviceArray<GW> d_gw(old.size()), guard_gw(W);
  guard.fill_bytes(0x5a);
  guard_gw.fill_bytes(0x5a);
  const std::vector<T> guard_before = guard.download();
  const std::vector<GW> guard_gw_before = guard_gw.download();

  std::vector<llep::ExpertGradTask<T, GW>> tasks;
  for (std::size_t i = 0; i < task_rows.size(); ++i) {
    const std::size_t e = i % Problem<T>::experts, at = pb.in_row[i] * D;
    tasks.push_back({static_cast<int>(e), d_w.get() + e * W, d_x.get() + at, d_dy.get() + at,
                     i % 4 == 3 ? nullptr : d_dx.get() + at, d_gw.get() + e * W, nullptr, task_rows[i]});
  }
  const auto n = static_cast<std::int32_t>(tasks.size());
  for (int i = 0; i < past; ++i)
    tasks.push_back({0, d_w.get(), d_x.get(), d_dy.get(), guard.get(), guard_gw.get(), nullptr, 1 + 17 * i % 64});
  const int max_tasks = static_cast<int>(tasks.size());
  const llep::count_t max_rows = pb.total + 300, max_task_rows = pb.max_rows + 5;

  const llep::GroupedSwiGlu<T, Act> grouped(shape, act);
  llep::CudaExec exec;
  DeviceArray<llep::ExpertGradTask<T, GW>> d_tasks(tasks);
  DeviceArray<std::int32_t> d_count(1);
  DeviceArray<std::byte> scratch(std::max(grouped.backward_scratch_bytes(pb.max_rows, pb.total),
                                          grouped.sized_backward_scratch_bytes(max_tasks, max_rows)) + 8);
  const llep::SizedGradTasks<T, GW> sized{d_tasks.get(), d_count.get(), max_tasks, max_rows, max_task_rows};
  auto reset = [&] {
    d_gw.upload(old);
    if (!acc) d_gw.fill_bytes(0xff);  // NaN: overwrite must not read it
    d_dx.fill_bytes(0xff);            // NaN: rows left unwritten stay NaN on both sides
  };
  auto results = [&] {
    exec.synchronize();
    return std::pair{d_dx.download(), d_gw.download()};
  };
  auto same = [](const auto& a, const auto& b) {
    return std::memcmp(a.first.data(), b.first.data(), a.first.size() * sizeof(T)) == 0 &&
           std::memcmp(a.second.data(), b.second.data(), a.second.size() * sizeof(GW)) == 0;
  };
  // The reference: backward over the first k tasks.
  auto eager = [&](std::int32_t k) {
    reset();
    grouped.backward(exec, std::span<const llep::ExpertGradTask<T, GW>>(tasks.data(), static_cast<std::size_t>(k)),
                     mode, scratch.get() + 8);
    return results();
  };
  auto run = [&](const llep::GroupedSwiGlu<T, Act>& g, std::int32_t k, const llep::CudaGraph* graph = nullptr) {
    reset();
    exec.from_host(d_count.get(), &k, sizeof k);
    if (graph != nullptr) graph->launch(exec.stream());
    else g.backward_sized(exec, sized, mode, scratch.get() + 8);
    return results();
  };
  const auto want = eager(n), got = run(grouped, n);
  CHECK(same(got, want));
  std::size_t written = 0;
  for (const GW& v : got.second) written += std::isfinite(to_double(v));
  CHECK(written > 0);
  for (int row_blocks : {1, 3}) {
    CAPTURE(row_blocks);
    CHECK(same(run(llep::GroupedSwiGlu<T, Act>(shape, act, row_blocks), n), want));
  }
  const std::int32_t k = n / 2;
  const auto want_part = eager(k), part = run(grouped, k);
  CHECK(same(part, want_part));
  const llep::CudaGraph replay(exec.stream(),
                               [&] { grouped.backward_sized(exec, sized, mode, scratch.get() + 8); });
  CHECK(same(run(grouped, k, &replay), want_part));
  CHECK(same(run(grouped, n, &replay), want));
  const std::vector<T> guard_after = guard.download();
  const std::vector<GW> guard_gw_after = guard_gw.download();
  CHECK(std::memcmp(guard_before.data(), guard_after.data(), guard_before.size() * sizeof(T)) == 0);
  CHECK(std::memcmp(guard_gw_before.data(), guard_gw_after.data(), guard_gw_before.size() * sizeof(GW)) == 0);
}

}  // namespace

TEST_CASE_TEMPLATE("GroupedSwiGlu::backward_sized: count in device memory, bounds above the sizes, graph replay", C,
                   LLEP_GROUPED_CONFIGS(__nv_bfloat16), LLEP_GROUPED_CONFIGS(float)) {
  using T = typename C::type;
  using Act = typename C::act;
  const bool bias = Act::has_bias;
  using llep::GradMode;
  // Tasks 0, 3, 6 share expert 0's buffer (task 3 is empty), 1 and 4 expert 1's.
  SUBCASE("D = 136, H = 72, fp32 gradients, overwrite") {
    check_backward_sized<T, Act, float>(llep::ExpertShape{136, 72, bias}, {40, 0, 129, 0, 7, 200, 3}, 2,
                                        GradMode::overwrite, 51);
  }
  SUBCASE("D = 64, H = 40, gradients in T, accumulate") {
    check_backward_sized<T, Act, T>(llep::ExpertShape{64, 40, bias}, {1, 130, 0, 5, 64}, 3, GradMode::accumulate,
                                    52);
  }
  SUBCASE("many one-row tasks") {
    check_backward_sized<T, Act, float>(llep::ExpertShape{32, 16, bias}, std::vector<llep::count_t>(100, 1), 1,
                                        GradMode::overwrite, 53);
  }
}

TEST_CASE("GroupedSwiGlu backward: scratch and no-work calls") {
  using E = llep::GroupedSwiGlu<__nv_bfloat16, llep::SiluGlu>;
  const E e(llep::ExpertShape{64, 32, false});
  CHECK(e.saved_row_bytes() == 0);
  CHECK(e.backward_scratch_bytes(0, 0) == 0);
  CHECK(e.sized_backward_scratch_bytes(0, 100) == 0);
  CHECK(e.sized_backward_scratch_bytes(4, 100) >= 100 * 32 * (sizeof(float) + 3 * sizeof(__nv_bfloat16)));
  CHECK(e.sized_backward_scratch_bytes(4, 0) > 0);  // the links: empty tasks still zero their buffers
  CHECK_THROWS_AS((void)e.sized_backward_scratch_bytes(-1, 4), llep::Error);
  llep::CudaExec exec;
  using GT = llep::ExpertGradTask<__nv_bfloat16, float>;
  // Zero bounds launch nothing and read nothing; positive bounds need the pointers.
  e.backward_sized(exec, llep::SizedGradTasks<__nv_bfloat16, float>{nullptr, nullptr, 0, 0, 0},
                   llep::GradMode::overwrite, nullptr);
  CHECK_THROWS_AS(e.backward_sized(exec, llep::SizedGradTasks<__nv_bfloat16, float>{nullptr, nullptr, 2, 10, 5},
                                   llep::GradMode::overwrite, nullptr),
                  llep::Error);
  std::vector<GT> no_dy{{0, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 3}};
  CHECK_THROWS_AS(e.backward(exec, std::span<const GT>(no_dy), llep::GradMode::overwrite, nullptr), llep::Error);
  // An empty task zeroes its buffer under overwrite (backward: a memset, no scratch).
  DeviceArray<float> gw(e.weight_elems());
  gw.fill_bytes(0xff);
  std::vector<GT> empty{{0, nullptr, nullptr, nullptr, nullptr, gw.get(), nullptr, 0}};
  e.backward(exec, std::span<const GT>(empty), llep::GradMode::overwrite, nullptr);
  exec.synchronize();
  const std::vector<float> zeroed = gw.download();
  CHECK(std::all_of(zeroed.begin(), zeroed.end(), [](float v) { return v == 0.0f; }));
  // The same through backward_sized with the empty task's count in device memory.
  gw.fill_bytes(0xff);
  DeviceArray<GT> d_empty(empty);
  DeviceArray<std::int32_t> one(std::vector<std::int32_t>{1});
  DeviceArray<std::byte> scratch(e.sized_backward_scratch_bytes(1, 0));
  e.backward_sized(exec, llep::SizedGradTasks<__nv_bfloat16, float>{d_empty.get(), one.get(), 1, 0, 0},
                   llep::GradMode::overwrite, scratch.get());
  exec.synchronize();
  const std::vector<float> zeroed_sized = gw.download();
  CHECK(std::all_of(zeroed_sized.begin(), zeroed_sized.end(), [](float v) { return v == 0.0f; }));
}
