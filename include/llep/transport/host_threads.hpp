#pragma once
// HostThreads: P ranks as P threads of one process sharing a HostGroup (DESIGN.md,
// "Transports"). It is the test bed of every multi-rank path on machines without a GPU.
//
// Every collective runs the same protocol: each rank posts its pointers into its slot,
// all ranks meet (entry barrier), every rank checks ALL ranks' posts and copies what it
// needs out of the others' buffers (no lock held), all ranks meet again (exit barrier),
// and only then does anyone return or throw. Because every rank checks the same posts in
// the same order, a mismatch throws the same llep::Error on every rank; because nobody
// leaves before the exit barrier, nobody frees a buffer another rank still reads.
//
// Failure release: the entry barrier waits with a deadline (HostGroupOptions::timeout)
// and wakes on HostGroup::abort; run_ranks aborts the group when a rank's body throws or
// returns while others wait. The exit barrier cannot be aborted: every rank that passed
// the entry barrier is inside the same copy loop and is bound to arrive.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "llep/core/error.hpp"
#include "llep/transport/transport.hpp"

namespace llep {

/// Knobs of a HostGroup.
struct HostGroupOptions {
  /// How long a rank waits at a collective for the others before it gives up, aborts the
  /// group and throws llep::Error naming the ranks that never arrived.
  std::chrono::milliseconds timeout{60'000};

  friend bool operator==(const HostGroupOptions&, const HostGroupOptions&) = default;
};

/// Thrown by a rank that was released from (or refused entry to) a collective because the
/// group was aborted elsewhere. run_ranks prefers any other exception when it rethrows, so
/// the caller sees the original failure rather than its echo.
class GroupAborted : public Error {
 public:
  using Error::Error;
};

class HostThreads;
class HostGroup;
class PeerCopy;  // device transport built on this rendezvous (transport/peer_copy.cuh)

namespace detail {
template <class MakeHandle, class F>
void run_rank_threads(HostGroup& group, MakeHandle&& make_handle, F&& body);

/// Problems with one rank's all_to_all_v arguments that need no other rank's (empty if
/// none); shared by every transport so they all refuse the same inputs the same way.
[[nodiscard]] inline std::string all_to_all_v_args_problem(int rank, int P, const void* src, const void* dst,
                                                           std::span<const std::size_t> send_sizes,
                                                           std::span<const std::size_t> send_offsets,
                                                           std::span<const std::size_t> recv_sizes,
                                                           std::span<const std::size_t> recv_offsets) {
  const std::pair<std::span<const std::size_t>, std::string_view> arrays[] = {{send_sizes, "send_sizes"},
                                                                              {send_offsets, "send_offsets"},
                                                                              {recv_sizes, "recv_sizes"},
                                                                              {recv_offsets, "recv_offsets"}};
  for (const auto& [a, name] : arrays)
    if (a.size() != static_cast<std::size_t>(P))
      return concat("llep: all_to_all_v: rank ", rank, " passed ", name, " with ", a.size(), " entries; P = ", P);
  for (std::size_t r = 0; r < static_cast<std::size_t>(P); ++r) {
    if (send_offsets[r] > std::numeric_limits<std::size_t>::max() - send_sizes[r] ||
        recv_offsets[r] > std::numeric_limits<std::size_t>::max() - recv_sizes[r])
      return concat("llep: all_to_all_v: rank ", rank, " has an offset + size that overflows for peer ", r);
    if ((send_sizes[r] > 0 && src == nullptr) || (recv_sizes[r] > 0 && dst == nullptr))
      return concat("llep: all_to_all_v: rank ", rank, " passed a null ",
                    send_sizes[r] > 0 && src == nullptr ? "src" : "dst", " but exchanges ",
                    std::max(send_sizes[r], recv_sizes[r]), " bytes with rank ", r);
  }
  return {};
}

/// Problems with one rank's exchange ops that need no other rank's (empty if none).
[[nodiscard]] inline std::string exchange_args_problem(int rank, int P, std::span<const P2pOp> ops) {
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const P2pOp& op = ops[i];
    if (op.kind != P2pOp::Kind::send && op.kind != P2pOp::Kind::recv)
      return concat("llep: exchange: op #", i, " of rank ", rank, " has an unknown kind");
    if (op.peer < 0 || op.peer >= P)
      return concat("llep: exchange: op #", i, " of rank ", rank, " names peer ", op.peer, " outside [0, ", P, ")");
    if (op.bytes > 0 && op.buffer == nullptr)
      return concat("llep: exchange: op #", i, " of rank ", rank, " has a null buffer for ", op.bytes, " bytes");
  }
  return {};
}
}  // namespace detail

/// The communicator shared by the P rank threads. Not copyable or movable: handles point
/// into it.
class HostGroup {
 public:
  explicit HostGroup(int ranks, HostGroupOptions options = {}) : size_(ranks), options_(options) {
    LLEP_EXPECTS(ranks > 0, "HostGroup ranks P = ", ranks, " must be > 0");
    LLEP_EXPECTS(options.timeout.count() > 0, "HostGroupOptions::timeout = ", options.timeout.count(),
                 " ms must be > 0");
    slots_.resize(static_cast<std::size_t>(ranks));
    for (Slot& s : slots_) s.cursor.resize(static_cast<std::size_t>(ranks));
  }
  HostGroup(const HostGroup&) = delete;
  HostGroup& operator=(const HostGroup&) = delete;

  [[nodiscard]] int size() const noexcept { return size_; }
  [[nodiscard]] const HostGroupOptions& options() const noexcept { return options_; }

  /// The handle of rank p; give each rank thread its own.
  [[nodiscard]] HostThreads rank(int p);

  /// Releases every rank waiting in a collective, and refuses every later one, with
  /// llep::GroupAborted carrying `why`. Thread-safe; the first reason is kept.
  void abort(std::string_view why) {
    std::lock_guard lock(mutex_);
    abort_locked(std::string(why));
  }
  [[nodiscard]] bool aborted() const {
    std::lock_guard lock(mutex_);
    return aborted_;
  }
  [[nodiscard]] std::string abort_reason() const {
    std::lock_guard lock(mutex_);
    return reason_;
  }

  /// Recovery after a failed step, without leaving the rank threads: every rank calls it
  /// once it has left the step (its collective threw); the call waits until all P ranks
  /// have called it, then clears the abort and returns true. Returns false, leaving the
  /// group aborted, when a rank's body returned or HostGroupOptions::timeout passes first
  /// (a rank that never saw the failure). Never throws.
  bool recover(int rank) noexcept {
    try {
      std::unique_lock lock(mutex_);
      (void)rank;
      const std::uint64_t gen = recover_generation_;
      if (++recovering_ == size_) {
        recovering_ = 0;
        ++recover_generation_;
        aborted_ = false;
        reason_.clear();
        arrived_ = 0;  // ranks released from an entry barrier left their count behind
        for (Slot& sl : slots_) sl.arrivals = 0;
        cv_.notify_all();
        return true;
      }
      const auto departed = [&] {
        return std::any_of(slots_.begin(), slots_.end(), [](const Slot& sl) { return sl.departed; });
      };
      const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
      cv_.wait_until(lock, deadline, [&] { return recover_generation_ != gen || departed(); });
      if (recover_generation_ != gen) return true;
      --recovering_;
      return false;
    } catch (...) {
      return false;
    }
  }

  /// Makes an aborted group usable again. Only legal while no rank is inside a collective
  /// (e.g. after the rank threads were joined); run_ranks calls it before it starts.
  void reset() {
    std::lock_guard lock(mutex_);
    LLEP_EXPECTS(inside_ == 0, "HostGroup::reset() called while ", inside_,
                 " rank(s) are inside a collective; join the rank threads first");
    reset_locked();
  }

 private:
  friend class HostThreads;
  friend class PeerCopy;  // reuses collective() and the checks, with device copies
  template <class MakeHandle, class F>
  friend void detail::run_rank_threads(HostGroup& group, MakeHandle&& make_handle, F&& body);

  enum class Op { barrier, all_gather, all_to_all_v, exchange };
  static constexpr std::string_view op_name(Op op) noexcept {
    switch (op) {
      case Op::barrier:
        return "barrier";
      case Op::all_gather:
        return "all_gather";
      case Op::all_to_all_v:
        return "all_to_all_v";
      case Op::exchange:
        return "exchange";
    }
    return "?";
  }

  // What a rank hands to a collective; read by every rank between the two barriers.
  struct Post {
    Op op = Op::barrier;
    const void* src = nullptr;
    void* dst = nullptr;
    std::size_t bytes = 0;
    std::span<const std::size_t> send_sizes{}, send_offsets{}, recv_sizes{}, recv_offsets{};
    std::span<const P2pOp> ops{};
  };
  struct Slot {
    Post post;
    std::uint64_t arrivals = 0;       // barriers this rank reached since the last reset
    Op current = Op::barrier;         // the collective it is in (for messages)
    bool departed = false;            // its run_ranks body returned
    std::vector<std::size_t> cursor;  // exchange matching scratch, owned by this rank
  };

  void abort_locked(std::string why) {
    if (!aborted_) {
      aborted_ = true;
      reason_ = std::move(why);
    }
    cv_.notify_all();
  }

  void reset_locked() {
    aborted_ = false;
    reason_.clear();
    arrived_ = 0;
    for (Slot& s : slots_) {
      s.arrivals = 0;
      s.departed = false;
    }
    recovering_ = 0;
  }

  [[nodiscard]] std::string lagging_ranks_locked(int rank) const {
    std::string out;
    for (int q = 0; q < size_; ++q)
      if (slots_[static_cast<std::size_t>(q)].arrivals < slots_[static_cast<std::size_t>(rank)].arrivals)
        out += (out.empty() ? "" : ", ") + std::to_string(q);
    return out;
  }

  // Entry barrier: abortable, with a deadline. Exit barrier: neither (see the top).
  void meet(int rank, Op op, bool entry) {
    std::unique_lock lock(mutex_);
    Slot& me = slots_[static_cast<std::size_t>(rank)];
    if (entry) {
      if (aborted_)
        throw GroupAborted(
            detail::concat("llep: rank ", rank, " cannot enter ", op_name(op), ": the group was aborted: ", reason_));
      for (int q = 0; q < size_; ++q)
        if (slots_[static_cast<std::size_t>(q)].departed) {
          std::string why = detail::concat("llep: rank ", rank, " entered ", op_name(op), " but rank ", q,
                                           " already returned from its run_ranks body");
          abort_locked(why);
          throw Error(why);
        }
      me.current = op;
      ++inside_;
    }
    const std::uint64_t gen = generation_;
    ++me.arrivals;
    if (++arrived_ == size_) {
      arrived_ = 0;
      ++generation_;
      if (!entry) --inside_;
      cv_.notify_all();
      return;
    }
    if (!entry) {
      cv_.wait(lock, [&] { return generation_ != gen; });
      --inside_;
      return;
    }
    const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
    const bool woke = cv_.wait_until(lock, deadline, [&] { return generation_ != gen || aborted_; });
    if (generation_ != gen) return;
    --inside_;
    if (woke)
      throw GroupAborted(detail::concat("llep: rank ", rank, " was released from ", op_name(op),
                                        ": the group was aborted: ", reason_));
    std::string why =
        detail::concat("llep: rank ", rank, " waited ", options_.timeout.count(), " ms in ", op_name(op),
                       " for rank(s) ", lagging_ranks_locked(rank), " that never arrived (HostGroupOptions::timeout)");
    abort_locked(why);
    throw Error(why);
  }

  void depart(int rank) {
    std::lock_guard lock(mutex_);
    slots_[static_cast<std::size_t>(rank)].departed = true;
    cv_.notify_all();  // a rank waiting in recover() gives up on a departed one
    if (arrived_ > 0 && !aborted_) {
      std::string waiting;
      for (int q = 0; q < size_; ++q) {
        const Slot& s = slots_[static_cast<std::size_t>(q)];
        if (s.arrivals > slots_[static_cast<std::size_t>(rank)].arrivals)
          waiting += detail::concat(waiting.empty() ? "" : ", ", "rank ", q, " (", op_name(s.current), ")");
      }
      abort_locked(detail::concat("rank ", rank, " returned from its run_ranks body while ", waiting,
                                  " waits for it in a collective"));
    }
  }

  void begin_run() {
    std::lock_guard lock(mutex_);
    LLEP_EXPECTS(!running_, "run_ranks: this HostGroup is already running ranks");
    LLEP_EXPECTS(inside_ == 0, "run_ranks: ", inside_, " rank(s) of this HostGroup are inside a collective");
    running_ = true;
    reset_locked();
  }
  void end_run() noexcept {
    std::lock_guard lock(mutex_);
    running_ = false;
    for (Slot& s : slots_) s.departed = false;  // keep aborted_ for inspection
  }

  // The collective protocol. `check` returns the first problem over all ranks' posts (the
  // same on every rank) or an empty string; `copy` runs only when there is none.
  template <class Check, class Copy>
  void collective(int rank, const Post& post, Check&& check, Copy&& copy) {
    slots_[static_cast<std::size_t>(rank)].post = post;  // published by the barrier's mutex
    meet(rank, post.op, true);
    std::string problem;
    std::exception_ptr failure;
    try {
      problem = check_ops();
      if (problem.empty()) problem = check();
      if (problem.empty()) copy();
    } catch (...) {
      failure = std::current_exception();
    }
    meet(rank, post.op, false);
    if (failure) std::rethrow_exception(failure);
    if (!problem.empty()) throw Error(problem);
  }

  [[nodiscard]] const Post& post(int q) const noexcept { return slots_[static_cast<std::size_t>(q)].post; }

  [[nodiscard]] std::string check_ops() const {
    for (int q = 1; q < size_; ++q)
      if (post(q).op != post(0).op)
        return detail::concat("llep: collective mismatch: rank ", q, " called ", op_name(post(q).op),
                              " but rank 0 called ", op_name(post(0).op),
                              "; every rank must make the same calls in the same order");
    return {};
  }

  [[nodiscard]] std::string check_all_gather() const {
    const std::size_t bytes = post(0).bytes;
    for (int q = 0; q < size_; ++q) {
      const Post& p = post(q);
      if (p.bytes != bytes)
        return detail::concat("llep: all_gather: rank ", q, " contributes ", p.bytes, " bytes but rank 0 contributes ",
                              bytes, " bytes");
      if (bytes > 0 && (p.src == nullptr || p.dst == nullptr))
        return detail::concat("llep: all_gather: rank ", q, " passed a null ", p.src ? "dst" : "src", " for ", bytes,
                              " bytes");
    }
    return {};
  }

  [[nodiscard]] std::string check_all_to_all_v() const {
    const auto P = static_cast<std::size_t>(size_);
    for (int q = 0; q < size_; ++q) {
      const Post& p = post(q);
      std::string problem = detail::all_to_all_v_args_problem(q, size_, p.src, p.dst, p.send_sizes, p.send_offsets,
                                                              p.recv_sizes, p.recv_offsets);
      if (!problem.empty()) return problem;
    }
    for (std::size_t s = 0; s < P; ++s)
      for (std::size_t d = 0; d < P; ++d) {
        const std::size_t sent = post(static_cast<int>(s)).send_sizes[d];
        const std::size_t expected = post(static_cast<int>(d)).recv_sizes[s];
        if (sent != expected)
          return detail::concat("llep: all_to_all_v: rank ", s, " sends ", sent, " bytes to rank ", d, " but rank ", d,
                                " expects ", expected, " bytes from rank ", s);
      }
    return {};
  }

  // Sends from s to d match recvs on d from s in posting order. Every rank walks every
  // pair: O(P * total ops), fine for a test-bed transport.
  [[nodiscard]] std::string check_exchange() const {
    for (int q = 0; q < size_; ++q) {
      std::string problem = detail::exchange_args_problem(q, size_, post(q).ops);
      if (!problem.empty()) return problem;
    }
    auto next = [](std::span<const P2pOp> ops, std::size_t i, P2pOp::Kind kind, int peer) {
      while (i < ops.size() && !(ops[i].kind == kind && ops[i].peer == peer)) ++i;
      return i;
    };
    for (int s = 0; s < size_; ++s)
      for (int d = 0; d < size_; ++d) {
        const auto sends = post(s).ops, recvs = post(d).ops;
        std::size_t i = next(sends, 0, P2pOp::Kind::send, d), j = next(recvs, 0, P2pOp::Kind::recv, s);
        std::size_t k = 0;
        for (; i < sends.size() && j < recvs.size(); ++k) {
          if (sends[i].bytes != recvs[j].bytes)
            return detail::concat("llep: exchange: send #", k, " from rank ", s, " to rank ", d, " has ",
                                  sends[i].bytes, " bytes but the matching recv on rank ", d, " has ", recvs[j].bytes,
                                  " bytes");
          i = next(sends, i + 1, P2pOp::Kind::send, d);
          j = next(recvs, j + 1, P2pOp::Kind::recv, s);
        }
        if (i < sends.size() || j < recvs.size()) {
          std::size_t ns = 0, nr = 0;
          for (const P2pOp& op : sends) ns += op.kind == P2pOp::Kind::send && op.peer == d;
          for (const P2pOp& op : recvs) nr += op.kind == P2pOp::Kind::recv && op.peer == s;
          return detail::concat("llep: exchange: rank ", s, " posts ", ns, " send(s) to rank ", d, " but rank ", d,
                                " posts ", nr, " recv(s) from rank ", s);
        }
      }
    return {};
  }

  int size_;
  HostGroupOptions options_;
  std::vector<Slot> slots_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;               // ranks at the current barrier
  std::uint64_t generation_ = 0;  // completed barriers
  int inside_ = 0;                // ranks between entering and leaving a collective
  bool aborted_ = false;
  bool running_ = false;
  int recovering_ = 0;                     // ranks waiting in recover()
  std::uint64_t recover_generation_ = 0;  // completed recoveries
  std::string reason_;
};

/// One rank's handle on a HostGroup: cheap to copy, models llep::Transport over host
/// memory. Every call is collective (all ranks, same order) and blocking.
class HostThreads {
 public:
  static constexpr MemorySpace memory = MemorySpace::host;
  static constexpr std::string_view name = "host_threads";

  HostThreads(HostGroup& group, int rank) : group_(&group), rank_(rank) {
    LLEP_EXPECTS(rank >= 0 && rank < group.size(), "rank ", rank, " is outside [0, ", group.size(), ")");
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return group_->size(); }
  [[nodiscard]] HostGroup& group() const noexcept { return *group_; }

  /// dst[q * bytes, (q + 1) * bytes) = rank q's src, for every q. `bytes` must agree.
  void all_gather(const void* src, std::size_t bytes, void* dst) {
    HostGroup& g = *group_;
    g.collective(
        rank_, {.op = HostGroup::Op::all_gather, .src = src, .dst = dst, .bytes = bytes},
        [&] { return g.check_all_gather(); },
        [&] {
          for (int q = 0; q < g.size(); ++q) {
            auto* out = static_cast<std::byte*>(dst) + static_cast<std::size_t>(q) * bytes;
            if (bytes > 0 && out != g.post(q).src) std::memmove(out, g.post(q).src, bytes);
          }
        });
  }

  /// Bytes [send_offsets[q], + send_sizes[q]) of src go to rank q, landing at its
  /// recv_offsets[rank()]. What p sends to q must equal what q expects from p, else every
  /// rank throws llep::Error naming both ranks and sizes. src and dst must not overlap.
  void all_to_all_v(const void* src, std::span<const std::size_t> send_sizes, std::span<const std::size_t> send_offsets,
                    void* dst, std::span<const std::size_t> recv_sizes, std::span<const std::size_t> recv_offsets) {
    HostGroup& g = *group_;
    const auto me = static_cast<std::size_t>(rank_);
    g.collective(
        rank_,
        {.op = HostGroup::Op::all_to_all_v,
         .src = src,
         .dst = dst,
         .send_sizes = send_sizes,
         .send_offsets = send_offsets,
         .recv_sizes = recv_sizes,
         .recv_offsets = recv_offsets},
        [&] { return g.check_all_to_all_v(); },
        [&] {
          for (int q = 0; q < g.size(); ++q) {
            const auto& from = g.post(q);
            const std::size_t n = recv_sizes[static_cast<std::size_t>(q)];
            if (n > 0)
              std::memmove(static_cast<std::byte*>(dst) + recv_offsets[static_cast<std::size_t>(q)],
                           static_cast<const std::byte*>(from.src) + from.send_offsets[me], n);
          }
        });
  }

  /// Grouped point-to-point: the k-th send from p to q fills the k-th recv on q from p.
  /// Counts or sizes that do not match throw llep::Error on every rank.
  void exchange(std::span<const P2pOp> ops) {
    HostGroup& g = *group_;
    g.collective(
        rank_, {.op = HostGroup::Op::exchange, .ops = ops}, [&] { return g.check_exchange(); },
        [&] {
          auto& cursor = g.slots_[static_cast<std::size_t>(rank_)].cursor;
          std::fill(cursor.begin(), cursor.end(), std::size_t{0});
          for (const P2pOp& op : ops) {
            if (op.kind != P2pOp::Kind::recv) continue;
            const auto from = g.post(op.peer).ops;
            std::size_t& i = cursor[static_cast<std::size_t>(op.peer)];
            while (!(from[i].kind == P2pOp::Kind::send && from[i].peer == rank_)) ++i;  // checked to exist
            if (op.bytes > 0) std::memmove(op.buffer, from[i].buffer, op.bytes);
            ++i;
          }
        });
  }

  void barrier() {
    HostGroup& g = *group_;
    g.collective(
        rank_, {.op = HostGroup::Op::barrier}, [] { return std::string(); }, [] {});
  }

  /// Releases every rank of the group from its collectives with llep::GroupAborted.
  void abort(std::string_view why) { group_->abort(detail::concat("rank ", rank_, " aborted: ", why)); }

  /// HostGroup::recover for this rank: after a failed step, once every rank calls it, the
  /// group works again. Models llep::RecoverableTransport.
  bool recover() noexcept { return group_->recover(rank_); }

 private:
  HostGroup* group_;
  int rank_;
};

inline HostThreads HostGroup::rank(int p) { return HostThreads(*this, p); }

static_assert(check_transport<HostThreads>());

namespace detail {
inline std::string what_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (...) {
    return "an exception not derived from std::exception";
  }
}
}  // namespace detail

namespace detail {
// run_ranks for any handle built on a HostGroup: make_handle(p) runs on rank p's thread
// (so it can bind thread state, e.g. the CUDA device) and returns the handle body gets.
template <class MakeHandle, class F>
void run_rank_threads(HostGroup& group, MakeHandle&& make_handle, F&& body) {
  group.begin_run();
  const auto P = static_cast<std::size_t>(group.size());
  std::vector<std::exception_ptr> errors(P);
  std::vector<std::uint64_t> order(P, 0);
  std::atomic<std::uint64_t> next{1};
  std::vector<std::thread> threads;
  threads.reserve(P);
  auto rank_main = [&](int p) {
    try {
      auto t = make_handle(p);
      body(t);
      group.depart(p);
    } catch (...) {
      errors[static_cast<std::size_t>(p)] = std::current_exception();
      order[static_cast<std::size_t>(p)] = next.fetch_add(1);
      group.abort(detail::concat("rank ", p, " threw: ", detail::what_of(errors[static_cast<std::size_t>(p)])));
    }
  };
  try {
    for (std::size_t p = 0; p < P; ++p) threads.emplace_back(rank_main, static_cast<int>(p));
  } catch (...) {
    group.abort("run_ranks could not start every rank thread");
    for (std::thread& t : threads) t.join();
    group.end_run();
    throw;
  }
  for (std::thread& t : threads) t.join();
  group.end_run();

  std::size_t first = P;
  for (int pass = 0; pass < 2 && first == P; ++pass)
    for (std::size_t p = 0; p < P; ++p) {
      if (!errors[p]) continue;
      bool echo = false;
      try {
        std::rethrow_exception(errors[p]);
      } catch (const GroupAborted&) {
        echo = true;
      } catch (...) {
      }
      if ((pass == 1 || !echo) && (first == P || order[p] < order[first])) first = p;
    }
  if (first < P) std::rethrow_exception(errors[first]);
}
}  // namespace detail

/// Runs body(HostThreads&) on P threads, one per rank, and joins them. A rank that throws
/// (or returns while others wait for it) aborts the group, so the others leave their
/// collectives with llep::Error instead of waiting. Rethrows the first exception that is
/// not a GroupAborted echo, else the first one. Resets the group first, so a group that
/// failed before can run again.
template <class F>
void run_ranks(HostGroup& group, F&& body) {
  detail::run_rank_threads(group, [&group](int p) { return group.rank(p); }, std::forward<F>(body));
}

}  // namespace llep
