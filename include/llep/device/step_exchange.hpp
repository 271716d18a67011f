#pragma once
// The exchanges of a sync-free step as a policy of SyncFreeLayer (issue 14). A StepExchange
// moves what a step shares between ranks with every size read from exec memory, so the
// host only enqueues:
//   share_counts  every rank's N + 1 bins (out.local: the histogram, ids outside [0, N)
//                 last) into out.counts (P x N) and out.bad (P)
//   rows          an all-to-all-v of rows from the exchange's send buffer of a channel
//                 (dispatch: tokens out; combine: results back)
//   weights       the plan's transfers of expert weights to this rank
//   grads         (backward, StepExchangeBackward) the gradients of foreign experts back
//                 to their native ranks
// Two models:
//   SymmetricExchange (device/symmetric_exchange.hpp)   loads and stores into peers'
//       symmetric regions, ordered by signals: host memory, peer pointers, or an NCCL
//       window in one NVLink domain; moves exactly the live bytes.
//   CollectiveExchange<Tr> (device/collective_exchange.hpp)   a transport's fixed-size
//       collectives (stream-ordered NCCL, MPI, HostThreads): buffers of a capacity per
//       peer sized from the limits, the true counts carried with the data; moves the
//       capacity every step, works wherever the transport does.
#include <concepts>
#include <cstddef>
#include <cstdint>

#include "llep/core/config.hpp"
#include "llep/core/memory_space.hpp"
#include "llep/core/plan_view.hpp"
#include "llep/core/topology.hpp"
#include "llep/device/gather_counts.hpp"
#include "llep/device/status_word.hpp"
#include "llep/device/symmetric.hpp"
#include "llep/device/transfer_places.hpp"
#include "llep/layer/limits.hpp"

namespace llep {

/// What a step's exchanges hold at most, from the layer's limits.
struct StepExchangeSizes {
  int ranks = 1;                  ///< P
  int experts = 1;                ///< N
  count_t dispatch_rows = 0;      ///< rows a rank sends in dispatch (B_max x K)
  count_t combine_rows = 0;       ///< rows a rank sends in combine (the plan's rows per rank)
  std::size_t row_bytes = 0;      ///< one row
  int natives = 0;                ///< native experts a rank holds
  int foreign = 0;                ///< foreign experts a rank receives in a step
  std::size_t expert_bytes = 0;   ///< one expert's weights
  std::size_t grad_bytes = 0;     ///< one expert's weight gradient (0: forward only)

  /// `grad_bytes`: one expert's weight gradient when the steps run backward, else 0.
  [[nodiscard]] static StepExchangeSizes of(const Topology& topo, const LayerLimits& l,
                                            std::size_t grad_bytes = 0) noexcept {
    return StepExchangeSizes{topo.ranks(),         topo.experts(),         l.max_pairs_per_rank(),
                             l.plan.rows_per_rank, l.row_bytes,            topo.slots_per_rank(),
                             l.plan.foreign_experts_per_rank, l.weight_bytes, grad_bytes};
  }
  /// Rows of channel `c`'s send buffer.
  [[nodiscard]] count_t send_rows(SignalChannel c) const noexcept {
    return c == SignalChannel::combine ? combine_rows : dispatch_rows;
  }
  friend bool operator==(const StepExchangeSizes&, const StepExchangeSizes&) = default;
};

/// One all-to-all-v of rows from the exchange's send buffer of `channel` (rows the caller
/// wrote at send_offsets). Tables of P entries in rows, in this rank's exec memory.
/// Dispatch: the layout's send_counts / send_offsets and recv_counts / recv_offsets.
/// Combine (the reverse): recv_* as the send side and send_* as the receive side.
struct RowsStep {
  SignalChannel channel = SignalChannel::dispatch;
  const count_t* send_counts = nullptr;
  const count_t* send_offsets = nullptr;
  const count_t* recv_counts = nullptr;   ///< what this rank expects from each peer
  const count_t* recv_offsets = nullptr;
  std::byte* recv = nullptr;              ///< this rank's receive rows (exec memory)
  count_t recv_capacity = 0;              ///< rows there
  /// Bytes of one row: 0 for sizes().row_bytes, or narrower (backward moves one gate
  /// scalar per row); the send buffer and the capacities stay counted in rows.
  std::size_t row_bytes = 0;
  [[nodiscard]] std::size_t width(const StepExchangeSizes& s) const noexcept {
    return row_bytes != 0 ? row_bytes : s.row_bytes;
  }
};

/// The plan's weight transfers to this rank, in plan order: the k-th (its place at_dst in
/// the step's place table) into `foreign` at k x expert_bytes, from its native rank's
/// native_weights() at native_slot[expert].
struct WeightsStep {
  TransferPlaces places;                      ///< this rank's place table of the step's plan, filled
  const std::int32_t* native_slot = nullptr;  ///< N entries, exec memory
  std::byte* foreign = nullptr;
  std::int32_t foreign_capacity = 0;          ///< experts `foreign` holds
};

/// Backward's weight gradients of foreign experts, back to their native ranks. A helper
/// writes the gradient of the j-th transfer TO it (plan order, as foreign weights arrive:
/// its at_dst) at j x grad_bytes of the exchange's foreign_grads(); the native rank
/// receives the k-th transfer FROM it (plan order: its at_src) at k x grad_bytes of
/// `received`.
struct GradsStep {
  TransferPlaces places;            ///< the place table the step's WeightsStep had
  std::byte* received = nullptr;    ///< exec memory
  std::int32_t received_capacity = 0;  ///< gradients `received` holds
};

/// How a sync-free step shares its counts, rows and weights (see the top of this file).
/// Every call enqueues on `exec` and is collective: every rank makes it, in the same order.
template <class X, class Exec>
concept StepExchange = requires(X& x, const X& cx, Exec& exec, const SharedCounts& out,
                                StatusWords& status, const RowsStep& rows, const WeightsStep& weights,
                                SignalChannel channel) {
  { cx.name() } -> std::convertible_to<const char*>;
  { cx.rank() } -> std::convertible_to<int>;
  { cx.sizes() } -> std::convertible_to<StepExchangeSizes>;
  { x.begin_step(exec) } -> std::same_as<void>;
  { x.share_counts(exec, out, status) } -> std::same_as<void>;
  { cx.send_rows(channel) } -> std::same_as<std::byte*>;
  { x.rows(exec, rows, status) } -> std::same_as<void>;
  { cx.native_weights() } -> std::same_as<std::byte*>;
  { x.weights(exec, weights, status) } -> std::same_as<void>;
};

/// A StepExchange that also returns weight gradients (a sync-free backward): built with
/// sizes().grad_bytes > 0, it holds foreign x grad_bytes where this rank's helpers' results
/// wait (foreign_grads(), exec memory) and moves them with grads().
template <class X, class Exec>
concept StepExchangeBackward =
    StepExchange<X, Exec> && requires(X& x, const X& cx, Exec& exec, const GradsStep& grads, StatusWords& status) {
      { cx.foreign_grads() } -> std::same_as<std::byte*>;
      { x.grads(exec, grads, status) } -> std::same_as<void>;
    };

/// How many workers an exchange's copy loop splits into: one on the host (the rank's
/// thread), 16 blocks of 256 threads on a device (the copies are bandwidth-bound).
template <class Exec>
[[nodiscard]] constexpr std::size_t exchange_workers() noexcept {
  return Exec::memory == MemorySpace::host ? 1 : 16 * 256;
}

/// Named in a static_assert so a type that is not a StepExchange fails with an instruction.
template <class X, class Exec>
constexpr bool check_step_exchange() {
  static_assert(StepExchange<X, Exec>,
                "llep: this type is not a StepExchange for this Exec. Give it `const char* name() const`, `int rank() "
                "const`, "
                "`llep::StepExchangeSizes sizes() const`, `void begin_step(Exec&)`, `void share_counts(Exec&, const "
                "llep::SharedCounts&, llep::StatusWords&)`, `std::byte* "
                "send_rows(llep::SignalChannel) const`, `void rows(Exec&, const llep::RowsStep&, llep::StatusWords&)`, "
                "`std::byte* native_weights() const` and `void weights(Exec&, const llep::WeightsStep&, "
                "llep::StatusWords&)` (see llep/device/step_exchange.hpp), or use llep::SymmetricExchange");
  return true;
}

}  // namespace llep
