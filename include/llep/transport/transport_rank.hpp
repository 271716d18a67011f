#pragma once
// What the process transports (Mpi, Nccl) share: one rank's identity and failure state,
// the accessors over it, move-only by release-and-swap, and the per-rank argument checks
// made before anything is posted (the messages HostThreads gives for the same inputs).
#include <cstddef>
#include <span>
#include <string>
#include <utility>

#include "llep/core/error.hpp"
#include "llep/transport/host_threads.hpp"  // the shared per-rank argument checks
#include "llep/transport/transport.hpp"

namespace llep::detail {

/// Base of a transport `Derived` with knobs `Options`. Derived declares this base a friend
/// and has `swap(Derived&) noexcept` (calling swap_rank, then its own members) and
/// `release() noexcept` (frees what it owns); its move constructor is `swap(o)`, its
/// move assignment `move_assign(o)`, its destructor `release()`.
template <class Derived, class Options>
class TransportRank {
 public:
  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return size_; }
  [[nodiscard]] const Options& options() const noexcept { return options_; }
  [[nodiscard]] bool aborted() const noexcept { return aborted_; }

  TransportRank(const TransportRank&) = delete;
  TransportRank& operator=(const TransportRank&) = delete;

 protected:
  TransportRank() = default;
  ~TransportRank() = default;

  Derived& move_assign(Derived& o) noexcept {
    auto& self = static_cast<Derived&>(*this);
    if (&self != &o) {
      self.release();
      self.swap(o);
    }
    return self;
  }
  void swap_rank(TransportRank& o) noexcept {
    std::swap(rank_, o.rank_);
    std::swap(size_, o.size_);
    std::swap(options_, o.options_);
    std::swap(aborted_, o.aborted_);
    std::swap(reason_, o.reason_);
    std::swap(last_call_, o.last_call_);
  }

  void check_all_gather_args(const void* src, std::size_t bytes, const void* dst) const {
    LLEP_EXPECTS(bytes == 0 || (src != nullptr && dst != nullptr), "all_gather: rank ", rank_, " passed a null ",
                 src ? "dst" : "src", " for ", bytes, " bytes");
  }
  void check_all_to_all_v_args(const void* src, std::span<const std::size_t> send_sizes,
                               std::span<const std::size_t> send_offsets, const void* dst,
                               std::span<const std::size_t> recv_sizes,
                               std::span<const std::size_t> recv_offsets) const {
    const std::string problem =
        all_to_all_v_args_problem(rank_, size_, src, dst, send_sizes, send_offsets, recv_sizes, recv_offsets);
    if (!problem.empty()) throw Error(problem);
  }
  void check_exchange_args(std::span<const P2pOp> ops) const {
    const std::string problem = exchange_args_problem(rank_, size_, ops);
    if (!problem.empty()) throw Error(problem);
  }

  int rank_ = 0;
  int size_ = 0;
  Options options_{};
  bool aborted_ = false;
  std::string reason_;
  const char* last_call_ = "init";
};

}  // namespace llep::detail
