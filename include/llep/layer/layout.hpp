#pragma once
// Dispatch layout: a pure host function of (C, plan, rank) that says which rows a rank
// sends where, which rows it receives from whom, and which rows of which expert it
// computes. Everything per pair (the permutations themselves) is done by the shared
// functors in layer/row_ops.hpp from the small tables built here, on host or device.
//
// Orders (DESIGN.md): an expert's pairs are ordered by source rank, then by their order on
// the source (flat index t * K + k). A send block to one destination is ordered by
// (expert, position); so is what arrives from one source. The compute buffer is ordered by
// task (expert ascending, then segment), each task's rows by global position.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <span>
#include <vector>

#include "llep/core/counts.hpp"
#include "llep/core/plan.hpp"

namespace llep {

/// A run of a rank's expert-sorted pairs [sorted_begin, sorted_begin + rows) that goes to
/// `dst` and lands at send rows [send_row, send_row + rows).
struct SendBlock {
  std::int32_t expert = 0;
  std::int32_t dst = 0;
  std::int32_t sorted_begin = 0;
  std::int32_t send_row = 0;
  std::int32_t rows = 0;
};

/// Rows [recv_row, recv_row + rows) from `src` are rows [compute_row, compute_row + rows)
/// of the compute buffer.
struct RecvChunk {
  std::int32_t src = 0;
  std::int32_t expert = 0;
  std::int32_t recv_row = 0;
  std::int32_t compute_row = 0;
  std::int32_t rows = 0;
};

/// One (expert, segment) this rank computes: the expert's pairs [begin, begin + rows) in
/// compute rows [row, row + rows).
struct ComputeTask {
  std::int32_t expert = 0;
  std::int32_t row = 0;
  std::int32_t rows = 0;
  count_t begin = 0;
  /// The expert's weights are resident on this rank (Topology::holds: its native rank or a
  /// replica), so no weight transfer feeds this task. The name predates replicas.
  bool native = true;
};

class Layout {
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

}  // namespace llep
