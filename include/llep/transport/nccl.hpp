#pragma once
// Nccl: one rank per GPU (one process per rank, or one thread per rank) over an NCCL
// communicator (DESIGN.md, "Transports"). The only header of the library that includes
// <nccl.h>; bootstrap (sharing the ncclUniqueId) is in nccl_bootstrap.hpp.
//
// Every call enqueues on the rank's stream and returns: data is complete in that stream's
// order, not on the host. The communicator is non-blocking (config.blocking = 0), so no
// NCCL call can hang the calling thread: where NCCL reports ncclInProgress, and in
// synchronize()/barrier(), the thread polls (ncclCommGetAsyncError, cudaStreamQuery) with
// NcclOptions::timeout; on an error or the timeout it aborts the communicator
// (ncclCommAbort) and throws llep::Error naming the call. A peer that died leaves the
// others' kernels waiting on the device: they notice at their next synchronize()/barrier().
//
// Weights: with NcclOptions::overlap_weights, a second communicator (ncclCommSplit) and a
// second stream carry exchange_weights(), so expert-weight transfers overlap the token
// all-to-all (one communicator serialises its kernels). join_weights() makes stream() wait
// for them.
//
// Adopt: Nccl::adopt takes the engine's communicator and stream as they are; it creates no
// communicator and destroys none (abort() still aborts it: that is what releases the
// peers). docs/multiprocess.md shows the three ways in: adopt, bootstrap by MPI
// (nccl_bootstrap_mpi.hpp), bootstrap by file or environment (nccl_bootstrap.hpp).
//
// Argument checks are local: the checks HostThreads makes on each rank's own arguments.
// That sizes agree across ranks is the caller's contract (the layer derives them from the
// same all-gathered counts on every rank); a mismatch is caught as a timeout at the next
// synchronize()/barrier(), never as a silent hang of the host.
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "llep/core/cuda_check.hpp"
#include "llep/core/error.hpp"
#include "llep/transport/transport.hpp"
#include "llep/transport/transport_rank.hpp"

namespace llep::detail {
[[noreturn]] inline void nccl_fail(ncclResult_t r, const char* call, const char* file, int line) {
  const char* last = ncclGetLastError(nullptr);
  throw Error(concat("llep: NCCL call ", call, " failed: ", ncclGetErrorString(r),
                     last != nullptr && *last != '\0' ? " (" : "", last != nullptr ? last : "",
                     last != nullptr && *last != '\0' ? ")" : "", " at ", file, ":", line));
}
}  // namespace llep::detail

/// Throws llep::Error naming the call, NCCL's error string and last error, file and line
/// unless `call` returns ncclSuccess. (Nccl itself treats ncclInProgress separately.)
#ifndef LLEP_NCCL_CHECK
#define LLEP_NCCL_CHECK(call)                                                             \
  do {                                                                                    \
    const ncclResult_t llep_nccl_result_ = (call);                                        \
    if (llep_nccl_result_ != ncclSuccess)                                                 \
      ::llep::detail::nccl_fail(llep_nccl_result_, #call, __FILE__, __LINE__);            \
  } while (0)
#endif

namespace llep {

/// Knobs of an Nccl transport.
struct NcclOptions {
  /// How long a rank polls for NCCL (init, a call in progress, synchronize, barrier) before
  /// it aborts the communicator and throws llep::Error naming the call.
  std::chrono::milliseconds timeout{60'000};
  /// The rank's CUDA device; -1: the calling thread's current device.
  int device = -1;
  /// A second communicator and stream for exchange_weights(), so weights overlap tokens.
  bool overlap_weights = true;
  /// Debugging: every collective waits (polling, with the timeout) for its completion.
  bool wait_each_call = false;

  friend bool operator==(const NcclOptions&, const NcclOptions&) = default;
};

/// One rank of an NCCL communicator; models llep::Transport over device memory. Move-only;
/// the destructor finalises (or, after a failure, aborts) the communicators and never throws.
class Nccl : public detail::TransportRank<Nccl, NcclOptions> {
 public:
  static constexpr MemorySpace memory = MemorySpace::device;
  static constexpr std::string_view name = "nccl";

  /// Joins the communicator `id` as `rank` of `nranks` (collective over the ranks). Every
  /// call is then ordered on `stream` (the caller's; it must belong to the device).
  [[nodiscard]] static Nccl init(int nranks, int rank, const ncclUniqueId& id, cudaStream_t stream,
                                 NcclOptions options = {}) {
    LLEP_EXPECTS(nranks > 0, "Nccl::init: nranks = ", nranks, " must be > 0");
    LLEP_EXPECTS(rank >= 0 && rank < nranks, "Nccl::init: rank ", rank, " is outside [0, ", nranks, ")");
    LLEP_EXPECTS(options.timeout.count() > 0, "NcclOptions::timeout = ", options.timeout.count(), " ms must be > 0");
    Nccl n;
    n.rank_ = rank;
    n.size_ = nranks;
    n.options_ = options;
    n.stream_ = stream;
    if (options.device < 0)
      LLEP_CUDA_CHECK(cudaGetDevice(&n.device_));
    else
      n.device_ = options.device;
    LLEP_CUDA_CHECK(cudaSetDevice(n.device_));
    n.check_stream_device("Nccl::init");
    n.make_resources();

    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    n.last_call_ = "ncclCommInitRankConfig";
    const ncclResult_t made = ncclCommInitRankConfig(&n.comm_, nranks, id, rank, &config);
    n.issue(made, n.comm_);  // after the call: it sets comm_
    if (options.overlap_weights) {
      LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&n.weights_stream_, cudaStreamNonBlocking));
      n.owns_weights_stream_ = true;
      ncclConfig_t split = NCCL_CONFIG_INITIALIZER;
      split.blocking = 0;
      n.last_call_ = "ncclCommSplit";
      const ncclResult_t split_made = ncclCommSplit(n.comm_, 0, rank, &n.weights_comm_, &split);
      n.issue(split_made, n.weights_comm_);
      n.issue(ncclInProgress, n.comm_);  // the parent is busy until the split completes too
    } else {
      n.weights_stream_ = stream;
      n.weights_comm_ = n.comm_;
    }
    n.last_call_ = "init";
    return n;
  }

  /// Uses the engine's communicator `comm` and its `stream` (which must belong to the
  /// communicator's device) without creating a communicator: rank, size and device come
  /// from `comm`. Weights overlap tokens only if the engine also passes `weights_comm` (a
  /// second communicator over the same ranks, e.g. its ncclCommSplit); Nccl then orders
  /// them on a stream of its own. NcclOptions::overlap_weights and ::device are ignored.
  /// Neither communicator is finalised or destroyed by Nccl; after abort() (or a failure,
  /// which aborts) both are aborted and the engine must not use them again. Local: no
  /// NCCL collective runs.
  [[nodiscard]] static Nccl adopt(ncclComm_t comm, cudaStream_t stream, NcclOptions options = {},
                                  ncclComm_t weights_comm = nullptr) {
    LLEP_EXPECTS(comm != nullptr, "Nccl::adopt: the communicator is null");
    LLEP_EXPECTS(weights_comm != comm, "Nccl::adopt: weights_comm must be a second communicator, not comm itself");
    LLEP_EXPECTS(options.timeout.count() > 0, "NcclOptions::timeout = ", options.timeout.count(), " ms must be > 0");
    Nccl n;
    n.options_ = options;
    n.owns_comms_ = false;
    n.last_call_ = "adopt";
    LLEP_NCCL_CHECK(ncclCommUserRank(comm, &n.rank_));
    LLEP_NCCL_CHECK(ncclCommCount(comm, &n.size_));
    LLEP_NCCL_CHECK(ncclCommCuDevice(comm, &n.device_));
    n.options_.device = n.device_;
    n.options_.overlap_weights = weights_comm != nullptr;
    if (weights_comm != nullptr) {
      int wr = -1, ws = -1, wd = -1;
      LLEP_NCCL_CHECK(ncclCommUserRank(weights_comm, &wr));
      LLEP_NCCL_CHECK(ncclCommCount(weights_comm, &ws));
      LLEP_NCCL_CHECK(ncclCommCuDevice(weights_comm, &wd));
      LLEP_EXPECTS(wr == n.rank_ && ws == n.size_ && wd == n.device_, "Nccl::adopt: weights_comm is rank ", wr, " of ",
                   ws, " on device ", wd, " but comm is rank ", n.rank_, " of ", n.size_, " on device ", n.device_);
    }
    LLEP_CUDA_CHECK(cudaSetDevice(n.device_));
    n.stream_ = stream;
    n.check_stream_device("Nccl::adopt");
    n.comm_ = comm;
    n.make_resources();
    if (weights_comm != nullptr) {
      LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&n.weights_stream_, cudaStreamNonBlocking));
      n.owns_weights_stream_ = true;
      n.weights_comm_ = weights_comm;
    } else {
      n.weights_stream_ = stream;
      n.weights_comm_ = comm;
    }
    n.last_call_ = "init";
    return n;
  }

  /// Whether the communicators are Nccl's (init) or the engine's (adopt).
  [[nodiscard]] bool owns_comms() const noexcept { return owns_comms_; }

  Nccl(Nccl&& o) noexcept { swap(o); }
  Nccl& operator=(Nccl&& o) noexcept { return move_assign(o); }
  ~Nccl() { release(); }

  // rank(), size(), options(), aborted(): detail::TransportRank.
  [[nodiscard]] int device() const noexcept { return device_; }
  [[nodiscard]] cudaStream_t stream() const noexcept { return stream_; }
  /// Where exchange_weights() runs; stream() when overlap_weights is off.
  [[nodiscard]] cudaStream_t weights_stream() const noexcept { return weights_stream_; }
  [[nodiscard]] ncclComm_t comm() const noexcept { return comm_; }

  /// dst[q * bytes, (q + 1) * bytes) = rank q's src (ncclAllGather of bytes). In place
  /// (src == dst + rank() * bytes) is allowed.
  void all_gather(const void* src, std::size_t bytes, void* dst) {
    begin("all_gather");
    check_all_gather_args(src, bytes, dst);
    if (bytes > 0) issue(ncclAllGather(src, dst, bytes, ncclUint8, comm_, stream_), comm_);
    end();
  }

  /// Bytes [send_offsets[q], + send_sizes[q]) of src go to rank q, landing at its
  /// recv_offsets[rank()] (grouped ncclSend/ncclRecv; the block to itself is a device copy).
  void all_to_all_v(const void* src, std::span<const std::size_t> send_sizes, std::span<const std::size_t> send_offsets,
                    void* dst, std::span<const std::size_t> recv_sizes, std::span<const std::size_t> recv_offsets) {
    begin("all_to_all_v");
    check_all_to_all_v_args(src, send_sizes, send_offsets, dst, recv_sizes, recv_offsets);
    const auto me = static_cast<std::size_t>(rank_);
    LLEP_EXPECTS(send_sizes[me] == recv_sizes[me], "all_to_all_v: rank ", rank_, " sends ", send_sizes[me],
                 " bytes to itself but expects ", recv_sizes[me]);
    if (send_sizes[me] > 0)
      LLEP_CUDA_CHECK(cudaMemcpyAsync(static_cast<std::byte*>(dst) + recv_offsets[me],
                                      static_cast<const std::byte*>(src) + send_offsets[me], send_sizes[me],
                                      cudaMemcpyDeviceToDevice, stream_));
    grouped(comm_, [&](ncclResult_t& r) {
      for (int q = 0; q < size_ && r == ncclSuccess; ++q) {
        const auto i = static_cast<std::size_t>(q);
        if (q == rank_) continue;
        if (send_sizes[i] > 0)
          r = ncclSend(static_cast<const std::byte*>(src) + send_offsets[i], send_sizes[i], ncclUint8, q, comm_,
                       stream_);
        if (r == ncclSuccess && recv_sizes[i] > 0)
          r = ncclRecv(static_cast<std::byte*>(dst) + recv_offsets[i], recv_sizes[i], ncclUint8, q, comm_, stream_);
      }
    });
    end();
  }

  /// Grouped point-to-point on stream(): the k-th send from p to q fills the k-th recv on
  /// q from p (NCCL's matching order; sends to itself are device copies).
  void exchange(std::span<const P2pOp> ops) {
    begin("exchange");
    exchange_on(ops, comm_, stream_);
    end();
  }

  /// exchange() on weights_stream() and the weights communicator, after everything already
  /// enqueued on stream(); returns without ordering stream() after it. Collective, in the
  /// same order on every rank. Buffers must stay valid until join_weights() has run.
  void exchange_weights(std::span<const P2pOp> ops) {
    begin("exchange_weights");
    if (weights_stream_ != stream_) {
      LLEP_CUDA_CHECK(cudaEventRecord(weights_ready_, stream_));
      LLEP_CUDA_CHECK(cudaStreamWaitEvent(weights_stream_, weights_ready_, 0));
    }
    exchange_on(ops, weights_comm_, weights_stream_);
    if (weights_stream_ != stream_) LLEP_CUDA_CHECK(cudaEventRecord(weights_done_, weights_stream_));
    end();
  }

  /// Makes stream() wait for the exchange_weights() calls made so far (no host wait).
  void join_weights() {
    begin("join_weights");
    if (weights_stream_ != stream_) LLEP_CUDA_CHECK(cudaStreamWaitEvent(stream_, weights_done_, 0));
  }

  /// A one-int all-reduce, then the thread waits (polling, with the timeout) for stream():
  /// every rank's work enqueued before it is complete when any rank returns.
  void barrier() {
    begin("barrier");
    issue(ncclAllReduce(scratch_, scratch_, 1, ncclInt32, ncclSum, comm_, stream_), comm_);
    synchronize();
  }

  /// Waits for stream() and weights_stream() like cudaStreamSynchronize, but polls: an NCCL
  /// error or the timeout aborts the communicator and throws llep::Error naming the last
  /// call enqueued.
  void synchronize() {
    alive();
    LLEP_CUDA_CHECK(cudaSetDevice(device_));
    const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
    for (cudaStream_t s : {stream_, weights_stream_}) {
      for (;;) {
        const cudaError_t e = cudaStreamQuery(s);
        if (e == cudaSuccess) break;
        if (e != cudaErrorNotReady) {
          abort_comms();
          LLEP_CUDA_CHECK(e);
        }
        check_async(comm_);
        if (weights_comm_ != comm_) check_async(weights_comm_);
        if (std::chrono::steady_clock::now() > deadline) timed_out("waiting for its stream");
        std::this_thread::yield();
      }
    }
  }

  /// Aborts the communicators (ncclCommAbort): this rank's NCCL work stops, and every later
  /// call throws llep::Error. Peers notice at their next synchronize()/barrier() (an NCCL
  /// error, or the timeout) unless they abort too.
  void abort(std::string_view why) {
    if (reason_.empty()) reason_ = detail::concat("rank ", rank_, " aborted: ", why);
    abort_comms();
  }

 private:
  friend class detail::TransportRank<Nccl, NcclOptions>;  // move_assign: release, swap
  Nccl() = default;

  void check_stream_device([[maybe_unused]] const char* who) const {
#if CUDART_VERSION >= 12080
    if (stream_ != nullptr) {
      int sd = -1;
      LLEP_CUDA_CHECK(cudaStreamGetDevice(stream_, &sd));
      LLEP_EXPECTS(sd == device_, who, ": rank ", rank_, " runs on device ", device_,
                   " but its stream belongs to device ", sd);
    }
#endif
  }

  // What Nccl owns whichever way it got its communicator: the barrier's int, two events.
  void make_resources() {
    LLEP_CUDA_CHECK(cudaMalloc(&scratch_, sizeof(int)));
    LLEP_CUDA_CHECK(cudaMemset(scratch_, 0, sizeof(int)));
    LLEP_CUDA_CHECK(cudaEventCreateWithFlags(&weights_ready_, cudaEventDisableTiming));
    LLEP_CUDA_CHECK(cudaEventCreateWithFlags(&weights_done_, cudaEventDisableTiming));
  }

  void swap(Nccl& o) noexcept {
    swap_rank(o);
    std::swap(owns_comms_, o.owns_comms_);
    std::swap(device_, o.device_);
    std::swap(comm_, o.comm_);
    std::swap(weights_comm_, o.weights_comm_);
    std::swap(stream_, o.stream_);
    std::swap(weights_stream_, o.weights_stream_);
    std::swap(owns_weights_stream_, o.owns_weights_stream_);
    std::swap(weights_ready_, o.weights_ready_);
    std::swap(weights_done_, o.weights_done_);
    std::swap(scratch_, o.scratch_);
  }

  void alive() const {
    LLEP_EXPECTS(!aborted_ && comm_ != nullptr, "Nccl rank ", rank_, ": ", last_call_,
                 aborted_ ? " found the communicator aborted" : " on a moved-from or uninitialised Nccl",
                 reason_.empty() ? "" : ": ", reason_);
  }
  void begin(const char* call) {
    alive();
    last_call_ = call;
    LLEP_CUDA_CHECK(cudaSetDevice(device_));
  }
  void end() {
    if (options_.wait_each_call) synchronize();
  }

  [[noreturn]] void failed(const std::string& what) {
    if (reason_.empty()) reason_ = what;
    abort_comms();
    throw Error(what);
  }
  [[noreturn]] void timed_out(const char* where) {
    failed(detail::concat("llep: Nccl rank ", rank_, " timed out after ", options_.timeout.count(), " ms in ",
                          last_call_, " (", where, "; NcclOptions::timeout); the communicator was aborted"));
  }

  // Raises the communicator's asynchronous error, if any.
  void check_async(ncclComm_t comm) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm, &state);
    if (r != ncclSuccess) state = r;
    if (state != ncclSuccess && state != ncclInProgress)
      failed(detail::concat("llep: Nccl rank ", rank_, ": ", last_call_, " failed: ", ncclGetErrorString(state), " (",
                            ncclGetLastError(comm), "); the communicator was aborted"));
  }

  // A non-blocking NCCL call's result: errors abort and throw; otherwise poll until the
  // communicator leaves ncclInProgress (NCCL forbids other calls on `comm` before). Polled
  // even after ncclSuccess: init and split can return it while still in progress.
  void issue(ncclResult_t r, ncclComm_t comm) {
    if (r != ncclSuccess && r != ncclInProgress) {
      if (comm != nullptr) {
        failed(detail::concat("llep: Nccl rank ", rank_, ": ", last_call_, " failed: ", ncclGetErrorString(r), " (",
                              ncclGetLastError(comm), "); the communicator was aborted"));
      }
      failed(detail::concat("llep: Nccl rank ", rank_, ": ", last_call_, " failed: ", ncclGetErrorString(r), " (",
                            ncclGetLastError(nullptr), ")"));
    }
    if (comm == nullptr) return;
    const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
    for (;;) {
      ncclResult_t state = ncclInProgress;
      const ncclResult_t q = ncclCommGetAsyncError(comm, &state);
      if (q != ncclSuccess) state = q;
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) check_async(comm);  // throws
      if (std::chrono::steady_clock::now() > deadline) timed_out("ncclInProgress");
      std::this_thread::yield();
    }
  }

  // ncclGroupStart; body(r) issues calls while r == ncclSuccess; ncclGroupEnd always runs
  // (an open group would poison the thread's later NCCL calls); then the first error.
  template <class Body>
  void grouped(ncclComm_t comm, Body&& body) {
    LLEP_NCCL_CHECK(ncclGroupStart());
    ncclResult_t r = ncclSuccess;
    body(r);
    const ncclResult_t closed = ncclGroupEnd();
    issue(r != ncclSuccess ? r : closed, comm);
  }

  void exchange_on(std::span<const P2pOp> ops, ncclComm_t comm, cudaStream_t stream) {
    check_exchange_args(ops);
    // Sends to itself: the k-th send to self fills the k-th recv from self.
    std::size_t next_send = 0;
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const P2pOp& recv = ops[i];
      if (recv.kind != P2pOp::Kind::recv || recv.peer != rank_) continue;
      while (next_send < ops.size() && !(ops[next_send].kind == P2pOp::Kind::send && ops[next_send].peer == rank_))
        ++next_send;
      LLEP_EXPECTS(next_send < ops.size(), "exchange: rank ", rank_, " posts more recvs from itself than sends to itself");
      const P2pOp& send = ops[next_send++];
      LLEP_EXPECTS(send.bytes == recv.bytes, "exchange: rank ", rank_, " sends ", send.bytes,
                   " bytes to itself but the matching recv (op #", i, ") has ", recv.bytes, " bytes");
      if (recv.bytes > 0)
        LLEP_CUDA_CHECK(cudaMemcpyAsync(recv.buffer, send.buffer, recv.bytes, cudaMemcpyDeviceToDevice, stream));
    }
    for (std::size_t i = next_send; i < ops.size(); ++i)
      LLEP_EXPECTS(!(ops[i].kind == P2pOp::Kind::send && ops[i].peer == rank_), "exchange: rank ", rank_,
                   " posts more sends to itself than recvs from itself");
    grouped(comm, [&](ncclResult_t& r) {
      for (std::size_t i = 0; i < ops.size() && r == ncclSuccess; ++i) {
        const P2pOp& op = ops[i];
        if (op.peer == rank_ || op.bytes == 0) continue;  // zero bytes: skipped on both sides alike
        r = op.kind == P2pOp::Kind::send ? ncclSend(op.buffer, op.bytes, ncclUint8, op.peer, comm, stream)
                                         : ncclRecv(op.buffer, op.bytes, ncclUint8, op.peer, comm, stream);
      }
    });
  }

  void abort_comms() noexcept {
    aborted_ = true;
    if (weights_comm_ != nullptr && weights_comm_ != comm_) (void)ncclCommAbort(weights_comm_);
    if (comm_ != nullptr) (void)ncclCommAbort(comm_);
    weights_comm_ = comm_ = nullptr;
  }

  // Finalize (flush) then destroy; abort instead when that fails or exceeds the timeout.
  void close(ncclComm_t comm) noexcept {
    ncclResult_t r = ncclCommFinalize(comm);
    const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
    while (r == ncclInProgress && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
      if (ncclCommGetAsyncError(comm, &r) != ncclSuccess) r = ncclInternalError;
    }
    if (r == ncclSuccess)
      (void)ncclCommDestroy(comm);
    else
      (void)ncclCommAbort(comm);
  }

  void release() noexcept {
    if (device_ >= 0) (void)cudaSetDevice(device_);
    if (!owns_comms_) {
      // The engine's communicators: left as they are (abort_comms already aborted them).
    } else if (!aborted_) {
      if (weights_comm_ != nullptr && weights_comm_ != comm_) close(weights_comm_);
      if (comm_ != nullptr) close(comm_);
    } else {
      abort_comms();
    }
    weights_comm_ = comm_ = nullptr;
    if (owns_weights_stream_ && weights_stream_ != nullptr) (void)cudaStreamDestroy(weights_stream_);
    if (weights_ready_ != nullptr) (void)cudaEventDestroy(weights_ready_);
    if (weights_done_ != nullptr) (void)cudaEventDestroy(weights_done_);
    if (scratch_ != nullptr) (void)cudaFree(scratch_);
    weights_stream_ = nullptr;
    owns_weights_stream_ = false;
    weights_ready_ = weights_done_ = nullptr;
    scratch_ = nullptr;
  }

  // rank_, size_, options_, aborted_, reason_, last_call_: detail::TransportRank.
  bool owns_comms_ = true;  // false: adopted from the engine, never finalised or destroyed
  int device_ = -1;
  ncclComm_t comm_ = nullptr;
  ncclComm_t weights_comm_ = nullptr;  // == comm_ without overlap_weights
  cudaStream_t stream_ = nullptr;
  cudaStream_t weights_stream_ = nullptr;
  bool owns_weights_stream_ = false;
  cudaEvent_t weights_ready_ = nullptr;  // stream() -> weights_stream()
  cudaEvent_t weights_done_ = nullptr;   // weights_stream() -> stream()
  void* scratch_ = nullptr;              // barrier's one int
};

static_assert(check_transport<Nccl>());

}  // namespace llep
