#pragma once
// The LeastLoaded rules written as literally as possible, for comparison with the library:
// the other ranks are really sorted before every slice, the way the rules read. Shares no
// code with include/llep/plan/least_loaded.hpp.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <set>
#include <tuple>
#include <vector>

#include "llep/core/plan.hpp"

namespace ref {

using llep::count_t;

struct Plan {
  count_t capacity = 0;
  std::vector<llep::Segment> segments;  // sorted by (expert, begin)
  std::vector<llep::WeightTransfer> transfers;  // sorted by (expert, dst), unique
  std::vector<count_t> rank_loads;
};

inline Plan least_loaded(const std::vector<count_t>& l, const std::vector<int>& native, int P, double alpha,
                         count_t m) {
  const int N = static_cast<int>(l.size());
  Plan out;
  count_t total = 0;
  for (count_t x : l) total += x;
  // cap = max(1, ceil(alpha * sum(l) / P))
  out.capacity = std::max<count_t>(1, static_cast<count_t>(std::ceil(alpha * static_cast<double>(total) / P)));
  const count_t cap = out.capacity;

  std::vector<count_t> assigned(P, 0), pending(P, 0);
  for (int e = 0; e < N; ++e) pending[native[e]] += l[e];
  auto eff = [&](int r) { return assigned[r] + pending[r]; };
  auto give = [&](int e, int r, count_t b, count_t n) {
    out.segments.push_back({e, r, b, b + n});
    assigned[r] += n;
  };

  // Decreasing load; stable_sort keeps lower ids first among ties.
  std::vector<int> order(N);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });

  for (int e : order) {
    if (l[e] == 0) continue;  // zero-load experts get no segment
    const int n = native[e];
    pending[n] -= l[e];
    if (P == 1) {
      give(e, n, 0, l[e]);
      continue;
    }
    const count_t a = cap - assigned[n] - pending[n];
    count_t t = 0;
    if (a >= l[e]) {
      give(e, n, 0, l[e]);
      continue;
    }
    if (a > 0) {
      give(e, n, 0, a);
      t = a;
    }
    count_t r = l[e] - t;
    while (r > 0) {
      std::vector<int> others;
      for (int q = 0; q < P; ++q)
        if (q != n) others.push_back(q);
      std::sort(others.begin(), others.end(),
                [&](int x, int y) { return std::make_tuple(eff(x), x) < std::make_tuple(eff(y), y); });
      int chosen = -1;
      count_t c = 0;
      for (int q : others) {
        c = std::min(r, cap - eff(q));
        if (c > 0 && !(c < m && r > c)) {
          chosen = q;
          break;
        }
      }
      if (chosen < 0) {
        give(e, others.front(), t, r);
        break;
      }
      give(e, chosen, t, c);
      t += c;
      r -= c;
    }
  }

  std::sort(out.segments.begin(), out.segments.end(), [](const llep::Segment& a, const llep::Segment& b) {
    return std::make_tuple(a.expert, a.begin) < std::make_tuple(b.expert, b.begin);
  });
  std::set<std::tuple<int, int>> moved;  // (expert, dst)
  out.rank_loads.assign(P, 0);
  for (const auto& s : out.segments) {
    out.rank_loads[s.rank] += s.end - s.begin;
    if (s.rank != native[s.expert]) moved.insert({s.expert, s.rank});
  }
  for (auto [e, d] : moved) out.transfers.push_back({e, native[e], d});
  return out;
}

}  // namespace ref
