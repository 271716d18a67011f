#pragma once
// CollectiveExchange<Tr>: a StepExchange (device/step_exchange.hpp) over a transport's
// collectives with fixed sizes (issue 14: "otherwise a fixed-capacity exchange sized from
// the limits, with the true counts carried along"). A transport's all-to-all-v takes its
// sizes from the host, so every size here is fixed by a capacity per peer and the true
// counts travel inside the data:
//   share_counts  one all_gather of the N + 1 bins, split into C and bad
//   rows          the send rows packed into P slots of `rows_per_peer` rows, each headed by
//                 its true count; one all_to_all_v of P equal slots; slot q unpacked to
//                 recv_offsets[q] once its count equals the receiver's recv_counts[q]
//   weights       the plan's transfers from this rank packed per destination (the k-th
//                 transfer src -> dst in plan order in slot k of dst); one all_to_all_v of
//                 equal slots; the transfers to this rank unpacked in plan order
//   grads         (backward) the weights path in reverse: each helper's gradient of the
//                 j-th transfer to it back to the transfer's native rank, in plan order
// Pack and unpack are LLEP_HOST_DEVICE functors on the exec (HostExec: the rank's thread;
// CudaExec: kernels on its stream); the collectives are ordered with them by the
// transport: HostThreads and Mpi block the rank's thread (HostExec has finished what was
// enqueued), Nccl enqueues on its stream, which must be the CudaExec's (checked at every
// call). Nothing else waits on the host, so with Nccl and CudaExec the step can be captured
// in a CUDA graph (NcclOptions::wait_each_call must be off: refused in a capture). PeerCopy (logical ranks of one
// process) works the same way on each rank's stream, eagerly: its per-call rendezvous and
// cross-stream events are not for capture.
//
// The price of fixed sizes: every step moves the capacity, not the live bytes: 2 x P slots
// of rows and P slots of experts_per_peer x expert_bytes to every peer, whether or not the
// plan moves any. Size CollectiveCapacity from what the model routes. A step past a capacity
// writes no byte outside a buffer: it records capacity_exceeded (or a count mismatch, or
// past_bound for experts past the planner's bound) in the status word of every rank it
// touches, its results are not valid, and the host check throws llep::Error naming the
// rank and the peer (docs/device-step.md).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "llep/core/carve.hpp"
#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/core/plan_view.hpp"
#include "llep/device/gather_counts.hpp"
#include "llep/device/status_word.hpp"
#include "llep/device/step_exchange.hpp"
#include "llep/device/symmetric_exchange.hpp"  // copy_share, Word16, aligned16
#include "llep/device/transfer_places.hpp"
#include "llep/transport/transport.hpp"

// Where the CUDA runtime's headers are on the include path (every build that can have an
// Nccl transport), the exchange refuses a per-call wait inside a graph capture.
#if !defined(LLEP_COLLECTIVE_CAPTURE_CHECK) && defined(__has_include)
#if __has_include(<cuda_runtime_api.h>)
#include <cuda_runtime_api.h>
#define LLEP_COLLECTIVE_CAPTURE_CHECK 1
#endif
#endif
#ifndef LLEP_COLLECTIVE_CAPTURE_CHECK
#define LLEP_COLLECTIVE_CAPTURE_CHECK 0
#endif

namespace llep {

/// Room per peer of a CollectiveExchange; `most` (the default) takes the most any peer can
/// need: rows min(dispatch_rows, combine_rows) (what one rank sends and what one rank
/// receives in a step), experts min(foreign, natives). Less saves memory and bandwidth;
/// a step that needs more records capacity_exceeded (status_word.hpp) and is not valid.
struct CollectiveCapacity {
  static constexpr count_t most = -1;
  count_t rows_per_peer = most;       ///< rows one rank sends one peer in one rows() call
  std::int32_t experts_per_peer = -1; ///< experts' weights one rank sends one peer in a step

  /// The capacity with `most` replaced by its value; throws for a value out of range.
  [[nodiscard]] CollectiveCapacity resolve(const StepExchangeSizes& s) const {
    const count_t rows_max = std::min(s.dispatch_rows, s.combine_rows);
    const std::int32_t experts_max = std::min(s.foreign, s.natives);
    CollectiveCapacity c = *this;
    if (c.rows_per_peer == most) c.rows_per_peer = rows_max;
    if (c.experts_per_peer == -1) c.experts_per_peer = experts_max;
    LLEP_EXPECTS(c.rows_per_peer >= 0 && c.rows_per_peer <= rows_max, "CollectiveCapacity::rows_per_peer = ",
                 rows_per_peer, " must lie in [0, ", rows_max, "] (min of the dispatch and combine rows), or be most");
    LLEP_EXPECTS(c.experts_per_peer >= 0 && c.experts_per_peer <= experts_max,
                 "CollectiveCapacity::experts_per_peer = ", experts_per_peer, " must lie in [0, ", experts_max,
                 "] (min of the foreign and native experts a rank holds), or be -1 for that most");
    return c;
  }
  friend bool operator==(const CollectiveCapacity&, const CollectiveCapacity&) = default;
};

namespace detail::coll {

#if LLEP_COLLECTIVE_CAPTURE_CHECK
/// Whether `stream` is being captured into a CUDA graph (false when the query fails).
[[nodiscard]] inline bool capturing(cudaStream_t stream) noexcept {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  return cudaStreamIsCapturing(stream, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone;
}
#endif

using sym::aligned16;
using sym::copy_share;
using sym::Word16;

/// A rows slot starts with this: the true count, and the rows packed (the count, or 0
/// when the sender could not pack them; it has noted why).
struct alignas(16) SlotHeader {
  count_t count;
  count_t packed;
};

/// counts: bin i of every rank's gathered N + 1 bins into C or bad.
struct SplitCounts {
  const count_t* gathered;
  SharedCounts out;
  int experts;
  LLEP_HOST_DEVICE void operator()(std::size_t i) const noexcept {
    const auto bins = static_cast<std::size_t>(experts) + 1;
    out.place(i / bins, i % bins, gathered[i], experts);
  }
};

/// P slots of `stride` bytes in a staging area, each `offset` header bytes then room for
/// `capacity` items (rows, or experts' weights) of `item_bytes`; and what every pack and
/// unpack launch shares.
struct Slots {
  std::byte* base;
  std::size_t stride, offset, item_bytes;
  count_t capacity;
  int rank, ranks;
  std::size_t workers;
  status_word_t* status;
  [[nodiscard]] LLEP_HOST_DEVICE std::byte* slot(int q) const noexcept { return base + static_cast<std::size_t>(q) * stride; }
  [[nodiscard]] LLEP_HOST_DEVICE std::byte* item(int q, count_t j) const noexcept {
    return slot(q) + offset + static_cast<std::size_t>(j) * item_bytes;
  }
  /// Worker w's share of `n` items from src to dst.
  template <class Word>
  LLEP_HOST_DEVICE void copy(std::byte* dst, const std::byte* src, count_t n, std::size_t w) const noexcept {
    copy_share(reinterpret_cast<Word*>(dst), reinterpret_cast<const Word*>(src),
               static_cast<std::size_t>(n) * item_bytes / sizeof(Word), w, workers);
  }
  /// Worker 0 records `word` (every worker sees the same problem).
  LLEP_HOST_DEVICE void note(std::size_t w, status_word_t word) const noexcept {
    if (w == 0) note_status(status, word);
  }
};

/// rows: worker w's share of packing the rows for each peer q into slot q, headed by the
/// true count.
template <class Word>
struct PackRows {
  Slots s;
  const std::byte* send;
  count_t send_rows;  // rows of the send buffer
  const count_t* counts;
  const count_t* offsets;
  LLEP_HOST_DEVICE void operator()(std::size_t w) const noexcept {
    for (int q = 0; q < s.ranks; ++q) {
      const count_t c = counts[q], o = offsets[q];
      const bool fits = c >= 0 && c <= s.capacity, inside = o >= 0 && c >= 0 && o <= send_rows - c;
      if (w == 0) *reinterpret_cast<SlotHeader*>(s.slot(q)) = SlotHeader{c, fits && inside ? c : 0};
      if (!fits)
        s.note(w, capacity_word(q, static_cast<std::uint64_t>(c)));
      else if (!inside)
        s.note(w, overflow_word(q, static_cast<std::uint64_t>(c)));
      else if (c > 0)
        s.copy<Word>(s.item(q, 0), send + static_cast<std::size_t>(o) * s.item_bytes, c, w);
    }
  }
};

/// rows: worker w's share of unpacking slot q to recv_offsets[q], when the carried count
/// fits the capacity, equals recv_counts[q] and the rows fit `recv`.
template <class Word>
struct UnpackRows {
  Slots s;
  const count_t* recv_counts;
  const count_t* recv_offsets;
  std::byte* recv;
  count_t recv_capacity;
  LLEP_HOST_DEVICE void operator()(std::size_t w) const noexcept {
    for (int q = 0; q < s.ranks; ++q) {
      const SlotHeader h = *reinterpret_cast<const SlotHeader*>(s.slot(q));
      const count_t o = recv_offsets[q];
      if (h.count < 0 || h.count > s.capacity)
        s.note(w, capacity_word(q, static_cast<std::uint64_t>(h.count)));
      else if (h.count != recv_counts[q])
        s.note(w, count_mismatch_word(q, static_cast<std::uint64_t>(h.count)));
      else if (h.count > 0 && (o < 0 || o > recv_capacity - h.count))
        s.note(w, overflow_word(q, static_cast<std::uint64_t>(h.count)));
      else if (h.count > 0 && h.packed == h.count)  // a sender that could not pack has noted why
        s.copy<Word>(recv + static_cast<std::size_t>(o) * s.item_bytes, s.item(q, 0), h.count, w);
    }
  }
};

/// Whether transfer m's item in its slot (in_pair) fits the slot's capacity; if not, notes
/// why: past the planner's bound of `bound` foreign experts (the capacity at its most is
/// that bound, so no capacity fits the plan), or else past a CollectiveCapacity below it.
[[nodiscard]] LLEP_HOST_DEVICE inline bool in_slot(const Slots& s, std::size_t w, const RankTransfer& m,
                                                   std::int32_t bound) noexcept {
  const std::int32_t j = m.at.in_pair;
  if (j < s.capacity) return true;
  const auto n = static_cast<std::uint64_t>(j) + 1;
  s.note(w, j >= bound ? past_bound_word(m.peer, n) : capacity_word(m.peer, n));
  return false;
}

/// weights and grads: worker w's share of packing this rank's side of the transfers into
/// the slots of their peers, each at its in_pair (TransferPlaces): as the source (weights:
/// the native's experts at native_slot[expert]) or as the destination (grads: this rank's
/// item at_dst of `from`, at most `items` of them).
template <class Word>
struct PackTransfers {
  Slots s;
  TransferPlaces t;
  bool as_source;
  const std::byte* from;
  const std::int32_t* native_slot;  // null: the transfer's item at_dst
  std::int32_t items;
  std::int32_t bound;  // the planner's foreign experts per rank
  LLEP_HOST_DEVICE void operator()(std::size_t w) const noexcept {
    for (std::int32_t i = 0, n = t.count(); i < n; ++i) {
      RankTransfer m;
      if (!t.mine(i, as_source, m)) continue;
      const std::int32_t at = native_slot != nullptr ? native_slot[m.x.expert] : m.item;
      if (native_slot == nullptr && at >= items) {
        s.note(w, past_bound_word(m.peer, static_cast<std::uint64_t>(at) + 1));
        return;
      }
      if (in_slot(s, w, m, bound))
        s.copy<Word>(s.item(m.peer, m.at.in_pair), from + static_cast<std::size_t>(at) * s.item_bytes, 1, w);
    }
  }
};

/// weights and grads: worker w's share of unpacking this rank's side of the transfers, each
/// into `to` at its item (at_dst as the destination: weights into the foreign experts;
/// at_src as the source: grads into the received gradients), from its peer's slot.
template <class Word>
struct UnpackTransfers {
  Slots s;
  TransferPlaces t;
  bool as_source;
  std::byte* to;
  std::int32_t capacity;  // items `to` holds
  std::int32_t bound;     // the planner's foreign experts per rank
  LLEP_HOST_DEVICE void operator()(std::size_t w) const noexcept {
    for (std::int32_t i = 0, n = t.count(); i < n; ++i) {
      RankTransfer m;
      if (!t.mine(i, as_source, m)) continue;
      if (m.item >= capacity) {  // the first past `to`: none after it moves
        s.note(w, past_bound_word(m.peer, static_cast<std::uint64_t>(m.item) + 1));
        return;
      }
      if (in_slot(s, w, m, bound))
        s.copy<Word>(to + static_cast<std::size_t>(m.item) * s.item_bytes, s.item(m.peer, m.at.in_pair), 1, w);
    }
  }
};

}  // namespace detail::coll

/// The fixed-capacity StepExchange over transport `Tr` (see the top of this file). One per
/// rank; every rank's is built from the same sizes and capacity. The transport is
/// borrowed and must outlive the exchange.
template <Transport Tr>
class CollectiveExchange {
 public:
  using Capacity = CollectiveCapacity;
  /// Bytes of a rows slot's header (the true count travels there).
  static constexpr std::size_t header_bytes = sizeof(detail::coll::SlotHeader);

  /// Bytes of exec memory the constructor takes for `sizes` and `capacity`: the send rows
  /// (both channels share them: rows() has packed them when it returns in exec order), the
  /// native weights, the foreign experts' gradients (sizes.grad_bytes > 0: backward), the
  /// gathered bins and two staging areas of P slots (rows, weights and gradients take turns
  /// in them).
  [[nodiscard]] static std::size_t bytes(const StepExchangeSizes& sizes, const Capacity& capacity = {}) {
    return carve(nullptr, sizes, capacity.resolve(sizes)).bytes;
  }

  /// Bytes one rank sends (and receives) per forward step, itself included, whatever the
  /// routing: P x ((N + 1) x 8 for the counts + a dispatch and a combine slot of rows + a
  /// slot of experts). The live rows and weights are only a part of it.
  [[nodiscard]] static std::size_t bytes_per_step(const StepExchangeSizes& sizes, const Capacity& capacity = {}) {
    const Capacity c = capacity.resolve(sizes);
    return static_cast<std::size_t>(sizes.ranks) *
           ((static_cast<std::size_t>(sizes.experts) + 1) * sizeof(count_t) + 2 * row_stride(sizes, c) +
            item_stride(sizes.expert_bytes, c));
  }

  /// `memory`: bytes(sizes, capacity) of the exec's memory, 256-byte aligned, kept until the
  /// exchange is gone; nothing is allocated after this. The transport's group is the P ranks.
  CollectiveExchange(Tr& transport, const StepExchangeSizes& sizes, std::span<std::byte> memory,
                     const Capacity& capacity = {})
      : tr_(&transport), sizes_(sizes), cap_(capacity.resolve(sizes)) {
    LLEP_EXPECTS(sizes.ranks >= 1 && sizes.experts >= 1 && transport.size() == sizes.ranks, "CollectiveExchange for P = ",
                 sizes.ranks, " ranks and N = ", sizes.experts, " experts over a transport of ", transport.size(),
                 " ranks; they must agree (P, N >= 1)");
    LLEP_EXPECTS(sizes.row_bytes > 0, "CollectiveExchange with ", sizes.row_bytes, "-byte rows; must be > 0");
    const std::size_t need = bytes(sizes, capacity);
    LLEP_EXPECTS(memory.size() >= need && reinterpret_cast<std::uintptr_t>(memory.data()) % Carve::alignment == 0,
                 "rank ", transport.rank(), ": the CollectiveExchange memory holds ", memory.size(), " bytes at ",
                 static_cast<const void*>(memory.data()), "; it needs ", need, ", ", Carve::alignment,
                 "-byte aligned (CollectiveExchange::bytes)");
    mem_ = carve(memory.data(), sizes, cap_);
    slot_sizes_.resize(static_cast<std::size_t>(sizes.ranks));
    slot_offsets_.resize(slot_sizes_.size());
    name_ = std::string("fixed-capacity collectives (") + std::string(Tr::name) + ")";
  }

  [[nodiscard]] const char* name() const noexcept { return name_.c_str(); }
  [[nodiscard]] int rank() const noexcept { return tr_->rank(); }
  [[nodiscard]] StepExchangeSizes sizes() const noexcept { return sizes_; }
  [[nodiscard]] const Capacity& capacity() const noexcept { return cap_; }
  [[nodiscard]] Tr& transport() const noexcept { return *tr_; }

  /// No epoch to keep: the collectives order the ranks. Checks the exec.
  template <class Exec>
  void begin_step(Exec& exec) {
    check_exec(exec);
  }

  /// One all_gather of out.local's N + 1 bins, split into out.counts and out.bad.
  template <class Exec>
  void share_counts(Exec& exec, const SharedCounts& out, StatusWords& status) {
    check_exec(exec);
    (void)status;
    const auto bins = static_cast<std::size_t>(sizes_.experts) + 1;
    tr_->all_gather(out.local, bins * sizeof(count_t), mem_.gathered);
    exec.for_each_n(static_cast<std::size_t>(sizes_.ranks) * bins,
                    detail::coll::SplitCounts{mem_.gathered, out, sizes_.experts});
  }

  /// Where the caller writes the rows it sends (sizes().send_rows(channel) rows); the two
  /// channels share it.
  [[nodiscard]] std::byte* send_rows(SignalChannel) const noexcept { return mem_.send; }

  /// Pack, one all_to_all_v of P slots, unpack (see the top of this file). Rows narrower
  /// than sizes().row_bytes (RowsStep::row_bytes) travel in narrower slots.
  template <class Exec>
  void rows(Exec& exec, const RowsStep& s, StatusWords& status) {
    check_exec(exec);
    const std::size_t width = s.width(sizes_);
    LLEP_EXPECTS(width <= sizes_.row_bytes, "rank ", rank(), ": rows of ", width,
                 " bytes through a CollectiveExchange sized for ", sizes_.row_bytes);
    LLEP_EXPECTS(s.send_counts != nullptr && s.send_offsets != nullptr && s.recv_counts != nullptr &&
                     s.recv_offsets != nullptr && (s.recv != nullptr || s.recv_capacity == 0),
                 "rank ", rank(), ": CollectiveExchange::rows needs the four tables and a receive buffer");
    using namespace detail::coll;
    const count_t send_rows = sizes_.send_rows(s.channel);
    const std::size_t stride = row_stride(width, cap_);
    set_slots(stride);
    const Slots out = slots<Exec>(mem_.out, stride, header_bytes, width, cap_.rows_per_peer, status),
                in = slots<Exec>(mem_.in, stride, header_bytes, width, cap_.rows_per_peer, status);
    if (width % 16 == 0)
      exec.for_each_n(out.workers, PackRows<Word16>{out, mem_.send, send_rows, s.send_counts, s.send_offsets});
    else
      exec.for_each_n(out.workers, PackRows<std::byte>{out, mem_.send, send_rows, s.send_counts, s.send_offsets});
    tr_->all_to_all_v(mem_.out, slot_sizes_, slot_offsets_, mem_.in, slot_sizes_, slot_offsets_);
    if (width % 16 == 0 && aligned16(s.recv))
      exec.for_each_n(in.workers, UnpackRows<Word16>{in, s.recv_counts, s.recv_offsets, s.recv, s.recv_capacity});
    else
      exec.for_each_n(in.workers, UnpackRows<std::byte>{in, s.recv_counts, s.recv_offsets, s.recv, s.recv_capacity});
  }

  /// This rank's native experts' weights (natives x expert_bytes, ascending expert).
  [[nodiscard]] std::byte* native_weights() const noexcept { return mem_.natives; }

  /// Pack, one all_to_all_v of P slots of experts_per_peer experts (skipped when a slot
  /// holds nothing), unpack (see the top of this file), each transfer at its places.
  template <class Exec>
  void weights(Exec& exec, const WeightsStep& s, StatusWords& status) {
    check_exec(exec);
    expect_places(s.places, rank(), sizes_.ranks, sizes_.experts, "CollectiveExchange::weights");
    LLEP_EXPECTS(s.native_slot != nullptr && (s.foreign != nullptr || s.foreign_capacity == 0), "rank ", rank(),
                 ": CollectiveExchange::weights needs the native slots and `foreign`");
    transfers(exec, s.places, status, sizes_.expert_bytes, true, mem_.natives, s.native_slot, 0, s.foreign,
              s.foreign_capacity);
  }

  /// Backward (sizes().grad_bytes > 0): where this rank's helpers' weight gradients wait,
  /// foreign x grad_bytes of exec memory, the j-th transfer to this rank's at j x grad_bytes.
  [[nodiscard]] std::byte* foreign_grads() const noexcept { return mem_.grads; }

  /// The weights path in reverse: each helper packs the gradient of the k-th transfer to
  /// it (at_dst) into slot j of the transfer's native rank (j: in_pair, its place among
  /// those from that rank to this helper), one all_to_all_v of P slots of experts_per_peer
  /// gradients, and each native rank unpacks the k-th transfer from it (plan order: at_src)
  /// to g.received at k x grad_bytes. Beyond received_capacity: overflow status, no write.
  template <class Exec>
  void grads(Exec& exec, const GradsStep& g, StatusWords& status) {
    check_exec(exec);
    LLEP_EXPECTS(sizes_.grad_bytes > 0, "rank ", rank(),
                 ": this exchange was built without weight gradients (StepExchangeSizes::grad_bytes = 0)");
    expect_places(g.places, rank(), sizes_.ranks, sizes_.experts, "CollectiveExchange::grads");
    LLEP_EXPECTS(g.received != nullptr || g.received_capacity == 0, "rank ", rank(),
                 ": CollectiveExchange::grads needs `received`");
    transfers(exec, g.places, status, sizes_.grad_bytes, false, mem_.grads, nullptr, sizes_.foreign, g.received,
              g.received_capacity);
  }

 private:
  // Pack, one all_to_all_v of P slots of experts_per_peer items (skipped when a slot holds
  // nothing), unpack: weights (as the source then the destination) or grads.
  template <class Exec>
  void transfers(Exec& exec, const TransferPlaces& t, StatusWords& status, std::size_t item_bytes, bool weights,
                 const std::byte* from, const std::int32_t* native_slot, std::int32_t items, std::byte* to,
                 std::int32_t capacity) {
    using namespace detail::coll;
    const std::size_t stride = item_stride(item_bytes, cap_);
    set_slots(stride);
    const Slots out = slots<Exec>(mem_.out, stride, 0, item_bytes, cap_.experts_per_peer, status),
                in = slots<Exec>(mem_.in, stride, 0, item_bytes, cap_.experts_per_peer, status);
    const bool words = item_bytes % 16 == 0 && aligned16(to);
    if (words)
      exec.for_each_n(out.workers, PackTransfers<Word16>{out, t, weights, from, native_slot, items, sizes_.foreign});
    else
      exec.for_each_n(out.workers, PackTransfers<std::byte>{out, t, weights, from, native_slot, items, sizes_.foreign});
    if (stride > 0) tr_->all_to_all_v(mem_.out, slot_sizes_, slot_offsets_, mem_.in, slot_sizes_, slot_offsets_);
    if (words)
      exec.for_each_n(in.workers, UnpackTransfers<Word16>{in, t, !weights, to, capacity, sizes_.foreign});
    else
      exec.for_each_n(in.workers, UnpackTransfers<std::byte>{in, t, !weights, to, capacity, sizes_.foreign});
  }

  struct Memory {
    std::byte *send = nullptr, *natives = nullptr, *grads = nullptr, *out = nullptr, *in = nullptr;
    count_t* gathered = nullptr;
    std::size_t bytes = 0;
  };

  [[nodiscard]] static std::size_t row_stride(std::size_t row_bytes, const Capacity& c) {
    return (header_bytes + static_cast<std::size_t>(c.rows_per_peer) * row_bytes + 15) / 16 * 16;
  }
  [[nodiscard]] static std::size_t row_stride(const StepExchangeSizes& s, const Capacity& c) {
    return row_stride(s.row_bytes, c);
  }
  // The all_to_all_v's host tables for P slots of `stride` bytes (sized at construction).
  void set_slots(std::size_t stride) {
    for (std::size_t q = 0; q < slot_sizes_.size(); ++q) {
      slot_sizes_[q] = stride;
      slot_offsets_[q] = q * stride;
    }
  }
  [[nodiscard]] static std::size_t item_stride(std::size_t item_bytes, const Capacity& c) {
    return (static_cast<std::size_t>(c.experts_per_peer) * item_bytes + 15) / 16 * 16;
  }
  [[nodiscard]] static std::size_t weight_stride(const StepExchangeSizes& s, const Capacity& c) {
    return item_stride(std::max(s.expert_bytes, s.grad_bytes), c);
  }

  [[nodiscard]] static Memory carve(std::byte* base, const StepExchangeSizes& s, const Capacity& c) {
    const auto P = static_cast<std::size_t>(s.ranks);
    const auto send_rows = static_cast<std::size_t>(std::max(s.dispatch_rows, s.combine_rows));
    const std::size_t staging = P * std::max(row_stride(s, c), weight_stride(s, c));
    Carve k;
    const std::size_t o_send = k.take(send_rows * s.row_bytes),
                      o_natives = k.take(static_cast<std::size_t>(s.natives) * s.expert_bytes),
                      o_grads = k.take(static_cast<std::size_t>(s.foreign) * s.grad_bytes),
                      o_gathered = k.take(P * (static_cast<std::size_t>(s.experts) + 1) * sizeof(count_t)),
                      o_out = k.take(staging), o_in = k.take(staging);
    Memory m;
    m.bytes = k.bytes;
    if (base == nullptr) return m;
    m.send = base + o_send;
    m.natives = base + o_natives;
    m.grads = s.grad_bytes > 0 ? base + o_grads : nullptr;
    m.gathered = reinterpret_cast<count_t*>(base + o_gathered);
    m.out = base + o_out;
    m.in = base + o_in;
    return m;
  }

  // A staging area's slots.
  template <class Exec>
  [[nodiscard]] detail::coll::Slots slots(std::byte* base, std::size_t stride, std::size_t offset,
                                          std::size_t item_bytes, count_t capacity, StatusWords& status) const {
    return {base, stride, offset, item_bytes, capacity, rank(), sizes_.ranks, exchange_workers<Exec>(), status.word()};
  }

  template <class Exec>
  void check_exec(const Exec& exec) const {
    static_assert(Tr::memory == Exec::memory,
                  "llep: CollectiveExchange keeps everything in the exec's memory and moves it with the transport: "
                  "use a transport of the exec's memory (Nccl with CudaExec; HostThreads or Mpi with HostExec)");
    if constexpr (requires(const Exec& e, const Tr& t) { e.stream() == t.stream(); }) {
      LLEP_EXPECTS(exec.stream() == tr_->stream(), "rank ", tr_->rank(),
                   ": CollectiveExchange orders the transport's collectives after the exec's work by their stream; "
                   "run the exec on the transport's stream (CudaExec(nccl.stream()))");
#if LLEP_COLLECTIVE_CAPTURE_CHECK
      // A transport that waits after each call (NcclOptions::wait_each_call) would query the
      // capturing stream, which ends the capture and costs the communicator: refuse first.
      if constexpr (requires(const Tr& t) { static_cast<bool>(t.options().wait_each_call); })
        LLEP_EXPECTS(!(tr_->options().wait_each_call && detail::coll::capturing(exec.stream())), "rank ",
                     tr_->rank(),
                     ": the step is being captured in a CUDA graph but the transport waits after each call "
                     "(NcclOptions::wait_each_call = true), which a capture cannot hold; turn wait_each_call off "
                     "for captured steps");
#endif
    } else {
      (void)exec;
    }
  }

  Tr* tr_ = nullptr;
  StepExchangeSizes sizes_;
  Capacity cap_;
  Memory mem_;
  std::vector<std::size_t> slot_sizes_, slot_offsets_;
  std::string name_;
};

}  // namespace llep
