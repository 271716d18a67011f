#pragma once
// Mpi: one rank per process over an MPI communicator the engine passes in, host memory
// (DESIGN.md, "Transports"; docs/multiprocess.md). The only header of the library that
// includes <mpi.h>; needs MPI 3.0 (non-blocking collectives), made for Open MPI 4.1.
//
// Every call posts non-blocking MPI work and polls it (MPI_Testall) with a deadline
// (MpiOptions::timeout) while also polling for an abort notice, so no call can hang the
// process: counts by MPI_Iallgather, tokens by MPI_Ialltoallw (the all-to-all-v form whose
// per-peer datatypes carry 64-bit offsets and counts beyond 2^31, see byte_type), weights
// by MPI_Isend/MPI_Irecv that progress while the tokens move (exchange_weights, then
// join_weights).
//
// Failure: abort(why), a failed MPI call, or a deadline that passed sends an abort notice
// to every other rank; a rank polling in any call receives it and throws llep::Error
// naming the rank that aborted and why. The communicator is then dead: later calls throw,
// and the operations the ranks abandoned may still write into the receive buffers of the
// failed call as messages already on their way arrive: keep those alive (for the layer:
// the layer) until the process ends, which is what a failed job should do next.
// A rank that dies without a word (killed, _exit) is noticed by the runtime (Open MPI
// aborts the job) or, failing that, by the others' deadline. The engine decides what its
// process does after the error (tests/mpi: report and exit non-zero, so mpirun does too).
//
// Argument checks are local, as in Nccl: that sizes agree across ranks is the caller's
// contract (the layer derives them from the same all-gathered counts on every rank).
// The C API only: Open MPI's and MPICH's deprecated C++ bindings do not pass -Wextra.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "llep/core/error.hpp"
#include "llep/transport/transport.hpp"
#include "llep/transport/transport_rank.hpp"

namespace llep {

/// Knobs of an Mpi transport.
struct MpiOptions {
  /// How long a rank polls one call (the communicator's dup included) before it aborts the
  /// communicator, notifies the others and throws llep::Error naming the call.
  std::chrono::milliseconds timeout{60'000};
  /// Most bytes one MPI count may describe; larger blocks are described by a derived
  /// datatype of chunks this size. MPI's own limit (INT_MAX) by default; tests lower it to
  /// exercise the large-count path with small buffers. Need not agree across ranks.
  std::size_t max_count = INT_MAX;

  friend bool operator==(const MpiOptions&, const MpiOptions&) = default;
};

/// One rank of an MPI communicator; models llep::Transport over host memory. Move-only;
/// the destructor frees its duplicate communicator (not after an abort) and never throws.
class Mpi : public detail::TransportRank<Mpi, MpiOptions> {
 public:
  static constexpr MemorySpace memory = MemorySpace::host;
  static constexpr std::string_view name = "mpi";

  /// Duplicates `comm` (collective over it; MPI must be initialised) and sets
  /// MPI_ERRORS_RETURN on the duplicate; `comm` itself is not touched.
  explicit Mpi(MPI_Comm comm, MpiOptions options = {}) {
    options_ = options;
    LLEP_EXPECTS(options.timeout.count() > 0, "MpiOptions::timeout = ", options.timeout.count(), " ms must be > 0");
    LLEP_EXPECTS(options.max_count >= 1 && options.max_count <= static_cast<std::size_t>(INT_MAX),
                 "MpiOptions::max_count = ", options.max_count, " must be in [1, INT_MAX]");
    int initialised = 0;
    MPI_Initialized(&initialised);
    LLEP_EXPECTS(initialised != 0, "Mpi: MPI is not initialised; call MPI_Init (or MPI_Init_thread) first");
    LLEP_EXPECTS(comm != MPI_COMM_NULL, "Mpi: the communicator is MPI_COMM_NULL");
    last_call_ = "MPI_Comm_idup";
    MPI_Comm_rank(comm, &rank_);
    MPI_Comm_size(comm, &size_);
    MPI_Request dup = MPI_REQUEST_NULL;
    check(MPI_Comm_idup(comm, &comm_, &dup), "MPI_Comm_idup");
    wait_all({&dup, 1});  // no notice can come yet: the notice receive needs comm_
    check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check(MPI_Irecv(notice_->data(), static_cast<int>(notice_->size()), MPI_CHAR, MPI_ANY_SOURCE, kNoticeTag, comm_,
                    &notice_req_),
          "MPI_Irecv (abort notices)");
    last_call_ = "init";
  }

  Mpi(Mpi&& o) noexcept { swap(o); }
  Mpi& operator=(Mpi&& o) noexcept { return move_assign(o); }
  ~Mpi() { release(); }

  // rank(), size(), options(), aborted(): detail::TransportRank.
  /// The duplicate this transport communicates on.
  [[nodiscard]] MPI_Comm comm() const noexcept { return comm_; }
  [[nodiscard]] const std::string& abort_reason() const noexcept { return reason_; }

  /// dst[q * bytes, (q + 1) * bytes) = rank q's src. In place (src == dst + rank() * bytes)
  /// is allowed.
  void all_gather(const void* src, std::size_t bytes, void* dst) {
    begin("all_gather");
    check_all_gather_args(src, bytes, dst);
    auto* out = static_cast<std::byte*>(dst);
    const void* in = bytes > 0 && src == out + static_cast<std::size_t>(rank_) * bytes ? MPI_IN_PLACE : src;
    if (bytes == 0) {  // nothing moves; distinct bases so MPI sees no aliasing
      in = &empty_[0];
      dst = &empty_[1];
    }
    MPI_Request req = MPI_REQUEST_NULL;
    if (bytes <= options_.max_count) {
      check(MPI_Iallgather(in, static_cast<int>(bytes), MPI_BYTE, dst, static_cast<int>(bytes), MPI_BYTE, comm_, &req),
            "MPI_Iallgather");
    } else {
      // One element of `bytes` bytes whose extent is `bytes`: rank q's lands at q * bytes.
      MPI_Datatype block = byte_type(0, bytes), sized = MPI_DATATYPE_NULL;
      types_.push_back(block);
      check(MPI_Type_create_resized(block, 0, static_cast<MPI_Aint>(bytes), &sized), "MPI_Type_create_resized");
      types_.push_back(sized);
      check(MPI_Type_commit(&sized), "MPI_Type_commit");
      check(MPI_Iallgather(in, 1, sized, dst, 1, sized, comm_, &req), "MPI_Iallgather");
    }
    wait_all({&req, 1});
    free_types(types_);
  }

  /// Bytes [send_offsets[q], + send_sizes[q]) of src go to rank q, landing at its
  /// recv_offsets[rank()]. One MPI_Ialltoallw whose per-peer datatypes hold the offsets
  /// (MPI_Aint) and sizes (chunks of max_count), so neither is limited to int.
  void all_to_all_v(const void* src, std::span<const std::size_t> send_sizes, std::span<const std::size_t> send_offsets,
                    void* dst, std::span<const std::size_t> recv_sizes, std::span<const std::size_t> recv_offsets) {
    begin("all_to_all_v");
    check_all_to_all_v_args(src, send_sizes, send_offsets, dst, recv_sizes, recv_offsets);
    const auto P = static_cast<std::size_t>(size_);
    counts_.assign(2 * P, 0);
    displs_.assign(2 * P, 0);
    peer_types_.assign(2 * P, MPI_BYTE);
    for (std::size_t q = 0; q < P; ++q) {
      if (send_sizes[q] > 0) {
        counts_[q] = 1;
        peer_types_[q] = byte_type(send_offsets[q], send_sizes[q]);
        types_.push_back(peer_types_[q]);
      }
      if (recv_sizes[q] > 0) {
        counts_[P + q] = 1;
        peer_types_[P + q] = byte_type(recv_offsets[q], recv_sizes[q]);
        types_.push_back(peer_types_[P + q]);
      }
    }
    // A side that moves nothing gets a base of its own: with an empty batch the layer's
    // send and receive buffers can share an address, which MPI would take for aliasing.
    bool sends = false, recvs = false;
    for (std::size_t q = 0; q < P; ++q) {
      sends = sends || send_sizes[q] > 0;
      recvs = recvs || recv_sizes[q] > 0;
    }
    MPI_Request req = MPI_REQUEST_NULL;
    check(MPI_Ialltoallw(sends ? src : &empty_[0], counts_.data(), displs_.data(), peer_types_.data(),
                         recvs ? dst : &empty_[1], counts_.data() + P, displs_.data() + P, peer_types_.data() + P,
                         comm_, &req),
          "MPI_Ialltoallw");
    wait_all({&req, 1});
    free_types(types_);
  }

  /// Grouped point-to-point: the k-th send from p to q fills the k-th recv on q from p
  /// (MPI's matching order). Waits for all of it.
  void exchange(std::span<const P2pOp> ops) {
    begin("exchange");
    post(ops, kExchangeTag, exchange_reqs_, types_);
    wait_all(exchange_reqs_);
    exchange_reqs_.clear();
    free_types(types_);
  }

  /// exchange() without the wait: posts the sends and receives and returns. They progress
  /// whenever this rank polls a later call (the token all-to-all); join_weights() waits
  /// for them. Collective, in the same order on every rank. Buffers must stay valid until
  /// join_weights() has returned.
  void exchange_weights(std::span<const P2pOp> ops) {
    begin("exchange_weights");
    post(ops, kWeightsTag, weight_reqs_, weight_types_);
  }

  /// Waits (polling, with the deadline) for every exchange_weights() so far.
  void join_weights() {
    begin("join_weights");
    wait_all(weight_reqs_);
    weight_reqs_.clear();
    free_types(weight_types_);
  }

  /// Operations exchange_weights() posted that join_weights() has not waited for yet
  /// (zero-byte ops are not posted): 0 after every join_weights().
  [[nodiscard]] std::size_t weights_in_flight() const noexcept { return weight_reqs_.size(); }

  void barrier() {
    begin("barrier");
    MPI_Request req = MPI_REQUEST_NULL;
    check(MPI_Ibarrier(comm_, &req), "MPI_Ibarrier");
    wait_all({&req, 1});
  }

  /// Notifies every other rank, which then leaves its current (or next) call with
  /// llep::Error carrying `why`; every later call here throws too. Idempotent: a rank that
  /// was itself released by a notice sends none. Never throws.
  void abort(std::string_view why) noexcept {
    if (aborted_ || comm_ == MPI_COMM_NULL) return;
    try {
      fail_quietly(detail::concat("rank ", rank_, " aborted: ", why));
    } catch (...) {
      aborted_ = true;
    }
  }

 private:
  friend class detail::TransportRank<Mpi, MpiOptions>;  // move_assign: release, swap
  static constexpr int kNoticeTag = 0x11e9;
  static constexpr int kExchangeTag = 1;
  static constexpr int kWeightsTag = 2;

  void swap(Mpi& o) noexcept {
    swap_rank(o);
    std::swap(comm_, o.comm_);
    std::swap(notice_, o.notice_);
    std::swap(notice_req_, o.notice_req_);
    std::swap(outgoing_, o.outgoing_);
    std::swap(notice_sends_, o.notice_sends_);
    std::swap(exchange_reqs_, o.exchange_reqs_);
    std::swap(weight_reqs_, o.weight_reqs_);
    std::swap(types_, o.types_);
    std::swap(weight_types_, o.weight_types_);
    std::swap(counts_, o.counts_);
    std::swap(displs_, o.displs_);
    std::swap(peer_types_, o.peer_types_);
  }

  void begin(const char* call) {
    LLEP_EXPECTS(!aborted_ && comm_ != MPI_COMM_NULL, "Mpi rank ", rank_, ": ", call,
                 aborted_ ? " on an aborted communicator" : " on a moved-from Mpi", reason_.empty() ? "" : ": ",
                 reason_);
    last_call_ = call;
  }

  // A datatype of `bytes` bytes starting `offset` bytes past the buffer: MPI_BYTE blocks of
  // at most max_count, the offset an MPI_Aint. Kept in types_ by the caller until the
  // operation completes (freed by free_types).
  [[nodiscard]] MPI_Datatype byte_type(std::size_t offset, std::size_t bytes) {
    const std::size_t L = options_.max_count;
    const std::size_t chunks = bytes / L, rest = bytes % L;
    LLEP_EXPECTS(chunks <= static_cast<std::size_t>(INT_MAX), "Mpi: a block of ", bytes,
                 " bytes needs more than INT_MAX chunks of MpiOptions::max_count = ", L);
    int lengths[2] = {};
    MPI_Aint displs[2] = {};
    MPI_Datatype parts[2] = {MPI_BYTE, MPI_BYTE};
    int n = 0;
    MPI_Datatype chunk = MPI_DATATYPE_NULL;
    if (chunks > 0) {
      check(MPI_Type_contiguous(static_cast<int>(L), MPI_BYTE, &chunk), "MPI_Type_contiguous");
      lengths[n] = static_cast<int>(chunks);
      displs[n] = static_cast<MPI_Aint>(offset);
      parts[n++] = chunk;
    }
    if (rest > 0) {
      lengths[n] = static_cast<int>(rest);
      displs[n++] = static_cast<MPI_Aint>(offset + chunks * L);
    }
    MPI_Datatype out = MPI_DATATYPE_NULL;
    const int r = MPI_Type_create_struct(n, lengths, displs, parts, &out);
    if (chunk != MPI_DATATYPE_NULL) MPI_Type_free(&chunk);  // the struct keeps what it needs
    check(r, "MPI_Type_create_struct");
    check(MPI_Type_commit(&out), "MPI_Type_commit");
    return out;
  }

  static void free_types(std::vector<MPI_Datatype>& types) noexcept {
    for (MPI_Datatype& t : types) MPI_Type_free(&t);
    types.clear();
  }
  void post(std::span<const P2pOp> ops, int tag, std::vector<MPI_Request>& reqs, std::vector<MPI_Datatype>& types) {
    check_exchange_args(ops);
    for (const P2pOp& op : ops) {
      if (op.bytes == 0) continue;  // skipped on both sides alike
      const MPI_Datatype t = byte_type(0, op.bytes);
      types.push_back(t);
      MPI_Request req = MPI_REQUEST_NULL;
      if (op.kind == P2pOp::Kind::send)
        check(MPI_Isend(op.buffer, 1, t, op.peer, tag, comm_, &req), "MPI_Isend");
      else
        check(MPI_Irecv(op.buffer, 1, t, op.peer, tag, comm_, &req), "MPI_Irecv");
      reqs.push_back(req);
    }
  }

  // Polls `reqs` to completion; between polls, the abort notice and the deadline.
  void wait_all(std::span<MPI_Request> reqs) {
    if (reqs.empty()) return;
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + options_.timeout;
    statuses_.resize(reqs.size());
    for (std::uint64_t polls = 0;; ++polls) {
      int done = 0;
      const int r = MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done, statuses_.data());
      if (r != MPI_SUCCESS) {
        int code = r;
        if (r == MPI_ERR_IN_STATUS)
          for (std::size_t i = 0; i < reqs.size(); ++i)
            if (statuses_[i].MPI_ERROR != MPI_SUCCESS && statuses_[i].MPI_ERROR != MPI_ERR_PENDING) {
              code = statuses_[i].MPI_ERROR;
              break;
            }
        check(code, last_call_);
      }
      if (done != 0) return;
      if (notice_req_ != MPI_REQUEST_NULL) {
        int got = 0;
        MPI_Status st;
        if (MPI_Test(&notice_req_, &got, &st) == MPI_SUCCESS && got != 0) {
          notice_->back() = '\0';
          aborted_ = true;
          reason_ = notice_->data();
          throw Error(detail::concat("llep: Mpi rank ", rank_, " was released from ", last_call_, ": ", reason_));
        }
      }
      if (std::chrono::steady_clock::now() > deadline)
        fail(detail::concat("llep: Mpi rank ", rank_, " waited ", options_.timeout.count(), " ms in ", last_call_,
                            " for the other ranks (MpiOptions::timeout); the communicator was aborted"));
      // Oversubscribed machines: let the peers run.
      if (polls < 1000)
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  void check(int r, const char* call) {
    if (r == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING] = {};
    int len = 0;
    if (MPI_Error_string(r, text, &len) != MPI_SUCCESS) std::strcpy(text, "unknown MPI error");
    fail(detail::concat("llep: Mpi rank ", rank_, ": ", call, " (in ", last_call_, ") failed: ", text,
                        comm_ != MPI_COMM_NULL ? "; the communicator was aborted" : ""));
  }

  [[noreturn]] void fail(std::string what) {
    fail_quietly(what);
    throw Error(what);
  }

  // Marks the communicator aborted and sends the notice to every other rank (eager-sized,
  // so the sends complete locally; pushed for a bounded time, never waited on forever).
  void fail_quietly(const std::string& what) {
    if (aborted_) return;
    aborted_ = true;
    reason_ = what;
    if (comm_ == MPI_COMM_NULL) return;
    std::fill(outgoing_->begin(), outgoing_->end(), '\0');
    std::memcpy(outgoing_->data(), what.data(), std::min(what.size(), outgoing_->size() - 1));
    notice_sends_.clear();
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      MPI_Request req = MPI_REQUEST_NULL;
      if (MPI_Isend(outgoing_->data(), static_cast<int>(outgoing_->size()), MPI_CHAR, q, kNoticeTag, comm_, &req) ==
          MPI_SUCCESS)
        notice_sends_.push_back(req);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    int done = 0;
    while (!notice_sends_.empty() && std::chrono::steady_clock::now() < deadline) {
      if (MPI_Testall(static_cast<int>(notice_sends_.size()), notice_sends_.data(), &done, MPI_STATUSES_IGNORE) !=
              MPI_SUCCESS ||
          done != 0)
        break;
      std::this_thread::yield();
    }
  }

  void release() noexcept {
    if (comm_ == MPI_COMM_NULL) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    // After an abort, requests may still be pending on the duplicate: leave it to the
    // process's exit rather than free a communicator in use.
    // So are the buffers and datatypes those requests may still use.
    if (!aborted_ && finalized == 0) {
      if (notice_req_ != MPI_REQUEST_NULL) {
        MPI_Cancel(&notice_req_);
        MPI_Wait(&notice_req_, MPI_STATUS_IGNORE);
      }
      // Weights posted but never joined: the engine's step failed before; cancel them.
      for (MPI_Request& r : weight_reqs_) {
        MPI_Cancel(&r);
        MPI_Wait(&r, MPI_STATUS_IGNORE);
      }
      free_types(types_);
      free_types(weight_types_);
      MPI_Comm_free(&comm_);
    } else {
      (void)notice_.release();
      (void)outgoing_.release();
    }
    comm_ = MPI_COMM_NULL;
  }

  // rank_, size_, options_, aborted_, reason_, last_call_: detail::TransportRank.
  MPI_Comm comm_ = MPI_COMM_NULL;
  // Buffers MPI writes or reads in the background: on the heap, so a move keeps them in place.
  using Notice = std::array<char, 512>;
  std::unique_ptr<Notice> notice_ = std::make_unique<Notice>();    // received from another rank
  MPI_Request notice_req_ = MPI_REQUEST_NULL;
  std::unique_ptr<Notice> outgoing_ = std::make_unique<Notice>();  // sent by this rank
  std::vector<MPI_Request> notice_sends_;
  std::vector<MPI_Request> exchange_reqs_, weight_reqs_;
  std::vector<MPI_Datatype> types_, weight_types_;  // alive until their operations complete
  std::vector<int> counts_, displs_;
  std::vector<MPI_Datatype> peer_types_;
  std::vector<MPI_Status> statuses_;
  char empty_[2] = {};  // distinct bases for a side of all_to_all_v that moves nothing
};

static_assert(check_transport<Mpi>());

}  // namespace llep
