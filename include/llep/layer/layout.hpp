#pragma once
// Dispatch layout: a pure function of (C, plan, rank) that says which rows a rank sends
// where, which rows it receives from whom, and which rows of which expert it computes.
// Everything per pair (the permutations themselves) is done by the shared functors in
// layer/row_ops.hpp from the small tables built here, on host or device.
//
// One implementation for both: layout_step() is a __host__ __device__ routine over plain
// data (the counts matrix, a PlanView, a LayoutView over caller buffers of
// layout_capacity() entries) that never allocates or throws, made of phases: layout_prefix
// (per expert range), layout_front (send side and tasks), layout_recv_count / _scan / _write
// (receive side, per source). Layout::build runs them on the host into its own vectors;
// device/device_layout.cuh runs the same phases in one block, the per-expert and
// per-source ones spread over threads, after the device planner.
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

#include "llep/core/block.hpp"
#include "llep/core/carve.hpp"
#include "llep/core/counts.hpp"
#include "llep/core/config.hpp"
#include "llep/core/plan.hpp"
#include "llep/core/plan_view.hpp"

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

/// Entries each table of one rank's layout may need, for a plan of at most `segments`
/// segments: a send block or a task is a piece of one segment, and a receive chunk a piece
/// of one task cut by the source boundaries (at most P - 1 inside each expert).
struct LayoutCapacity {
  std::int64_t send_blocks = 0;
  std::int64_t tasks = 0;
  std::int64_t recv_chunks = 0;
};
[[nodiscard]] LLEP_HOST_DEVICE constexpr LayoutCapacity layout_capacity(int ranks, int experts,
                                                                        std::int64_t segments) noexcept {
  return LayoutCapacity{segments, segments, segments + std::int64_t{experts} * (ranks > 1 ? ranks - 1 : 0)};
}

/// How layout_block ended.
struct LayoutStatus {
  enum Code : std::int32_t {
    ok = 0,
    pairs_overflow = 1,  ///< the rank's pairs (value) do not fit 32-bit row indices
    rows_overflow = 2,   ///< the rows the rank computes (value) do not fit 32-bit row indices
    table_overflow = 3,  ///< a table (value: 0 send blocks, 1 tasks, 2 receive chunks) ran out of room
    no_plan = 4,         ///< the device plan before it failed (value: its StepStatus code), or none ran yet
  };
  std::int32_t code = ok;
  std::int32_t rank = 0;
  count_t value = 0;
  [[nodiscard]] LLEP_HOST_DEVICE bool good() const noexcept { return code == ok; }
};

/// One rank's layout as plain data over caller buffers: prefix P x N; the four count and
/// offset arrays P each, recv_chunk_first P + 1; the tables max_* entries each
/// (layout_capacity).
struct LayoutView {
  count_t* prefix = nullptr;  ///< [s * N + e]: pairs of expert e on ranks before s
  count_t* send_counts = nullptr;
  count_t* send_offsets = nullptr;
  count_t* recv_counts = nullptr;
  count_t* recv_offsets = nullptr;
  SendBlock* send_blocks = nullptr;
  ComputeTask* tasks = nullptr;
  RecvChunk* recv_chunks = nullptr;
  std::int32_t* recv_chunk_first = nullptr;  ///< P + 1: each source's first receive chunk
  std::int32_t max_send_blocks = 0, max_tasks = 0, max_recv_chunks = 0;
  std::int32_t num_send_blocks = 0, num_tasks = 0, num_recv_chunks = 0;
  std::int32_t rank = 0;
  count_t pairs = 0;         ///< this rank's pairs: rows of the send buffer
  count_t compute_rows = 0;  ///< rows this rank computes: rows of the receive and compute buffers
};

/// Whether `rank` holds expert e's weights in a topology without replicas (the device's).
struct NativeHolds {
  const std::int32_t* native = nullptr;  ///< N entries: each expert's native rank
  std::int32_t rank = 0;
  [[nodiscard]] LLEP_HOST_DEVICE bool operator()(int e) const noexcept { return native[e] == rank; }
};

/// prefix[s * N + e] for the experts e in [e_begin, e_end): their pairs on ranks before s.
/// Rows are filled in rank order, each from the one before (row by row through memory);
/// expert ranges are independent (the host takes [0, N) at once, a device thread one
/// expert, so that neighbouring threads read neighbouring entries).
LLEP_HOST_DEVICE inline void layout_prefix(const count_t* counts, int ranks, int experts, int e_begin, int e_end,
                                           count_t* prefix) noexcept {
  const auto N = static_cast<std::size_t>(experts);
  for (int e = e_begin; e < e_end; ++e) prefix[e] = 0;
  for (int s = 1; s < ranks; ++s) {
    const count_t* before = prefix + static_cast<std::size_t>(s - 1) * N;
    const count_t* c = counts + static_cast<std::size_t>(s - 1) * N;
    count_t* row = prefix + static_cast<std::size_t>(s) * N;
    for (int e = e_begin; e < e_end; ++e) row[e] = before[e] + c[e];
  }
}

/// The layout's first phase (one thread): the checks of the 32-bit totals, the send side
/// (blocks, counts, offsets) and the compute tasks, from the counts matrix C (row-major
/// P x N, with out.prefix filled by layout_prefix for every expert) and a finished,
/// checked plan (its P and N are the counts' shape). `holds(e)`: the rank holds e's
/// weights. Never throws: an index past 32 bits or a full table comes back as a status.
LLEP_EXEC_CHECK_DISABLE
template <class Holds>
LLEP_HOST_DEVICE LayoutStatus layout_front(const count_t* counts, const PlanView& plan, Holds holds,
                                           LayoutView& out) noexcept {
  const int P = plan.ranks, N = plan.experts, rank = out.rank;
  const count_t* prefix = out.prefix;
  const auto at = [N](int s, int e) {
    return static_cast<std::size_t>(s) * static_cast<std::size_t>(N) + static_cast<std::size_t>(e);
  };
  out.num_send_blocks = out.num_tasks = out.num_recv_chunks = 0;
  out.pairs = out.compute_rows = 0;

  // Row indices of every buffer are 32-bit: check the two totals that bound them all.
  count_t pairs = 0, received = 0;
  for (int e = 0; e < N; ++e) pairs += counts[at(rank, e)];
  if (pairs > INT32_MAX) return LayoutStatus{LayoutStatus::pairs_overflow, rank, pairs};
  for (int i = 0; i < plan.num_segments; ++i)
    if (plan.segments[i].rank == rank) received += plan.segments[i].size();
  if (received > INT32_MAX) return LayoutStatus{LayoutStatus::rows_overflow, rank, received};

  // Send side: this rank's pairs of e, cut by e's segments; recv_counts is the cursor.
  for (int d = 0; d < P; ++d) out.send_counts[d] = 0;
  count_t sorted = 0;
  for (int e = 0; e < N; ++e) {
    const count_t lo = prefix[at(rank, e)], hi = lo + counts[at(rank, e)];
    for (int i = plan.expert_offsets[e]; i < plan.expert_offsets[e + 1]; ++i) {
      const Segment& seg = plan.segments[i];
      const count_t b = seg.begin > lo ? seg.begin : lo, en = seg.end < hi ? seg.end : hi;
      if (b >= en) continue;
      if (out.num_send_blocks == out.max_send_blocks) return LayoutStatus{LayoutStatus::table_overflow, rank, 0};
      out.send_blocks[out.num_send_blocks++] = SendBlock{e, seg.rank, static_cast<std::int32_t>(sorted + (b - lo)), 0,
                                                         static_cast<std::int32_t>(en - b)};
      out.send_counts[seg.rank] += en - b;
    }
    sorted += counts[at(rank, e)];
  }
  out.pairs = sorted;
  count_t acc = 0;
  for (int d = 0; d < P; ++d) {
    out.send_offsets[d] = acc;
    acc += out.send_counts[d];
    out.recv_counts[d] = 0;
  }
  for (int i = 0; i < out.num_send_blocks; ++i) {
    SendBlock& blk = out.send_blocks[i];
    count_t& c = out.recv_counts[blk.dst];
    blk.send_row = static_cast<std::int32_t>(out.send_offsets[blk.dst] + c);
    c += blk.rows;
  }

  // Compute tasks of this rank; layout_recv_* then place each source's rows in them.
  count_t row = 0;
  for (int i = 0; i < plan.num_segments; ++i) {
    const Segment& seg = plan.segments[i];
    if (seg.rank != rank) continue;
    if (out.num_tasks == out.max_tasks) return LayoutStatus{LayoutStatus::table_overflow, rank, 1};
    out.tasks[out.num_tasks++] = ComputeTask{seg.expert, static_cast<std::int32_t>(row),
                                             static_cast<std::int32_t>(seg.size()), seg.begin, holds(seg.expert)};
    row += seg.size();
  }
  out.compute_rows = row;
  return {};
}

namespace detail {
/// Calls f(task, first_row, rows) for every non-empty run of source s's pairs inside one of
/// the rank's tasks, in task order: the receive chunks of s.
template <class F>
LLEP_HOST_DEVICE void for_each_recv_run(const count_t* counts, int N, int s, const LayoutView& out, F f) noexcept {
  for (int t = 0; t < out.num_tasks; ++t) {
    const ComputeTask& task = out.tasks[t];
    const auto i = static_cast<std::size_t>(s) * static_cast<std::size_t>(N) + static_cast<std::size_t>(task.expert);
    const count_t lo = out.prefix[i], hi = lo + counts[i];
    const count_t tb = task.begin, te = task.begin + task.rows;
    const count_t b = tb > lo ? tb : lo, en = te < hi ? te : hi;
    if (b < en) f(task, b - tb, en - b);
  }
}
}  // namespace detail

/// Receive side, one source s (sources are independent: a device runs one thread each,
/// after layout_front): the rows this rank receives from s into recv_counts[s], and the
/// number of its chunks into recv_chunk_first[s] (layout_recv_scan makes that an index).
LLEP_HOST_DEVICE inline void layout_recv_count(const count_t* counts, int N, int s, LayoutView& out) noexcept {
  count_t rows = 0;
  std::int32_t chunks = 0;
  detail::for_each_recv_run(counts, N, s, out, [&](const ComputeTask&, count_t, count_t n) {
    rows += n;
    ++chunks;
  });
  out.recv_counts[s] = rows;
  out.recv_chunk_first[s] = chunks;
}

/// One thread, after layout_recv_count for every source: receive offsets, each source's
/// first chunk, and the chunk total checked against the table's room.
LLEP_HOST_DEVICE inline LayoutStatus layout_recv_scan(int ranks, LayoutView& out) noexcept {
  count_t rows = 0;
  std::int64_t chunks = 0;
  for (int s = 0; s < ranks; ++s) {
    out.recv_offsets[s] = rows;
    rows += out.recv_counts[s];
    const std::int32_t n = out.recv_chunk_first[s];
    out.recv_chunk_first[s] = static_cast<std::int32_t>(chunks);
    chunks += n;
  }
  if (chunks > out.max_recv_chunks) return LayoutStatus{LayoutStatus::table_overflow, out.rank, 2};
  out.recv_chunk_first[ranks] = static_cast<std::int32_t>(chunks);
  out.num_recv_chunks = static_cast<std::int32_t>(chunks);
  return {};
}

/// Receive side, one source s, after layout_recv_scan: its chunks, sorted by (src, expert)
/// overall, each mapping received rows to compute rows.
LLEP_HOST_DEVICE inline void layout_recv_write(const count_t* counts, int N, int s, LayoutView& out) noexcept {
  std::int32_t i = out.recv_chunk_first[s];
  count_t row = out.recv_offsets[s];
  detail::for_each_recv_run(counts, N, s, out, [&](const ComputeTask& task, count_t first, count_t n) {
    out.recv_chunks[i++] = RecvChunk{s, task.expert, static_cast<std::int32_t>(row),
                                     static_cast<std::int32_t>(task.row + first), static_cast<std::int32_t>(n)};
    row += n;
  });
}

/// The layout of `out.rank` by one block of threads (core/block.hpp): layout_prefix one
/// expert a thread (all at once on a one-thread block), layout_front on thread 0, the
/// receive side one source a thread around thread 0's scan. Thread 0 returns the status;
/// the others return it too when a phase failed, and ok otherwise.
LLEP_EXEC_CHECK_DISABLE
template <class Block, class Holds>
LLEP_HOST_DEVICE LayoutStatus layout_block(const Block& b, const count_t* counts, const PlanView& plan, Holds holds,
                                           LayoutView& out) noexcept {
  const int P = plan.ranks, N = plan.experts;
  if (b.threads == 1) layout_prefix(counts, P, N, 0, N, out.prefix);  // row by row through memory
  else
    for (int e = b.tid; e < N; e += b.threads) layout_prefix(counts, P, N, e, e + 1, out.prefix);
  b.sync();
  LayoutStatus st{};
  if (b.tid == 0) st = layout_front(counts, plan, holds, out);
  if (b.broadcast(st.good() ? 1 : 0) == 0) return b.tid == 0 ? st : LayoutStatus{LayoutStatus::no_plan, out.rank, 0};
  for (int s = b.tid; s < P; s += b.threads) layout_recv_count(counts, N, s, out);
  b.sync();
  if (b.tid == 0) st = layout_recv_scan(P, out);
  if (b.broadcast(st.good() ? 1 : 0) == 0) return b.tid == 0 ? st : LayoutStatus{LayoutStatus::no_plan, out.rank, 0};
  for (int s = b.tid; s < P; s += b.threads) layout_recv_write(counts, N, s, out);
  return st;
}

/// The whole layout on one thread (layout_block on a SerialBlock): what Layout::build runs.
LLEP_EXEC_CHECK_DISABLE
template <class Holds>
LLEP_HOST_DEVICE LayoutStatus layout_step(const count_t* counts, const PlanView& plan, Holds holds,
                                          LayoutView& out) noexcept {
  return layout_block(SerialBlock{}, counts, plan, holds, out);
}

/// A layout after a plan made in exec memory, as one single-block routine (exec.run_block):
/// nothing when the plan failed (`plan_status`, when given, not ok: LayoutStatus::no_plan
/// with the plan's code), else layout_block; thread 0 writes the status.
template <class Holds>
struct BuildLayout {
  const count_t* counts = nullptr;
  const PlanView* plan = nullptr;
  const StepStatus* plan_status = nullptr;
  Holds holds;
  LayoutView* out = nullptr;
  LayoutStatus* status = nullptr;
  LLEP_EXEC_CHECK_DISABLE
  template <class Block>
  LLEP_HOST_DEVICE void operator()(const Block& b) const {
    if (plan_status != nullptr && !plan_status->good()) {
      if (b.tid == 0) {
        out->num_send_blocks = out->num_tasks = out->num_recv_chunks = 0;
        *status = LayoutStatus{LayoutStatus::no_plan, out->rank, plan_status->code};
      }
      return;
    }
    const LayoutStatus st = layout_block(b, counts, *plan, holds, *out);
    if (b.tid == 0) *status = st;
  }
};

/// Where one rank's layout lives in a region of exec memory (carved by LayoutTables::carve
/// for plans of at most `max_segments` segments): its tables, its view, a status and the
/// natives. `fields` is what *view must hold (the caller uploads it, and the natives, once).
struct LayoutTables {
  LayoutView fields;
  LayoutView* view = nullptr;
  LayoutStatus* status = nullptr;
  std::int32_t* native = nullptr;
  std::size_t bytes = 0;

  [[nodiscard]] static LayoutTables carve(std::byte* base, int ranks, int experts, std::int64_t max_segments,
                                          int rank) {
    const auto P = static_cast<std::size_t>(ranks), N = static_cast<std::size_t>(experts);
    const LayoutCapacity cap = layout_capacity(ranks, experts, max_segments);
    Carve c;
    const std::size_t o_prefix = c.take(P * N * sizeof(count_t)), o_counts = c.take(4 * P * sizeof(count_t)),
                      o_blocks = c.take(static_cast<std::size_t>(cap.send_blocks) * sizeof(SendBlock)),
                      o_tasks = c.take(static_cast<std::size_t>(cap.tasks) * sizeof(ComputeTask)),
                      o_chunks = c.take(static_cast<std::size_t>(cap.recv_chunks) * sizeof(RecvChunk)),
                      o_first = c.take((P + 1) * sizeof(std::int32_t)), o_view = c.take(sizeof(LayoutView)),
                      o_status = c.take(sizeof(LayoutStatus)), o_native = c.take(N * sizeof(std::int32_t));
    LayoutTables t;
    t.bytes = c.bytes;
    if (base == nullptr) return t;
    auto* counts = reinterpret_cast<count_t*>(base + o_counts);
    LayoutView& v = t.fields;
    v.prefix = reinterpret_cast<count_t*>(base + o_prefix);
    v.send_counts = counts;
    v.send_offsets = counts + P;
    v.recv_counts = counts + 2 * P;
    v.recv_offsets = counts + 3 * P;
    v.send_blocks = reinterpret_cast<SendBlock*>(base + o_blocks);
    v.tasks = reinterpret_cast<ComputeTask*>(base + o_tasks);
    v.recv_chunks = reinterpret_cast<RecvChunk*>(base + o_chunks);
    v.recv_chunk_first = reinterpret_cast<std::int32_t*>(base + o_first);
    v.max_send_blocks = static_cast<std::int32_t>(cap.send_blocks);
    v.max_tasks = static_cast<std::int32_t>(cap.tasks);
    v.max_recv_chunks = static_cast<std::int32_t>(cap.recv_chunks);
    v.rank = rank;
    t.view = reinterpret_cast<LayoutView*>(base + o_view);
    t.status = reinterpret_cast<LayoutStatus*>(base + o_status);
    t.native = reinterpret_cast<std::int32_t*>(base + o_native);
    return t;
  }
};

/// Throws the llep::Error a failed layout_block stands for (host side of either path).
inline void check_layout_status(const LayoutStatus& s) {
  if (s.good()) return;
  LLEP_EXPECTS(s.code != LayoutStatus::pairs_overflow, "rank ", s.rank, " has ", s.value,
               " pairs; row indices are 32-bit, so one rank's pairs must stay below 2^31");
  LLEP_EXPECTS(s.code != LayoutStatus::rows_overflow, "rank ", s.rank, " would receive ", s.value,
               " rows; the rows one rank computes must stay below 2^31");
  LLEP_EXPECTS(s.code != LayoutStatus::no_plan, "rank ", s.rank, " has no layout: the plan before it failed (status ",
               s.value, ") or none was built");
  constexpr const char* tables[] = {"send blocks", "compute tasks", "receive chunks"};
  LLEP_FAIL("rank ", s.rank, "'s layout ran out of room for its ",
            s.value >= 0 && s.value < 3 ? tables[s.value] : "tables",
            " (the buffers must hold layout_capacity() entries of a plan within its bound)");
}

class Layout {
 public:
  Layout() = default;
  Layout(Layout&&) noexcept = default;
  Layout& operator=(Layout&&) noexcept = default;
  /// Copies hold only the tables' used entries (a ForwardHandle keeps a copy every step),
  /// reusing the target's storage.
  Layout(const Layout& o) { *this = o; }
  Layout& operator=(const Layout& o) {
    if (this == &o) return *this;
    rank_ = o.rank_;
    used_ = o.used_;
    prefix_.assign(o.prefix_.begin(), o.prefix_.end());
    send_counts_.assign(o.send_counts_.begin(), o.send_counts_.end());
    send_offsets_.assign(o.send_offsets_.begin(), o.send_offsets_.end());
    recv_counts_.assign(o.recv_counts_.begin(), o.recv_counts_.end());
    recv_offsets_.assign(o.recv_offsets_.begin(), o.recv_offsets_.end());
    send_blocks_.assign(o.send_blocks().begin(), o.send_blocks().end());
    chunks_.assign(o.recv_chunks().begin(), o.recv_chunks().end());
    tasks_.assign(o.tasks().begin(), o.tasks().end());
    return *this;
  }

  /// Builds the tables of `rank` (layout_step into this object's buffers). Reuses them: no
  /// allocation once warm. `plan` must have passed check_plan (layer/check_plan.hpp): its
  /// ranks index the tables.
  void build(CountsView counts, const Plan& plan, const Topology& topo, int rank) {
    const int P = topo.ranks(), N = topo.experts();
    LLEP_EXPECTS(counts.ranks() == P && counts.experts() == N, "counts are ", counts.ranks(), " x ",
                 counts.experts(), " but the topology is P = ", P, ", N = ", N);
    LLEP_EXPECTS(plan.ranks() == P && plan.experts() == N && plan.finished(),
                 "plan does not match the topology (P = ", P, ", N = ", N, ") or is unfinished");
    LLEP_EXPECTS(rank >= 0 && rank < P, "rank ", rank, " is outside [0, ", P, ")");
    rank_ = rank;
    // Room for the largest plan of the topology up front, so that a warm layout never
    // allocates however the routing shifts (a user planner's larger plan grows it).
    const std::int64_t segments = std::max<std::int64_t>(max_plan_segments(P, N, topo.replicas_per_rank()),
                                                         static_cast<std::int64_t>(plan.segments().size()));
    const LayoutCapacity cap = layout_capacity(P, N, segments);
    const auto sP = static_cast<std::size_t>(P);
    grow(prefix_, sP * static_cast<std::size_t>(N));
    for (auto* v : {&send_counts_, &send_offsets_, &recv_counts_, &recv_offsets_}) v->resize(sP);
    chunk_first_.resize(sP + 1);
    grow(send_blocks_, static_cast<std::size_t>(cap.send_blocks));
    grow(tasks_, static_cast<std::size_t>(cap.tasks));
    grow(chunks_, static_cast<std::size_t>(cap.recv_chunks));

    LayoutView v;
    v.prefix = prefix_.data();
    v.send_counts = send_counts_.data();
    v.send_offsets = send_offsets_.data();
    v.recv_counts = recv_counts_.data();
    v.recv_offsets = recv_offsets_.data();
    v.send_blocks = send_blocks_.data();
    v.tasks = tasks_.data();
    v.recv_chunks = chunks_.data();
    v.recv_chunk_first = chunk_first_.data();
    v.max_send_blocks = clamp32(send_blocks_.size());
    v.max_tasks = clamp32(tasks_.size());
    v.max_recv_chunks = clamp32(chunks_.size());
    v.rank = rank;
    const LayoutStatus st =
        layout_step(counts.data().data(), plan.view(), [&topo, rank](int e) { return topo.holds(e, rank); }, v);
    used_ = st.good() ? Used{v.num_send_blocks, v.num_tasks, v.num_recv_chunks, v.pairs, v.compute_rows} : Used{};
    check_layout_status(st);
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  /// Pairs (token, k) on this rank; rows of the send buffer.
  [[nodiscard]] count_t pairs() const noexcept { return used_.pairs; }
  /// Rows this rank computes; rows of the receive and compute buffers.
  [[nodiscard]] count_t compute_rows() const noexcept { return used_.compute_rows; }
  [[nodiscard]] std::span<const count_t> send_counts() const noexcept { return send_counts_; }
  [[nodiscard]] std::span<const count_t> send_offsets() const noexcept { return send_offsets_; }
  [[nodiscard]] std::span<const count_t> recv_counts() const noexcept { return recv_counts_; }
  [[nodiscard]] std::span<const count_t> recv_offsets() const noexcept { return recv_offsets_; }
  /// Sorted by (expert, sorted_begin); they tile the rank's expert-sorted pairs.
  [[nodiscard]] std::span<const SendBlock> send_blocks() const noexcept {
    return {send_blocks_.data(), static_cast<std::size_t>(used_.send_blocks)};
  }
  /// Sorted by (src, expert); they tile the receive buffer.
  [[nodiscard]] std::span<const RecvChunk> recv_chunks() const noexcept {
    return {chunks_.data(), static_cast<std::size_t>(used_.recv_chunks)};
  }
  [[nodiscard]] std::span<const ComputeTask> tasks() const noexcept {
    return {tasks_.data(), static_cast<std::size_t>(used_.tasks)};
  }
  /// Global position of the first pair of `expert` on `src` (pairs of lower ranks before).
  [[nodiscard]] count_t position_base(int src, int expert, int experts) const noexcept {
    return prefix_[static_cast<std::size_t>(src) * static_cast<std::size_t>(experts) + static_cast<std::size_t>(expert)];
  }

 private:
  template <class V>
  static void grow(std::vector<V>& v, std::size_t n) {
    if (v.size() < n) v.resize(n);
  }
  static std::int32_t clamp32(std::size_t n) noexcept {
    return static_cast<std::int32_t>(std::min<std::size_t>(n, INT32_MAX));
  }

  // What the last build filled: the tables' entries in use and the two totals.
  struct Used {
    std::int32_t send_blocks = 0, tasks = 0, recv_chunks = 0;
    count_t pairs = 0, compute_rows = 0;
  };

  int rank_ = 0;
  Used used_;
  std::vector<count_t> prefix_;
  std::vector<count_t> send_counts_, send_offsets_, recv_counts_, recv_offsets_;
  std::vector<std::int32_t> chunk_first_;  // layout_recv_*'s scratch
  std::vector<SendBlock> send_blocks_;
  std::vector<RecvChunk> chunks_;
  std::vector<ComputeTask> tasks_;
};

}  // namespace llep
