// ExactCounts over HostExec + HostThreads: the gathered C and l equal a brute-force count,
// bad input on one rank throws the same llep::Error on every rank, and the device staging
// path (exercised with host memory posing as device memory) gives the same answer.
#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "llep/exec/host.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/stats/routing_stats.hpp"
#include "llep/transport/host_threads.hpp"

namespace {

using Ids = std::vector<std::int32_t>;
using Counts = std::vector<llep::count_t>;

struct RankResult {
  Counts counts, loads, local;
  int ranks = 0, experts = 0;
  std::string error;
};

RankResult snapshot(const auto& stats) {
  RankResult r;
  r.counts.assign(stats.counts().data().begin(), stats.counts().data().end());
  r.loads.assign(stats.loads().begin(), stats.loads().end());
  r.local.assign(stats.local_counts().begin(), stats.local_counts().end());
  r.ranks = stats.counts().ranks();
  r.experts = stats.counts().experts();
  return r;
}

// Random routing: B_p tokens (0 allowed), K distinct experts each, skewed towards expert 0.
std::vector<Ids> random_routing(std::mt19937& rng, int P, int N, int K, std::vector<llep::count_t>& tokens) {
  std::vector<Ids> ids(static_cast<std::size_t>(P));
  tokens.assign(static_cast<std::size_t>(P), 0);
  for (std::size_t p = 0; p < ids.size(); ++p) {
    tokens[p] = rng() % 4 == 0 ? 0 : static_cast<llep::count_t>(rng() % 40);
    for (llep::count_t b = 0; b < tokens[p]; ++b) {
      std::vector<bool> used(static_cast<std::size_t>(N), false);
      for (int k = 0; k < K; ++k) {
        int e;
        do e = rng() % 3 == 0 ? 0 : static_cast<int>(rng() % static_cast<unsigned>(N));
        while (used[static_cast<std::size_t>(e)]);
        used[static_cast<std::size_t>(e)] = true;
        ids[p].push_back(e);
      }
    }
  }
  return ids;
}

Counts brute_counts(const std::vector<Ids>& ids, int N) {
  Counts c(ids.size() * static_cast<std::size_t>(N), 0);
  for (std::size_t p = 0; p < ids.size(); ++p)
    for (std::int32_t e : ids[p]) ++c[p * static_cast<std::size_t>(N) + static_cast<std::size_t>(e)];
  return c;
}

// Runs one ExactCounts step per rank with the given per-rank inputs.
template <class Stats = llep::ExactCounts>
std::vector<RankResult> run_step(llep::HostGroup& group, std::vector<Stats>& stats, const std::vector<Ids>& ids,
                                 const std::vector<llep::StepShape>& shapes,
                                 const std::vector<llep::RouteFlags>& flags = {}) {
  std::vector<RankResult> out(static_cast<std::size_t>(group.size()));
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    llep::HostExec exec;
    try {
      stats[p].update(exec, t, ids[p].data(), ids[p].size(), shapes[p], flags.empty() ? llep::RouteFlags{} : flags[p]);
      out[p] = snapshot(stats[p]);
    } catch (const llep::Error& e) {
      out[p] = snapshot(stats[p]);
      out[p].error = e.what();
    }
  });
  return out;
}

// Host memory posing as device memory: the exec's histogram must land in its workspace,
// and the transport only ever sees workspace pointers; to_host calls are counted.
struct FakeDeviceExec {
  static constexpr llep::MemorySpace memory = llep::MemorySpace::device;
  llep::HostExec host;
  int to_host_calls = 0;
  std::size_t largest_to_host = 0;
  bool histogram_outside_workspace = false;

  bool in_workspace(const void* p) const {
    const auto* b = static_cast<const std::byte*>(p);
    return host.workspace_capacity() > 0 && b >= ws && b < ws + host.workspace_capacity();
  }
  void histogram(const std::int32_t* ids, std::size_t n, int bins, llep::count_t* counts) {
    histogram_outside_workspace |= !in_workspace(counts);
    host.histogram(ids, n, bins, counts);
  }
  void to_host(void* dst, const void* src, std::size_t bytes) {
    ++to_host_calls;
    largest_to_host = std::max(largest_to_host, bytes);
    host.to_host(dst, src, bytes);
  }
  void from_host(void* dst, const void* src, std::size_t bytes) { host.from_host(dst, src, bytes); }
  void synchronize() const noexcept {}
  std::byte* workspace(std::size_t bytes) { return ws = host.workspace(bytes); }
  std::byte* ws = nullptr;
};

struct FakeDeviceTransport {
  static constexpr llep::MemorySpace memory = llep::MemorySpace::device;
  llep::HostThreads inner;
  const FakeDeviceExec* exec = nullptr;
  bool saw_host_pointer = false;
  int rank() const { return inner.rank(); }
  int size() const { return inner.size(); }
  void all_gather(const void* src, std::size_t bytes, void* dst) {
    saw_host_pointer |= !exec->in_workspace(src) || !exec->in_workspace(dst);
    inner.all_gather(src, bytes, dst);
  }
  void all_to_all_v(const void* src, std::span<const std::size_t> ss, std::span<const std::size_t> so, void* dst,
                    std::span<const std::size_t> rs, std::span<const std::size_t> ro) {
    inner.all_to_all_v(src, ss, so, dst, rs, ro);
  }
  void exchange(std::span<const llep::P2pOp> ops) { inner.exchange(ops); }
  void barrier() { inner.barrier(); }
  void abort(std::string_view why) { inner.abort(why); }
};

}  // namespace

static_assert(llep::check_routing_stats<llep::ExactCounts, llep::HostExec, llep::HostThreads>());
static_assert(llep::RoutingStats<llep::ExactCounts, FakeDeviceExec, FakeDeviceTransport>);
static_assert(!llep::RoutingStats<int, llep::HostExec, llep::HostThreads>);
static_assert(!llep::HistoryStats<llep::ExactCounts, llep::HostExec, llep::HostThreads>);

TEST_CASE("HostExec::histogram counts every id, with ids outside [0, N) in bin N") {
  const Ids ids = {0, 3, 3, -1, 4, 2, 3, 99, 0};
  Counts c(6, -7);
  llep::HostExec{}.histogram(ids.data(), ids.size(), 5, c.data());
  CHECK(c == Counts{2, 0, 1, 3, 1, 2});
}

TEST_CASE("ExactCounts: C, loads and the local row equal a brute-force count on every rank") {
  std::mt19937 rng(7);
  for (int P : {1, 2, 3, 4}) {
    llep::HostGroup group(P);
    std::vector<llep::ExactCounts> stats(static_cast<std::size_t>(P));
    for (const auto& row : {std::pair{4, 1}, std::pair{16, 2}, std::pair{16, 4}, std::pair{5, 5}}) {
      const int N = row.first;  // copies, not structured bindings: CHECK_MESSAGE and CAPTURE capture them (clang 14)
      const int K = row.second;
      std::vector<llep::count_t> tokens;
      const auto ids = random_routing(rng, P, N, K, tokens);
      std::vector<llep::StepShape> shapes;
      for (llep::count_t b : tokens) shapes.push_back({N, K, b});
      const auto out = run_step(group, stats, ids, shapes);

      const Counts c = brute_counts(ids, N);
      Counts l(static_cast<std::size_t>(N), 0);
      for (std::size_t i = 0; i < c.size(); ++i) l[i % static_cast<std::size_t>(N)] += c[i];
      for (std::size_t p = 0; p < out.size(); ++p) {
        CAPTURE(P);
        CAPTURE(N);
        CAPTURE(p);
        CHECK(out[p].error == "");
        CHECK(out[p].ranks == P);
        CHECK(out[p].experts == N);
        CHECK(out[p].counts == c);
        CHECK(out[p].loads == l);
        CHECK(out[p].local == Counts(c.begin() + static_cast<std::ptrdiff_t>(p) * N,
                                     c.begin() + static_cast<std::ptrdiff_t>(p + 1) * N));
      }
    }
  }
}

TEST_CASE("ExactCounts reuses its buffers once warm") {
  llep::HostGroup group(2);
  std::vector<llep::ExactCounts> stats(2);
  const std::vector<Ids> ids = {{0, 1, 2, 3}, {3, 3}};
  const std::vector<llep::StepShape> shapes = {{4, 2, 2}, {4, 2, 1}};
  run_step(group, stats, ids, shapes);
  const auto* counts = stats[0].counts().data().data();
  const auto* loads = stats[0].loads().data();
  run_step(group, stats, ids, shapes);
  CHECK(stats[0].counts().data().data() == counts);
  CHECK(stats[0].loads().data() == loads);
}

TEST_CASE("an expert id outside [0, N) on one rank throws the same llep::Error on every rank") {
  const int P = 4, N = 16, K = 2;
  llep::HostGroup group(P);
  std::vector<llep::ExactCounts> stats(P);
  for (const std::int32_t bad : {16, -1, 1000}) {
    std::vector<Ids> ids(P, Ids{1, 2, 3, 4});
    ids[2][3] = bad;
    ids[2].push_back(bad);  // two bad ids; the first is named
    ids[2].push_back(0);
    const std::vector<llep::StepShape> shapes = {{N, K, 2}, {N, K, 2}, {N, K, 3}, {N, K, 2}};
    const auto out = run_step(group, stats, ids, shapes);
    const std::string expected =
        "llep: rank 2 routed expert id " + std::to_string(bad) + " outside [0, 16) (2 of 6 ids are out of range)";
    for (const auto& r : out) {
      CHECK(r.error == expected);
      CHECK(r.ranks == 0);  // views empty after a failed step
      CHECK(r.loads.empty());
    }
  }
  // The next good step works on the same group and stats.
  const std::vector<Ids> ids(P, Ids{0, 15});
  const auto out = run_step(group, stats, ids, std::vector<llep::StepShape>(P, {N, K, 1}));
  for (const auto& r : out) {
    CHECK(r.error == "");
    CHECK(r.loads[0] == P);
    CHECK(r.loads[15] == P);
  }
}

TEST_CASE("mismatched shapes and local faults throw the same llep::Error on every rank, naming the rank") {
  const int P = 3;
  llep::HostGroup group(P);
  std::vector<llep::ExactCounts> stats(P);
  const std::vector<Ids> ids(P, Ids{0, 1});
  auto expect_all = [&](const std::vector<RankResult>& out, const std::string& message) {
    for (const auto& r : out) CHECK(r.error == message);
  };
  expect_all(run_step(group, stats, ids, {{16, 2, 1}, {32, 2, 1}, {16, 2, 1}}),
             "llep: rank 1 has N = 32 but rank 0 has N = 16");
  expect_all(run_step(group, stats, ids, {{16, 2, 1}, {16, 2, 1}, {16, 1, 2}}),
             "llep: rank 2 has K = 1 but rank 0 has K = 2");
  expect_all(run_step(group, stats, ids, {{16, 2, 1}, {16, 2, 3}, {16, 2, 1}}),
             "llep: rank 1 passed 2 ids but B_p x K = 3 x 2");
  expect_all(run_step(group, stats, ids, {{16, 2, 1}, {0, 2, 1}, {16, 2, 1}}),
             "llep: rank 1 has N = 0 experts; N must be > 0");
  expect_all(run_step(group, stats, ids, {{2, 3, 1}, {2, 3, 1}, {2, 3, 1}}),
             "llep: rank 0 has K = 3; top-k must be in [1, N = 2]");
  expect_all(
      run_step(group, stats, ids, std::vector<llep::StepShape>(P, {16, 2, 1}), {{}, {}, {.nonfinite_weights = true}}),
      "llep: rank 2 has non-finite (NaN or Inf) top-k weights");
  // Null ids on one rank.
  std::vector<RankResult> out(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    llep::HostExec exec;
    try {
      stats[p].update(exec, t, p == 0 ? nullptr : ids[p].data(), 2, {16, 2, 1});
    } catch (const llep::Error& e) {
      out[p].error = e.what();
    }
  });
  expect_all(out, "llep: rank 0 passed null ids for 2 pairs");
}

TEST_CASE("device staging: a device exec (and a device transport) give the same C with one gathered to_host") {
  const int P = 3, N = 8, K = 2;
  std::mt19937 rng(11);
  std::vector<llep::count_t> tokens;
  const auto ids = random_routing(rng, P, N, K, tokens);
  const Counts expected = brute_counts(ids, N);
  const std::size_t gathered_bytes = static_cast<std::size_t>(P) * (N + 2) * sizeof(llep::count_t);
  llep::HostGroup group(P);
  for (const bool device_transport : {false, true}) {
    CAPTURE(device_transport);
    std::vector<RankResult> out(P);
    std::vector<FakeDeviceExec> execs(P);
    std::vector<int> bad_pointer(P, 0);
    llep::run_ranks(group, [&](llep::HostThreads& t) {
      const auto p = static_cast<std::size_t>(t.rank());
      llep::ExactCounts stats;
      FakeDeviceExec& exec = execs[p];
      const llep::StepShape shape{N, K, tokens[p]};
      for (int step = 0; step < 2; ++step) {
        exec.to_host_calls = 0;
        if (device_transport) {
          FakeDeviceTransport dt{t, &exec};
          stats.update(exec, dt, ids[p].data(), ids[p].size(), shape);
          bad_pointer[p] |= dt.saw_host_pointer;
        } else {
          stats.update(exec, t, ids[p].data(), ids[p].size(), shape);
        }
      }
      out[p] = snapshot(stats);
    });
    for (std::size_t p = 0; p < P; ++p) {
      CHECK(out[p].counts == expected);
      CHECK_FALSE(execs[p].histogram_outside_workspace);
      CHECK(bad_pointer[p] == 0);
      // Device transport: one to_host of the headers, one of the gathered records.
      // Host transport: one to_host of the local record, then host-side gathers.
      CHECK(execs[p].to_host_calls == (device_transport ? 2 : 1));
      CHECK(execs[p].largest_to_host == (device_transport ? gathered_bytes : (N + 2) * sizeof(llep::count_t)));
    }
  }
}

TEST_CASE("an id outside [0, N) is reported by count when the exec cannot name it") {
  const int P = 2;
  llep::HostGroup group(P);
  std::vector<std::string> errors(P);
  const std::vector<Ids> ids = {{0, 1}, {1, 7}};
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    FakeDeviceExec exec;
    FakeDeviceTransport dt{t, &exec};
    llep::ExactCounts stats;
    try {
      stats.update(exec, dt, ids[p].data(), 2, {4, 2, 1});
    } catch (const llep::Error& e) {
      errors[p] = e.what();
    }
  });
  for (const auto& e : errors) CHECK(e == "llep: rank 1 routed 1 expert id(s) outside [0, 4)");
}
