#pragma once
// The shared pieces of LLEP's Alg. 2 and 3, written once for the host and the device
// (LLEP_HOST_DEVICE; g++ alone compiles them): the least-loaded rank, the min-slice rule,
// the visit order, the capacity and the assign-then-spill driver. Every planner in this
// folder is built from them; device_planner.cuh runs the same code in a kernel.
//
// Only plain data here: raw pointers into caller memory, no allocation, no exception.
#include <cstddef>
#include <cstdint>

#include "llep/core/config.hpp"
#include "llep/core/plan_view.hpp"

namespace llep::alg {

/// The largest count_t (std::numeric_limits is not callable on the device without
/// --expt-relaxed-constexpr).
inline constexpr count_t kCountMax = 0x7fffffffffffffff;

/// What the planners need of a topology, as plain data. native == nullptr: the default
/// placement, expert e on rank e / (N / P).
struct TopoView {
  int ranks = 0;
  int experts = 0;
  int ranks_per_node = 0;
  const std::int32_t* native = nullptr;
  [[nodiscard]] LLEP_HOST_DEVICE int native_rank(int e) const noexcept {
    return native != nullptr ? native[e] : e / (experts / ranks);
  }
  [[nodiscard]] LLEP_HOST_DEVICE int node_of(int rank) const noexcept { return rank / ranks_per_node; }
};

/// Carves typed arrays out of one scratch buffer, each 16-byte aligned. Sizing and
/// carving use the same calls, so scratch_bytes() cannot drift from what plan() takes:
/// with base == nullptr it only counts.
struct Carve {
  std::byte* base = nullptr;
  std::size_t used = 0;
  template <class T>
  LLEP_HOST_DEVICE T* take(std::size_t n) noexcept {
    T* p = base != nullptr ? reinterpret_cast<T*>(base + used) : nullptr;
    used += (n * sizeof(T) + 15) / 16 * 16;
    return p;
  }
};

/// The rank in [begin, end), other than `skip` and outside [hole_begin, hole_end), with the
/// least key(rank), lower rank on ties; -1 when there is none.
template <class Key>
[[nodiscard]] LLEP_HOST_DEVICE int least_rank_by(int begin, int end, int skip, int hole_begin, int hole_end,
                                                 Key key) noexcept {
  int best = -1;
  decltype(key(0)) best_key{};
  for (int q = begin; q < end; ++q) {
    if (q == skip || (q >= hole_begin && q < hole_end)) continue;
    const auto k = key(q);
    if (best < 0 || k < best_key) {
      best = q;
      best_key = k;
    }
  }
  return best;
}

/// The least-loaded rank: least load[rank] over [begin, end) less `skip` and the hole,
/// lower rank on ties; -1 when there is none.
[[nodiscard]] LLEP_HOST_DEVICE inline int least_loaded_rank(const count_t* load, int begin, int end, int skip,
                                                            int hole_begin = -1, int hole_end = -1) noexcept {
  int best = -1;
  count_t best_load = 0;
  for (int q = begin; q < end; ++q) {
    if (q == skip || (q >= hole_begin && q < hole_end)) continue;
    if (best < 0 || load[q] < best_load) {
      best = q;
      best_load = load[q];
    }
  }
  return best;
}

/// The min-slice rule (Alg. 3): a slice of c rows with r rows of the expert left is worth
/// a GEMM of its own when it reaches m, or ends the expert.
[[nodiscard]] LLEP_HOST_DEVICE constexpr bool slice_qualifies(count_t c, count_t r, count_t m) noexcept {
  return c > 0 && !(c < m && r > c);
}

/// LeastLoaded's slice for a candidate with `room` = cap - effective and r rows left:
/// min(r, room) when that qualifies, else r when `force` (Alg. 3's fallback), else 0.
[[nodiscard]] LLEP_HOST_DEVICE constexpr count_t lla_slice(count_t r, count_t room, count_t m, bool force) noexcept {
  const count_t c = r < room ? r : room;
  return slice_qualifies(c, r, m) ? c : (force ? r : 0);
}

/// Per-rank capacity max(1, ceil(alpha * total / P)); `ok` false when it overflows.
[[nodiscard]] LLEP_HOST_DEVICE inline count_t capacity(double alpha, count_t total, int ranks, bool* ok) noexcept {
  const double c = alpha * static_cast<double>(total) / static_cast<double>(ranks);
  *ok = c < 9.0e18;
  if (!*ok) return 0;
  count_t k = static_cast<count_t>(c);
  if (static_cast<double>(k) < c) ++k;  // ceil, without <cmath> on the device
  *ok = static_cast<double>(k) < 9.0e18;
  return k < 1 ? 1 : k;
}

/// Per-rank load under native placement, into load[P].
LLEP_HOST_DEVICE inline void native_loads(const count_t* loads, TopoView t, count_t* load) noexcept {
  for (int r = 0; r < t.ranks; ++r) load[r] = 0;
  for (int e = 0; e < t.experts; ++e) load[t.native_rank(e)] += loads[e];
}

/// max / mean of P loads, 1 when all are zero (llep::imbalance, same arithmetic).
[[nodiscard]] LLEP_HOST_DEVICE inline double imbalance(const count_t* load, int P) noexcept {
  count_t total = 0, peak = 0;
  for (int r = 0; r < P; ++r) {
    total += load[r];
    peak = load[r] > peak ? load[r] : peak;
  }
  if (P == 0 || total == 0) return 1.0;
  return static_cast<double>(peak) * static_cast<double>(P) / static_cast<double>(total);
}

/// Scratch of visit_order for N experts.
struct OrderScratch {
  std::int32_t* order;
  std::int32_t* tmp;
  std::uint32_t* hist;  // 256
  LLEP_HOST_DEVICE static OrderScratch take(Carve& c, int N) noexcept {
    return {c.take<std::int32_t>(static_cast<std::size_t>(N)), c.take<std::int32_t>(static_cast<std::size_t>(N)),
            c.take<std::uint32_t>(256)};
  }
};

/// The visit order: experts with load, by decreasing load, ties by lower id, into
/// s.order; returns how many. A stable LSD radix sort on the loads' bytes (most bytes of
/// real loads are alike and skipped), no comparison sort.
LLEP_HOST_DEVICE inline int visit_order(const count_t* loads, int N, OrderScratch s) noexcept {
  int n = 0;
  count_t peak = 0;
  for (int e = 0; e < N; ++e)
    if (loads[e] > 0) {
      s.order[n++] = e;
      peak = loads[e] > peak ? loads[e] : peak;
    }
  std::int32_t* src = s.order;
  std::int32_t* dst = s.tmp;
  for (int shift = 0; shift < 64 && (static_cast<std::uint64_t>(peak) >> shift) != 0; shift += 8) {
    for (int b = 0; b < 256; ++b) s.hist[b] = 0;
    // Bucket 255 - digit: larger digits first, so the passes sort by decreasing load.
    for (int i = 0; i < n; ++i) ++s.hist[255 - ((static_cast<std::uint64_t>(loads[src[i]]) >> shift) & 255)];
    bool one = false;
    std::uint32_t sum = 0;
    for (int b = 0; b < 256; ++b) {
      const std::uint32_t h = s.hist[b];
      one = one || h == static_cast<std::uint32_t>(n);
      s.hist[b] = sum;
      sum += h;
    }
    if (one) continue;  // every key has this digit: the pass would not move anything
    for (int i = 0; i < n; ++i) dst[s.hist[255 - ((static_cast<std::uint64_t>(loads[src[i]]) >> shift) & 255)]++] = src[i];
    std::int32_t* t = src;
    src = dst;
    dst = t;
  }
  if (src != s.order)
    for (int i = 0; i < n; ++i) s.order[i] = src[i];
  return n;
}

/// Where the next slice of a spilling expert goes, and how many of its rows; rows <= 0
/// stops the spill (the rest stays on the native rank).
struct Slice {
  int rank;
  count_t rows;
};

/// What a spill hook sees of the expert being spilled.
struct Spill {
  int expert;
  int native;
  count_t rows_left;  ///< r
  count_t kept;       ///< rows the native keeps within capacity
  count_t cap;
  const Slice* slices;  ///< accepted so far, in order
  int num_slices;
};

/// Scratch of assign_then_spill on P ranks.
struct SpillScratch {
  count_t* effective;  // P
  Slice* slices;       // P
  LLEP_HOST_DEVICE static SpillScratch take(Carve& c, int P) noexcept {
    return {c.take<count_t>(static_cast<std::size_t>(P)), c.take<Slice>(static_cast<std::size_t>(P))};
  }
};

/// Alg. 2 with the spill of Alg. 3 left to `hook`: experts visited in `order`; effective[q]
/// = rows assigned to q plus its native load still to be visited; the native rank keeps
/// min(l, cap - effective) when positive; then hook(effective, spill) names each next
/// slice of the rest, or stops. The native's rows come out as one segment [0, kept + rest)
/// and the slices follow it in order. Pushes into `out` (begun by the caller).
template <class Hook>
LLEP_HOST_DEVICE void assign_then_spill(const count_t* loads, TopoView t, count_t cap, const std::int32_t* order,
                                        int n, SpillScratch s, PlanView& out, Hook&& hook) {
  native_loads(loads, t, s.effective);
  count_t* eff = s.effective;
  for (int i = 0; i < n; ++i) {
    const int e = order[i];
    const count_t l = loads[e];
    const int native = t.native_rank(e);
    eff[native] -= l;
    const count_t avail = cap - eff[native];
    if (t.ranks == 1 || avail >= l) {
      out.push(e, native, 0, l);
      eff[native] += l;
      continue;
    }
    const count_t kept = avail > 0 ? avail : 0;
    eff[native] += kept;
    int k = 0;
    count_t r = l - kept;
    while (r > 0 && k < t.ranks) {
      const Slice next = hook(static_cast<const count_t*>(eff), Spill{e, native, r, kept, cap, s.slices, k});
      if (next.rows <= 0) break;
      s.slices[k++] = next;
      eff[next.rank] += next.rows;
      r -= next.rows;
    }
    eff[native] += r;
    if (kept + r > 0) out.push(e, native, 0, kept + r);
    count_t b = kept + r;
    for (int j = 0; j < k; ++j) {
      out.push(e, s.slices[j].rank, b, b + s.slices[j].rows);
      b += s.slices[j].rows;
    }
  }
}

/// LeastLoaded's hook (Alg. 3): the first qualifying rank in (effective, rank) order, else
/// all r forced onto the first rank of that order. Whether a rank qualifies only grows
/// with its room, and the first rank has the most: if it does not qualify nobody does, so
/// the target is always the least-effective other rank.
struct LeastLoadedSpill {
  count_t min_tokens_per_gemm;
  int ranks;
  [[nodiscard]] LLEP_HOST_DEVICE Slice operator()(const count_t* eff, const Spill& s) const noexcept {
    const int q = least_loaded_rank(eff, 0, ranks, s.native);
    return {q, lla_slice(s.rows_left, s.cap - eff[q], min_tokens_per_gemm, true)};
  }
};

/// Standard EP: every expert with load on its native rank, capacity the busiest rank's
/// load (at least 1). Pushes into `out` (begun by the caller).
LLEP_HOST_DEVICE inline void standard_ep(const count_t* loads, TopoView t, PlanView& out) noexcept {
  for (int e = 0; e < t.experts; ++e)
    if (loads[e] > 0) out.push(e, t.native_rank(e), 0, loads[e]);
  count_t peak = 1;
  for (int r = 0; r < t.ranks; ++r) peak = out.rank_loads[r] > peak ? out.rank_loads[r] : peak;
  out.capacity = peak;
}

}  // namespace llep::alg
