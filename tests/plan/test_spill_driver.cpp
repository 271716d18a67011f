// alg::assign_then_spill visits only the experts of ranks above capacity (and of ranks a
// slice lifts above it); this checks that it still makes the plan of visiting every expert
// in order, for any hook: against a plain driver written here (every expert visited, the
// least other rank found by a scan, segments sorted afterwards), over random and
// adversarial loads, custom placements, replicas, and hooks that stop, force, pick any rank
// (the native too) and overfill ranks.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "../common/loads.hpp"
#include "llep/plan/alg.hpp"

namespace {

using llep::count_t;
using llep::alg::Slice;
using llep::alg::Spill;

struct Result {
  std::vector<llep::Segment> segments;  // by (expert, begin)
  std::vector<std::int32_t> offsets;    // N + 1
  std::vector<llep::WeightTransfer> transfers;
  std::vector<count_t> rank_loads;
};

// Every expert with load in (load desc, id asc) order; the rest as the rules read.
template <class Hook, class Holds>
Result plain_driver(const std::vector<count_t>& l, const std::vector<int>& native, int P, count_t cap, Hook hook,
                    Holds holds) {
  const int N = static_cast<int>(l.size());
  std::vector<count_t> eff(static_cast<std::size_t>(P), 0);
  for (int e = 0; e < N; ++e) eff[native[e]] += l[e];
  std::vector<int> order(static_cast<std::size_t>(N));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
  Result out;
  std::vector<Slice> slices(static_cast<std::size_t>(P));
  for (int e : order) {
    if (l[e] == 0) continue;
    const int n = native[e];
    const count_t avail = cap - (eff[n] - l[e]);
    if (P == 1 || avail >= l[e]) {
      out.segments.push_back({e, n, 0, l[e]});
      continue;
    }
    const count_t kept = std::max<count_t>(avail, 0);
    eff[n] += kept - l[e];
    count_t r = l[e] - kept;
    int k = 0;
    while (r > 0 && k < P) {
      int least = -1;
      for (int q = 0; q < P; ++q)
        if (q != n && (least < 0 || eff[q] < eff[least])) least = q;
      const Slice s = hook(eff.data(), Spill{e, n, r, kept, cap, slices.data(), k, least});
      if (s.rows <= 0) break;
      slices[k++] = s;
      eff[s.rank] += s.rows;
      r -= s.rows;
    }
    eff[n] += r;
    if (kept + r > 0) out.segments.push_back({e, n, 0, kept + r});
    count_t b = kept + r;
    for (int j = 0; j < k; ++j) {
      out.segments.push_back({e, slices[j].rank, b, b + slices[j].rows});
      b += slices[j].rows;
    }
  }
  std::stable_sort(out.segments.begin(), out.segments.end(),
                   [](const llep::Segment& a, const llep::Segment& b) { return a.expert < b.expert; });
  out.offsets.assign(static_cast<std::size_t>(N) + 1, 0);
  out.rank_loads.assign(static_cast<std::size_t>(P), 0);
  std::vector<std::tuple<int, int>> moved;
  for (const auto& s : out.segments) {
    ++out.offsets[static_cast<std::size_t>(s.expert) + 1];
    out.rank_loads[s.rank] += s.size();
    if (s.rank != native[s.expert] && !holds(s.expert, s.rank)) moved.emplace_back(s.expert, s.rank);
  }
  for (int e = 0; e < N; ++e) out.offsets[e + 1] += out.offsets[e];
  std::sort(moved.begin(), moved.end());
  moved.erase(std::unique(moved.begin(), moved.end()), moved.end());
  for (auto [e, d] : moved) out.transfers.push_back({e, native[e], d});
  return out;
}

template <class Hook, class Holds>
Result library_driver(const std::vector<count_t>& l, const std::vector<int>& native, int P, int per_rank, count_t cap,
                      Hook hook, Holds holds) {
  const int N = static_cast<int>(l.size());
  // An arbitrary hook may cut every expert into P + 1 segments.
  const auto most = static_cast<std::size_t>(N) * static_cast<std::size_t>(P + 1);
  std::vector<llep::Segment> segments(most), spare(most);
  std::vector<llep::WeightTransfer> transfers(most);
  std::vector<std::int32_t> offsets(static_cast<std::size_t>(N) + 1), natives(native.begin(), native.end());
  std::vector<count_t> rank_loads(static_cast<std::size_t>(P));
  llep::PlanView v{.segments = segments.data(), .spare = spare.data(), .transfers = transfers.data(),
                   .expert_offsets = offsets.data(), .rank_loads = rank_loads.data(),
                   .max_segments = static_cast<std::int32_t>(most)};
  v.begin(P, N, "test", 4);
  llep::alg::Carve sizing;
  (void)llep::alg::SpillScratch::take(sizing, P, N);
  std::vector<std::uint64_t> scratch((sizing.used + 7) / 8 + 2);
  llep::alg::Carve c{reinterpret_cast<std::byte*>(scratch.data())};
  const auto s = llep::alg::SpillScratch::take(c, P, N);
  const llep::alg::TopoView t{P, N, P, natives.data(), per_rank};
  llep::alg::assign_then_spill(l.data(), t, cap, s, v, hook, holds);
  v.finish([&](int e) { return native[e]; }, holds);
  REQUIRE(v.dropped == 0);
  REQUIRE(v.finished);
  Result out;
  out.segments.assign(v.segments, v.segments + v.num_segments);
  out.offsets.assign(v.expert_offsets, v.expert_offsets + N + 1);
  out.transfers.assign(v.transfers, v.transfers + v.num_transfers);
  out.rank_loads.assign(v.rank_loads, v.rank_loads + P);
  return out;
}

std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  return x ^ (x >> 33);
}

}  // namespace

TEST_CASE("the spill driver makes the plan of visiting every expert, for any hook") {
  std::mt19937_64 rng(20261129);
  int promoted_cases = 0;
  for (int it = 0; it < 6000; ++it) {
    const int ranks[] = {1, 2, 3, 4, 5, 8, 16, 64};
    const int P = ranks[rng() % 8];
    const int M = 1 + static_cast<int>(rng() % static_cast<std::uint64_t>(std::min(6, 384 / P)));
    const int N = P * M;
    std::vector<int> native(static_cast<std::size_t>(N));
    for (int e = 0; e < N; ++e) native[e] = e / M;
    // The default placement, said (per_rank) or not, or a custom one.
    const int kind_of_placement = static_cast<int>(rng() % 4);
    if (kind_of_placement == 0) std::shuffle(native.begin(), native.end(), rng);
    const int per_rank = kind_of_placement >= 2 ? M : 0;
    std::string kind;
    std::vector<count_t> l = testloads::random_loads(rng, N, kind);
    if (rng() % 6 == 0) {  // balanced up to a remainder: many ranks a few rows over cap
      const count_t base = 1 + static_cast<count_t>(rng() % 5000);
      for (int e = 0; e < N; ++e) l[e] = base + (e < static_cast<int>(rng() % static_cast<std::uint64_t>(N)) ? 1 : 0);
      kind = "balanced + remainder";
    }
    count_t total = 0;
    for (count_t x : l) total += x;
    const double alphas[] = {0.5, 0.9, 1.0, 1.0, 1.3, 3.0};
    bool ok = false;
    const count_t cap = llep::alg::capacity(alphas[rng() % 6], total, P, &ok);
    REQUIRE(ok);
    const count_t ms[] = {0, 1, 7, 1024, std::numeric_limits<std::int32_t>::max()};
    const count_t m = ms[rng() % 5];
    std::vector<char> replica(static_cast<std::size_t>(N) * static_cast<std::size_t>(P), 0);
    if (rng() % 3 == 0)
      for (auto& x : replica) x = rng() % 5 == 0;
    auto holds = [&](int e, int r) { return replica[static_cast<std::size_t>(e) * P + r] != 0; };
    const std::uint64_t salt = rng();
    const int hook_kind = static_cast<int>(rng() % 3);
    int promotions = 0;
    // 0: LeastLoaded's; 1: first qualifying rank of a group scan (NodeAware's shape);
    // 2: arbitrary: any rank (the native too), rows past the room, stops.
    auto hook = [&](const count_t* eff, const Spill& s) -> Slice {
      if (hook_kind == 0) return llep::alg::LeastLoadedSpill{m}(eff, s);
      if (hook_kind == 1) {
        const int half = std::max(1, P / 2), first = s.native / half * half;
        const int in = llep::alg::least_loaded_rank(eff, first, std::min(first + half, P), s.native);
        const int out = llep::alg::least_loaded_rank(eff, 0, P, s.native, first, first + half);
        for (const int q : {in, out}) {
          if (q < 0) continue;
          const count_t c = llep::alg::lla_slice(s.rows_left, s.cap - eff[q], m, false);
          if (c > 0) return {q, c};
        }
        return {in >= 0 ? in : out, s.rows_left};
      }
      const std::uint64_t h = mix(salt ^ mix(static_cast<std::uint64_t>(s.expert) * 1000003 + s.num_slices) ^
                                  static_cast<std::uint64_t>(s.rows_left) ^ static_cast<std::uint64_t>(eff[s.least]));
      const int q = static_cast<int>(h % static_cast<std::uint64_t>(P));
      switch ((h >> 20) % 8) {
        case 0: return {q, 0};
        case 1: return {q, s.rows_left};
        case 2: return {s.least, std::max<count_t>(0, std::min(s.rows_left, s.cap - eff[s.least]))};
        default: return {q, 1 + static_cast<count_t>((h >> 24) % static_cast<std::uint64_t>(s.rows_left))};
      }
    };
    std::vector<count_t> native_load(static_cast<std::size_t>(P), 0);
    for (int e = 0; e < N; ++e) native_load[native[e]] += l[e];
    // Counts the slices that lift a rank at or below capacity, and never above it, over it.
    auto counting = [&](const count_t* eff, const Spill& s) -> Slice {
      const Slice r = hook(eff, s);
      if (r.rows > 0 && native_load[r.rank] <= cap && eff[r.rank] <= cap && eff[r.rank] + r.rows > cap) ++promotions;
      return r;
    };
    const Result want = plain_driver(l, native, P, cap, hook, holds);
    const Result got = library_driver(l, native, P, per_rank, cap, counting, holds);
    promoted_cases += promotions > 0;
    CAPTURE(P);
    CAPTURE(N);
    CAPTURE(kind);
    CAPTURE(hook_kind);
    CAPTURE(cap);
    CHECK(got.segments == want.segments);
    CHECK(got.offsets == want.offsets);
    CHECK(got.transfers == want.transfers);
    CHECK(got.rank_loads == want.rank_loads);
  }
  CHECK(promoted_cases > 100);  // slices did lift ranks above capacity, often
}
