#pragma once
// A status word for sync-free steps (issue 14 item 5): a kernel that meets a bad expert id
// records it in a word of device memory instead of stopping anything; the next host check
// (StatusWords::check, a collective) gathers every rank's word and turns a set one into
// the same llep::Error on every rank, naming the rank, the id and the pair. Host and device
// share the scan (FindBadExperts) and the encoding; on the host the same code runs with
// HostExec and any host transport.
//
// Encoding: the pair index in the high 32 bits, the id (as uint32) in the low 32; the
// smallest word is the first bad pair, so an atomicMin keeps the same id whatever order
// the device's threads run in (the one the host's ExactCounts check names first).
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/core/memory_space.hpp"

namespace llep {

using status_word_t = unsigned long long;

/// A word with nothing recorded.
inline constexpr status_word_t kStatusClear = ~status_word_t{0};

/// The word for a bad id at pair `index` (indices past 2^32 - 2 share the last slot).
[[nodiscard]] LLEP_HOST_DEVICE constexpr status_word_t bad_expert_word(std::size_t index, std::int32_t id) noexcept {
  const status_word_t i = index < 0xFFFFFFFEull ? static_cast<status_word_t>(index) : 0xFFFFFFFEull;
  return (i << 32) | static_cast<std::uint32_t>(id);
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

/// for_each_n functor: notes every id outside [0, experts) in `word`.
struct FindBadExperts {
  const std::int32_t* ids = nullptr;
  std::int32_t experts = 0;
  status_word_t* word = nullptr;
  LLEP_HOST_DEVICE void operator()(std::size_t i) const {
    const std::int32_t id = ids[i];
    if (id < 0 || id >= experts) note_status(word, bad_expert_word(i, id));
  }
};

/// A decoded word.
struct BadExpert {
  bool found = false;
  std::int64_t pair = 0;
  std::int32_t id = 0;
};
[[nodiscard]] LLEP_HOST_DEVICE constexpr BadExpert decode_status(status_word_t w) noexcept {
  if (w == kStatusClear) return {};
  return BadExpert{true, static_cast<std::int64_t>(w >> 32), static_cast<std::int32_t>(static_cast<std::uint32_t>(w))};
}

/// Throws, on every rank that calls it with the same gathered words, the same llep::Error
/// for the lowest rank whose word is set; returns when none is.
inline void throw_if_bad(std::span<const status_word_t> words, int experts) {
  for (std::size_t r = 0; r < words.size(); ++r) {
    const BadExpert b = decode_status(words[r]);
    if (b.found)
      LLEP_FAIL("rank ", r, " routed expert id ", b.id, " outside [0, ", experts, ") (pair ", b.pair,
                ", found on the device); the step's results are not valid");
  }
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
