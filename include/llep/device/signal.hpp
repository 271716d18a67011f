#pragma once
// Signals between ranks for sync-free exchanges (issue 14): a signal is a uint64 word in a
// rank's symmetric region (device/symmetric.hpp) that a peer sets to the step's epoch with
// a release store, and that its owner waits on with acquire loads until it reaches the
// epoch. Epochs only grow, so a word never needs resetting and a late waiter still sees
// that the step was signalled. The same functions run on the host (std::atomic_ref, rank
// threads of one process: the tests, under ThreadSanitizer) and on the device (PTX
// st.release.sys / ld.acquire.sys, so peers on other GPUs see the data the signal covers).
//
// A wait never hangs: past `timeout_ns` it records "peer q did not signal step e" in the
// rank's status word (device/status_word.hpp) and returns false; later waits on the peer
// the word names return false at once, so a dead peer costs one timeout, not one per wait.
// The results of such a step are not valid; the host check (StatusWords::check, or
// check_mine when peers may be dead) turns the word into llep::Error.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

#include "llep/core/config.hpp"
#include "llep/device/status_word.hpp"

namespace llep {

using signal_t = std::uint64_t;

/// Sets a (peer's) signal word to `value`, after every write of this thread before it
/// (release, system scope).
LLEP_HOST_DEVICE inline void signal_put(signal_t* word, signal_t value) noexcept {
#if defined(__CUDA_ARCH__)
  asm volatile("st.release.sys.u64 [%0], %1;" ::"l"(word), "l"(value) : "memory");
#else
  std::atomic_ref<signal_t>(*word).store(value, std::memory_order_release);
#endif
}

/// The word's value; reads after it see what the signaller wrote before its put (acquire).
[[nodiscard]] LLEP_HOST_DEVICE inline signal_t signal_load(const signal_t* word) noexcept {
#if defined(__CUDA_ARCH__)
  signal_t v;
  asm volatile("ld.acquire.sys.u64 %0, [%1];" : "=l"(v) : "l"(word) : "memory");
  return v;
#else
  return std::atomic_ref<signal_t>(*const_cast<signal_t*>(word)).load(std::memory_order_acquire);
#endif
}

/// Nanoseconds of a monotonic clock (the device's global timer, the host's steady clock).
[[nodiscard]] LLEP_HOST_DEVICE inline std::uint64_t monotonic_ns() noexcept {
#if defined(__CUDA_ARCH__)
  std::uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
#else
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
#endif
}

/// This rank's status word as another thread of the same kernel may be writing it.
[[nodiscard]] LLEP_HOST_DEVICE inline status_word_t read_status(const status_word_t* status) noexcept {
#if defined(__CUDA_ARCH__)
  return *static_cast<const volatile status_word_t*>(status);
#else
  return *status;  // HostExec: only the rank's own thread writes it
#endif
}

/// Waits until `*word >= epoch` (acquire). Past `timeout_ns`, or at once when `status`
/// already records that this peer timed out, notes peer_timeout_word(peer, epoch) in
/// `status` and returns false. Waits on other peers still wait, so the live ranks stay
/// ordered among themselves (no race on their buffers) while a dead one is skipped.
LLEP_HOST_DEVICE inline bool signal_wait(const signal_t* word, signal_t epoch, int peer, std::uint64_t timeout_ns,
                                         status_word_t* status) noexcept {
  if (signal_load(word) >= epoch) return true;
  const status_word_t now = read_status(status);
  if (is_timeout_word(now) && decode_status(now).peer == peer) return false;
  const std::uint64_t start = monotonic_ns();
  unsigned backoff = 32;
  while (signal_load(word) < epoch) {
    if (monotonic_ns() - start > timeout_ns) {
      note_status(status, peer_timeout_word(peer, epoch));
      return false;
    }
#if defined(__CUDA_ARCH__)
    __nanosleep(backoff);
    if (backoff < 4096) backoff *= 2;
#else
    (void)backoff;
    std::this_thread::yield();
#endif
  }
  return true;
}

}  // namespace llep
