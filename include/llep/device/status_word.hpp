#pragma once
// A status word for sync-free steps (issue 14 item 5): a kernel that meets a bad expert id
// records it in a word of device memory instead of stopping anything; the next host check
// (StatusWords::check, a collective) gathers every rank's word and turns a set one into
// the same llep::Error on every rank, naming the rank, the id and the pair. Host and device
// share the scan (FindBadExperts) and the encoding; on the host the same code runs with
// HostExec and any host transport.
//
// Encoding (here only: every code is made and read by the functions below):
//   bad id       bit 63 clear: the pair index (at most 2^31 - 1) in bits 32-62, the id (as
//                uint32) in the low 32
//   other codes  bit 63 set, the StatusCode in bits 59-62, a rank in bits 32-58 and a value
//                (low 32 bits) in the low 32:
//     peer_timeout   the peer that did not signal, the step's epoch (device/signal.hpp)
//     overflow       the peer whose rows do not fit, the rows (device/symmetric_exchange.hpp)
//     plan_failed    this rank, the device plan's StepStatus code (plan/plan_step.hpp)
//     layout_failed  this rank, the device layout's LayoutStatus code (layer/layout.hpp)
//     batch_too_large  this rank, the token count found in device memory (layer/sync_free.hpp)
//     capacity_exceeded  the peer, the rows (or experts) past a CollectiveCapacity
//     count_mismatch     the peer, the rows it sent where the layout expects another count
//                        (both device/collective_exchange.hpp)
//     past_bound     the peer (this rank for its own task lists), the first foreign item
//                    past the rooms that the planner's bounds sized: a plan that breaks
//                    its planner's declared bounds (layer/sync_free.hpp and the exchanges)
// The smallest word wins (atomicMin), so the first bad pair is kept whatever order the
// device's threads run in (the one the host's ExactCounts check names first), a bad id
// is named before a timeout it may have caused, and the lowest silent peer before others.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/core/memory_space.hpp"

namespace llep {

using status_word_t = unsigned long long;

/// A word with nothing recorded.
inline constexpr status_word_t kStatusClear = ~status_word_t{0};

/// The word for a bad id at pair `index` (indices past 2^31 - 1 share the last slot).
[[nodiscard]] LLEP_HOST_DEVICE constexpr status_word_t bad_expert_word(std::size_t index, std::int32_t id) noexcept {
  const status_word_t i = index < 0x7FFFFFFFull ? static_cast<status_word_t>(index) : 0x7FFFFFFFull;
  return (i << 32) | static_cast<std::uint32_t>(id);
}

/// The codes other than a bad id, in the order they are named when several are noted.
enum class StatusCode : std::uint32_t {
  peer_timeout = 0,
  overflow = 1,
  plan_failed = 2,
  layout_failed = 3,
  batch_too_large = 4,
  capacity_exceeded = 5,
  count_mismatch = 6,
  past_bound = 7
};

/// The word for `code` about `rank` with `value` (ranks past 2^27 - 2 share the last slot,
/// so no word equals kStatusClear).
[[nodiscard]] LLEP_HOST_DEVICE constexpr status_word_t status_code_word(StatusCode code, int rank,
                                                                        std::uint64_t value) noexcept {
  const status_word_t r = rank >= 0 && rank < 0x7FFFFFE ? static_cast<status_word_t>(rank) : 0x7FFFFFEull;
  return (status_word_t{1} << 63) | (static_cast<status_word_t>(code) << 59) | (r << 32) |
         static_cast<std::uint32_t>(value);
}

/// The word for "peer `peer` did not signal step `epoch`" (a signal wait's timeout).
[[nodiscard]] LLEP_HOST_DEVICE constexpr status_word_t peer_timeout_word(int peer, std::uint64_t epoch) noexcept {
  return status_code_word(StatusCode::peer_timeout, peer, epoch);
}

/// The word for "`rows` rows from peer `peer` do not fit the receive buffer".
[[nodiscard]] LLEP_HOST_DEVICE constexpr status_word_t overflow_word(int peer, std::uint64_t rows) noexcept {
  return status_code_word(StatusCode::overflow, peer, rows);
}

/// The word for "`n` rows (or experts) between this rank and `peer` exceed the per-peer
/// capacity of a fixed-capacity exchange".
[[nodiscard]] LLEP_HOST_DEVICE constexpr status_word_t capacity_word(int peer, std::uint64_t n) noexcept {
  return status_code_word(StatusCode::capacity_exceeded, peer, n);
}

/// The word for "peer `peer` sent `rows` rows where this rank's layout expects another count".
[[nodiscard]] LLEP_HOST_DEVICE constexpr status_word_t count_mismatch_word(int peer, std::uint64_t rows) noexcept {
  return status_code_word(StatusCode::count_mismatch, peer, rows);
}

/// The word for "item `item` of the foreign experts (transfers with `peer`) is past the
/// rooms sized from the planner's bounds": the plan broke its planner's declared bounds.
[[nodiscard]] LLEP_HOST_DEVICE constexpr status_word_t past_bound_word(int peer, std::uint64_t item) noexcept {
  return status_code_word(StatusCode::past_bound, peer, item);
}

/// True when `w` records a timeout: later waits on that peer give up at once.
[[nodiscard]] LLEP_HOST_DEVICE constexpr bool is_timeout_word(status_word_t w) noexcept {
  return w != kStatusClear && (w >> 59) == ((status_word_t{1} << 4) | static_cast<status_word_t>(StatusCode::peer_timeout));
}

/// Keeps the smaller of `*word` and `w`: atomic on the device; on the host the caller's
/// for_each_n is serial (HostExec).
LLEP_HOST_DEVICE inline void note_status(status_word_t* word, status_word_t w) noexcept {
#if defined(__CUDA_ARCH__)
  atomicMin(word, w);
#else
  if (w < *word) *word = w;
#endif
}

/// for_each_n functor: notes every id outside [0, experts) in `word`; with `pairs` (exec
/// memory), only the first *pairs ids (a count that lives on the device).
struct FindBadExperts {
  const std::int32_t* ids = nullptr;
  std::int32_t experts = 0;
  status_word_t* word = nullptr;
  const count_t* pairs = nullptr;
  LLEP_HOST_DEVICE void operator()(std::size_t i) const {
    if (pairs != nullptr && static_cast<count_t>(i) >= *pairs) return;
    const std::int32_t id = ids[i];
    if (id < 0 || id >= experts) note_status(word, bad_expert_word(i, id));
  }
};

/// A decoded word: `found` when anything is recorded; `kind` says what.
struct BadExpert {
  enum Kind : std::uint8_t {
    none, bad_id, peer_timeout, overflow, plan_failed, layout_failed, batch_too_large, capacity_exceeded, count_mismatch,
    past_bound
  };
  bool found = false;
  std::int64_t pair = 0;   ///< bad_id: the pair
  std::int32_t id = 0;     ///< bad_id: the id
  Kind kind = none;
  std::int32_t peer = 0;   ///< the rank a StatusCode names
  std::uint32_t value = 0; ///< the StatusCode's value (low 32 bits)
};
[[nodiscard]] LLEP_HOST_DEVICE constexpr BadExpert decode_status(status_word_t w) noexcept {
  if (w == kStatusClear) return {};
  const auto low = static_cast<std::uint32_t>(w);
  if ((w >> 63) == 0)
    return BadExpert{true, static_cast<std::int64_t>(w >> 32), static_cast<std::int32_t>(low), BadExpert::bad_id};
  BadExpert b;
  b.found = true;
  b.kind = static_cast<BadExpert::Kind>(BadExpert::peer_timeout + ((w >> 59) & 0xF));
  b.peer = static_cast<std::int32_t>((w >> 32) & 0x7FFFFFFull);
  b.value = low;
  return b;
}

/// Throws for the word of `rank` when it records anything (the message names the rank).
inline void throw_if_set(status_word_t word, std::size_t rank, int experts) {
  const BadExpert b = decode_status(word);
  if (!b.found) return;
  const char* invalid = " (found in the step); the step's results are not valid";
  switch (b.kind) {
    case BadExpert::peer_timeout:
      LLEP_FAIL("rank ", rank, ": peer ", b.peer, " did not signal step ", b.value, " within the signal timeout",
                invalid);
    case BadExpert::overflow:
      LLEP_FAIL("rank ", rank, ": the ", b.value, " rows (or experts' weights) from peer ", b.peer,
                " do not fit the receive buffer", invalid);
    case BadExpert::plan_failed:
      LLEP_FAIL("rank ", rank, ": the device plan failed (StepStatus code ", static_cast<std::int32_t>(b.value),
                ", plan/plan_step.hpp)", invalid);
    case BadExpert::layout_failed:
      LLEP_FAIL("rank ", rank, ": the device layout failed (LayoutStatus code ", static_cast<std::int32_t>(b.value),
                ", layer/layout.hpp)", invalid);
    case BadExpert::batch_too_large:
      LLEP_FAIL("rank ", rank, ": the step's token count in device memory, ", static_cast<std::int32_t>(b.value),
                ", is outside [0, B_max]; the step ran no tokens", invalid);
    case BadExpert::capacity_exceeded:
      LLEP_FAIL("rank ", rank, ": the ", b.value, " rows (or experts' weights) between it and peer ", b.peer,
                " exceed the fixed-capacity exchange's room per peer (raise CollectiveCapacity)", invalid);
    case BadExpert::count_mismatch:
      LLEP_FAIL("rank ", rank, ": peer ", b.peer, " sent ", b.value,
                " rows but this rank's layout expects another count", invalid);
    case BadExpert::past_bound:
      if (b.value == 0)  // a foreign task whose weights no transfer brings (layer/sync_free.hpp)
        LLEP_FAIL("rank ", rank, ": a foreign expert's task of the step has no weight transfer to the rank: the "
                  "plan and the layout disagree",
                  invalid);
      LLEP_FAIL("rank ", rank, ": the step's plan needs room for ", b.value, " foreign experts' weights or gradients (",
                static_cast<std::size_t>(b.peer) == rank ? std::string("its own task list")
                                                         : "transfers with peer " + std::to_string(b.peer),
                "), past the rooms sized from its planner's bounds (Planner::bounds().foreign_experts_per_rank): the "
                "plan breaks its planner's declared bounds",
                invalid);
    default:
      LLEP_FAIL("rank ", rank, " routed expert id ", b.id, " outside [0, ", experts, ") (pair ", b.pair,
                ", found in the step); the step's results are not valid");
  }
}

/// Throws, on every rank that calls it with the same gathered words, the same llep::Error
/// for the lowest rank whose word is set; returns when none is.
inline void throw_if_bad(std::span<const status_word_t> words, int experts) {
  for (std::size_t r = 0; r < words.size(); ++r) throw_if_set(words[r], r, experts);
}

/// One rank's status word and the room to gather every rank's: bytes(P) of the exec's
/// memory from the caller (the engine's buffer or its workspace), kept across steps.
class StatusWords {
 public:
  [[nodiscard]] static constexpr std::size_t bytes(int ranks) noexcept {
    return (static_cast<std::size_t>(ranks) + 1) * sizeof(status_word_t);
  }

  /// `memory`: bytes(ranks) in the exec's memory. Clears the word (enqueued on the exec).
  template <class Exec>
  StatusWords(Exec& exec, status_word_t* memory, int ranks)
      : words_(memory), host_(static_cast<std::size_t>(ranks), kStatusClear) {
    LLEP_EXPECTS(memory != nullptr && ranks >= 1, "StatusWords needs memory for ", ranks, " ranks (P >= 1)");
    clear(exec);
  }

  /// Where kernels record: this rank's word (exec memory).
  [[nodiscard]] status_word_t* word() const noexcept { return words_; }

  /// Enqueues the scan of `n` ids for ids outside [0, experts).
  template <class Exec>
  void scan(Exec& exec, const std::int32_t* ids, std::size_t n, int experts) const {
    exec.for_each_n(n, FindBadExperts{ids, experts, words_});
  }
  /// The same for the first *pairs (exec memory) of at most max_pairs ids.
  template <class Exec>
  void scan(Exec& exec, const std::int32_t* ids, const count_t* pairs, std::size_t max_pairs, int experts) const {
    exec.for_each_n(max_pairs, FindBadExperts{ids, experts, words_, pairs});
  }

  /// The host check, a collective of every rank: gathers the words (synchronises the
  /// exec), clears this rank's for the next step, and throws the same llep::Error on every
  /// rank when any rank recorded a bad id.
  template <class Exec, class Tr>
  void check(Exec& exec, Tr& transport, int experts) {
    LLEP_EXPECTS(static_cast<std::size_t>(transport.size()) == host_.size(), "StatusWords was sized for ",
                 host_.size(), " ranks but the transport has ", transport.size());
    if constexpr (Tr::memory == Exec::memory) {
      transport.all_gather(words_, sizeof(status_word_t), words_ + 1);
      exec.to_host(host_.data(), words_ + 1, host_.size() * sizeof(status_word_t));
      exec.synchronize();
    } else {  // a device exec with a host transport: this rank's word to the host first
      status_word_t mine = kStatusClear;
      exec.to_host(&mine, words_, sizeof mine);
      exec.synchronize();
      transport.all_gather(&mine, sizeof mine, host_.data());
    }
    clear(exec);
    throw_if_bad(host_, experts);
  }

  /// The host check of this rank alone, with no collective: for a step whose peers may be
  /// dead or absent (a signal wait's timeout is recorded here). Synchronises the exec,
  /// clears the word and throws llep::Error naming `rank` when it records anything.
  template <class Exec>
  void check_mine(Exec& exec, int rank, int experts) {
    status_word_t mine = kStatusClear;
    exec.to_host(&mine, words_, sizeof mine);
    exec.synchronize();
    clear(exec);
    throw_if_set(mine, static_cast<std::size_t>(rank), experts);
  }

  /// The words of the last check, one per rank.
  [[nodiscard]] std::span<const status_word_t> last() const noexcept { return host_; }

 private:
  template <class Exec>
  void clear(Exec& exec) const {
    exec.from_host(words_, &kStatusClear, sizeof kStatusClear);
  }

  status_word_t* words_ = nullptr;
  std::vector<status_word_t> host_;
};

}  // namespace llep
