// The status word (device/status_word.hpp) and the counts gather (device/gather_counts.hpp)
// on the host (HostExec, HostThreads ranks), the same code a device step runs with CudaExec
// and PeerCopy: the word keeps the first bad pair whatever order the scan visits the pairs
// in; the host check throws the same llep::Error on every rank, naming the lowest bad
// rank's first bad id and pair as a brute-force search finds them, then is clear for the
// next step; the gathered matrix is every rank's brute-force histogram, bad ids left out.
#include <doctest/doctest.h>

#include <algorithm>
#include <climits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../common/errors.hpp"
#include "llep/device/gather_counts.hpp"
#include "llep/device/status_word.hpp"
#include "llep/exec/host.hpp"
#include "llep/transport/host_threads.hpp"

namespace {

using llep::count_t;
using llep::status_word_t;

// Random ids of one rank; with `bad`, a few outside [0, N) at random places.
std::vector<std::int32_t> random_ids(std::mt19937_64& rng, int N, bool bad) {
  std::vector<std::int32_t> ids(rng() % 200);
  for (auto& id : ids) id = static_cast<std::int32_t>(rng() % static_cast<unsigned>(N));
  if (bad) {
    if (ids.empty()) ids.push_back(0);
    const std::int32_t wrong[] = {-1, N, N + 7, INT32_MIN, INT32_MAX, -300};
    for (int i = 0, n = 1 + static_cast<int>(rng() % 3); i < n; ++i)
      ids[rng() % ids.size()] = wrong[rng() % 6];
  }
  return ids;
}

// The first id outside [0, N) and its index, by a plain search; -1 index when none.
std::pair<std::int64_t, std::int32_t> first_bad(const std::vector<std::int32_t>& ids, int N) {
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= N) return {static_cast<std::int64_t>(i), ids[i]};
  return {-1, 0};
}

}  // namespace

TEST_CASE("a status word decodes to what was noted, and the smaller word is the earlier pair") {
  for (const std::int32_t id : {-1, 0, 5, INT32_MIN, INT32_MAX, -300})
    for (const std::size_t i : {std::size_t{0}, std::size_t{1}, std::size_t{123456}, std::size_t{0x7ffffffe}}) {
      const llep::BadExpert b = llep::decode_status(llep::bad_expert_word(i, id));
      CHECK(b.found);
      CHECK(b.id == id);
      CHECK(b.pair == static_cast<std::int64_t>(i));
      CHECK(llep::bad_expert_word(i, id) < llep::bad_expert_word(i + 1, INT32_MIN));
    }
  CHECK_FALSE(llep::decode_status(llep::kStatusClear).found);
}

TEST_CASE("the scan keeps the first bad pair in any visiting order (as the device's atomicMin does)") {
  std::mt19937_64 rng(5);
  for (int round = 0; round < 300; ++round) {
    const int N = 1 + static_cast<int>(rng() % 64);
    const auto ids = random_ids(rng, N, round % 3 != 0);
    status_word_t forward = llep::kStatusClear, shuffled = llep::kStatusClear;
    llep::HostExec exec;
    exec.for_each_n(ids.size(), llep::FindBadExperts{ids.data(), N, &forward});
    std::vector<std::size_t> order(ids.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::shuffle(order.begin(), order.end(), rng);
    const llep::FindBadExperts scan{ids.data(), N, &shuffled};
    for (const std::size_t i : order) scan(i);
    CHECK(forward == shuffled);
    const auto [at, id] = first_bad(ids, N);
    const llep::BadExpert b = llep::decode_status(forward);
    CHECK(b.found == (at >= 0));
    if (at >= 0) {
      CHECK(b.pair == at);
      CHECK(b.id == id);
    }
  }
}

TEST_CASE("the host check throws the same error on every rank, naming the lowest bad rank's first bad id") {
  std::mt19937_64 rng(77);
  int failing_rounds = 0;
  for (const int P : {1, 2, 3, 4, 8}) {
    llep::HostGroup group(P);
    const int N = 4 * P;
    for (int round = 0; round < 12; ++round) {
      // Some rounds clean, others with bad ids on a random subset of ranks.
      std::vector<std::vector<std::int32_t>> ids;
      for (int r = 0; r < P; ++r) ids.push_back(random_ids(rng, N, round % 2 == 1 && rng() % 2 == 0));
      std::string want;
      for (int r = 0; r < P && want.empty(); ++r) {
        const auto [at, id] = first_bad(ids[static_cast<std::size_t>(r)], N);
        if (at >= 0)
          want = "llep: rank " + std::to_string(r) + " routed expert id " + std::to_string(id) + " outside [0, " +
                 std::to_string(N) + ") (pair " + std::to_string(at) + ", found in the step)";
      }
      std::vector<std::string> got(static_cast<std::size_t>(P)), after(static_cast<std::size_t>(P));
      llep::run_ranks(group, [&](llep::HostThreads& t) {
        llep::HostExec exec;
        std::vector<status_word_t> memory(llep::StatusWords::bytes(P) / sizeof(status_word_t), 0);
        llep::StatusWords status(exec, memory.data(), P);
        const auto& mine = ids[static_cast<std::size_t>(t.rank())];
        status.scan(exec, mine.data(), mine.size(), N);
        got[static_cast<std::size_t>(t.rank())] = testutil::error_of([&] { status.check(exec, t, N); });
        // The next step, with clean ids, checks clean: the word was cleared.
        std::vector<std::int32_t> clean(mine.size(), 0);
        status.scan(exec, clean.data(), clean.size(), N);
        after[static_cast<std::size_t>(t.rank())] = testutil::error_of([&] { status.check(exec, t, N); });
      });
      for (int r = 0; r < P; ++r) {
        CAPTURE(r);
        if (want.empty()) {
          CHECK(got[static_cast<std::size_t>(r)] == testutil::kNoError);
        } else {
          CHECK(got[static_cast<std::size_t>(r)].rfind(want, 0) == 0);  // the same message on every rank
          CHECK(got[static_cast<std::size_t>(r)] == got[0]);
        }
        CHECK(after[static_cast<std::size_t>(r)] == testutil::kNoError);
      }
      failing_rounds += want.empty() ? 0 : 1;
    }
  }
  CHECK(failing_rounds >= 10);
}

TEST_CASE("gather_counts leaves every rank with every rank's histogram, bad ids out of C and in the status") {
  std::mt19937_64 rng(31);
  for (const int P : {1, 2, 3, 4, 8}) {
    llep::HostGroup group(P);
    for (const int N : {1, 3, 16, 40}) {
      std::vector<std::vector<std::int32_t>> ids;
      const int bad_rank = static_cast<int>(rng() % static_cast<unsigned>(P));
      for (int r = 0; r < P; ++r) ids.push_back(random_ids(rng, N, r == bad_rank && N > 3));
      std::vector<count_t> want(static_cast<std::size_t>(P) * static_cast<std::size_t>(N), 0);
      for (int r = 0; r < P; ++r)
        for (const std::int32_t id : ids[static_cast<std::size_t>(r)])
          if (id >= 0 && id < N) ++want[static_cast<std::size_t>(r) * static_cast<std::size_t>(N) + static_cast<std::size_t>(id)];
      const bool any_bad = N > 3;
      std::vector<std::vector<count_t>> got(static_cast<std::size_t>(P));
      std::vector<std::string> errors(static_cast<std::size_t>(P));
      llep::run_ranks(group, [&](llep::HostThreads& t) {
        llep::HostExec exec;
        std::vector<std::byte> memory(llep::gather_counts_bytes(P, N));
        std::vector<status_word_t> words(llep::StatusWords::bytes(P) / sizeof(status_word_t));
        llep::StatusWords status(exec, words.data(), P);
        const llep::GatheredCounts out = llep::GatheredCounts::carve(memory.data(), N);
        const auto& mine = ids[static_cast<std::size_t>(t.rank())];
        llep::gather_counts(exec, t, mine.data(), mine.size(), N, out, &status);
        got[static_cast<std::size_t>(t.rank())].assign(out.counts, out.counts + P * N);
        errors[static_cast<std::size_t>(t.rank())] = testutil::error_of([&] { status.check(exec, t, N); });
      });
      for (int r = 0; r < P; ++r) {
        CAPTURE(P);
        CAPTURE(N);
        CAPTURE(r);
        CHECK(got[static_cast<std::size_t>(r)] == want);
        CHECK((errors[static_cast<std::size_t>(r)] == testutil::kNoError) == !any_bad);
        if (any_bad) CHECK(errors[static_cast<std::size_t>(r)].find("rank " + std::to_string(bad_rank) + " routed") != std::string::npos);
      }
    }
  }
}
