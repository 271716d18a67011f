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
/// placement, expert e on rank e / (N / P). per_rank > 0 says that native[] is that
/// placement too, so loops may go rank by rank over blocks of experts.
struct TopoView {
  int ranks = 0;
  int experts = 0;
  int ranks_per_node = 0;
  const std::int32_t* native = nullptr;
  int per_rank = 0;
  [[nodiscard]] LLEP_HOST_DEVICE int native_rank(int e) const noexcept {
    return native != nullptr ? native[e] : e / (experts / ranks);
  }
  /// n when rank q's natives are experts [q n, (q + 1) n) for every q, else 0.
  [[nodiscard]] LLEP_HOST_DEVICE int block() const noexcept {
    const int n = native != nullptr ? per_rank : experts / ranks;
    return n > 0 && n * ranks == experts ? n : 0;
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
LLEP_EXEC_CHECK_DISABLE
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

namespace detail {
/// Folds the least load over ranks [a, b) into (best, best_load); earlier ranks win ties.
/// Four independent lanes without branches: the scan runs once per spilled slice.
LLEP_HOST_DEVICE inline void least_in_run(const count_t* load, int a, int b, int& best, count_t& best_load) noexcept {
  count_t v[4] = {kCountMax, kCountMax, kCountMax, kCountMax};
  int at[4] = {-1, -1, -1, -1};
  int i = a;
  for (; i + 4 <= b; i += 4)
    for (int k = 0; k < 4; ++k) {
      const count_t x = load[i + k];
      const bool lt = x < v[k] || at[k] < 0;
      v[k] = lt ? x : v[k];
      at[k] = lt ? i + k : at[k];
    }
  for (; i < b; ++i) {
    const bool lt = load[i] < v[0] || at[0] < 0 || (load[i] == v[0] && i < at[0]);
    v[0] = lt ? load[i] : v[0];
    at[0] = lt ? i : at[0];
  }
  for (int k = 0; k < 4; ++k)
    if (at[k] >= 0 && (best < 0 || v[k] < best_load || (v[k] == best_load && at[k] < best))) {
      best = at[k];
      best_load = v[k];
    }
}
}  // namespace detail

/// The least-loaded rank: least load[rank] over [begin, end) less `skip` and the hole
/// [hole_begin, hole_end), lower rank on ties; -1 when there is none.
[[nodiscard]] LLEP_HOST_DEVICE inline int least_loaded_rank(const count_t* load, int begin, int end, int skip,
                                                            int hole_begin = -1, int hole_end = -1) noexcept {
  int best = -1;
  count_t best_load = 0;
  // The candidates as runs of consecutive ranks: cut at the hole, then at `skip`.
  auto run = [&](int a, int b) {
    if (skip >= a && skip < b) {
      detail::least_in_run(load, a, skip, best, best_load);
      detail::least_in_run(load, skip + 1, b, best, best_load);
    } else {
      detail::least_in_run(load, a, b, best, best_load);
    }
  };
  if (hole_begin < hole_end && hole_begin < end && hole_end > begin) {
    run(begin, hole_begin > begin ? hole_begin : begin);
    run(hole_end < end ? hole_end : end, end);
  } else {
    run(begin, end);
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

/// Per-rank load under native placement, into load[P]; with `count` (P + 1 entries), each
/// rank q's number of experts too, into count[q + 1] (count[0] = 0).
LLEP_HOST_DEVICE inline void native_loads(const count_t* loads, TopoView t, count_t* load,
                                          std::int32_t* count = nullptr) noexcept {
  if (count != nullptr) count[0] = 0;
  if (const int n = t.block(); n > 0) {  // a sum per block: no scatter through memory
    for (int r = 0; r < t.ranks; ++r) {
      count_t sum = 0;
      for (int e = r * n; e < (r + 1) * n; ++e) sum += loads[e];
      load[r] = sum;
      if (count != nullptr) count[r + 1] = n;
    }
    return;
  }
  for (int r = 0; r < t.ranks; ++r) load[r] = 0;
  if (count != nullptr)
    for (int r = 0; r <= t.ranks; ++r) count[r] = 0;
  for (int e = 0; e < t.experts; ++e) {
    const int q = t.native_rank(e);
    load[q] += loads[e];
    if (count != nullptr) ++count[q + 1];
  }
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
  std::uint8_t* digit;
  std::uint32_t* hist;  // 256
  LLEP_HOST_DEVICE static OrderScratch take(Carve& c, int N) noexcept {
    OrderScratch s{};
    s.order = c.take<std::int32_t>(static_cast<std::size_t>(N));
    s.tmp = c.take<std::int32_t>(static_cast<std::size_t>(N));
    s.digit = c.take<std::uint8_t>(static_cast<std::size_t>(N));
    s.hist = c.take<std::uint32_t>(256);
    return s;
  }
};

namespace detail {
/// Highest set bit of x > 0.
[[nodiscard]] LLEP_HOST_DEVICE inline int top_bit(std::uint64_t x) noexcept {
  int b = 0;
  for (int s = 32; s > 0; s >>= 1)
    if (x >> s) {
      x >>= s;
      b += s;
    }
  return b;
}

/// Stable counting scatter of ids src[0, n) into dst by decreasing byte (load >> shift)
/// & 255 (bucket 255 - byte: larger bytes first); digit[n] and hist[256] are scratch.
LLEP_HOST_DEVICE inline void scatter_by_byte(const count_t* loads, const std::int32_t* src, std::int32_t* dst, int n,
                                             int shift, std::uint8_t* digit, std::uint32_t* hist) noexcept {
  for (int b = 0; b < 256; ++b) hist[b] = 0;
  for (int i = 0; i < n; ++i) {
    const auto d = static_cast<std::uint8_t>(255 - ((static_cast<std::uint64_t>(loads[src[i]]) >> shift) & 255));
    digit[i] = d;
    ++hist[d];
  }
  std::uint32_t sum = 0;
  for (int b = 0; b < 256; ++b) {
    const std::uint32_t c = hist[b];
    hist[b] = sum;
    sum += c;
  }
  for (int i = 0; i < n; ++i) dst[hist[digit[i]]++] = src[i];
}

/// Sorts ids v[0, n) by decreasing load, stably, where the loads differ only in the bits
/// of `differ`: LSD radix, one byte a pass, bytes without a difference skipped.
LLEP_HOST_DEVICE inline void radix_by_load(const count_t* loads, std::int32_t* v, std::int32_t* tmp, int n,
                                           std::uint64_t differ, std::uint8_t* digit, std::uint32_t* hist) noexcept {
  std::int32_t* src = v;
  std::int32_t* dst = tmp;
  for (int shift = 0; shift < 64 && (differ >> shift) != 0; shift += 8) {
    if (((differ >> shift) & 255) == 0) continue;
    scatter_by_byte(loads, src, dst, n, shift, digit, hist);
    std::int32_t* t = src;
    src = dst;
    dst = t;
  }
  if (src != v)
    for (int i = 0; i < n; ++i) v[i] = src[i];
}
}  // namespace detail

/// a visits before b: larger load first, ties by lower id.
[[nodiscard]] LLEP_HOST_DEVICE inline bool visits_before(const count_t* loads, int a, int b) noexcept {
  return loads[a] > loads[b] || (loads[a] == loads[b] && a < b);
}

/// Sorts the ids v[0, n), given in increasing id order, into the visit order (decreasing
/// load, ties by lower id), with tmp[n] as scratch. No comparison sort: one counting pass
/// on the top byte in which the loads differ, then each bucket by insertion (small) or LSD
/// radix (large); a few ids by insertion alone.
LLEP_HOST_DEVICE inline void sort_visit(const count_t* loads, std::int32_t* v, int n, std::int32_t* tmp,
                                        std::uint8_t* digit, std::uint32_t* hist) noexcept {
  if (n <= 24) {
    for (int i = 1; i < n; ++i)  // insertion: stable, larger loads first
      for (int j = i; j > 0 && loads[v[j]] > loads[v[j - 1]]; --j) {
        const std::int32_t x = v[j];
        v[j] = v[j - 1];
        v[j - 1] = x;
      }
    return;
  }
  std::uint64_t differ = 0;
  const auto first = static_cast<std::uint64_t>(loads[v[0]]);
  for (int i = 1; i < n; ++i) differ |= static_cast<std::uint64_t>(loads[v[i]]) ^ first;
  if (differ == 0) return;  // all equal: id order
  const int top = detail::top_bit(differ);
  const int shift = top >= 8 ? top - 7 : 0;
  detail::scatter_by_byte(loads, v, tmp, n, shift, digit, hist);
  const std::uint64_t low = (std::uint64_t{1} << shift) - 1;  // the bits left to sort by
  // Bucket by bucket from tmp back into v, each found by its shared high bits.
  int b = 0;
  while (b < n) {
    const auto key = static_cast<std::uint64_t>(loads[tmp[b]]) >> shift;
    int e = b + 1;
    std::uint64_t d = 0;
    const auto l0 = static_cast<std::uint64_t>(loads[tmp[b]]) & low;
    while (e < n && (static_cast<std::uint64_t>(loads[tmp[e]]) >> shift) == key) {
      d |= (static_cast<std::uint64_t>(loads[tmp[e]]) & low) ^ l0;
      ++e;
    }
    if (d != 0 && e - b > 24) {
      detail::radix_by_load(loads, tmp + b, v + b, e - b, d, digit, hist);
    } else if (d != 0) {
      for (int i = b + 1; i < e; ++i)  // insertion: stable, larger loads first
        for (int j = i; j > b && loads[tmp[j]] > loads[tmp[j - 1]]; --j) {
          const std::int32_t t = tmp[j];
          tmp[j] = tmp[j - 1];
          tmp[j - 1] = t;
        }
    }
    for (int i = b; i < e; ++i) v[i] = tmp[i];
    b = e;
  }
}

/// The visit order: experts with load, by decreasing load, ties by lower id, into
/// s.order; returns how many.
LLEP_HOST_DEVICE inline int visit_order(const count_t* loads, int N, OrderScratch s) noexcept {
  int n = 0;
  for (int e = 0; e < N; ++e)
    if (loads[e] > 0) s.order[n++] = e;
  sort_visit(loads, s.order, n, s.tmp, s.digit, s.hist);
  return n;
}

/// Where the next slice of a spilling expert goes, and how many of its rows; rows <= 0
/// stops the spill (the rest stays on the native rank).
struct Slice {
  int rank;
  count_t rows;
};

/// The least-loaded rank kept up to date under point updates: a tournament tree over
/// `size` (a power of two >= P) leaves, node i holding the leaf with the least key
/// (lower rank on ties) and that key. O(log P) an update, O(1) the query; the padding
/// carries kCountMax. An update carries the new winner up in registers and reads only the
/// siblings, which it does not change: no chain of loads through the nodes it writes.
struct LeastTree {
  count_t* key;       // 2 x size: the node's winning key; leaf q is size + q
  std::int32_t* win;  // 2 x size: the node's winning rank; win[1] is the root
  int size;
  LLEP_HOST_DEVICE static int size_for(int P) noexcept {
    int n = 1;
    while (n < P) n *= 2;
    return n;
  }
  LLEP_HOST_DEVICE static LeastTree take(Carve& c, int P) noexcept {
    const int n = size_for(P);
    return {c.take<count_t>(2 * static_cast<std::size_t>(n)), c.take<std::int32_t>(2 * static_cast<std::size_t>(n)),
            n};
  }
  /// Node i from its children; the left one (lower ranks) wins ties.
  LLEP_HOST_DEVICE void pull(int i) noexcept {
    const bool right = key[2 * i + 1] < key[2 * i];
    key[i] = right ? key[2 * i + 1] : key[2 * i];
    win[i] = right ? win[2 * i + 1] : win[2 * i];
  }
  LLEP_HOST_DEVICE void build(const count_t* load, int P) noexcept {
    for (int q = 0; q < size; ++q) {
      key[size + q] = q < P ? load[q] : kCountMax;
      win[size + q] = q;
    }
    for (int i = size - 1; i > 0; --i) pull(i);
  }
  LLEP_HOST_DEVICE void set(int q, count_t k) noexcept {
    int i = size + q, w = q;
    count_t kw = k;
    key[i] = k;
    for (; i > 1; i /= 2) {
      // The sibling takes the node when it is less, or equal and on the left.
      const count_t ks = key[i ^ 1];
      const bool sib = ks < kw || (ks == kw && (i & 1) != 0);
      w = sib ? win[i ^ 1] : w;
      kw = sib ? ks : kw;
      key[i / 2] = kw;
      win[i / 2] = w;
    }
  }
  [[nodiscard]] LLEP_HOST_DEVICE int least() const noexcept { return win[1]; }
  /// The least leaf other than q: the root's unless that is q, else the best of the
  /// siblings' winners on q's path.
  [[nodiscard]] LLEP_HOST_DEVICE int least_other(int q) const noexcept {
    if (win[1] != q) return win[1];
    int best = -1;
    count_t kb = 0;
    for (int i = size + q; i > 1; i /= 2) {
      const int w = win[i ^ 1];
      const count_t kw = key[i ^ 1];
      if (best < 0 || kw < kb || (kw == kb && w < best)) {
        best = w;
        kb = kw;
      }
    }
    return best;
  }
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
  int least;  ///< the least-effective rank other than native, lower rank on ties
};

/// An expert that spilled, and where its segments wait.
struct SpillRef {
  std::int32_t expert;
  std::int32_t at;
};

/// Scratch of assign_then_spill on P ranks and N experts.
struct SpillScratch {
  OrderScratch order;
  count_t* effective;      // P
  Slice* slices;           // P
  std::uint8_t* hot;       // P
  std::uint8_t* moved;     // P: the ranks an expert's weights go to
  SpillRef* spills;        // N: the experts that spilled, where their segments start in PlanView::spare
  std::int32_t* at;        // N: spills indexed by expert (when many experts spilled), else -1
  std::int32_t* first;     // P + 1: rank q's experts are by_rank[first[q], first[q + 1])
  std::int32_t* by_rank;   // N
  LeastTree tree;
  LLEP_HOST_DEVICE static SpillScratch take(Carve& c, int P, int N) noexcept {
    SpillScratch s{};
    s.order = OrderScratch::take(c, N);
    s.effective = c.take<count_t>(static_cast<std::size_t>(P));
    s.slices = c.take<Slice>(static_cast<std::size_t>(P));
    s.hot = c.take<std::uint8_t>(static_cast<std::size_t>(P));
    s.moved = c.take<std::uint8_t>(static_cast<std::size_t>(P));
    s.spills = c.take<SpillRef>(static_cast<std::size_t>(N));
    s.at = c.take<std::int32_t>(static_cast<std::size_t>(N));
    s.first = c.take<std::int32_t>(static_cast<std::size_t>(P) + 1);
    s.by_rank = c.take<std::int32_t>(static_cast<std::size_t>(N));
    s.tree = LeastTree::take(c, P);
    return s;
  }
};

namespace detail {
/// The native loads into s.effective, and the experts of each rank, by id: rank q's are
/// s.by_rank[s.first[q], s.first[q + 1]). True when by_rank is the identity (natives
/// ordered by rank, as in the default placement).
LLEP_HOST_DEVICE inline bool index_by_rank(const count_t* loads, TopoView t, const SpillScratch& s) noexcept {
  native_loads(loads, t, s.effective, s.first);
  for (int q = 0; q < t.ranks; ++q) s.first[q + 1] += s.first[q];
  int unsorted = 0;
  if (t.native != nullptr && t.block() == 0)  // else the default placement: sorted
    for (int e = 1; e < t.experts; ++e) unsorted |= t.native[e - 1] > t.native[e] ? 1 : 0;
  if (unsorted == 0) {
    for (int e = 0; e < t.experts; ++e) s.by_rank[e] = e;
    return true;
  }
  for (int e = 0; e < t.experts; ++e) s.by_rank[s.first[t.native_rank(e)]++] = e;
  for (int q = t.ranks; q > 0; --q) s.first[q] = s.first[q - 1];
  s.first[0] = 0;
  return false;
}

/// Rank q went above capacity while order[i] was visited: its experts with load that come
/// after order[i] join the visit order order[i + 1, n) in their place. Returns the new n.
LLEP_HOST_DEVICE inline int join_visits(const count_t* loads, int q, const SpillScratch& s, int i, int n) noexcept {
  const OrderScratch& o = s.order;
  const int e = o.order[i];
  std::int32_t* add = o.order + n;  // room: these experts are not in the order yet
  int k = 0;
  for (int j = s.first[q]; j < s.first[q + 1]; ++j) {
    const int x = s.by_rank[j];
    if (loads[x] > 0 && visits_before(loads, e, x)) add[k++] = x;
  }
  if (k == 0) return n;
  sort_visit(loads, add, k, o.tmp, o.digit, o.hist);
  if (n - 1 <= i || visits_before(loads, o.order[n - 1], add[0])) return n + k;  // they come last
  for (int j = 0; j < k; ++j) o.tmp[j] = add[j];
  // Merge order[i + 1, n) and tmp[0, k) from the back into order[i + 1, n + k).
  int a = n - 1, b = k - 1, w = n + k - 1;
  while (b >= 0) {
    if (a > i && visits_before(loads, o.tmp[b], o.order[a]))
      o.order[w--] = o.order[a--];
    else
      o.order[w--] = o.tmp[b--];
  }
  return n + k;
}

/// One native segment [0, l) for each expert with load in [b, x), from seg[ns] on; their
/// offsets. Returns the new ns.
LLEP_HOST_DEVICE inline int write_natives(const count_t* loads, TopoView t, int b, int x, Segment* seg,
                                          std::int32_t* offsets, int ns) noexcept {
  for (int e = b; e < x; ++e) {
    offsets[e] = ns;
    const count_t l = loads[e];
    if (l > 0) seg[ns++] = Segment{e, t.native_rank(e), 0, l};
  }
  return ns;
}

/// The driver's plan, in expert order, into out: the S spilled experts' segments (waiting
/// in out.spare[0, kept)) and transfers, the others' one native segment; every rank ends
/// at its effective load. Nothing but the count of dropped segments when they do not fit.
LLEP_EXEC_CHECK_DISABLE
template <class HoldsReplica>
LLEP_HOST_DEVICE void write_in_order(const count_t* loads, TopoView t, const SpillScratch& s, int S, int kept,
                                     PlanView& out, HoldsReplica& holds_replica) noexcept {
  const int P = t.ranks, N = t.experts;
  if (N - S + kept > out.max_segments) {  // maybe too many: count them
    int n = kept - S;
    for (int e = 0; e < N; ++e) n += loads[e] > 0 ? 1 : 0;
    if (n > out.max_segments) {
      out.dropped += n - out.max_segments;
      return;
    }
  }
  // The spilled experts by id: a few by insertion, many through an index by expert.
  SpillRef* sp = s.spills;
  if (S <= 64) {
    for (int i = 1; i < S; ++i)
      for (int j = i; j > 0 && sp[j].expert < sp[j - 1].expert; --j) {
        const SpillRef x = sp[j];
        sp[j] = sp[j - 1];
        sp[j - 1] = x;
      }
  } else {
    for (int e = 0; e < N; ++e) s.at[e] = -1;
    for (int i = 0; i < S; ++i) s.at[sp[i].expert] = sp[i].at;
    for (int e = 0, i = 0; e < N; ++e)
      if (s.at[e] >= 0) sp[i++] = SpillRef{e, s.at[e]};
  }
  if (kept > 8)
    for (int q = 0; q < P; ++q) s.moved[q] = 0;
  Segment* const seg = out.segments;
  const Segment* const spare = out.spare;
  int ns = 0, b = 0;
  for (int i = 0; i < S; ++i) {
    const int e = sp[i].expert, native = t.native_rank(e);
    ns = write_natives(loads, t, b, e, seg, out.expert_offsets, ns);
    out.expert_offsets[e] = ns;
    int end = sp[i].at;
    for (; end < kept && spare[end].expert == e; ++end) seg[ns++] = spare[end];
    // Its transfers in dst order: a few by insertion, many by marking the ranks (O(P)).
    const int first = out.num_transfers;
    const bool many = end - sp[i].at > 8;
    for (int j = sp[i].at; j < end; ++j) {
      const int dst = spare[j].rank;
      if (dst == native || holds_replica(e, dst)) continue;
      if (many)
        s.moved[dst] = 1;
      else
        out.add_transfer(first, WeightTransfer{e, native, dst});
    }
    if (many)
      for (int q = 0; q < P; ++q)
        if (s.moved[q] != 0) {
          s.moved[q] = 0;
          out.transfers[out.num_transfers++] = WeightTransfer{e, native, q};
        }
    b = e + 1;
  }
  ns = write_natives(loads, t, b, N, seg, out.expert_offsets, ns);
  out.expert_offsets[N] = ns;
  out.num_segments = ns;
  for (int q = 0; q < P; ++q) out.rank_loads[q] = s.effective[q];
}
}  // namespace detail

/// Alg. 2 with the spill of Alg. 3 left to `hook`: experts visited by decreasing load (ties:
/// lower id); effective[q] = rows assigned to q plus its native load still to be visited;
/// the native rank keeps min(l, cap - effective) when positive; then hook(effective, spill)
/// names each next slice of the rest, or stops. The native's rows come out as one segment
/// [0, kept + rest) and the slices follow it in order. Writes `out` (begun by the caller,
/// still empty) whole, in expert order: its finish() only marks it finished. A rank that
/// holds_replica(e, rank) receives no transfer of e.
///
/// An expert spills only when its native rank's effective load is above cap, and a rank's
/// effective load grows only through slices while none of its experts spills: so only the
/// experts of ranks above cap are sorted and visited, and a rank that a slice lifts above
/// cap joins them with its experts still to come. The others keep their rows, in any visit
/// order, and change nothing: the plan is the one visiting every expert makes.
LLEP_EXEC_CHECK_DISABLE
template <class Hook, class HoldsReplica>
LLEP_HOST_DEVICE void assign_then_spill(const count_t* loads, TopoView t, count_t cap, SpillScratch s,
                                        PlanView& out, Hook&& hook, HoldsReplica holds_replica) {
  const int P = t.ranks, N = t.experts;
  count_t* eff = s.effective;
  const bool by_id = detail::index_by_rank(loads, t, s);
  int n = 0, hot = 0;
  for (int q = 0; q < P; ++q) {
    s.hot[q] = P > 1 && eff[q] > cap;  // one rank keeps everything
    hot += s.hot[q];
    if (s.hot[q] && by_id)  // the hot ranks' experts, in id order (sort_visit needs it)
      for (int e = s.first[q]; e < s.first[q + 1]; ++e)
        if (loads[e] > 0) s.order.order[n++] = e;
  }
  if (hot > 0 && !by_id)
    for (int e = 0; e < N; ++e)
      if (loads[e] > 0 && s.hot[t.native_rank(e)]) s.order.order[n++] = e;
  if (n > 0) {
    sort_visit(loads, s.order.order, n, s.order.tmp, s.order.digit, s.order.hist);
    s.tree.build(eff, P);
  }
  // The spilled experts' segments wait in out.spare until the plan is written in expert order.
  int kept_segments = 0, spilled = 0;
  auto keep = [&](int e, int rank, count_t b, count_t end) {
    if (kept_segments < out.max_segments)
      out.spare[kept_segments++] = Segment{e, rank, b, end};
    else
      ++out.dropped;
  };
  for (int i = 0; i < n; ++i) {
    const int e = s.order.order[i];
    const count_t l = loads[e];
    const int native = t.native_rank(e);
    const count_t avail = cap - (eff[native] - l);
    if (avail >= l) continue;  // all stays native: its effective load is unchanged
    const count_t kept = avail > 0 ? avail : 0;
    eff[native] += kept - l;  // the tree learns it when the spill is done
    int k = 0;
    count_t r = l - kept;
    while (r > 0 && k < P) {
      const Slice next =
          hook(static_cast<const count_t*>(eff), Spill{e, native, r, kept, cap, s.slices, k, s.tree.least_other(native)});
      if (next.rows <= 0) break;
      s.slices[k++] = next;
      eff[next.rank] += next.rows;
      s.tree.set(next.rank, eff[next.rank]);
      r -= next.rows;
      if (!s.hot[next.rank] && eff[next.rank] > cap) {
        s.hot[next.rank] = 1;
        n = detail::join_visits(loads, next.rank, s, i, n);
      }
    }
    eff[native] += r;
    s.tree.set(native, eff[native]);
    s.spills[spilled++] = SpillRef{e, kept_segments};
    if (kept + r > 0) keep(e, native, 0, kept + r);
    count_t b = kept + r;
    for (int j = 0; j < k; ++j) {
      keep(e, s.slices[j].rank, b, b + s.slices[j].rows);
      b += s.slices[j].rows;
    }
  }
  detail::write_in_order(loads, t, s, spilled, kept_segments, out, holds_replica);
  out.in_order = out.complete = true;
}

/// LeastLoaded's hook (Alg. 3): the first qualifying rank in (effective, rank) order, else
/// all r forced onto the first rank of that order. Whether a rank qualifies only grows
/// with its room, and the first rank has the most: if it does not qualify nobody does, so
/// the target is always the least-effective other rank.
struct LeastLoadedSpill {
  count_t min_tokens_per_gemm;
  [[nodiscard]] LLEP_HOST_DEVICE Slice operator()(const count_t* eff, const Spill& s) const noexcept {
    return {s.least, lla_slice(s.rows_left, s.cap - eff[s.least], min_tokens_per_gemm, true)};
  }
};

/// Standard EP: every expert with load on its native rank, capacity the busiest rank's
/// load (at least 1). Writes `out` (begun by the caller, still empty) whole, in expert
/// order, as assign_then_spill does when nothing spills: its finish() only marks it.
LLEP_HOST_DEVICE inline void standard_ep(const count_t* loads, TopoView t, PlanView& out) noexcept {
  native_loads(loads, t, out.rank_loads);
  SpillScratch none{};  // nothing spills: only the rank loads are read
  none.effective = out.rank_loads;
  auto no_replica = [](int, int) { return false; };
  detail::write_in_order(loads, t, none, 0, 0, out, no_replica);
  out.in_order = out.complete = true;
  count_t peak = 1;
  for (int r = 0; r < t.ranks; ++r) peak = out.rank_loads[r] > peak ? out.rank_loads[r] : peak;
  out.capacity = peak;
}

}  // namespace llep::alg
