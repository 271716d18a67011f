#pragma once
// The per-row and per-element work of a step as __host__ __device__ functors, run by
// exec.for_each_n on the host (loops) or on a CUDA stream (a grid-stride kernel). This is
// the only copy of the permutation logic.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "llep/core/accumulate.hpp"
#include "llep/core/config.hpp"
#include "llep/layer/layout.hpp"

namespace llep {

namespace detail {
/// Index of the last entry whose `key` is <= x in a sorted table (x >= table[0].key).
template <class Row, class Key>
LLEP_HOST_DEVICE std::int32_t last_at_or_below(const Row* table, std::int32_t n, std::int32_t x, Key key) {
  std::int32_t lo = 0, hi = n;  // invariant: table[lo].key <= x, answer in [lo, hi)
  while (hi - lo > 1) {
    const std::int32_t mid = lo + (hi - lo) / 2;
    if (key(table[mid]) <= x) lo = mid; else hi = mid;
  }
  return lo;
}
struct SortedBegin {
  LLEP_HOST_DEVICE std::int32_t operator()(const SendBlock& b) const { return b.sorted_begin; }
};
struct alignas(16) Word16 {
  std::uint64_t lo, hi;
};
struct RecvRow {
  LLEP_HOST_DEVICE std::int32_t operator()(const RecvChunk& c) const { return c.recv_row; }
};
}  // namespace detail

/// For the s-th pair in expert-sorted order (order[s] = its flat index t * K + k): its send
/// row. Fills pair_row[flat] = send row and row_pair[send row] = flat.
struct AssignSendRows {
  const SendBlock* blocks;
  std::int32_t n_blocks;
  const std::int32_t* order;
  std::int32_t* pair_row;
  std::int32_t* row_pair;
  LLEP_HOST_DEVICE void operator()(std::size_t i) const {
    const auto s = static_cast<std::int32_t>(i);
    const SendBlock& b = blocks[detail::last_at_or_below(blocks, n_blocks, s, detail::SortedBegin{})];
    const std::int32_t row = b.send_row + (s - b.sorted_begin);
    pair_row[order[s]] = row;
    row_pair[row] = order[s];
  }
};

/// For each received row: the compute row it belongs to.
struct AssignComputeRows {
  const RecvChunk* chunks;
  std::int32_t n_chunks;
  std::int32_t* compute_row_of_recv;
  LLEP_HOST_DEVICE void operator()(std::size_t i) const {
    const auto r = static_cast<std::int32_t>(i);
    const RecvChunk& c = chunks[detail::last_at_or_below(chunks, n_chunks, r, detail::RecvRow{})];
    compute_row_of_recv[r] = c.compute_row + (r - c.recv_row);
  }
};

/// Row copy in words of `Word` bytes: element i is word (i % words) of row i / words.
/// Gather: dst row j <- src row index[j] / divisor. Scatter: dst row index[j] <- src row j.
template <class Word, bool Gather>
struct CopyRows {
  Word* dst;
  const Word* src;
  const std::int32_t* index;
  std::size_t words;        // words per row
  std::int32_t divisor = 1;  // pair index -> token index (K) when gathering tokens
  LLEP_HOST_DEVICE void operator()(std::size_t i) const {
    const std::size_t j = i / words, w = i % words;
    if constexpr (Gather)
      dst[j * words + w] = src[static_cast<std::size_t>(index[j] / divisor) * words + w];
    else
      dst[static_cast<std::size_t>(index[j]) * words + w] = src[j * words + w];
  }
};

/// out[t][d] = sum over k, in order, of weight[t][k] * rows[pair_row[t*K + k]][d]:
/// a fixed order and no atomics, so the same input gives the same bits. Null weights
/// count as 1 (backward's input gradients carry their gate already).
template <class T, class G>
struct CombineTopK {
  T* out;
  const T* rows;
  const std::int32_t* pair_row;
  const G* weights;
  std::int32_t top_k;
  std::size_t hidden;
  LLEP_HOST_DEVICE void operator()(std::size_t i) const {
    using A = accumulate_t<T>;
    const std::size_t t = i / hidden, d = i % hidden;
    A acc = A(0);
    for (std::int32_t k = 0; k < top_k; ++k) {
      const std::size_t p = t * static_cast<std::size_t>(top_k) + static_cast<std::size_t>(k);
      const A row = static_cast<A>(rows[static_cast<std::size_t>(pair_row[p]) * hidden + d]);
      acc += weights ? static_cast<A>(weights[p]) * row : row;
    }
    out[i] = static_cast<T>(acc);
  }
};

/// Backward, per compute row r: s[r] = <g[r], y[r]> (the gate's gradient), then g[r] *=
/// gate[r] (the expert's upstream gradient).
template <class T, class G>
struct GateGradients {
  T* g;
  const T* y;
  const G* gate;
  G* s;
  std::size_t hidden;
  LLEP_HOST_DEVICE void operator()(std::size_t r) const {
    using A = accumulate_t<T>;
    A dot = A(0);
    const A w = static_cast<A>(gate[r]);
    for (std::size_t d = 0; d < hidden; ++d) {
      const std::size_t i = r * hidden + d;
      dot += static_cast<A>(g[i]) * static_cast<A>(y[i]);
      g[i] = static_cast<T>(w * static_cast<A>(g[i]));
    }
    s[r] = static_cast<G>(dot);
  }
};

/// Calls f(W{}) with the widest word W that divides the row size and both pointers.
template <class F>
void with_row_word(const void* dst, const void* src, std::size_t row_bytes, F f) {
  const auto aligned = [&](std::size_t w) {
    return row_bytes % w == 0 && reinterpret_cast<std::uintptr_t>(dst) % w == 0 &&
           reinterpret_cast<std::uintptr_t>(src) % w == 0;
  };
  if (aligned(16)) f(detail::Word16{});
  else if (aligned(8)) f(std::uint64_t{});
  else if (aligned(4)) f(std::uint32_t{});
  else if (aligned(2)) f(std::uint16_t{});
  else f(std::uint8_t{});
}

/// Runs a row copy with the widest word that divides the row size and both pointers.
template <class Exec>
void copy_rows(Exec& exec, bool gather, void* dst, const void* src, const std::int32_t* index, std::size_t rows,
               std::size_t row_bytes, std::int32_t divisor = 1) {
  if (rows == 0 || row_bytes == 0) return;
  with_row_word(dst, src, row_bytes, [&](auto word) {
    using W = decltype(word);
    const std::size_t words = row_bytes / sizeof(W);
    if (gather)
      exec.for_each_n(rows * words, CopyRows<W, true>{static_cast<W*>(dst), static_cast<const W*>(src), index, words, divisor});
    else
      exec.for_each_n(rows * words, CopyRows<W, false>{static_cast<W*>(dst), static_cast<const W*>(src), index, words, divisor});
  });
}

/// copy_rows of `*rows` rows (exec memory, at most max_rows), the count read when it runs.
template <class Exec, class C>
void copy_rows_counted(Exec& exec, bool gather, void* dst, const void* src, const std::int32_t* index, const C* rows,
                       std::size_t max_rows, std::size_t row_bytes, std::int32_t divisor = 1) {
  if (max_rows == 0 || row_bytes == 0) return;
  with_row_word(dst, src, row_bytes, [&](auto word) {
    using W = decltype(word);
    const std::size_t words = row_bytes / sizeof(W);
    if (gather)
      exec.for_each_counted(rows, words, max_rows * words,
                            CopyRows<W, true>{static_cast<W*>(dst), static_cast<const W*>(src), index, words, divisor});
    else
      exec.for_each_counted(rows, words, max_rows * words,
                            CopyRows<W, false>{static_cast<W*>(dst), static_cast<const W*>(src), index, words, 1});
  });
}

/// AssignSendRows with the send blocks of a layout in exec memory (a step whose host never
/// sees the layout): over the rank's pairs, which the host knows.
struct AssignSendRowsFrom {
  const LayoutView* layout;
  const std::int32_t* order;
  std::int32_t* pair_row;
  std::int32_t* row_pair;
  LLEP_HOST_DEVICE void operator()(std::size_t i) const {
    AssignSendRows{layout->send_blocks, layout->num_send_blocks, order, pair_row, row_pair}(i);
  }
};

/// AssignComputeRows with the receive chunks of a layout in exec memory; run it over the
/// layout's compute_rows with for_each_counted.
struct AssignComputeRowsFrom {
  const LayoutView* layout;
  std::int32_t* compute_row_of_recv;
  LLEP_HOST_DEVICE void operator()(std::size_t i) const {
    AssignComputeRows{layout->recv_chunks, layout->num_recv_chunks, compute_row_of_recv}(i);
  }
};

}  // namespace llep
