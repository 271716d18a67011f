// The step's place table (device/transfer_places.hpp), run with HostExec as a step runs it,
// against a direct recount of every place over random transfer lists: ranks and experts
// out of range and src == dst (not placed), repeated (expert, dst) pairs, unsorted lists,
// lists past the table's room (an overflow, the rest unplaced), and each table written over
// the previous step's in the same memory. RankTransfer, what every reader sees, too.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "../common/errors.hpp"
#include "llep/device/status_word.hpp"
#include "llep/device/transfer_places.hpp"
#include "llep/exec/host.hpp"

namespace {

using llep::TransferPlace;
using llep::WeightTransfer;

bool placed(const WeightTransfer& x, int P, int N) {
  return x.src >= 0 && x.src < P && x.dst >= 0 && x.dst < P && x.src != x.dst && x.expert >= 0 && x.expert < N;
}

// The places of transfers [0, n) for `rank`, each counted from the transfers before it.
std::vector<TransferPlace> recount(const std::vector<WeightTransfer>& xs, std::size_t n, int rank, int P, int N) {
  std::vector<TransferPlace> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    const WeightTransfer& x = xs[i];
    if (!placed(x, P, N)) continue;
    std::int32_t to = 0, from = 0, pair = 0;
    for (std::size_t a = 0; a < i; ++a) {
      if (!placed(xs[a], P, N)) continue;
      to += xs[a].dst == x.dst ? 1 : 0;
      from += xs[a].src == x.src ? 1 : 0;
      pair += xs[a].src == x.src && xs[a].dst == x.dst ? 1 : 0;
    }
    out[i] = TransferPlace{to, from, x.src == rank || x.dst == rank ? pair : -1};
  }
  return out;
}

// A random transfer list: mostly plan-like transfers, some out of range or src == dst,
// some (expert, dst) repeated.
std::vector<WeightTransfer> random_transfers(std::mt19937_64& rng, int P, int N, std::size_t n) {
  std::vector<WeightTransfer> xs;
  auto pick = [&](int m) { return static_cast<std::int32_t>(rng() % static_cast<unsigned>(m)); };
  for (std::size_t i = 0; i < n; ++i) {
    WeightTransfer x{pick(N), pick(P), pick(P)};
    switch (rng() % 10) {
      case 0: x.src = rng() % 2 == 0 ? -1 : P; break;
      case 1: x.dst = rng() % 2 == 0 ? -1 : P + 3; break;
      case 2: x.expert = rng() % 2 == 0 ? -2 : N; break;
      case 3: x.dst = x.src; break;
      case 4: if (!xs.empty()) x = xs[rng() % xs.size()]; break;
      default: break;
    }
    xs.push_back(x);
  }
  return xs;
}

}  // namespace

TEST_CASE("the place table equals a direct recount of every transfer's places, for every rank") {
  std::mt19937_64 rng(14);
  llep::HostExec exec;
  int cases = 0, overflows = 0;
  for (const int P : {1, 2, 3, 5, 8})
    for (const int N : {P, 3 * P}) {
      const std::int64_t room = 3 * P + 2;
      std::vector<std::byte> memory(llep::TransferPlaces::bytes(P, N, room));
      for (int step = 0; step < 30; ++step) {
        const std::size_t n = rng() % static_cast<std::size_t>(room + 4);  // sometimes past the room
        std::vector<WeightTransfer> xs = random_transfers(rng, P, N, n);
        llep::PlanView plan;
        plan.transfers = xs.data();
        plan.num_transfers = static_cast<std::int32_t>(n);
        const auto kept = std::min<std::size_t>(n, static_cast<std::size_t>(room));
        for (int rank = 0; rank < P; ++rank) {
          CAPTURE(P);
          CAPTURE(N);
          CAPTURE(step);
          CAPTURE(rank);
          std::fill(memory.begin(), memory.end(), std::byte{0x5A});  // the previous table's bytes, or worse
          const auto t = llep::TransferPlaces::carve(memory.data(), &plan, rank, P, N, room);
          llep::status_word_t word = llep::kStatusClear;
          llep::place_transfers(exec, t, &word);
          CHECK(t.count() == static_cast<std::int32_t>(kept));
          if (n > kept) {
            ++overflows;
            CHECK(word == llep::overflow_word(rank, n));
          } else {
            CHECK(word == llep::kStatusClear);
          }
          const std::vector<TransferPlace> want = recount(xs, kept, rank, P, N);
          std::vector<std::int32_t> foreign(static_cast<std::size_t>(N), -1);
          for (std::size_t i = 0; i < kept; ++i) {
            CAPTURE(i);
            CHECK(t.place[i].at_dst == want[i].at_dst);
            CHECK(t.place[i].at_src == want[i].at_src);
            CHECK(t.place[i].in_pair == want[i].in_pair);
            const WeightTransfer& x = xs[i];
            if (placed(x, P, N) && x.dst == rank && foreign[static_cast<std::size_t>(x.expert)] < 0)
              foreign[static_cast<std::size_t>(x.expert)] = want[i].at_dst;
            // What a reader sees of it, from either side.
            for (const bool as_source : {true, false}) {
              llep::RankTransfer m;
              const bool mine = t.mine(static_cast<std::int32_t>(i), as_source, m);
              CHECK(mine == (placed(x, P, N) && (as_source ? x.src : x.dst) == rank));
              if (!mine) continue;
              CHECK(m.x == x);
              CHECK(m.peer == (as_source ? x.dst : x.src));
              CHECK(m.item == (as_source ? want[i].at_src : want[i].at_dst));
            }
          }
          CHECK(std::equal(foreign.begin(), foreign.end(), t.foreign));
          ++cases;
        }
      }
    }
  CHECK(cases > 500);
  CHECK(overflows > 20);  // the past-the-room path ran
}

TEST_CASE("a reader refuses a place table of another rank, shape or with no memory") {
  std::vector<std::byte> memory(llep::TransferPlaces::bytes(4, 8));
  llep::PlanView plan;
  const auto t = llep::TransferPlaces::carve(memory.data(), &plan, 2, 4, 8);
  CHECK_NOTHROW(llep::expect_places(t, 2, 4, 8, "reader"));
  CHECK_NOTHROW(llep::expect_places(t, 2, 4, 0, "reader"));  // N unknown to the reader
  CHECK(testutil::error_of([&] { llep::expect_places(t, 1, 4, 8, "reader"); }) ==
        "llep: rank 1: reader needs this rank's place table of the step's plan (P = 4, N = 8); got a table of rank 2 "
        "of P = 4, N = 8");
  CHECK(testutil::error_of([&] { llep::expect_places(t, 2, 4, 16, "reader"); }).find("N = 16); got") !=
        std::string::npos);
  CHECK(testutil::error_of([&] { llep::expect_places(llep::TransferPlaces{}, 0, 1, 1, "reader"); }) ==
        "llep: rank 0: reader needs this rank's place table of the step's plan (P = 1, N = 1); got a table of rank 0 "
        "of P = 1, N = 1 (not carved) (no plan)");
}
