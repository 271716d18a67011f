#pragma once
// PeerCopy: P ranks of one process, each a (CUDA device, stream), moving device buffers
// with cudaMemcpyPeerAsync (DESIGN.md, "Transports"). Several ranks may share one device:
// that is how the multi-rank device path runs on a one-GPU machine.
//
// Host side, a collective is HostGroup's protocol unchanged (post, entry barrier, every
// rank checks every post, exit barrier; timeout and abort included): see host_threads.hpp.
// Device side, copies are pulled by the receiver and ordered with two events per rank:
//   1. before the entry barrier, rank p records `ready[p]` on its stream: its inputs
//      (src, send buffers) are valid once p's stream reaches that point;
//   2. between the barriers, receiver r enqueues on ITS stream, per sender q:
//      wait(ready[q]) then the copy q -> r; then records `done[r]` on its stream;
//   3. after the exit barrier, sender q makes its stream wait on done[r] of every r that
//      read from q, so q's later work cannot overwrite a src still being read.
// So when a collective returns, the data is complete in stream order on the receiver's
// stream (nothing is complete on the host), and no device or stream is synchronised
// from the host, except by barrier(). One event pair per rank suffices: p re-records
// ready[p] / done[p] only after a barrier that every waiter on the old record has passed.
#include <cuda_runtime.h>

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "llep/core/cuda_check.hpp"
#include "llep/core/error.hpp"
#include "llep/transport/host_threads.hpp"
#include "llep/transport/transport.hpp"

namespace llep {

/// Where one PeerCopy rank runs: its device and the stream its collectives are ordered on.
/// The stream is the caller's (it must belong to `device`); the group never creates or
/// destroys it.
struct PeerCopyRank {
  int device = 0;
  cudaStream_t stream = nullptr;
};

namespace detail::peer {
// Sets the current device for a scope and restores the caller's on exit (never throws
// from the destructor).
class ScopedDevice {
 public:
  explicit ScopedDevice(int device) : device_(device) {
    LLEP_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device_) LLEP_CUDA_CHECK(cudaSetDevice(device_));
  }
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  ~ScopedDevice() {
    if (previous_ != device_) (void)cudaSetDevice(previous_);
  }

 private:
  int device_;
  int previous_ = 0;
};
}  // namespace detail::peer

class PeerCopy;

/// The group shared by the rank threads of a PeerCopy transport: a HostGroup for the
/// rendezvous plus each rank's device, stream and events. Not copyable or movable: handles
/// point into it. Enables peer access between distinct devices where the hardware allows
/// (cudaMemcpyPeerAsync still works without it, staged through the host).
class PeerCopyGroup {
 public:
  explicit PeerCopyGroup(std::vector<PeerCopyRank> ranks, HostGroupOptions options = {})
      : host_(static_cast<int>(ranks.size()), options) {
    int devices = 0;
    LLEP_CUDA_CHECK(cudaGetDeviceCount(&devices));
    for (std::size_t p = 0; p < ranks.size(); ++p) {
      const int d = ranks[p].device;
      LLEP_EXPECTS(d >= 0 && d < devices, "PeerCopyGroup: rank ", p, " names device ", d, " outside [0, ", devices,
                   ") (cudaGetDeviceCount)");
#if CUDART_VERSION >= 12080
      if (ranks[p].stream != nullptr) {
        int sd = -1;
        LLEP_CUDA_CHECK(cudaStreamGetDevice(ranks[p].stream, &sd));
        LLEP_EXPECTS(sd == d, "PeerCopyGroup: rank ", p, " names device ", d, " but its stream belongs to device ", sd);
      }
#endif
    }
    ranks_.reserve(ranks.size());
    try {
      for (const PeerCopyRank& where : ranks) {
        detail::peer::ScopedDevice on(where.device);
        RankState s{where, nullptr, nullptr};
        LLEP_CUDA_CHECK(cudaEventCreateWithFlags(&s.ready, cudaEventDisableTiming));
        const cudaError_t made = cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming);
        if (made != cudaSuccess) (void)cudaEventDestroy(s.ready);
        LLEP_CUDA_CHECK(made);
        ranks_.push_back(s);
      }
      enable_peer_access();
    } catch (...) {
      destroy_events();
      throw;
    }
  }
  PeerCopyGroup(const PeerCopyGroup&) = delete;
  PeerCopyGroup& operator=(const PeerCopyGroup&) = delete;
  ~PeerCopyGroup() { destroy_events(); }

  [[nodiscard]] int size() const noexcept { return host_.size(); }
  [[nodiscard]] const HostGroupOptions& options() const noexcept { return host_.options(); }
  [[nodiscard]] const PeerCopyRank& where(int p) const { return state(p).where; }

  /// The host rendezvous (timeout, abort state). Use the PeerCopy handles for collectives.
  [[nodiscard]] HostGroup& host() noexcept { return host_; }

  /// The handle of rank p; give each rank thread its own.
  [[nodiscard]] PeerCopy rank(int p);

  /// Same contract as HostGroup::abort / reset.
  void abort(std::string_view why) { host_.abort(why); }
  [[nodiscard]] bool aborted() const { return host_.aborted(); }
  void reset() { host_.reset(); }

 private:
  friend class PeerCopy;
  struct RankState {
    PeerCopyRank where;
    cudaEvent_t ready;  // recorded by this rank before it enters a collective
    cudaEvent_t done;   // recorded by this rank after it enqueued its copies
  };

  [[nodiscard]] const RankState& state(int p) const {
    LLEP_EXPECTS(p >= 0 && p < size(), "PeerCopyGroup: rank ", p, " is outside [0, ", size(), ")");
    return ranks_[static_cast<std::size_t>(p)];
  }

  void enable_peer_access() {
    std::vector<int> devices;
    for (const RankState& s : ranks_) {
      bool seen = false;
      for (int d : devices) seen = seen || d == s.where.device;
      if (!seen) devices.push_back(s.where.device);
    }
    for (int a : devices)
      for (int b : devices) {
        if (a == b) continue;
        int can = 0;
        LLEP_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, a, b));
        if (!can) continue;
        detail::peer::ScopedDevice on(a);
        const cudaError_t e = cudaDeviceEnablePeerAccess(b, 0);
        if (e == cudaErrorPeerAccessAlreadyEnabled)
          (void)cudaGetLastError();  // enabled earlier (another group): clear the sticky-free error
        else
          LLEP_CUDA_CHECK(e);
      }
  }

  void destroy_events() noexcept {
    for (RankState& s : ranks_) {
      // Safe with waits still pending: the runtime releases an event once it completes.
      if (s.ready) (void)cudaEventDestroy(s.ready);
      if (s.done) (void)cudaEventDestroy(s.done);
      s.ready = s.done = nullptr;
    }
  }

  HostGroup host_;
  std::vector<RankState> ranks_;
};

/// One rank's handle on a PeerCopyGroup: cheap to copy, models llep::Transport over device
/// memory. Every call is collective (all ranks, same order). It blocks the calling thread
/// only for the host rendezvous; the data moves asynchronously on stream() and is complete
/// in that stream's order when the call returns (see the top of this file). Argument
/// checks are HostThreads' and throw the same llep::Error on every rank.
class PeerCopy {
 public:
  static constexpr MemorySpace memory = MemorySpace::device;
  static constexpr std::string_view name = "peer_copy";

  PeerCopy(PeerCopyGroup& group, int rank) : group_(&group), rank_(rank) {
    LLEP_EXPECTS(rank >= 0 && rank < group.size(), "rank ", rank, " is outside [0, ", group.size(), ")");
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return group_->size(); }
  [[nodiscard]] int device() const { return me().where.device; }
  [[nodiscard]] cudaStream_t stream() const { return me().where.stream; }
  [[nodiscard]] PeerCopyGroup& group() const noexcept { return *group_; }

  /// dst[q * bytes, (q + 1) * bytes) = rank q's src, for every q. `bytes` must agree.
  /// In place (src == dst + rank() * bytes) is allowed.
  void all_gather(const void* src, std::size_t bytes, void* dst) {
    HostGroup& g = group_->host_;
    run(
        {.op = HostGroup::Op::all_gather, .src = src, .dst = dst, .bytes = bytes}, [&] { return g.check_all_gather(); },
        [&] {
          for (int q = 0; q < size(); ++q) {
            auto* out = static_cast<std::byte*>(dst) + static_cast<std::size_t>(q) * bytes;
            if (bytes > 0 && out != g.post(q).src) pull(q, out, g.post(q).src, bytes);
          }
        },
        [&](int) { return bytes > 0; });
  }

  /// Bytes [send_offsets[q], + send_sizes[q]) of src go to rank q, landing at its
  /// recv_offsets[rank()]. Sizes must match pairwise (else llep::Error on every rank).
  /// src and dst must not overlap.
  void all_to_all_v(const void* src, std::span<const std::size_t> send_sizes, std::span<const std::size_t> send_offsets,
                    void* dst, std::span<const std::size_t> recv_sizes, std::span<const std::size_t> recv_offsets) {
    HostGroup& g = group_->host_;
    const auto me = static_cast<std::size_t>(rank_);
    run(
        {.op = HostGroup::Op::all_to_all_v,
         .src = src,
         .dst = dst,
         .send_sizes = send_sizes,
         .send_offsets = send_offsets,
         .recv_sizes = recv_sizes,
         .recv_offsets = recv_offsets},
        [&] { return g.check_all_to_all_v(); },
        [&] {
          for (int q = 0; q < size(); ++q) {
            const auto& from = g.post(q);
            const std::size_t n = recv_sizes[static_cast<std::size_t>(q)];
            if (n > 0)
              pull(q, static_cast<std::byte*>(dst) + recv_offsets[static_cast<std::size_t>(q)],
                   static_cast<const std::byte*>(from.src) + from.send_offsets[me], n);
          }
        },
        [&](int q) { return send_sizes[static_cast<std::size_t>(q)] > 0; });
  }

  /// Grouped point-to-point: the k-th send from p to q fills the k-th recv on q from p.
  /// Counts or sizes that do not match throw llep::Error on every rank.
  void exchange(std::span<const P2pOp> ops) {
    HostGroup& g = group_->host_;
    run(
        {.op = HostGroup::Op::exchange, .ops = ops}, [&] { return g.check_exchange(); },
        [&] {
          auto& cursor = g.slots_[static_cast<std::size_t>(rank_)].cursor;
          std::fill(cursor.begin(), cursor.end(), std::size_t{0});
          for (const P2pOp& op : ops) {
            if (op.kind != P2pOp::Kind::recv) continue;
            const auto from = g.post(op.peer).ops;
            std::size_t& i = cursor[static_cast<std::size_t>(op.peer)];
            while (!(from[i].kind == P2pOp::Kind::send && from[i].peer == rank_)) ++i;  // checked to exist
            if (op.bytes > 0) pull(op.peer, op.buffer, from[i].buffer, op.bytes);
            ++i;
          }
        },
        [&](int q) {
          for (const P2pOp& op : ops)
            if (op.kind == P2pOp::Kind::send && op.peer == q && op.bytes > 0) return true;
          return false;
        });
  }

  /// Every rank's work enqueued on its stream before the barrier is complete when any rank
  /// returns: each stream waits on every rank's ready event, then the caller waits for its
  /// own stream (the one host synchronisation of this transport).
  void barrier() {
    run(
        {.op = HostGroup::Op::barrier}, [] { return std::string(); },
        [&] {
          for (int q = 0; q < size(); ++q)
            if (q != rank_) LLEP_CUDA_CHECK(cudaStreamWaitEvent(stream(), group_->state(q).ready, 0));
        },
        [](int) { return false; });
    LLEP_CUDA_CHECK(cudaStreamSynchronize(stream()));
  }

  /// Releases every rank of the group from its collectives with llep::GroupAborted. Copies
  /// already enqueued still run to completion on their streams.
  void abort(std::string_view why) { group_->abort(detail::concat("rank ", rank_, " aborted: ", why)); }

  /// HostGroup::recover for this rank, after this rank's stream has drained (so no copy of
  /// the failed step still reads or writes a buffer the next step reuses). Models
  /// llep::RecoverableTransport.
  bool recover() noexcept {
    try {
      detail::peer::ScopedDevice on(device());
      (void)cudaStreamSynchronize(stream());
      (void)cudaGetLastError();
    } catch (...) {
    }
    return group_->host_.recover(rank_);
  }

 private:
  [[nodiscard]] const PeerCopyGroup::RankState& me() const { return group_->state(rank_); }

  // Enqueues on this rank's stream the copy of n bytes of rank q's `from` into `to`,
  // after q's inputs are ready.
  void pull(int q, void* to, const void* from, std::size_t n) {
    const PeerCopyGroup::RankState& src = group_->state(q);
    const PeerCopyGroup::RankState& dst = me();
    if (q != rank_) LLEP_CUDA_CHECK(cudaStreamWaitEvent(dst.where.stream, src.ready, 0));
    if (src.where.device == dst.where.device)
      LLEP_CUDA_CHECK(cudaMemcpyAsync(to, from, n, cudaMemcpyDeviceToDevice, dst.where.stream));
    else
      LLEP_CUDA_CHECK(cudaMemcpyPeerAsync(to, dst.where.device, from, src.where.device, n, dst.where.stream));
  }

  // The ordering protocol at the top of the file around HostGroup::collective.
  // `reads_from_me(q)`: whether rank q pulled from this rank's buffers (from this rank's
  // own arguments, which stay valid after the exit barrier, unlike the other posts).
  template <class Check, class Copy, class Readers>
  void run(const HostGroup::Post& post, Check&& check, Copy&& copy, Readers&& reads_from_me) {
    const PeerCopyGroup::RankState& s = me();
    detail::peer::ScopedDevice on(s.where.device);
    LLEP_CUDA_CHECK(cudaEventRecord(s.ready, s.where.stream));
    group_->host_.collective(rank_, post, std::forward<Check>(check), [&] {
      copy();
      LLEP_CUDA_CHECK(cudaEventRecord(s.done, s.where.stream));
    });
    for (int q = 0; q < size(); ++q)
      if (q != rank_ && reads_from_me(q))
        LLEP_CUDA_CHECK(cudaStreamWaitEvent(s.where.stream, group_->state(q).done, 0));
  }

  PeerCopyGroup* group_;
  int rank_;
};

inline PeerCopy PeerCopyGroup::rank(int p) { return PeerCopy(*this, p); }

static_assert(check_transport<PeerCopy>());

/// run_ranks for device ranks: body(PeerCopy&) on P threads, each with its rank's device
/// current; same failure release, rethrow and reset rules as run_ranks(HostGroup&, ...).
template <class F>
void run_ranks(PeerCopyGroup& group, F&& body) {
  detail::run_rank_threads(
      group.host(),
      [&group](int p) {
        PeerCopy t = group.rank(p);
        LLEP_CUDA_CHECK(cudaSetDevice(t.device()));
        return t;
      },
      std::forward<F>(body));
}

}  // namespace llep
