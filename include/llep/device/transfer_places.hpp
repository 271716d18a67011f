#pragma once
// Where each weight transfer of a step's plan puts its item (issue 14): one table per rank,
// written once per step by one thread (PlaceTransfers) into memory sized before the step,
// and read in O(1) by everything that moves or uses a transferred expert: the weights pull
// and the gradients pull of both exchanges (SymmetricExchange, CollectiveExchange's slots),
// and SyncFreeLayer's forward and backward task lists. Before it, each of them recounted the
// transfers on its own (the symmetric gradients pull once per transfer: O(T^2) per step).
//
// For transfer i, in plan order, among the transfers the table places:
//   at_dst    its place among the transfers to its dst: the dst's foreign slot (its
//             weights arrive there; backward's gradient waits there)
//   at_src    its place among the transfers from its src: where the native rank receives
//             the gradient back
//   in_pair   its place among the transfers from its src to its dst: its item in a
//             fixed-capacity slot (CollectiveExchange); only for transfers from or to `rank`
// and foreign[e]: at_dst of the first transfer of expert e to `rank` (-1: none arrives).
// A transfer no plan makes (a rank or expert out of range, src == dst) is not placed (-1)
// and no reader moves it. A plan with more transfers than the table holds (a broken bound)
// is placed up to the table's room and the rest is an overflow in the status word.
#include <cstddef>
#include <cstdint>

#include "llep/core/carve.hpp"
#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/core/plan_view.hpp"
#include "llep/device/status_word.hpp"

namespace llep {

/// Transfer i's places (see the top of this file); -1 where not placed.
struct TransferPlace {
  std::int32_t at_dst = -1;
  std::int32_t at_src = -1;
  std::int32_t in_pair = -1;
};

/// One of this rank's transfers as a reader sees it: the transfer, the other side and
/// this rank's item (at_src when it is the source, at_dst when it is the destination).
struct RankTransfer {
  WeightTransfer x;
  std::int32_t peer = 0;
  std::int32_t item = 0;
  TransferPlace at;
};

/// One rank's place table: host values and pointers into exec memory (pass it by value to
/// functors). Carve it from bytes(...) of exec memory; PlaceTransfers fills it per step.
struct TransferPlaces {
  const PlanView* plan = nullptr;  ///< the step's plan (exec memory)
  TransferPlace* place = nullptr;  ///< max_transfers entries
  std::int32_t* foreign = nullptr; ///< experts entries
  std::int32_t* next = nullptr;    ///< 4 x ranks counters (PlaceTransfers' scratch)
  std::int32_t max_transfers = 0;
  std::int32_t rank = 0, ranks = 1, experts = 1;

  /// Bytes of exec memory for a table of `max_transfers` transfers (default: what a plan of
  /// P ranks and N experts holds, max_plan_segments(P, N)).
  [[nodiscard]] static std::size_t bytes(int ranks, int experts, std::int64_t max_transfers = -1) noexcept {
    TransferPlaces t;
    return t.carve_into(nullptr, ranks, experts, max_transfers);
  }
  /// The table of `rank` in `base` (bytes(ranks, experts, max_transfers) of exec memory).
  [[nodiscard]] static TransferPlaces carve(std::byte* base, const PlanView* plan, int rank, int ranks, int experts,
                                            std::int64_t max_transfers = -1) noexcept {
    TransferPlaces t;
    (void)t.carve_into(base, ranks, experts, max_transfers);
    t.plan = plan;
    t.rank = rank;
    return t;
  }

  /// The transfers placed: the plan's, up to the table's room.
  [[nodiscard]] LLEP_HOST_DEVICE std::int32_t count() const noexcept {
    return plan->num_transfers < max_transfers ? plan->num_transfers : max_transfers;
  }
  /// Whether transfer i (< count()) is this rank's as the source (as_source) or the
  /// destination, and placed; if so `m` holds it.
  LLEP_HOST_DEVICE bool mine(std::int32_t i, bool as_source, RankTransfer& m) const noexcept {
    m.x = plan->transfers[i];
    m.at = place[i];
    m.peer = as_source ? m.x.dst : m.x.src;
    m.item = as_source ? m.at.at_src : m.at.at_dst;
    return (as_source ? m.x.src : m.x.dst) == rank && m.at.at_dst >= 0;
  }

 private:
  // Sets the sizes (and the pointers, when base is not null); returns the bytes.
  std::size_t carve_into(std::byte* base, int ranks_, int experts_, std::int64_t max_transfers_) noexcept {
    if (max_transfers_ < 0) max_transfers_ = max_plan_segments(ranks_, experts_);
    Carve c;
    const std::size_t o_place = c.take(static_cast<std::size_t>(max_transfers_) * sizeof(TransferPlace)),
                      o_foreign = c.take(static_cast<std::size_t>(experts_) * sizeof(std::int32_t)),
                      o_next = c.take(4 * static_cast<std::size_t>(ranks_) * sizeof(std::int32_t));
    max_transfers = static_cast<std::int32_t>(max_transfers_);
    ranks = ranks_;
    experts = experts_;
    if (base != nullptr) {
      place = reinterpret_cast<TransferPlace*>(base + o_place);
      foreign = reinterpret_cast<std::int32_t*>(base + o_foreign);
      next = reinterpret_cast<std::int32_t*>(base + o_next);
    }
    return c.bytes;
  }
};

/// One thread: the step's place table (see the top of this file). O(N + P + T).
struct PlaceTransfers {
  TransferPlaces t;
  status_word_t* status = nullptr;
  LLEP_HOST_DEVICE void operator()(std::size_t) const noexcept {
    const std::int32_t P = t.ranks;
    std::int32_t *to = t.next, *from = t.next + P, *pair_out = t.next + 2 * P, *pair_in = t.next + 3 * P;
    for (std::int32_t q = 0; q < 4 * P; ++q) t.next[q] = 0;
    for (std::int32_t e = 0; e < t.experts; ++e) t.foreign[e] = -1;
    if (t.plan->num_transfers > t.max_transfers)  // a broken bound: the transfers past it do not move
      note_status(status, overflow_word(t.rank, static_cast<std::uint64_t>(t.plan->num_transfers)));
    for (std::int32_t i = 0, n = t.count(); i < n; ++i) {
      const WeightTransfer x = t.plan->transfers[i];
      TransferPlace& p = t.place[i];
      p = TransferPlace{};
      if (x.src < 0 || x.src >= P || x.dst < 0 || x.dst >= P || x.src == x.dst || x.expert < 0 || x.expert >= t.experts)
        continue;
      p.at_dst = to[x.dst]++;
      p.at_src = from[x.src]++;
      if (x.src == t.rank) p.in_pair = pair_out[x.dst]++;
      if (x.dst == t.rank) {
        p.in_pair = pair_in[x.src]++;
        if (t.foreign[x.expert] < 0) t.foreign[x.expert] = p.at_dst;
      }
    }
  }
};

/// Host check of a reader (`who`): `t` is a table of `rank` of P = `ranks` and N = `experts`
/// experts (any N when experts is 0), carved and pointing at a plan.
inline void expect_places(const TransferPlaces& t, int rank, int ranks, int experts, const char* who) {
  LLEP_EXPECTS(t.plan != nullptr && t.place != nullptr && t.rank == rank && t.ranks == ranks &&
                   (experts == 0 || t.experts == experts),
               "rank ", rank, ": ", who, " needs this rank's place table of the step's plan (P = ", ranks, ", N = ",
               experts, "); got a table of rank ", t.rank, " of P = ", t.ranks, ", N = ", t.experts,
               t.place == nullptr ? " (not carved)" : "", t.plan == nullptr ? " (no plan)" : "");
}

/// Enqueues PlaceTransfers on `exec` (after the plan, before anything reads the table).
template <class Exec>
void place_transfers(Exec& exec, const TransferPlaces& t, status_word_t* status) {
  exec.for_each_n(1, PlaceTransfers{t, status});
}

}  // namespace llep
