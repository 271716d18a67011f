#pragma once
// The host layout as it was before the shared routine (layer/layout.hpp, layout_block):
// kept verbatim as the independent reference that test_layout_step.cpp compares the
// shared routine with, bit for bit (and the GPU test its device run). Test code only.
#include <doctest/doctest.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <random>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "llep/layer/layout.hpp"

namespace testref {

using namespace llep;

class RefLayout {
 public:
  /// Builds the tables of `rank`. Reuses its vectors: no allocation once warm. `plan`
  /// must have passed check_plan (layer/check_plan.hpp): its ranks index the tables.
  void build(CountsView counts, const Plan& plan, const Topology& topo, int rank) {
    const int P = topo.ranks(), N = topo.experts();
    LLEP_EXPECTS(counts.ranks() == P && counts.experts() == N, "counts are ", counts.ranks(), " x ",
                 counts.experts(), " but the topology is P = ", P, ", N = ", N);
    LLEP_EXPECTS(plan.ranks() == P && plan.experts() == N && plan.finished(),
                 "plan does not match the topology (P = ", P, ", N = ", N, ") or is unfinished");
    LLEP_EXPECTS(rank >= 0 && rank < P, "rank ", rank, " is outside [0, ", P, ")");
    rank_ = rank;
    const auto sP = static_cast<std::size_t>(P);
    // Worst-case room up front (a plan has at most 2N + P + P x S segments, S replicas per
    // rank, and one expert's segments on this rank meet at most P - 1 more source
    // boundaries), so that a warm layout never allocates however the routing shifts.
    const auto bound = 2 * static_cast<std::size_t>(N) + sP * (1 + static_cast<std::size_t>(topo.replicas_per_rank()));
    send_blocks_.reserve(bound);
    tasks_.reserve(bound);
    chunks_.reserve(bound + static_cast<std::size_t>(N) * (sP - 1));

    // prefix[s][e] = pairs of expert e on ranks before s; the global position of a pair.
    prefix_.assign(sP * static_cast<std::size_t>(N), 0);
    for (int e = 0; e < N; ++e) {
      count_t acc = 0;
      for (int s = 0; s < P; ++s) {
        prefix_[idx(s, e, N)] = acc;
        acc += counts(s, e);
      }
    }

    // Send side.
    send_counts_.assign(sP, 0);
    send_blocks_.clear();
    count_t sorted = 0;
    for (int e = 0; e < N; ++e) {
      const count_t lo = prefix_[idx(rank, e, N)], hi = lo + counts(rank, e);
      for (const Segment& seg : plan.segments(e)) {
        const count_t b = std::max(seg.begin, lo), en = std::min(seg.end, hi);
        if (b >= en) continue;
        send_blocks_.push_back(SendBlock{e, seg.rank, to_i32(sorted + (b - lo)), 0, to_i32(en - b)});
        send_counts_[static_cast<std::size_t>(seg.rank)] += en - b;
      }
      sorted += counts(rank, e);
    }
    pairs_ = sorted;
    exclusive_scan(send_counts_, send_offsets_);
    cursor_.assign(sP, 0);
    for (SendBlock& blk : send_blocks_) {
      auto& c = cursor_[static_cast<std::size_t>(blk.dst)];
      blk.send_row = to_i32(send_offsets_[static_cast<std::size_t>(blk.dst)] + c);
      c += blk.rows;
    }

    // Compute tasks of this rank, then where each source's rows land in them. Row indices
    // of the receive and compute buffers are 32-bit, like the send side's B x K.
    count_t received = 0;
    for (const Segment& seg : plan.segments())
      if (seg.rank == rank) received += seg.size();
    LLEP_EXPECTS(received <= INT32_MAX, "rank ", rank, " would receive ", received,
                 " rows; the rows one rank computes must stay below 2^31");
    tasks_.clear();
    count_t row = 0;
    for (int e = 0; e < N; ++e)
      for (const Segment& seg : plan.segments(e))
        if (seg.rank == rank) {
          tasks_.push_back(ComputeTask{e, to_i32(row), to_i32(seg.size()), seg.begin, topo.holds(e, rank)});
          row += seg.size();
        }
    compute_rows_ = row;

    recv_counts_.assign(sP, 0);
    chunks_.clear();
    for (int s = 0; s < P; ++s)
      for (const ComputeTask& task : tasks_) {
        const count_t lo = prefix_[idx(s, task.expert, N)], hi = lo + counts(s, task.expert);
        const count_t b = std::max(task.begin, lo), en = std::min(task.begin + task.rows, hi);
        if (b >= en) continue;
        auto& got = recv_counts_[static_cast<std::size_t>(s)];
        chunks_.push_back(RecvChunk{s, task.expert, to_i32(got), to_i32(task.row + (b - task.begin)), to_i32(en - b)});
        got += en - b;
      }
    exclusive_scan(recv_counts_, recv_offsets_);
    for (RecvChunk& c : chunks_) c.recv_row += to_i32(recv_offsets_[static_cast<std::size_t>(c.src)]);
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  /// Pairs (token, k) on this rank; rows of the send buffer.
  [[nodiscard]] count_t pairs() const noexcept { return pairs_; }
  /// Rows this rank computes; rows of the receive and compute buffers.
  [[nodiscard]] count_t compute_rows() const noexcept { return compute_rows_; }
  [[nodiscard]] std::span<const count_t> send_counts() const noexcept { return send_counts_; }
  [[nodiscard]] std::span<const count_t> send_offsets() const noexcept { return send_offsets_; }
  [[nodiscard]] std::span<const count_t> recv_counts() const noexcept { return recv_counts_; }
  [[nodiscard]] std::span<const count_t> recv_offsets() const noexcept { return recv_offsets_; }
  /// Sorted by (expert, sorted_begin); they tile the rank's expert-sorted pairs.
  [[nodiscard]] std::span<const SendBlock> send_blocks() const noexcept { return send_blocks_; }
  /// Sorted by (src, expert); they tile the receive buffer.
  [[nodiscard]] std::span<const RecvChunk> recv_chunks() const noexcept { return chunks_; }
  [[nodiscard]] std::span<const ComputeTask> tasks() const noexcept { return tasks_; }
  /// Global position of the first pair of `expert` on `src` (pairs of lower ranks before).
  [[nodiscard]] count_t position_base(int src, int expert, int experts) const noexcept {
    return prefix_[idx(src, expert, experts)];
  }

 private:
  static std::size_t idx(int s, int e, int N) {
    return static_cast<std::size_t>(s) * static_cast<std::size_t>(N) + static_cast<std::size_t>(e);
  }
  static std::int32_t to_i32(count_t v) {
    LLEP_EXPECTS(v >= 0 && v <= INT32_MAX, "row index ", v, " does not fit in 32 bits (one rank's pairs must stay below 2^31)");
    return static_cast<std::int32_t>(v);
  }
  static void exclusive_scan(const std::vector<count_t>& in, std::vector<count_t>& out) {
    out.resize(in.size());
    count_t acc = 0;
    for (std::size_t i = 0; i < in.size(); ++i) {
      out[i] = acc;
      acc += in[i];
    }
  }

  int rank_ = 0;
  count_t pairs_ = 0;
  count_t compute_rows_ = 0;
  std::vector<count_t> prefix_;
  std::vector<count_t> send_counts_, send_offsets_, recv_counts_, recv_offsets_, cursor_;
  std::vector<SendBlock> send_blocks_;
  std::vector<RecvChunk> chunks_;
  std::vector<ComputeTask> tasks_;
};


// A layout's tables as plain vectors, whatever built them (Layout, RefLayout, a LayoutView
// over caller buffers, a device download), compared bit for bit by require_same.
struct Tables {
  count_t pairs = 0, rows = 0;
  std::vector<count_t> send_counts, send_offsets, recv_counts, recv_offsets;
  std::vector<SendBlock> send_blocks;
  std::vector<RecvChunk> recv_chunks;
  std::vector<ComputeTask> tasks;
};

template <class L>  // Layout or RefLayout
Tables tables_of(const L& l) {
  auto v = [](auto s) { return std::vector<typename decltype(s)::value_type>(s.begin(), s.end()); };
  return Tables{l.pairs(),          l.compute_rows(),   v(l.send_counts()), v(l.send_offsets()), v(l.recv_counts()),
                v(l.recv_offsets()), v(l.send_blocks()), v(l.recv_chunks()), v(l.tasks())};
}

/// From a struct holding the tables as fields of those names (DeviceLayout::Host).
template <class H>
Tables tables_of_fields(const H& h) {
  return Tables{h.pairs,        h.compute_rows, h.send_counts, h.send_offsets, h.recv_counts,
                h.recv_offsets, h.send_blocks,  h.recv_chunks, h.tasks};
}

inline Tables tables_of(const LayoutView& v, int P) {
  auto n = [](const auto* p, std::int64_t k) { return std::vector<std::remove_cv_t<std::remove_pointer_t<decltype(p)>>>(p, p + k); };
  return Tables{v.pairs,
                v.compute_rows,
                n(v.send_counts, P),
                n(v.send_offsets, P),
                n(v.recv_counts, P),
                n(v.recv_offsets, P),
                n(v.send_blocks, v.num_send_blocks),
                n(v.recv_chunks, v.num_recv_chunks),
                n(v.tasks, v.num_tasks)};
}

inline void require_same(const Tables& a, const Tables& b) {
  REQUIRE(a.pairs == b.pairs);
  REQUIRE(a.rows == b.rows);
  REQUIRE(a.send_counts == b.send_counts);
  REQUIRE(a.send_offsets == b.send_offsets);
  REQUIRE(a.recv_counts == b.recv_counts);
  REQUIRE(a.recv_offsets == b.recv_offsets);
  REQUIRE(a.send_blocks.size() == b.send_blocks.size());
  REQUIRE(a.recv_chunks.size() == b.recv_chunks.size());
  REQUIRE(a.tasks.size() == b.tasks.size());
  // Send blocks and receive chunks are five int32 each, no padding: whole bytes compare.
  if (!a.send_blocks.empty())  // memcmp of null pointers is undefined, even for 0 bytes
    REQUIRE(std::memcmp(a.send_blocks.data(), b.send_blocks.data(), a.send_blocks.size() * sizeof(SendBlock)) == 0);
  if (!a.recv_chunks.empty())
    REQUIRE(std::memcmp(a.recv_chunks.data(), b.recv_chunks.data(), a.recv_chunks.size() * sizeof(RecvChunk)) == 0);
  for (std::size_t i = 0; i < a.tasks.size(); ++i) {  // a bool and padding: field by field
    CAPTURE(i);
    REQUIRE(a.tasks[i].expert == b.tasks[i].expert);
    REQUIRE(a.tasks[i].row == b.tasks[i].row);
    REQUIRE(a.tasks[i].rows == b.tasks[i].rows);
    REQUIRE(a.tasks[i].begin == b.tasks[i].begin);
    REQUIRE(a.tasks[i].native == b.tasks[i].native);
  }
}

// C[P][N] with column e summing to loads[e], split by `mode`: 0 random cuts, 1 all on one
// rank, 2 even, 3 only even ranks, 4 one pair per rank then the rest on the last.
inline std::vector<count_t> split_counts(std::mt19937_64& rng, const std::vector<count_t>& loads, int P, int mode) {
  const auto N = loads.size();
  std::vector<count_t> C(static_cast<std::size_t>(P) * N, 0);
  const int one = static_cast<int>(rng() % static_cast<unsigned>(P));
  for (std::size_t e = 0; e < N; ++e) {
    const count_t l = loads[e];
    auto at = [&](int p) -> count_t& { return C[static_cast<std::size_t>(p) * N + e]; };
    switch (mode) {
      case 0: {
        count_t left = l;
        for (int p = 0; p < P - 1; ++p) {
          const count_t take = left == 0 ? 0 : static_cast<count_t>(rng() % static_cast<std::uint64_t>(left + 1));
          at(p) = take;
          left -= take;
        }
        at(P - 1) = left;
        break;
      }
      case 1: at(one) = l; break;
      case 2:
        for (int p = 0; p < P; ++p) at(p) = l / P + (p < l % P ? 1 : 0);
        break;
      case 3: {
        const int evens = (P + 1) / 2;
        for (int p = 0; p < P; p += 2) at(p) = l / evens + (p / 2 < l % evens ? 1 : 0);
        break;
      }
      default: {
        count_t left = l;
        for (int p = 0; p < P - 1 && left > 0; ++p, --left) at(p) = 1;
        at(P - 1) += left;
      }
    }
  }
  return C;
}

}  // namespace testref
