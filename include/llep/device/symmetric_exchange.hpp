#pragma once
// Sync-free exchanges over symmetric memory (issue 14): the counts all-gather, the
// all-to-all-v of rows (dispatch, and combine with the tables swapped) and the pull of
// foreign experts' weights. Each is a few `for_each_n` launches of LLEP_HOST_DEVICE
// functors on the rank's exec: with HostExec they run on the rank's thread (the tests, under
// ThreadSanitizer), with CudaExec they are kernels on its stream; only the launch differs.
// Nothing waits on the host: sizes and offsets are read from memory, ranks are ordered by
// signals (device/signal.hpp), so a rank can capture its calls in a CUDA graph.
//
// Protocol (docs/device-step.md):
//   begin_step      the rank's epoch += 1 (in memory, so a replayed graph gets a new one)
//   signal round    one worker sets the channel's word of every peer to the epoch, then
//                   waits for every peer's word in its own region to reach it. Waits are
//                   one thread and the copies never wait, so P logical ranks of one GPU
//                   cannot starve each other's blocks.
//   counts          publish my N + 1 bins to slot (epoch & 1), ready round, pull every
//                   rank's. Reuse by parity: a peer reads my slot e & 1 in step e before it
//                   signals step e + 1, which I wait for before I write it again in e + 2.
//   rows, weights   publish my (count, offset) table, ready round, pull, done round: the
//                   send buffer is the caller's and too large to double, so its reuse
//                   waits for every reader's "done".
// A wait past SignalOptions::timeout_ns records "peer q did not signal step e" in the
// rank's status word and the step goes on with invalid results; the host check
// (StatusWords::check, or check_mine when peers may be dead) throws llep::Error.
#include <cstddef>
#include <cstdint>

#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/core/plan_view.hpp"
#include "llep/device/gather_counts.hpp"
#include "llep/device/signal.hpp"
#include "llep/device/status_word.hpp"
#include "llep/device/step_exchange.hpp"
#include "llep/device/symmetric.hpp"
#include "llep/device/transfer_places.hpp"

namespace llep {

/// How long a signal wait may take before it records a timeout (default 10 s).
struct SignalOptions {
  std::uint64_t timeout_ns = 10'000'000'000ull;
};

namespace detail::sym {

/// 16 bytes, copied as one load and one store on the device.
struct alignas(16) Word16 {
  std::uint64_t lo, hi;
};

[[nodiscard]] inline bool aligned16(const void* p, std::size_t offset = 0) noexcept {
  return (reinterpret_cast<std::uintptr_t>(p) + offset) % 16 == 0;
}

/// Copies words [w, n) step `workers` of src into dst: worker w's share of one block.
template <class Word>
LLEP_HOST_DEVICE inline void copy_share(Word* dst, const Word* src, std::size_t n, std::size_t w,
                                        std::size_t workers) noexcept {
  for (std::size_t i = w; i < n; i += workers) dst[i] = src[i];
}

struct BeginStep {
  SymmetricView v;
  LLEP_HOST_DEVICE void operator()(std::size_t) const noexcept { *v.epoch() += 1; }
};

/// One worker: puts this step's epoch in every peer's word, then waits for every peer's.
struct SignalRound {
  SymmetricView v;
  int channel;
  SignalKind kind;
  std::uint64_t timeout_ns;
  status_word_t* status;
  LLEP_HOST_DEVICE void operator()(std::size_t) const noexcept {
    const signal_t e = *v.epoch();
    for (int q = 0; q < v.ranks; ++q) signal_put(v.signal(q, channel, kind, v.rank), e);
    for (int q = 0; q < v.ranks; ++q) signal_wait(v.signal(v.rank, channel, kind, q), e, q, timeout_ns, status);
  }
};

/// counts: my N + 1 bins into my slot (epoch & 1).
struct PublishCounts {
  SymmetricView v;
  std::size_t slots;
  const count_t* local;
  int experts;
  LLEP_HOST_DEVICE void operator()(std::size_t e) const noexcept {
    const std::size_t slot = static_cast<std::size_t>(*v.epoch() & 1) * (static_cast<std::size_t>(experts) + 1);
    v.at<count_t>(v.rank, slots)[slot + e] = local[e];
  }
};

/// counts: bin i % (N + 1) of rank i / (N + 1) from that rank's slot, to its place in out.
struct PullCounts {
  SymmetricView v;
  std::size_t slots;
  SharedCounts out;
  int experts;
  LLEP_HOST_DEVICE void operator()(std::size_t i) const noexcept {
    const auto N = static_cast<std::size_t>(experts);
    const std::size_t q = i / (N + 1), e = i % (N + 1);
    out.place(q, e, v.at<const count_t>(static_cast<int>(q), slots)[static_cast<std::size_t>(*v.epoch() & 1) * (N + 1) + e],
              experts);
  }
};

/// rows: my (count, first row) for rank q into my table, where q reads them.
struct PublishTable {
  SymmetricView v;
  std::size_t table;
  const count_t* send_counts;
  const count_t* send_offsets;
  LLEP_HOST_DEVICE void operator()(std::size_t q) const noexcept {
    count_t* t = v.at<count_t>(v.rank, table);
    t[2 * q] = send_counts[q];
    t[2 * q + 1] = send_offsets[q];
  }
};

/// rows: worker w's share of every peer's rows for me, through the peer table; rows that
/// would fall outside either buffer are not copied and noted as an overflow.
template <class Word>
struct PullRows {
  SymmetricView v;
  std::size_t table, send;
  count_t send_capacity;  // rows of every rank's send buffer
  const count_t* recv_offsets;
  std::byte* recv;
  count_t recv_capacity;
  std::size_t row_bytes;
  std::size_t workers;
  status_word_t* status;
  LLEP_HOST_DEVICE void operator()(std::size_t w) const noexcept {
    for (int q = 0; q < v.ranks; ++q) {
      const count_t* t = v.at<const count_t>(q, table);
      const count_t rows = t[2 * v.rank], from = t[2 * v.rank + 1], to = recv_offsets[q];
      if (rows == 0) continue;
      if (rows < 0 || from < 0 || to < 0 || from + rows > send_capacity || to + rows > recv_capacity) {
        if (w == 0) note_status(status, overflow_word(q, static_cast<std::uint64_t>(rows)));
        continue;
      }
      const std::size_t n = static_cast<std::size_t>(rows) * row_bytes / sizeof(Word);
      copy_share(reinterpret_cast<Word*>(recv + static_cast<std::size_t>(to) * row_bytes),
                 reinterpret_cast<const Word*>(v.at<const std::byte>(q, send) + static_cast<std::size_t>(from) * row_bytes),
                 n, w, workers);
    }
  }
};

/// weights and grads: worker w's share of this rank's side of the transfers (`Side`), in
/// plan order: the one with this rank's item k (TransferPlaces) lands in slot k of `to`,
/// from its peer's region at the side's item.
template <class Word, class Side>
struct PullTransfers {
  SymmetricView v;
  TransferPlaces places;
  Side side;
  std::size_t item_bytes;
  std::byte* to;
  std::int32_t capacity;
  std::size_t workers;
  status_word_t* status;
  LLEP_HOST_DEVICE void operator()(std::size_t w) const noexcept {
    const std::size_t n = item_bytes / sizeof(Word);
    for (std::int32_t i = 0, count = places.count(); i < count; ++i) {
      RankTransfer m;
      if (!places.mine(i, Side::as_source, m)) continue;
      if (m.item >= capacity) {  // the first past `to` (a plan past its planner's bound): none after it moves
        if (w == 0) note_status(status, past_bound_word(m.peer, static_cast<std::uint64_t>(m.item) + 1));
        return;
      }
      const std::size_t item = side.item(m);
      if (item >= side.items) {  // past the peer's area (a plan past its planner's bound): not read
        if (w == 0) note_status(status, past_bound_word(m.peer, static_cast<std::uint64_t>(item) + 1));
        continue;
      }
      const std::byte* from = v.at<const std::byte>(m.peer, side.region) + item * item_bytes;
      copy_share(reinterpret_cast<Word*>(to + static_cast<std::size_t>(m.item) * item_bytes),
                 reinterpret_cast<const Word*>(from), n, w, workers);
    }
  }
};

/// weights: the transfers to me, from the native rank's weights at native_slot[expert].
struct WeightsSide {
  static constexpr bool as_source = false;
  std::size_t region;
  std::size_t items;  // experts there (native_slot, from the topology, stays below)
  const std::int32_t* native_slot;
  LLEP_HOST_DEVICE std::size_t item(const RankTransfer& m) const noexcept {
    return static_cast<std::size_t>(native_slot[m.x.expert]);
  }
};

/// grads: the transfers from me, from the helper's gradients at the transfer's place among
/// the transfers to that helper (where its foreign weights arrived).
struct GradsSide {
  static constexpr bool as_source = true;
  std::size_t region;
  std::size_t items;  // gradients there (foreign)
  LLEP_HOST_DEVICE static std::size_t item(const RankTransfer& m) noexcept {
    return static_cast<std::size_t>(m.at.at_dst);
  }
};

/// Runs PullTransfers with 16-byte words where sizes and pointers allow.
template <class Exec, class Side>
void pull_transfers(Exec& exec, const SymmetricView& v, const TransferPlaces& places, Side side,
                    std::size_t item_bytes, std::byte* to, std::int32_t capacity, std::size_t workers,
                    status_word_t* status) {
  if (item_bytes % 16 == 0 && side.region % 16 == 0 && aligned16(to))
    exec.for_each_n(workers, PullTransfers<Word16, Side>{v, places, side, item_bytes, to, capacity, workers, status});
  else
    exec.for_each_n(workers, PullTransfers<std::byte, Side>{v, places, side, item_bytes, to, capacity, workers, status});
}

template <class Exec>
void signal_round(Exec& exec, const SymmetricView& v, SignalChannel channel, SignalKind kind,
                  const SignalOptions& options, StatusWords& status) {
  exec.for_each_n(1, SignalRound{v, static_cast<int>(channel), kind, options.timeout_ns, status.word()});
}

}  // namespace detail::sym

/// Starts a step: this rank's epoch += 1 in memory. Call once per step before its exchanges
/// (inside the captured region when the step is a graph).
template <class Exec>
void begin_step(Exec& exec, const SymmetricView& v) {
  exec.for_each_n(1, detail::sym::BeginStep{v});
}

/// Region bytes the counts gather publishes in (reserve them in the SymmetricLayout).
[[nodiscard]] constexpr std::size_t symmetric_counts_bytes(int experts) noexcept {
  return 2 * (static_cast<std::size_t>(experts) + 1) * sizeof(count_t);
}

namespace detail::sym {
// Publish out.local's N + 1 bins, a ready round, pull every rank's.
template <class Exec>
void share_counts(Exec& exec, const SymmetricView& v, std::size_t slots, int experts, const SharedCounts& out,
                  StatusWords& status, const SignalOptions& options) {
  const auto bins = static_cast<std::size_t>(experts) + 1;
  exec.for_each_n(bins, PublishCounts{v, slots, out.local, experts});
  signal_round(exec, v, SignalChannel::counts, SignalKind::ready, options, status);
  exec.for_each_n(static_cast<std::size_t>(v.ranks) * bins, PullCounts{v, slots, out, experts});
}
}  // namespace detail::sym

/// This rank's histogram of `pairs` ids into out.local (bad ids last and in `status`), then
/// every rank's bins, read from the peers' regions at `slots` (symmetric_counts_bytes(N)),
/// into out.counts and out.bad. out.counts is what gather_counts gives.
template <class Exec>
void gather_counts_symmetric(Exec& exec, const SymmetricView& v, std::size_t slots, const std::int32_t* ids,
                             std::size_t pairs, int experts, const SharedCounts& out, StatusWords& status,
                             const SignalOptions& options = {}) {
  LLEP_EXPECTS(experts >= 1, "gather_counts_symmetric with N = ", experts, " experts; must be >= 1");
  exec.histogram(ids, pairs, experts, out.local);
  status.scan(exec, ids, pairs, experts);
  detail::sym::share_counts(exec, v, slots, experts, out, status, options);
}

/// The same with the pair count in exec memory (*pairs <= max_pairs), so a captured graph
/// replays with a new batch size: `max_pairs` only sizes the launches.
template <class Exec>
void gather_counts_symmetric(Exec& exec, const SymmetricView& v, std::size_t slots, const std::int32_t* ids,
                             const count_t* pairs, std::size_t max_pairs, int experts, const SharedCounts& out,
                             StatusWords& status, const SignalOptions& options = {}) {
  LLEP_EXPECTS(experts >= 1, "gather_counts_symmetric with N = ", experts, " experts; must be >= 1");
  count_ids(exec, ids, pairs, max_pairs, experts, out.local);
  status.scan(exec, ids, pairs, max_pairs, experts);
  detail::sym::share_counts(exec, v, slots, experts, out, status, options);
}

/// Region bytes of one rank's (count, offset) table for rows_all_to_all.
[[nodiscard]] constexpr std::size_t symmetric_table_bytes(int ranks) noexcept {
  return 2 * static_cast<std::size_t>(ranks) * sizeof(count_t);
}

/// One all-to-all-v of rows. Sizes in rows; tables of P entries in this rank's exec memory.
/// Dispatch: the layout's send_counts / send_offsets / recv_offsets. Combine (the reverse):
/// recv_counts / recv_offsets as the send side and send_offsets as recv_offsets.
struct RowsExchange {
  std::size_t send = 0;        ///< region offset of every rank's send rows
  count_t send_capacity = 0;   ///< rows there
  std::size_t table = 0;       ///< region offset of symmetric_table_bytes(P)
  const count_t* send_counts = nullptr;
  const count_t* send_offsets = nullptr;
  const count_t* recv_offsets = nullptr;
  std::byte* recv = nullptr;   ///< this rank's receive rows (any exec memory)
  count_t recv_capacity = 0;   ///< rows there
  std::size_t row_bytes = 0;
  SignalChannel channel = SignalChannel::dispatch;
};

/// This rank's share of one all-to-all-v: it pulls every peer's rows for it through the
/// peer table once the peer signalled them ready, then signals "done" and waits for every
/// reader's, so when the call completes in the exec's order the send rows may be rewritten.
/// `workers` bounds the copy's parallelism (threads on the device); the real sizes are read
/// from memory. Rows that would land outside a buffer are not copied: an overflow status.
template <class Exec>
void rows_all_to_all(Exec& exec, const SymmetricView& v, const RowsExchange& x, StatusWords& status,
                     std::size_t workers, const SignalOptions& options = {}) {
  LLEP_EXPECTS(x.row_bytes > 0 && workers > 0, "rows_all_to_all of ", x.row_bytes, "-byte rows with ", workers,
               " workers; both must be > 0");
  using namespace detail::sym;
  exec.for_each_n(static_cast<std::size_t>(v.ranks), PublishTable{v, x.table, x.send_counts, x.send_offsets});
  signal_round(exec, v, x.channel, SignalKind::ready, options, status);
  if (x.row_bytes % 16 == 0 && x.send % 16 == 0 && aligned16(x.recv))
    exec.for_each_n(workers, PullRows<Word16>{v, x.table, x.send, x.send_capacity, x.recv_offsets, x.recv,
                                              x.recv_capacity, x.row_bytes, workers, status.word()});
  else
    exec.for_each_n(workers, PullRows<std::byte>{v, x.table, x.send, x.send_capacity, x.recv_offsets, x.recv,
                                                 x.recv_capacity, x.row_bytes, workers, status.word()});
  signal_round(exec, v, x.channel, SignalKind::done, options, status);
}

/// The pull of foreign experts' weights: the plan's transfers to this rank, in plan order,
/// into `foreign` (the k-th transfer at k * expert_bytes: its at_dst). Every rank's native
/// weights are at region offset `weights`, expert e at native_slot[e] * expert_bytes.
struct WeightsExchange {
  TransferPlaces places;                     ///< this rank's place table of the step's plan (filled)
  const std::int32_t* native_slot = nullptr; ///< N entries, exec memory
  std::size_t weights = 0;
  std::size_t expert_bytes = 0;
  std::byte* foreign = nullptr;
  std::int32_t foreign_capacity = 0;         ///< experts `foreign` holds
};

/// Weights do not change within a step, so they need only step-boundary ordering: the
/// native rank's "ready" (its weights for this step are written: after a load or an
/// optimizer update in its exec order) before the pull, and every reader's "done" before
/// the native may update them again (the call's end, as rows_all_to_all).
template <class Exec>
void pull_weights(Exec& exec, const SymmetricView& v, const WeightsExchange& x, StatusWords& status,
                  std::size_t workers, const SignalOptions& options = {}) {
  LLEP_EXPECTS(x.expert_bytes > 0 && workers > 0, "pull_weights of ", x.expert_bytes, "-byte experts with ",
               workers, " workers; both must be > 0");
  expect_places(x.places, v.rank, v.ranks, 0, "pull_weights");
  using namespace detail::sym;
  signal_round(exec, v, SignalChannel::weights, SignalKind::ready, options, status);
  pull_transfers(exec, v, x.places, WeightsSide{x.weights, SIZE_MAX, x.native_slot}, x.expert_bytes, x.foreign,
                 x.foreign_capacity, workers, status.word());
  signal_round(exec, v, SignalChannel::weights, SignalKind::done, options, status);
}

/// The StepExchange of symmetric memory (device/step_exchange.hpp): a SyncFreeLayer's
/// counts, rows and weights through every rank's region of layout(sizes), with the calls
/// above. The send rows and the native weights live in the region, where peers read them.
/// Moves exactly the live bytes; needs every peer's region addressable (one process, peer
/// access, or an NCCL window in one NVLink domain). Built with sizes.grad_bytes > 0 it also
/// returns backward's weight gradients (StepExchangeBackward): helpers' results wait in
/// their regions and each native rank pulls them.
class SymmetricExchange {
 public:
  /// The layout every rank's region shares for steps of these sizes: build the symmetric
  /// memory from it.
  [[nodiscard]] static SymmetricLayout layout(const StepExchangeSizes& s) { return Offsets::of(s).layout; }

  /// `view`: this rank's view of symmetric memory laid out as layout(sizes).
  SymmetricExchange(const SymmetricView& view, const StepExchangeSizes& sizes, SignalOptions signals = {})
      : view_(view), sizes_(sizes), signals_(signals), at_(Offsets::of(sizes)) {
    LLEP_EXPECTS(view.ranks == sizes.ranks && view.rank >= 0 && view.rank < sizes.ranks, "the symmetric view is rank ",
                 view.rank, " of ", view.ranks, " but the step has P = ", sizes.ranks);
    const SymmetricLayout need = layout(sizes);
    LLEP_EXPECTS(view.channels == need.channels() && (view.bytes == 0 || view.bytes >= need.bytes()), "rank ", view.rank,
                 ": the symmetric regions hold ", view.bytes, " bytes and ", view.channels,
                 " signal channels; these steps need ", need.bytes(), " and ", need.channels(),
                 " (build the memory from SymmetricExchange::layout of the same sizes, grad_bytes included)");
  }

  [[nodiscard]] const char* name() const noexcept { return view_.provider; }
  [[nodiscard]] int rank() const noexcept { return view_.rank; }
  [[nodiscard]] StepExchangeSizes sizes() const noexcept { return sizes_; }
  [[nodiscard]] const SymmetricView& view() const noexcept { return view_; }

  template <class Exec>
  void begin_step(Exec& exec) {
    llep::begin_step(exec, view_);
  }
  template <class Exec>
  void share_counts(Exec& exec, const SharedCounts& out, StatusWords& status) {
    detail::sym::share_counts(exec, view_, at_.counts, sizes_.experts, out, status, signals_);
  }
  [[nodiscard]] std::byte* send_rows(SignalChannel c) const noexcept {
    return view_.self + (c == SignalChannel::combine ? at_.back : at_.send);
  }
  template <class Exec>
  void rows(Exec& exec, const RowsStep& r, StatusWords& status) {
    LLEP_EXPECTS(r.row_bytes <= sizes_.row_bytes, "rank ", view_.rank, ": rows of ", r.row_bytes,
                 " bytes through an exchange sized for ", sizes_.row_bytes);
    const bool back = r.channel == SignalChannel::combine;
    rows_all_to_all(exec, view_,
                    RowsExchange{back ? at_.back : at_.send, sizes_.send_rows(r.channel),
                                 back ? at_.combine_table : at_.dispatch_table, r.send_counts, r.send_offsets,
                                 r.recv_offsets, r.recv, r.recv_capacity, r.width(sizes_), r.channel},
                    status, exchange_workers<Exec>(), signals_);
  }
  [[nodiscard]] std::byte* native_weights() const noexcept { return view_.self + at_.weights; }
  [[nodiscard]] std::byte* foreign_grads() const noexcept { return view_.self + at_.grads; }
  template <class Exec>
  void weights(Exec& exec, const WeightsStep& w, StatusWords& status) {
    expect_places(w.places, view_.rank, sizes_.ranks, sizes_.experts, "SymmetricExchange::weights");
    pull_weights(exec, view_,
                 WeightsExchange{w.places, w.native_slot, at_.weights, sizes_.expert_bytes, w.foreign, w.foreign_capacity},
                 status, exchange_workers<Exec>(), signals_);
  }
  /// Backward: the helpers' gradients ready (written in their foreign_grads() in their exec
  /// order), the pull, then every reader's "done" before a helper writes them again.
  template <class Exec>
  void grads(Exec& exec, const GradsStep& g, StatusWords& status) {
    LLEP_EXPECTS(sizes_.grad_bytes > 0, "rank ", view_.rank,
                 ": this exchange was built without weight gradients (StepExchangeSizes::grad_bytes = 0)");
    expect_places(g.places, view_.rank, sizes_.ranks, sizes_.experts, "SymmetricExchange::grads");
    using namespace detail::sym;
    signal_round(exec, view_, SignalChannel::grads, SignalKind::ready, signals_, status);
    pull_transfers(exec, view_, g.places, GradsSide{at_.grads, static_cast<std::size_t>(sizes_.foreign)},
                   sizes_.grad_bytes, g.received, g.received_capacity, exchange_workers<Exec>(), status.word());
    signal_round(exec, view_, SignalChannel::grads, SignalKind::done, signals_, status);
  }

 private:
  // Offsets in every rank's region.
  struct Offsets {
    SymmetricLayout layout{1};
    std::size_t counts = 0, dispatch_table = 0, combine_table = 0, send = 0, back = 0, weights = 0, grads = 0;
    [[nodiscard]] static Offsets of(const StepExchangeSizes& s) {
      Offsets o;
      o.layout = SymmetricLayout(s.ranks);
      o.counts = o.layout.reserve(symmetric_counts_bytes(s.experts));
      o.dispatch_table = o.layout.reserve(symmetric_table_bytes(s.ranks));
      o.combine_table = o.layout.reserve(symmetric_table_bytes(s.ranks));
      o.send = o.layout.reserve(static_cast<std::size_t>(s.dispatch_rows) * s.row_bytes);
      o.back = o.layout.reserve(static_cast<std::size_t>(s.combine_rows) * s.row_bytes);
      o.weights = o.layout.reserve(static_cast<std::size_t>(s.natives) * s.expert_bytes);
      o.grads = o.layout.reserve(static_cast<std::size_t>(s.foreign) * s.grad_bytes);
      return o;
    }
  };

  SymmetricView view_;
  StepExchangeSizes sizes_;
  SignalOptions signals_;
  Offsets at_;
};

}  // namespace llep
