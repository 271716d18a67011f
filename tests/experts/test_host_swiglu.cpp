// HostSwiGlu against the independent dense reference (tests/common/dense_moe.hpp): both
// element types, both activations, random shapes, several tasks of different experts and
// row counts (0 included) in one compute call.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../common/dense_moe.hpp"
#include "random_tasks.hpp"
#include "llep/core/concepts.hpp"
#include "llep/core/error.hpp"
#include "llep/exec/host.hpp"
#include "llep/experts/activation.hpp"
#include "llep/experts/host_swiglu.hpp"
#include "llep/experts/weight_layout.hpp"

static_assert(llep::ExpertCompute<llep::HostSwiGlu<float>, llep::HostExec>);
static_assert(llep::ExpertCompute<llep::HostSwiGlu<double>, llep::HostExec>);
static_assert(llep::ExpertCompute<llep::HostSwiGlu<float, llep::GptOssGlu>, llep::HostExec>);
static_assert(llep::ExpertCompute<llep::HostSwiGlu<double, llep::GptOssGlu>, llep::HostExec>);

namespace {

using llep::count_t;

// Max-norm error of one output row, relative to the reference row's 2-norm, floored at 0.1
// (outputs are O(0.3) per element here, so a row whose few outputs cancel to ~0 is judged
// against the size of its terms, not of their cancelled sum; any real bug is O(0.1) off).
//  double: every output is a sum of H products of h with O(1/sqrt(H)) weights, each h a
//    sum of D O(1/sqrt(D)) products; the rounding error is a few hundred ulps of 1.1e-16
//    at most (D, H <= 512 here), so 1e-12 has margin yet is ~1e4x below float.
//  float: the same sums with u = 6e-8 (plus float-rounded weights, 6e-8 relative each);
//    errors grow ~ sqrt(D + H) * u ~ 2e-6 for the largest sizes here, so 1e-5; a wrong
//    weight, row or activation gives O(1) relative errors.
template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, double> ? 1e-12 : 1e-5;
}

template <class T>
double row_error(std::span<const T> got, const std::vector<double>& ref) {
  double norm = 0, err = 0;
  for (std::size_t d = 0; d < ref.size(); ++d) {
    norm += ref[d] * ref[d];
    err = std::max(err, std::abs(static_cast<double>(got[d]) - ref[d]));
  }
  return err / std::max(std::sqrt(norm), 0.1);
}

using testexperts::dense_act;
using testexperts::match_parameters;

// One compute call over tasks of the given (expert, rows), rows back to back in one buffer
// (as the layer lays them out). Checks every row against dense::expert_forward, that nothing
// is written past the output or the scratch, and works with a misaligned scratch pointer.
template <class T, class Act>
void check_tasks(const dense::Moe& moe, const Act& act, const std::vector<std::pair<int, count_t>>& spec,
                 std::mt19937_64& rng, const std::vector<T>* input = nullptr, std::vector<T>* result = nullptr) {
  const int D = moe.hidden, H = moe.intermediate;
  const llep::HostSwiGlu<T, Act> ex(llep::ExpertShape{D, H, Act::has_bias}, act);
  REQUIRE(ex.hidden() == D);
  REQUIRE(ex.intermediate() == H);
  const std::size_t welems = ex.weight_elems();
  REQUIRE(welems == llep::ExpertShape{D, H, Act::has_bias}.elems());
  const auto weights = moe.packed_rank<T>(0, 1);
  REQUIRE(weights.size() == welems * static_cast<std::size_t>(moe.experts));

  count_t total = 0, max_rows = 0;
  for (const auto& [e, r] : spec) {
    total += r;
    max_rows = std::max(max_rows, r);
  }
  const auto Dz = static_cast<std::size_t>(D);
  const auto rows = static_cast<std::size_t>(total);
  std::vector<T> x(rows * Dz);
  if (input) {
    REQUIRE(input->size() == x.size());
    x = *input;
  } else {
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    for (T& v : x) v = static_cast<T>(u(rng));
  }
  const T sentinel = T(-12345.0);
  const std::size_t guard = 64;
  std::vector<T> out(rows * Dz + guard, sentinel);

  std::vector<llep::ExpertTask<T>> tasks;
  std::size_t row = 0;
  for (const auto& [e, r] : spec) {
    tasks.push_back({e, weights.data() + static_cast<std::size_t>(e) * welems, x.data() + row * Dz,
                     out.data() + row * Dz, r});
    row += static_cast<std::size_t>(r);
  }

  const std::size_t sbytes = ex.scratch_bytes(max_rows, total);
  const std::byte fill{0xA5};
  std::vector<std::byte> scratch(sbytes + 1 + guard, fill);  // +1: misaligned start
  llep::HostExec exec;
  ex.compute(exec, std::span<const llep::ExpertTask<T>>(tasks), sbytes ? scratch.data() + 1 : nullptr);

  CHECK(scratch[0] == fill);
  for (std::size_t i = 1 + sbytes; i < scratch.size(); ++i) REQUIRE(scratch[i] == fill);
  for (std::size_t i = rows * Dz; i < out.size(); ++i) REQUIRE(out[i] == sentinel);

  row = 0;
  double worst = 0;
  for (const auto& item : spec) {
    const auto e = std::get<0>(item);  // not a structured binding: INFO captures it (clang 14)
    const auto r = std::get<1>(item);
    for (count_t i = 0; i < r; ++i, ++row) {
      const std::vector<double> xr(x.begin() + static_cast<std::ptrdiff_t>(row * Dz),
                                   x.begin() + static_cast<std::ptrdiff_t>((row + 1) * Dz));
      const auto ref = moe.expert_forward(e, xr);
      const double err = row_error<T>(std::span<const T>(out).subspan(row * Dz, Dz), ref);
      worst = std::max(worst, err);
      if (!(err <= tolerance<T>())) {
        INFO("expert ", e, " row ", i, " of ", r, ", D = ", D, ", H = ", H, ", ", std::string(Act::name));
        CHECK(err <= tolerance<T>());
      }
    }
  }
  INFO("worst relative error ", worst, ", D = ", D, ", H = ", H, ", ", std::string(Act::name));
  CHECK(worst <= tolerance<T>());
  if (result) result->assign(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(rows * Dz));
}

template <class T, class Act>
void random_trials(Act act, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 40; ++trial) {
    const auto r = testexperts::random_tasks(act, trial, rng);
    CAPTURE(trial);
    check_tasks<T>(r.moe, act, r.spec, rng);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("HostSwiGlu equals the dense reference over random shapes and tasks", T, float, double) {
  SUBCASE("silu") { random_trials<T>(llep::SiluGlu{}, 11); }
  SUBCASE("gpt-oss, default parameters") { random_trials<T>(llep::GptOssGlu{}, 12); }
  SUBCASE("gpt-oss, a low limit that clamps often") { random_trials<T>(llep::GptOssGlu{0.25f, 1.5f}, 13); }
}

TEST_CASE_TEMPLATE("HostSwiGlu at a model-like size (64 rows, D = 256, H = 512)", T, float, double) {
  std::mt19937_64 rng(21);
  auto moe = dense::Moe::random(2, 256, 512, dense::Act::gpt_oss, 22);
  match_parameters(moe, llep::GptOssGlu{});
  check_tasks<T>(moe, llep::GptOssGlu{}, {{1, 40}, {0, 0}, {0, 24}}, rng);
}

TEST_CASE("only tasks with rows do work: all-empty tasks need no scratch") {
  const llep::HostSwiGlu<float> ex(llep::ExpertShape{8, 4, false});
  CHECK(ex.scratch_bytes(0, 0) == 0);
  std::vector<llep::ExpertTask<float>> tasks(3);  // null pointers, 0 rows
  llep::HostExec exec;
  CHECK_NOTHROW(ex.compute(exec, std::span<const llep::ExpertTask<float>>(tasks), nullptr));
  CHECK_NOTHROW(ex.compute(exec, std::span<const llep::ExpertTask<float>>(), nullptr));
}

TEST_CASE_TEMPLATE("interleaved gate/up checkpoints pack to the same expert", T, float, double) {
  std::mt19937_64 rng(31);
  const int D = 9, H = 7;
  for (bool bias : {false, true}) {
    const auto moe = dense::Moe::random(1, D, H, bias ? dense::Act::gpt_oss : dense::Act::silu, 32);
    const auto& e = moe.w[0];
    const auto Dz = static_cast<std::size_t>(D), Hz = static_cast<std::size_t>(H);
    // gpt-oss checkpoint order: column 2j is gate j, column 2j + 1 is up j.
    std::vector<T> gu_il(Dz * 2 * Hz), down(Hz * Dz), bgu_il(bias ? 2 * Hz : 0), bdown(bias ? Dz : 0);
    for (std::size_t k = 0; k < Dz; ++k)
      for (std::size_t j = 0; j < Hz; ++j) {
        gu_il[k * 2 * Hz + 2 * j] = static_cast<T>(e.w_gate[k * Hz + j]);
        gu_il[k * 2 * Hz + 2 * j + 1] = static_cast<T>(e.w_up[k * Hz + j]);
      }
    for (std::size_t i = 0; i < Hz * Dz; ++i) down[i] = static_cast<T>(e.w_down[i]);
    if (bias) {
      for (std::size_t j = 0; j < Hz; ++j) {
        bgu_il[2 * j] = static_cast<T>(e.b_gate[j]);
        bgu_il[2 * j + 1] = static_cast<T>(e.b_up[j]);
      }
      for (std::size_t d = 0; d < Dz; ++d) bdown[d] = static_cast<T>(e.b_down[d]);
    }
    const llep::ExpertShape shape{D, H, bias};
    std::vector<T> from_il(shape.elems());
    llep::pack_expert<T>(shape, gu_il, down, bgu_il, bdown, from_il, /*interleaved=*/true);
    const auto plain = moe.packed<T>(0);
    CHECK(from_il == plain);

    // And the functor computes the same bits from either buffer.
    const count_t R = 5;
    std::vector<T> x(static_cast<std::size_t>(R) * Dz), y1(x.size()), y2(x.size());
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    for (T& v : x) v = static_cast<T>(u(rng));
    auto run = [&](const auto& ex, const std::vector<T>& w, std::vector<T>& y) {
      std::vector<std::byte> scratch(ex.scratch_bytes(R, R));
      const llep::ExpertTask<T> task{0, w.data(), x.data(), y.data(), R};
      llep::HostExec exec;
      ex.compute(exec, std::span<const llep::ExpertTask<T>>(&task, 1), scratch.data());
    };
    if (bias) {
      const llep::HostSwiGlu<T, llep::GptOssGlu> ex(shape);
      run(ex, from_il, y1);
      run(ex, plain, y2);
    } else {
      const llep::HostSwiGlu<T> ex(shape);
      run(ex, from_il, y1);
      run(ex, plain, y2);
    }
    CHECK(y1 == y2);
  }
}

TEST_CASE_TEMPLATE("a NaN in one input row gives NaN in that output row only", T, float, double) {
  std::mt19937_64 rng(41);
  const int D = 11, H = 6;
  const auto Dz = static_cast<std::size_t>(D);
  auto moe = dense::Moe::random(3, D, H, dense::Act::gpt_oss, 42);
  match_parameters(moe, llep::GptOssGlu{});
  const auto silu = dense::Moe::random(3, D, H, dense::Act::silu, 43);
  // Rows 0..19 (expert 2, spans two row blocks), 20..22 (expert 0).
  const std::vector<std::pair<int, count_t>> spec = {{2, 20}, {0, 3}};
  std::vector<T> x(23 * Dz);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  for (T& v : x) v = static_cast<T>(u(rng));
  for (std::size_t poisoned : {std::size_t{0}, std::size_t{5}, std::size_t{17}, std::size_t{21}}) {
    std::vector<T> bad = x;
    bad[poisoned * Dz + 4] = std::numeric_limits<T>::quiet_NaN();
    std::vector<T> clean_gpt, got_gpt, clean_silu, got_silu;
    check_tasks<T>(moe, llep::GptOssGlu{}, spec, rng, &x, &clean_gpt);
    // check_tasks would flag the NaN row against the reference; compare the rows directly.
    auto run = [&](const auto& ex, const dense::Moe& m, std::vector<T>& y) {
      const auto w = m.packed_rank<T>(0, 1);
      y.assign(bad.size(), T(0));
      const std::vector<llep::ExpertTask<T>> tasks = {
          {2, w.data() + 2 * ex.weight_elems(), bad.data(), y.data(), 20},
          {0, w.data(), bad.data() + 20 * Dz, y.data() + 20 * Dz, 3}};
      std::vector<std::byte> scratch(ex.scratch_bytes(20, 23));
      llep::HostExec exec;
      ex.compute(exec, std::span<const llep::ExpertTask<T>>(tasks), scratch.data());
    };
    run(llep::HostSwiGlu<T, llep::GptOssGlu>(llep::ExpertShape{D, H, true}), moe, got_gpt);
    run(llep::HostSwiGlu<T>(llep::ExpertShape{D, H, false}), silu, got_silu);
    check_tasks<T>(silu, llep::SiluGlu{}, spec, rng, &x, &clean_silu);
    for (std::size_t r = 0; r < 23; ++r)
      for (std::size_t d = 0; d < Dz; ++d) {
        INFO("poisoned row ", poisoned, ", row ", r, ", column ", d);
        const std::size_t i = r * Dz + d;
        if (r == poisoned) {
          CHECK(std::isnan(got_gpt[i]));
          CHECK(std::isnan(got_silu[i]));
        } else {
          CHECK(got_gpt[i] == clean_gpt[i]);  // bit-identical: rows never mix
          CHECK(got_silu[i] == clean_silu[i]);
        }
      }
  }
}

TEST_CASE("a shape that disagrees with the activation, or is empty, is refused") {
  CHECK_THROWS_AS(llep::HostSwiGlu<float>(llep::ExpertShape{8, 4, true}), llep::Error);
  CHECK_THROWS_AS((llep::HostSwiGlu<double, llep::GptOssGlu>(llep::ExpertShape{8, 4, false})), llep::Error);
  CHECK_THROWS_AS(llep::HostSwiGlu<float>(llep::ExpertShape{0, 4, false}), llep::Error);
  CHECK_THROWS_AS(llep::HostSwiGlu<float>(llep::ExpertShape{8, -1, false}), llep::Error);
  CHECK_NOTHROW(llep::HostSwiGlu<float>(llep::ExpertShape{8, 4, false}));
  CHECK_NOTHROW((llep::HostSwiGlu<float, llep::GptOssGlu>(llep::ExpertShape{8, 4, true})));
  try {
    (void)llep::HostSwiGlu<float>(llep::ExpertShape{8, 4, true});
    FAIL("no llep::Error");
  } catch (const llep::Error& e) {
    const std::string what = e.what();
    CHECK(what.find("bias") != std::string::npos);
    CHECK(what.find("silu") != std::string::npos);
  }
  const llep::HostSwiGlu<float> ex(llep::ExpertShape{8, 4, false});
  CHECK_THROWS_AS((void)ex.scratch_bytes(-1, 0), llep::Error);
  CHECK_THROWS_AS((void)ex.scratch_bytes(5, 4), llep::Error);  // a task larger than all rows
  std::vector<float> w(ex.weight_elems()), x(8), y(8);
  const llep::ExpertTask<float> neg{0, w.data(), x.data(), y.data(), -1};
  llep::HostExec exec;
  CHECK_THROWS_AS(ex.compute(exec, std::span<const llep::ExpertTask<float>>(&neg, 1), nullptr), llep::Error);
  const llep::ExpertTask<float> one{0, w.data(), x.data(), y.data(), 1};
  CHECK_THROWS_AS(ex.compute(exec, std::span<const llep::ExpertTask<float>>(&one, 1), nullptr), llep::Error);
}

// A test that breaks if the gate and up halves of W_gu are exchanged: the library must be
// close to the reference and far from a reference whose gate and up weights are swapped.
TEST_CASE_TEMPLATE("the gate half and the up half are not interchangeable", T, float, double) {
  std::mt19937_64 rng(51);
  const int D = 10, H = 12;
  for (dense::Act a : {dense::Act::silu, dense::Act::gpt_oss}) {
    auto moe = dense::Moe::random(1, D, H, a, 52);
    match_parameters(moe, llep::GptOssGlu{});
    auto swapped = moe;
    std::swap(swapped.w[0].w_gate, swapped.w[0].w_up);
    std::swap(swapped.w[0].b_gate, swapped.w[0].b_up);
    const count_t R = 8;
    std::vector<T> x(static_cast<std::size_t>(R * D)), y(x.size());
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    for (T& v : x) v = static_cast<T>(u(rng));
    const auto w = moe.packed<T>(0);
    const llep::ExpertTask<T> task{0, w.data(), x.data(), y.data(), R};
    llep::HostExec exec;
    if (a == dense::Act::silu) {
      const llep::HostSwiGlu<T> ex(llep::ExpertShape{D, H, false});
      std::vector<std::byte> s(ex.scratch_bytes(R, R));
      ex.compute(exec, std::span<const llep::ExpertTask<T>>(&task, 1), s.data());
    } else {
      const llep::HostSwiGlu<T, llep::GptOssGlu> ex(llep::ExpertShape{D, H, true});
      std::vector<std::byte> s(ex.scratch_bytes(R, R));
      ex.compute(exec, std::span<const llep::ExpertTask<T>>(&task, 1), s.data());
    }
    double to_right = 0, to_swapped = 0;
    for (std::size_t r = 0; r < static_cast<std::size_t>(R); ++r) {
      const auto Dz = static_cast<std::size_t>(D);
      const std::vector<double> xr(x.begin() + static_cast<std::ptrdiff_t>(r * Dz),
                                   x.begin() + static_cast<std::ptrdiff_t>((r + 1) * Dz));
      const auto row = std::span<const T>(y).subspan(r * Dz, Dz);
      to_right = std::max(to_right, row_error<T>(row, moe.expert_forward(0, xr)));
      to_swapped = std::max(to_swapped, row_error<T>(row, swapped.expert_forward(0, xr)));
    }
    INFO((a == dense::Act::silu ? "silu" : "gpt-oss"), ": error ", to_right, ", distance to swapped ", to_swapped);
    CHECK(to_right <= tolerance<T>());
    CHECK(to_swapped > 1e3 * tolerance<T>());
  }
}

// The host reference of the device-sized contract: compute_sized over the first *count
// tasks gives the bits of compute over those tasks; the entries past the count (here with
// rows and null pointers, which compute would refuse) are never read; bounds are checked.
TEST_CASE_TEMPLATE("HostSwiGlu::compute_sized equals compute on random task lists", T, float, double) {
  static_assert(llep::SizedExpertCompute<llep::HostSwiGlu<T>, llep::HostExec>);
  std::mt19937_64 rng(1414);
  for (int trial = 0; trial < 30; ++trial) {
    CAPTURE(trial);
    const llep::SiluGlu act;
    const auto r = testexperts::random_tasks(act, trial, rng);
    const int D = r.moe.hidden, H = r.moe.intermediate;
    const llep::HostSwiGlu<T> ex(llep::ExpertShape{D, H, false}, act);
    const auto weights = r.moe.packed_rank<T>(0, 1);
    count_t total = 0, max_rows = 0;
    for (const auto& s : r.spec) total += s.second, max_rows = std::max(max_rows, s.second);
    const auto Dz = static_cast<std::size_t>(D);
    std::vector<T> x(static_cast<std::size_t>(total) * Dz);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    for (T& v : x) v = static_cast<T>(u(rng));
    std::vector<T> plain(x.size(), T(-1)), sized(x.size(), T(-2));
    auto tasks_into = [&](std::vector<T>& out) {
      std::vector<llep::ExpertTask<T>> tasks;
      std::size_t row = 0;
      for (const auto& [e, rows] : r.spec) {
        tasks.push_back({e, weights.data() + static_cast<std::size_t>(e) * ex.weight_elems(), x.data() + row * Dz,
                         out.data() + row * Dz, rows});
        row += static_cast<std::size_t>(rows);
      }
      return tasks;
    };
    llep::HostExec exec;
    std::vector<std::byte> scratch(std::max(ex.scratch_bytes(max_rows, total),
                                            ex.sized_scratch_bytes(static_cast<int>(r.spec.size()), total)));
    const auto a = tasks_into(plain);
    ex.compute(exec, std::span<const llep::ExpertTask<T>>(a), scratch.data());
    auto b = tasks_into(sized);
    const auto count = static_cast<std::int32_t>(b.size());
    b.push_back({0, nullptr, nullptr, nullptr, 5});  // past the count: ignored
    const llep::SizedTasks<T> st{b.data(), &count, static_cast<int>(b.size()), total, max_rows};
    ex.compute_sized(exec, st, scratch.data());
    CHECK(plain == sized);
    // The count and the bounds are checked on the host.
    const std::int32_t too_many = static_cast<std::int32_t>(b.size()) + 1;
    CHECK_THROWS_AS(ex.compute_sized(exec, {b.data(), &too_many, static_cast<int>(b.size()), total, max_rows},
                                     scratch.data()),
                    llep::Error);
    if (total > 0) {
      CHECK_THROWS_AS(ex.compute_sized(exec, {b.data(), &count, count, total - 1, max_rows}, scratch.data()),
                      llep::Error);
      CHECK_THROWS_AS(ex.compute_sized(exec, {b.data(), &count, count, total, max_rows - 1}, scratch.data()),
                      llep::Error);
    }
  }
}
