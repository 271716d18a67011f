#pragma once
// Symmetric memory for sync-free exchanges (issue 14): every rank holds a region of the
// same layout (SymmetricLayout), and each rank has a table of the P ranks' region bases as
// it can address them (SymmetricView). A region starts with the signal words
// (device/signal.hpp), [channel][ready | done][from rank], then this rank's step epoch,
// then the data the exchanges read from peers (each at the same offset on every rank).
//
// Providers (each sets up once; after that nothing of a step involves the host):
//   HostSymmetricMemory (here)   P regions of host memory for the rank threads of one
//                                process (HostExec): the tests, and CPU engines
//   PeerSymmetricMemory          one region of device memory per PeerCopy rank (logical
//     (device/symmetric_peer.cuh) ranks of one GPU, or GPUs with peer access), its table
//                                gathered with one host collective
//   NcclSymmetricMemory          an NCCL 2.28 symmetric window per rank of an Nccl
//     (device/symmetric_nccl.cuh) communicator in one NVLink domain, the table from its
//                                load/store (LSA) pointers
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include "llep/core/carve.hpp"
#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/device/signal.hpp"

namespace llep {

/// Signal channels: one per exchange of a step, so that their words never mix.
enum class SignalChannel : int { counts = 0, dispatch = 1, combine = 2, weights = 3, grads = 4 };
inline constexpr int kSignalChannels = 5;
/// ready: the sender's data for the step is written; done: the reader finished reading it.
enum class SignalKind : int { ready = 0, done = 1 };

/// The layout every rank's region shares: signal words, the epoch, then data reserved
/// with reserve() (256-byte aligned, so 16-byte copies stay aligned).
class SymmetricLayout {
 public:
  explicit SymmetricLayout(int ranks, int channels = kSignalChannels) : ranks_(ranks), channels_(channels) {
    LLEP_EXPECTS(ranks >= 1, "SymmetricLayout for ", ranks, " ranks; must be >= 1");
    LLEP_EXPECTS(channels >= 1, "SymmetricLayout with ", channels, " signal channels; must be >= 1");
    (void)carve_.take((signal_words() + 1) * sizeof(signal_t));
  }

  /// Reserves `bytes` of data; returns its offset from a region's base.
  std::size_t reserve(std::size_t bytes) { return carve_.take(bytes); }

  [[nodiscard]] int ranks() const noexcept { return ranks_; }
  [[nodiscard]] int channels() const noexcept { return channels_; }
  [[nodiscard]] std::size_t signal_words() const noexcept {
    return static_cast<std::size_t>(channels_) * 2 * static_cast<std::size_t>(ranks_);
  }
  /// Bytes of one region.
  [[nodiscard]] std::size_t bytes() const noexcept { return carve_.bytes; }

 private:
  int ranks_, channels_;
  Carve carve_;
};

/// One rank's view of the symmetric regions: trivially copyable, passed by value into the
/// exchanges' functors. `peers` (P entries) is in the rank's exec memory; host code may
/// compute addresses from `self` (for the exec's copies) but never read through `peers`.
struct SymmetricView {
  std::byte* const* peers = nullptr;
  std::byte* self = nullptr;  ///< this rank's region (peers[rank]), usable from the host side
  int rank = 0;
  int ranks = 1;
  int channels = kSignalChannels;
  /// Which memory and path the regions are (for reports): "host memory", "peer pointers",
  /// "NCCL symmetric window (LSA)".
  const char* provider = "host memory";
  /// Bytes of every rank's region (its layout's bytes()); 0 when the maker did not say.
  std::size_t bytes = 0;

  /// Data at `offset` of rank q's region.
  template <class T>
  [[nodiscard]] LLEP_HOST_DEVICE T* at(int q, std::size_t offset) const noexcept {
    return reinterpret_cast<T*>(peers[q] + offset);
  }
  /// The word rank `from` sets in rank `owner`'s region on `channel`.
  [[nodiscard]] LLEP_HOST_DEVICE signal_t* signal(int owner, int channel, SignalKind kind, int from) const noexcept {
    const std::size_t word =
        (static_cast<std::size_t>(channel) * 2 + static_cast<std::size_t>(kind)) * static_cast<std::size_t>(ranks) +
        static_cast<std::size_t>(from);
    return reinterpret_cast<signal_t*>(peers[owner]) + word;
  }
  /// This rank's step counter (its own region, never read by peers).
  [[nodiscard]] LLEP_HOST_DEVICE signal_t* epoch() const noexcept {
    return reinterpret_cast<signal_t*>(self) + static_cast<std::size_t>(channels) * 2 * ranks;
  }
};

/// What a device provider holds for its rank: its region and its table of the P regions
/// (both device memory), and the view over them. The provider allocates and frees them.
class SymmetricRegion {
 public:
  [[nodiscard]] SymmetricView view() const noexcept {
    return SymmetricView{table_, region_, rank_, ranks_, layout_.channels(), provider_, layout_.bytes()};
  }
  /// This rank's region.
  [[nodiscard]] std::byte* region() const noexcept { return region_; }
  [[nodiscard]] const SymmetricLayout& layout() const noexcept { return layout_; }

 protected:
  SymmetricRegion(int rank, int ranks, const SymmetricLayout& layout, const char* provider)
      : rank_(rank), ranks_(ranks), layout_(layout), provider_(provider) {
    LLEP_EXPECTS(layout.ranks() == ranks, "symmetric memory: a layout for ", layout.ranks(), " ranks in a group of ",
                 ranks);
  }
  ~SymmetricRegion() = default;
  SymmetricRegion(const SymmetricRegion&) = delete;
  SymmetricRegion& operator=(const SymmetricRegion&) = delete;

  int rank_, ranks_;
  SymmetricLayout layout_;
  const char* provider_;
  std::byte* region_ = nullptr;
  std::byte** table_ = nullptr;
};

/// P regions of host memory, zeroed, shared by the rank threads of one process. Create it
/// before the threads start and destroy it after they end; view(p) is rank p's table.
class HostSymmetricMemory {
 public:
  explicit HostSymmetricMemory(const SymmetricLayout& layout) : layout_(layout) {
    const auto P = static_cast<std::size_t>(layout.ranks());
    bases_.reserve(P);
    for (std::size_t p = 0; p < P; ++p) {
      auto* b = static_cast<std::byte*>(::operator new(layout.bytes(), std::align_val_t{256}));
      std::memset(b, 0, layout.bytes());
      bases_.push_back(b);
    }
  }
  HostSymmetricMemory(const HostSymmetricMemory&) = delete;
  HostSymmetricMemory& operator=(const HostSymmetricMemory&) = delete;
  ~HostSymmetricMemory() {
    for (std::byte* b : bases_) ::operator delete(b, std::align_val_t{256});
  }

  [[nodiscard]] SymmetricView view(int rank) const {
    LLEP_EXPECTS(rank >= 0 && rank < layout_.ranks(), "rank ", rank, " is outside [0, ", layout_.ranks(), ")");
    return SymmetricView{bases_.data(), bases_[static_cast<std::size_t>(rank)], rank, layout_.ranks(),
                         layout_.channels(), "host memory", layout_.bytes()};
  }
  [[nodiscard]] const SymmetricLayout& layout() const noexcept { return layout_; }

 private:
  SymmetricLayout layout_;
  std::vector<std::byte*> bases_;
};

}  // namespace llep
