// HostSwiGlu::backward against the analytic gradients of the independent dense MoE
// (tests/common/dense_moe.hpp), and both against finite differences: both activations,
// gpt-oss clamps active, several tasks per call (empty ones, one expert twice), saved or
// recomputed pre-activations, overwrite and accumulate.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../common/dense_moe.hpp"
#include "../common/errors.hpp"
#include "random_tasks.hpp"
#include "llep/core/concepts.hpp"
#include "llep/core/error.hpp"
#include "llep/exec/host.hpp"
#include "llep/experts/activation.hpp"
#include "llep/experts/expert_backward.hpp"
#include "llep/experts/host_swiglu.hpp"
#include "llep/experts/weight_layout.hpp"

namespace {

using llep::count_t;

// A functor with forward only: still an ExpertCompute, not an ExpertBackward.
struct ForwardOnly {
  using value_type = float;
  int hidden() const { return 4; }
  int intermediate() const { return 4; }
  std::size_t weight_elems() const { return 1; }
  std::size_t scratch_bytes(count_t, count_t) const { return 0; }
  void compute(llep::HostExec&, std::span<const llep::ExpertTask<float>>, void*) const {}
};
static_assert(llep::ExpertCompute<ForwardOnly, llep::HostExec>);
static_assert(!llep::ExpertBackward<ForwardOnly, llep::HostExec>);
static_assert(llep::ExpertBackward<llep::HostSwiGlu<float>, llep::HostExec>);
static_assert(llep::ExpertBackward<llep::HostSwiGlu<double>, llep::HostExec>);
static_assert(llep::ExpertBackward<llep::HostSwiGlu<float, llep::GptOssGlu>, llep::HostExec>);

// Max-norm error of a gradient array relative to its largest reference element (floored
// at 0.05: the gradients here are O(0.1-1), a real bug is off by O(their size)).
//  double: every gradient element is a sum over at most rows (<= 40) products, each of
//    sums over D or H (<= 40) terms: a few hundred ulps of 1.1e-16 at most, so 1e-10
//    leaves a wide margin and is still ~1e4x below float.
//  float: the same sums with u = 6e-8 on float-rounded inputs and weights; the error of a
//    sum of n terms grows ~ sqrt(n) u times the terms' size, and a gradient element goes
//    through three such sums (dh, dgu, then dx or the row sum): ~ 3 sqrt(80) u ~ 2e-6, so
//    2e-5; a wrong term or derivative gives O(1).
template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, double> ? 1e-10 : 2e-5;
}

template <class T>
double rel_error(std::span<const T> got, std::span<const double> ref) {
  REQUIRE(got.size() == ref.size());
  double norm = 0.05, err = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    norm = std::max(norm, std::abs(ref[i]));
    err = std::max(err, std::abs(static_cast<double>(got[i]) - ref[i]));
  }
  return err / norm;
}

using testexperts::match_parameters;

struct Case {
  std::vector<std::pair<int, count_t>> spec;  // (expert, rows) per task
  bool save = false;                          // pre-activations from forward, or recomputed
  llep::GradMode mode = llep::GradMode::overwrite;
};

// Forward then backward over the tasks of `c` (rows back to back, as the layer lays them
// out), checked against dense::Moe: every row's input gradient and every expert's weight
// gradient (tasks of one expert sum into one buffer). Returns the flattened results so
// callers can compare runs bit for bit.
template <class T, class Act>
std::vector<T> check_backward(const dense::Moe& moe, const Act& act, const Case& c, std::mt19937_64& rng) {
  const int D = moe.hidden, H = moe.intermediate, N = moe.experts;
  const llep::HostSwiGlu<T, Act> ex(llep::ExpertShape{D, H, Act::has_bias}, act);
  REQUIRE(ex.weight_bytes() == ex.weight_elems() * sizeof(T));
  REQUIRE(ex.row_bytes() == static_cast<std::size_t>(D) * sizeof(T));
  const std::size_t W = ex.weight_elems(), Dz = static_cast<std::size_t>(D);
  const auto weights = moe.packed_rank<T>(0, 1);

  count_t total = 0, max_rows = 0;
  for (const auto& [e, r] : c.spec) total += r, max_rows = std::max(max_rows, r);
  const auto rows = static_cast<std::size_t>(total);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<T> x(rows * Dz), dy(rows * Dz), y(rows * Dz);
  for (T& v : x) v = static_cast<T>(u(rng));
  for (T& v : dy) v = static_cast<T>(u(rng));

  llep::HostExec exec;
  std::vector<llep::ExpertTask<T>> fwd;
  for (std::size_t row = 0; const auto& [e, r] : c.spec) {
    fwd.push_back({e, weights.data() + static_cast<std::size_t>(e) * W, x.data() + row * Dz, y.data() + row * Dz, r});
    row += static_cast<std::size_t>(r);
  }
  const std::size_t saved_doubles = rows * ex.saved_row_bytes() / sizeof(double) + 1;
  std::vector<double> saved(saved_doubles);  // double-aligned for either acc type
  std::vector<std::byte> fscratch(ex.scratch_bytes(max_rows, total) + 1);
  ex.compute(exec, std::span<const llep::ExpertTask<T>>(fwd), fscratch.data() + 1, c.save ? saved.data() : nullptr);

  // Gradient buffers: one per expert, preset to `old` (accumulate adds onto it; overwrite
  // must ignore it, so it is NaN there).
  const bool acc = c.mode == llep::GradMode::accumulate;
  std::vector<std::vector<T>> old(static_cast<std::size_t>(N)), gw(static_cast<std::size_t>(N));
  for (int e = 0; e < N; ++e) {
    auto& o = old[static_cast<std::size_t>(e)];
    o.resize(W);
    for (T& v : o) v = acc ? static_cast<T>(u(rng)) : std::numeric_limits<T>::quiet_NaN();
    gw[static_cast<std::size_t>(e)] = o;
  }
  std::vector<T> dx(rows * Dz + 8, T(-7));
  std::vector<llep::ExpertGradTask<T>> tasks;
  const auto* saved_bytes = reinterpret_cast<const std::byte*>(saved.data());
  for (std::size_t row = 0; const auto& [e, r] : c.spec) {
    tasks.push_back({e, weights.data() + static_cast<std::size_t>(e) * W, x.data() + row * Dz, dy.data() + row * Dz,
                     dx.data() + row * Dz, gw[static_cast<std::size_t>(e)].data(),
                     c.save ? saved_bytes + row * ex.saved_row_bytes() : nullptr, r});
    row += static_cast<std::size_t>(r);
  }
  const std::size_t sbytes = ex.backward_scratch_bytes(max_rows, total);
  const std::byte fill{0x5A};
  std::vector<std::byte> scratch(sbytes + 1 + 64, fill);
  ex.backward(exec, std::span<const llep::ExpertGradTask<T>>(tasks), c.mode, sbytes ? scratch.data() + 1 : nullptr);
  CHECK(scratch[0] == fill);
  for (std::size_t i = 1 + sbytes; i < scratch.size(); ++i) REQUIRE(scratch[i] == fill);
  for (std::size_t i = rows * Dz; i < dx.size(); ++i) REQUIRE(dx[i] == T(-7));

  // Reference, row by row from the same T-valued inputs.
  std::vector<dense::Expert> ref(static_cast<std::size_t>(N), moe.zero_expert());
  std::vector<bool> touched(static_cast<std::size_t>(N), false);
  double worst_dx = 0;
  for (std::size_t row = 0; const auto& [e, r] : c.spec) {
    touched[static_cast<std::size_t>(e)] = true;
    for (count_t i = 0; i < r; ++i, ++row) {
      const std::vector<double> xr(x.begin() + static_cast<std::ptrdiff_t>(row * Dz),
                                   x.begin() + static_cast<std::ptrdiff_t>((row + 1) * Dz));
      const std::vector<double> gr(dy.begin() + static_cast<std::ptrdiff_t>(row * Dz),
                                   dy.begin() + static_cast<std::ptrdiff_t>((row + 1) * Dz));
      const auto want = moe.expert_backward(e, xr, gr, ref[static_cast<std::size_t>(e)]);
      worst_dx = std::max(worst_dx, rel_error<T>(std::span<const T>(dx).subspan(row * Dz, Dz), want));
    }
  }
  INFO("D = ", D, ", H = ", H, ", ", std::string(Act::name), ", save = ", c.save, ", accumulate = ", acc);
  CHECK(worst_dx <= tolerance<T>());
  for (int e = 0; e < N; ++e) {
    const auto ez = static_cast<std::size_t>(e);
    if (!touched[ez]) {  // no task: the buffer is not written at all
      for (std::size_t i = 0; i < W; ++i) REQUIRE((std::isnan(gw[ez][i]) || gw[ez][i] == old[ez][i]));
      continue;
    }
    auto want = moe.packed_of<double>(ref[ez]);
    if (acc)
      for (std::size_t i = 0; i < W; ++i) want[i] += static_cast<double>(old[ez][i]);
    CAPTURE(e);
    CHECK(rel_error<T>(gw[ez], want) <= tolerance<T>());
  }
  std::vector<T> flat(dx.begin(), dx.begin() + static_cast<std::ptrdiff_t>(rows * Dz));
  for (const auto& g : gw) flat.insert(flat.end(), g.begin(), g.end());
  return flat;
}

template <class T, class Act>
void random_trials(Act act, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 30; ++trial) {
    auto r = testexperts::random_tasks(act, trial, rng);
    Case c{std::move(r.spec), trial % 2 == 1,
           trial % 3 == 2 ? llep::GradMode::accumulate : llep::GradMode::overwrite};
    c.spec.emplace_back(c.spec.front().first, 3);  // one expert twice: two segments sum
    CAPTURE(trial);
    (void)check_backward<T>(r.moe, act, c, rng);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("HostSwiGlu::backward equals the dense analytic gradients", T, float, double) {
  SUBCASE("silu") { random_trials<T>(llep::SiluGlu{}, 61); }
  SUBCASE("gpt-oss, default parameters") { random_trials<T>(llep::GptOssGlu{}, 62); }
  SUBCASE("gpt-oss, a low limit that clamps often") { random_trials<T>(llep::GptOssGlu{0.25, 1.5}, 63); }
}

TEST_CASE("clamps are active in the low-limit case, on gate and on up") {
  // The test above only proves the clamp rule if it is exercised: count clamped entries.
  std::mt19937_64 rng(64);
  auto moe = dense::Moe::random(1, 24, 16, dense::Act::gpt_oss, 65);
  moe.limit = 0.25;
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  int gate_clamped = 0, up_clamped = 0, free = 0;
  for (int r = 0; r < 20; ++r) {
    std::vector<double> x(24);
    for (double& v : x) v = u(rng);
    for (int j = 0; j < 16; ++j) {
      double g = moe.w[0].b_gate[static_cast<std::size_t>(j)], up = moe.w[0].b_up[static_cast<std::size_t>(j)];
      for (int k = 0; k < 24; ++k) {
        g += x[static_cast<std::size_t>(k)] * moe.w[0].w_gate[static_cast<std::size_t>(k * 16 + j)];
        up += x[static_cast<std::size_t>(k)] * moe.w[0].w_up[static_cast<std::size_t>(k * 16 + j)];
      }
      gate_clamped += g > moe.limit;
      up_clamped += std::abs(up) > moe.limit;
      free += g <= moe.limit && std::abs(up) <= moe.limit;
    }
  }
  CHECK(gate_clamped > 20);
  CHECK(up_clamped > 20);
  CHECK(free > 20);
}

TEST_CASE("the activation derivatives match finite differences, clamps pass nothing") {
  const llep::GptOssGlu gpt{0.5, 1.702};
  const llep::SiluGlu silu;
  const double h = 1e-6;
  for (double g : {-3.0, -0.4, 0.1, 0.45, 0.6, 2.0})
    for (double up : {-0.9, -0.3, 0.2, 0.49, 0.7}) {
      CAPTURE(g);
      CAPTURE(up);
      const auto q = gpt.grad(g, up);
      CHECK(q.value == doctest::Approx(gpt(g, up)).epsilon(1e-14));
      CHECK(q.d_gate == doctest::Approx((gpt(g + h, up) - gpt(g - h, up)) / (2 * h)).epsilon(1e-7));
      CHECK(q.d_up == doctest::Approx((gpt(g, up + h) - gpt(g, up - h)) / (2 * h)).epsilon(1e-7));
      if (g > gpt.limit) CHECK(q.d_gate == 0.0);
      if (std::abs(up) > gpt.limit) CHECK(q.d_up == 0.0);
      const auto s = silu.grad(g, up);
      CHECK(s.value == doctest::Approx(silu(g, up)).epsilon(1e-14));
      CHECK(s.d_gate == doctest::Approx((silu(g + h, up) - silu(g - h, up)) / (2 * h)).epsilon(1e-7));
      CHECK(s.d_up == doctest::Approx((silu(g, up + h) - silu(g, up - h)) / (2 * h)).epsilon(1e-7));
    }
}

// Finite differences of the dense forward validate the dense backward (the reference
// itself), including the gate gradient; then the library is checked against it above.
TEST_CASE("the dense reference's gradients match finite differences") {
  for (dense::Act a : {dense::Act::silu, dense::Act::gpt_oss}) {
    CAPTURE(a == dense::Act::silu ? "silu" : "gpt-oss");
    std::mt19937_64 rng(71);
    auto moe = dense::Moe::random(3, 5, 4, a, 72);
    moe.limit = 0.6;  // clamps active for gpt-oss
    const int K = 2, B = 4, D = 5;
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    std::vector<double> x(B * D), go(B * D), gates(B * K);
    for (double& v : x) v = u(rng);
    for (double& v : go) v = u(rng);
    for (double& v : gates) v = u(rng);
    const std::vector<std::int32_t> ids = {0, 2, 1, 0, 2, 2, 1, 0};  // expert twice in token 2
    // Loss = <grad_out, forward(...)>, so d loss = the gradients under test.
    auto loss = [&](const dense::Moe& m, const std::vector<double>& xs, const std::vector<double>& gs) {
      const auto y = m.forward(xs, ids, gs, K);
      double l = 0;
      for (std::size_t i = 0; i < y.size(); ++i) l += go[i] * y[i];
      return l;
    };
    const auto g = moe.backward(x, ids, gates, K, go);
    const double h = 1e-6;
    // Central differences are exact to O(h^2 f''') ~ 1e-12 away from a clamp's kink, plus
    // rounding ~ 1e-16 / h = 1e-10; 1e-7 fails any wrong term (O(0.1)).
    auto fd_check = [&](double& param, double analytic, auto&& l) {
      const double keep = param;
      param = keep + h;
      const double up = l();
      param = keep - h;
      const double down = l();
      param = keep;
      CHECK(std::abs((up - down) / (2 * h) - analytic) <= 1e-7 * std::max(1.0, std::abs(analytic)));
    };
    for (std::size_t i = 0; i < x.size(); ++i) fd_check(x[i], g.hidden[i], [&] { return loss(moe, x, gates); });
    for (std::size_t i = 0; i < gates.size(); ++i) fd_check(gates[i], g.gates[i], [&] { return loss(moe, x, gates); });
    for (std::size_t e = 0; e < 3; ++e) {
      auto& w = moe.w[e];
      const auto& gw = g.experts[e];
      auto each = [&](std::vector<double>& p, const std::vector<double>& gp) {
        REQUIRE(p.size() == gp.size());
        for (std::size_t i = 0; i < p.size(); ++i) fd_check(p[i], gp[i], [&] { return loss(moe, x, gates); });
      };
      each(w.w_gate, gw.w_gate);
      each(w.w_up, gw.w_up);
      each(w.w_down, gw.w_down);
      each(w.b_gate, gw.b_gate);
      each(w.b_up, gw.b_up);
      each(w.b_down, gw.b_down);
    }
  }
}

TEST_CASE("saved and recomputed pre-activations give the same bits; repeated calls too") {
  for (bool gpt : {false, true}) {
    std::mt19937_64 rng(81), rng2(81), rng3(81);
    auto moe = dense::Moe::random(3, 19, 23, gpt ? dense::Act::gpt_oss : dense::Act::silu, 82);
    moe.limit = 0.5;
    const llep::GptOssGlu act{0.5, 1.702};
    Case c{{{2, 20}, {0, 0}, {1, 33}, {2, 5}}, false, llep::GradMode::overwrite};
    auto run = [&](std::mt19937_64& r) {
      return gpt ? check_backward<float>(moe, act, c, r) : check_backward<float>(moe, llep::SiluGlu{}, c, r);
    };
    const auto recomputed = run(rng);
    c.save = true;
    const auto saved = run(rng2);
    const auto again = run(rng3);
    CHECK(std::memcmp(recomputed.data(), saved.data(), saved.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(saved.data(), again.data(), saved.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("null grad_in or grad_weights skips that gradient; empty tasks zero under overwrite") {
  const int D = 6, H = 5;
  auto moe = dense::Moe::random(2, D, H, dense::Act::silu, 91);
  const llep::HostSwiGlu<double> ex(llep::ExpertShape{D, H, false});
  const auto w = moe.packed_rank<double>(0, 1);
  const std::size_t W = ex.weight_elems();
  std::vector<double> x(3 * D, 0.25), dy(3 * D, -0.5), dx(3 * D, 9.0), g0(W, 9.0), g1(W, 9.0);
  std::vector<std::byte> scratch(ex.backward_scratch_bytes(3, 3));
  llep::HostExec exec;
  using Task = llep::ExpertGradTask<double>;
  const std::vector<Task> only_dx = {{0, w.data(), x.data(), dy.data(), dx.data(), nullptr, nullptr, 3},
                                     {1, w.data() + W, nullptr, nullptr, nullptr, g1.data(), nullptr, 0}};
  ex.backward(exec, std::span<const Task>(only_dx), llep::GradMode::overwrite, scratch.data());
  CHECK(dx[0] != 9.0);
  CHECK(std::all_of(g0.begin(), g0.end(), [](double v) { return v == 9.0; }));
  CHECK(std::all_of(g1.begin(), g1.end(), [](double v) { return v == 0.0; }));  // empty task zeroed
  std::fill(dx.begin(), dx.end(), 9.0);
  const std::vector<Task> only_w = {{0, w.data(), x.data(), dy.data(), nullptr, g0.data(), nullptr, 3}};
  ex.backward(exec, std::span<const Task>(only_w), llep::GradMode::accumulate, scratch.data());
  CHECK(std::all_of(dx.begin(), dx.end(), [](double v) { return v == 9.0; }));
  CHECK(g0[0] != 9.0);
}

TEST_CASE("float weights with double weight gradients") {
  std::mt19937_64 rng(95);
  const int D = 12, H = 9;
  auto moe = dense::Moe::random(1, D, H, dense::Act::gpt_oss, 96);
  const llep::HostSwiGlu<float, llep::GptOssGlu> ex(llep::ExpertShape{D, H, true});
  const auto w = moe.packed<float>(0);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  const count_t R = 21;
  std::vector<float> x(R * D), dy(R * D), dx(R * D);
  for (float& v : x) v = static_cast<float>(u(rng));
  for (float& v : dy) v = static_cast<float>(u(rng));
  std::vector<double> gw(ex.weight_elems(), 3.0);
  const llep::ExpertGradTask<float, double> t{0, w.data(), x.data(), dy.data(), dx.data(), gw.data(), nullptr, R};
  std::vector<std::byte> scratch(ex.backward_scratch_bytes(R, R));
  llep::HostExec exec;
  llep::expert_backward(ex, exec, std::span<const llep::ExpertGradTask<float, double>>(&t, 1),
                        llep::GradMode::overwrite, scratch.data());
  dense::Expert ref = moe.zero_expert();
  for (count_t r = 0; r < R; ++r) {
    const std::vector<double> xr(x.begin() + r * D, x.begin() + (r + 1) * D), gr(dy.begin() + r * D, dy.begin() + (r + 1) * D);
    (void)moe.expert_backward(0, xr, gr, ref);
  }
  CHECK(rel_error<double>(gw, moe.packed_of<double>(ref)) <= 2e-5);
}

TEST_CASE("bad backward tasks are refused with llep::Error") {
  const llep::HostSwiGlu<float> ex(llep::ExpertShape{8, 4, false});
  std::vector<float> w(ex.weight_elems()), x(8), dy(8), dx(8), gw(w.size());
  llep::HostExec exec;
  using Task = llep::ExpertGradTask<float>;
  std::vector<std::byte> scratch(ex.backward_scratch_bytes(1, 1));
  auto run = [&](const Task& t, void* s) {
    return testutil::error_of(
        [&] { ex.backward(exec, std::span<const Task>(&t, 1), llep::GradMode::overwrite, s); });
  };
  CHECK(run({0, w.data(), x.data(), dy.data(), dx.data(), gw.data(), nullptr, -1}, scratch.data()).find("rows = -1") !=
        std::string::npos);
  CHECK(run({0, w.data(), x.data(), nullptr, dx.data(), gw.data(), nullptr, 1}, scratch.data()).find("grad_out") !=
        std::string::npos);
  CHECK(run({0, w.data(), x.data(), dy.data(), dx.data(), gw.data(), nullptr, 1}, nullptr).find("scratch") !=
        std::string::npos);
  CHECK(run({0, w.data(), x.data(), dy.data(), dx.data(), gw.data(), nullptr, 1}, scratch.data()) == testutil::kNoError);
  CHECK(ex.backward_scratch_bytes(0, 0) == 0);
  CHECK_THROWS_AS((void)ex.backward_scratch_bytes(3, 2), llep::Error);
}

namespace {

// backward_sized over the first *count tasks against backward over those tasks, bit for
// bit: random tasks (one gradient buffer per expert, so repeated experts share one; empty
// tasks), both GradModes, some tasks without grad_in or grad_weights, and entries past the
// count with rows but null pointers (backward would refuse them; they must not be read).
template <class T, class Act>
void sized_backward_trials(const Act& act, std::uint64_t seed) {
  static_assert(llep::SizedExpertBackward<llep::HostSwiGlu<T, Act>, llep::HostExec>);
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 20; ++trial) {
    CAPTURE(trial);
    auto r = testexperts::random_tasks(act, trial, rng);
    r.spec.emplace_back(r.spec.front().first, 2);  // one expert twice at least
    const int D = r.moe.hidden, H = r.moe.intermediate, N = r.moe.experts;
    const llep::HostSwiGlu<T, Act> ex(llep::ExpertShape{D, H, Act::has_bias}, act);
    const auto weights = r.moe.template packed_rank<T>(0, 1);
    const std::size_t W = ex.weight_elems(), Dz = static_cast<std::size_t>(D);
    count_t total = 0, max_rows = 0;
    for (const auto& s : r.spec) total += s.second, max_rows = std::max(max_rows, s.second);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    std::vector<T> x(static_cast<std::size_t>(total) * Dz), dy(x.size()), old(static_cast<std::size_t>(N) * W);
    for (T& v : x) v = static_cast<T>(u(rng));
    for (T& v : dy) v = static_cast<T>(u(rng));
    for (T& v : old) v = static_cast<T>(u(rng));
    const auto mode = trial % 2 ? llep::GradMode::accumulate : llep::GradMode::overwrite;
    struct Out {
      std::vector<T> dx, gw;
    };
    Out plain{std::vector<T>(x.size(), T(-3)), old}, sized{plain.dx, old};
    auto tasks_into = [&](Out& o) {
      std::vector<llep::ExpertGradTask<T>> tasks;
      std::size_t row = 0;
      for (std::size_t i = 0; i < r.spec.size(); ++i) {
        const auto [e, rows] = r.spec[i];
        const auto ez = static_cast<std::size_t>(e);
        tasks.push_back({e, weights.data() + ez * W, x.data() + row * Dz, dy.data() + row * Dz,
                         i % 4 == 3 ? nullptr : o.dx.data() + row * Dz, i % 5 == 4 ? nullptr : o.gw.data() + ez * W,
                         nullptr, rows});
        row += static_cast<std::size_t>(rows);
      }
      return tasks;
    };
    llep::HostExec exec;
    const auto n_tasks = static_cast<int>(r.spec.size()) + 2;
    std::vector<std::byte> scratch(
        std::max(ex.backward_scratch_bytes(max_rows, total), ex.sized_backward_scratch_bytes(n_tasks, total)));
    const auto a = tasks_into(plain);
    ex.backward(exec, std::span<const llep::ExpertGradTask<T>>(a), mode, scratch.data());
    auto b = tasks_into(sized);
    const auto count = static_cast<std::int32_t>(b.size());
    b.push_back({0, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 5});  // past the count: ignored
    b.push_back({0, nullptr, nullptr, nullptr, nullptr, sized.gw.data(), nullptr, 0});
    const llep::SizedGradTasks<T> st{b.data(), &count, n_tasks, total, max_rows};
    ex.backward_sized(exec, st, mode, scratch.data());
    CHECK(std::memcmp(plain.dx.data(), sized.dx.data(), plain.dx.size() * sizeof(T)) == 0);
    CHECK(std::memcmp(plain.gw.data(), sized.gw.data(), plain.gw.size() * sizeof(T)) == 0);
    CHECK(plain.gw != old);  // some gradient was written (no NaN: every value compares)

    // The count, the bounds and the saved pointers are checked on the host.
    auto error = [&](std::int32_t n, count_t rows_bound, count_t task_bound) {
      return testutil::error_of([&] {
        ex.backward_sized(exec, llep::SizedGradTasks<T>{b.data(), &n, count, rows_bound, task_bound}, mode, scratch.data());
      });
    };
    CHECK(error(count + 1, total, max_rows).find("task count = ") != std::string::npos);
    CHECK(error(-1, total, max_rows).find("task count = -1") != std::string::npos);
    if (total > 0) {
      CHECK(error(count, total - 1, max_rows).find("exceed the bounds") != std::string::npos);
      CHECK(error(count, total, max_rows - 1).find("exceed the bounds") != std::string::npos);
    }
    b[0].saved = x.data();
    CHECK(error(count, total, max_rows).find("saved pointer") != std::string::npos);
  }
}

}  // namespace

TEST_CASE_TEMPLATE("HostSwiGlu::backward_sized equals backward on random task lists", T, float, double) {
  SUBCASE("silu") { sized_backward_trials<T>(llep::SiluGlu{}, 71); }
  SUBCASE("gpt-oss, a low limit that clamps often") { sized_backward_trials<T>(llep::GptOssGlu{0.25, 1.5}, 72); }
}

TEST_CASE("backward_sized with no tasks, or only empty ones, reads nothing but the count") {
  const llep::HostSwiGlu<float> ex(llep::ExpertShape{8, 4, false});
  llep::HostExec exec;
  std::vector<float> gw(ex.weight_elems(), 9.0f);
  using Task = llep::ExpertGradTask<float>;
  const std::int32_t zero = 0, one = 1;
  const Task empty{0, nullptr, nullptr, nullptr, nullptr, gw.data(), nullptr, 0};
  ex.backward_sized(exec, llep::SizedGradTasks<float>{nullptr, &zero, 0, 0, 0}, llep::GradMode::overwrite, nullptr);
  CHECK(std::all_of(gw.begin(), gw.end(), [](float v) { return v == 9.0f; }));
  ex.backward_sized(exec, llep::SizedGradTasks<float>{&empty, &one, 1, 0, 0}, llep::GradMode::accumulate, nullptr);
  CHECK(std::all_of(gw.begin(), gw.end(), [](float v) { return v == 9.0f; }));
  ex.backward_sized(exec, llep::SizedGradTasks<float>{&empty, &one, 1, 0, 0}, llep::GradMode::overwrite, nullptr);
  CHECK(std::all_of(gw.begin(), gw.end(), [](float v) { return v == 0.0f; }));  // an empty task zeroes its buffer
  CHECK(ex.sized_backward_scratch_bytes(3, 40) == ex.backward_scratch_bytes(40, 40));
  CHECK_THROWS_AS((void)ex.sized_backward_scratch_bytes(-1, 4), llep::Error);
  CHECK(testutil::error_of([&] {
          ex.backward_sized(exec, llep::SizedGradTasks<float>{&empty, nullptr, 1, 0, 0}, llep::GradMode::overwrite,
                            nullptr);
        }).find("count pointer") != std::string::npos);
}
