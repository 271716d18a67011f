// EmaCounts: the history follows h <- d * l + (1 - d) * h, initialised to the first loads,
// and moves only on steps that succeed on every rank.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "llep/exec/host.hpp"
#include "llep/stats/ema_counts.hpp"
#include "llep/transport/host_threads.hpp"

static_assert(llep::check_history_stats<llep::EmaCounts, llep::HostExec, llep::HostThreads>());

TEST_CASE("EmaCounts rejects a decay outside (0, 1]") {
  for (double d : {0.0, -0.5, 1.5, std::numeric_limits<double>::quiet_NaN()})
    CHECK_THROWS_WITH_AS(llep::EmaCounts{d}, doctest::Contains("must be in (0, 1]"), llep::Error);
  CHECK_THROWS_WITH_AS(llep::EmaCounts{0.0}, "llep: EmaCounts decay = 0 must be in (0, 1]", llep::Error);
  CHECK(llep::EmaCounts{1.0}.decay() == 1.0);
}

TEST_CASE("EmaCounts history matches the hand-computed recurrence on every rank") {
  const int P = 2, N = 4, K = 1;
  const double d = 0.25;
  // Three steps; rank p routes these ids (K = 1, so B_p = ids count).
  const std::vector<std::vector<std::vector<std::int32_t>>> steps = {
      {{0, 0, 1}, {0, 3}},        // l = {3, 1, 0, 1}
      {{2, 2, 2, 2}, {}},         // l = {0, 0, 4, 0}
      {{1}, {1, 1, 3, 3, 3, 3}},  // l = {0, 3, 0, 4}
  };
  const std::vector<double> l1 = {3, 1, 0, 1}, l2 = {0, 0, 4, 0}, l3 = {0, 3, 0, 4};
  std::vector<double> h(N);
  for (int e = 0; e < N; ++e) {
    double x = l1[e];
    x = d * l2[e] + (1 - d) * x;
    x = d * l3[e] + (1 - d) * x;
    h[static_cast<std::size_t>(e)] = x;
  }
  // e.g. expert 0: 3 -> 0.75 * 3 = 2.25 -> 0.75 * 2.25 = 1.6875
  CHECK(h[0] == doctest::Approx(1.6875));

  llep::HostGroup group(P);
  std::vector<llep::EmaCounts> stats(P, llep::EmaCounts{d});
  std::vector<std::vector<double>> after_first(P), history(P);
  std::vector<std::vector<llep::count_t>> loads(P);
  std::vector<std::uint64_t> step_count(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    llep::HostExec exec;
    llep::EmaCounts& s = stats[p];
    for (std::size_t k = 0; k < steps.size(); ++k) {
      const auto& ids = steps[k][p];
      s.update(exec, t, ids.data(), ids.size(), {N, K, static_cast<llep::count_t>(ids.size())});
      if (k == 0) after_first[p].assign(s.history_loads().begin(), s.history_loads().end());
    }
    // A failing step (bad id on rank 1) leaves the history where it was.
    const std::vector<std::int32_t> bad = {t.rank() == 1 ? 9 : 0};
    try {
      s.update(exec, t, bad.data(), 1, {N, K, 1});
    } catch (const llep::Error&) {
    }
    history[p].assign(s.history_loads().begin(), s.history_loads().end());
    step_count[p] = s.steps();
    // loads() of the last good step is gone after the failure; run one more good step.
    const std::vector<std::int32_t> good = {static_cast<std::int32_t>(p)};
    s.update(exec, t, good.data(), 1, {N, K, 1});
    loads[p].assign(s.loads().begin(), s.loads().end());
  });
  for (std::size_t p = 0; p < P; ++p) {
    CHECK(after_first[p] == l1);
    REQUIRE(history[p].size() == N);
    for (std::size_t e = 0; e < N; ++e) CHECK(history[p][e] == doctest::Approx(h[e]).epsilon(1e-12));
    CHECK(step_count[p] == 3);
    CHECK(loads[p] == std::vector<llep::count_t>{1, 1, 0, 0});
  }
}

TEST_CASE("EmaCounts with decay 1 keeps only the last step; reset_history starts over, N may change") {
  llep::HostGroup group(1);
  llep::EmaCounts s{1.0};
  std::string error;
  std::vector<double> last, fresh;
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    llep::HostExec exec;
    const std::vector<std::int32_t> a = {0, 1, 1}, b = {2};
    s.update(exec, t, a.data(), a.size(), {4, 1, 3});
    s.update(exec, t, b.data(), b.size(), {4, 1, 1});
    last.assign(s.history_loads().begin(), s.history_loads().end());
    try {
      s.update(exec, t, b.data(), b.size(), {8, 1, 1});
    } catch (const llep::Error& e) {
      error = e.what();
    }
    s.reset_history();
    s.update(exec, t, b.data(), b.size(), {8, 1, 1});
    fresh.assign(s.history_loads().begin(), s.history_loads().end());
  });
  CHECK(last == std::vector<double>{0, 0, 1, 0});
  CHECK(error ==
        "llep: EmaCounts holds a history of N = 4 experts but this step has N = 8; call reset_history() first");
  CHECK(fresh == std::vector<double>{0, 0, 1, 0, 0, 0, 0, 0});
}
