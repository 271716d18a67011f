#pragma once
// ExactCounts: the counts matrix C[P][N] of this step, exact, on every rank.
//
// One update is two all-gathers. First a fixed-size header per rank (N, K, B_p, pairs,
// configuration fingerprint, local faults): its size cannot disagree, so even a rank with
// a wrong N cannot make the transport hang, and every rank checks every header in the same
// order and throws the same llep::Error. Only then the histograms (N + 1 bins, the last
// counting ids outside [0, N), plus the first such id when the exec can name it), whose
// sizes are now known to agree.
// Buffers are staged in the transport's memory space; a device exec stages in its
// workspace and copies the gathered result to the host once.
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string_view>
#include <vector>

#include "llep/core/memory_space.hpp"
#include "llep/core/config.hpp"
#include "llep/core/counts.hpp"
#include "llep/core/error.hpp"
#include "llep/exec/host.hpp"
#include "llep/stats/routing_stats.hpp"
#include "llep/transport/transport.hpp"

namespace llep {

class ExactCounts {
 public:
  static constexpr std::string_view name = "exact";

  /// Collective. `ids` holds `pairs` = B_p * K expert ids in Exec's memory. Throws the
  /// same llep::Error on every rank when any rank's input is bad; the views are then empty
  /// until the next successful update.
  template <class Exec, class T>
  void update(Exec& exec, T& transport, const std::int32_t* ids, std::size_t pairs, StepShape shape,
              RouteFlags flags = {}) {
    static_assert(check_transport<T>());
    static_assert(T::memory == MemorySpace::host || Exec::memory == MemorySpace::device,
                  "llep: ExactCounts stages a device Transport's buffers in the Exec's workspace; use an Exec "
                  "whose memory is MemorySpace::device with it");
    constexpr bool device_exec = Exec::memory == MemorySpace::device;
    constexpr bool device_transport = T::memory == MemorySpace::device;
    ranks_ = experts_ = 0;
    const int P = transport.size();
    const auto uP = static_cast<std::size_t>(P);

    // 1. Headers.
    const Header mine{kMagic,
                      shape.experts,
                      shape.top_k,
                      shape.tokens,
                      pairs > static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max())
                          ? std::numeric_limits<std::int64_t>::max()
                          : static_cast<std::int64_t>(pairs),
                      pairs > 0 && ids == nullptr,
                      flags.nonfinite_weights,
                      static_cast<std::int64_t>(shape.config)};
    headers_.resize(uP);
    if constexpr (device_transport) {
      auto* d = reinterpret_cast<Header*>(exec.workspace((uP + 1) * sizeof(Header)));
      exec.from_host(d, &mine, sizeof(Header));
      transport.all_gather(d, sizeof(Header), d + 1);
      exec.to_host(headers_.data(), d + 1, uP * sizeof(Header));
      exec.synchronize();  // to_host may be asynchronous on a device exec
    } else {
      transport.all_gather(&mine, sizeof(Header), headers_.data());
    }
    check_headers(P);

    // 2. Local histogram: N + 1 bins, then the first id outside [0, N) (or kUnknown).
    const int N = static_cast<int>(headers_[0].experts);
    const std::size_t R = static_cast<std::size_t>(N) + 2;  // record length per rank
    const std::size_t record_bytes = R * sizeof(count_t);
    local_.resize(R);
    gathered_.resize(uP * R);
    count_t* record = local_.data();
    count_t* device_gathered = nullptr;
    if constexpr (device_exec) {
      auto* d = reinterpret_cast<count_t*>(exec.workspace((device_transport ? uP + 1 : 1) * record_bytes));
      record = d;
      device_gathered = d + R;
    }
    exec.histogram(ids, pairs, N, record);
    count_t first_bad = kUnknown;
    if constexpr (!device_exec) {
      if (record[N] > 0) first_bad = first_outside(ids, pairs, N);
    }
    exec.from_host(record + N + 1, &first_bad, sizeof(count_t));

    // 3. Gather the records; exactly one copy of the gathered result to the host.
    if constexpr (device_transport) {
      transport.all_gather(record, record_bytes, device_gathered);
      exec.to_host(gathered_.data(), device_gathered, uP * record_bytes);
      exec.synchronize();
    } else {
      if constexpr (device_exec) {
        exec.to_host(local_.data(), record, record_bytes);
        exec.synchronize();
      }
      transport.all_gather(local_.data(), record_bytes, gathered_.data());
    }
    check_records(P, N);

    // 4. C and l.
    counts_.resize(uP * static_cast<std::size_t>(N));
    loads_.assign(static_cast<std::size_t>(N), count_t{0});
    for (std::size_t p = 0; p < uP; ++p)
      for (std::size_t e = 0; e < static_cast<std::size_t>(N); ++e) {
        const count_t c = gathered_[p * R + e];
        counts_[p * static_cast<std::size_t>(N) + e] = c;
        loads_[e] += c;
      }
    rank_ = transport.rank();
    ranks_ = P;
    experts_ = N;
  }

  /// Bytes of the exec's workspace an update may stage there (device execs), for P ranks
  /// and N experts; a layer's workspace_bytes includes it.
  [[nodiscard]] static constexpr std::size_t workspace_bytes(int ranks, int experts) noexcept {
    const auto record = (static_cast<std::size_t>(experts) + 2) * sizeof(count_t);
    return (static_cast<std::size_t>(ranks) + 1) * (record > sizeof(Header) ? record : sizeof(Header));
  }

  /// The full C[P][N] of the last successful update (empty before).
  [[nodiscard]] CountsView counts() const {
    return {
        std::span<const count_t>(counts_.data(), static_cast<std::size_t>(ranks_) * static_cast<std::size_t>(experts_)),
        ranks_, experts_};
  }
  /// l[e] = sum_p C[p][e].
  [[nodiscard]] std::span<const count_t> loads() const { return {loads_.data(), static_cast<std::size_t>(experts_)}; }
  /// This rank's row C[rank][.].
  [[nodiscard]] std::span<const count_t> local_counts() const {
    return ranks_ == 0 ? std::span<const count_t>() : counts().row(rank_);
  }
  [[nodiscard]] int ranks() const noexcept { return ranks_; }
  [[nodiscard]] int experts() const noexcept { return experts_; }

 private:
  // Plain int64 fields: the same layout on every rank, whatever it passed.
  struct Header {
    std::int64_t magic;
    std::int64_t experts, top_k, tokens, pairs;
    std::int64_t null_ids, nonfinite_weights;
    std::int64_t config;  // StepShape::config
  };
  static constexpr std::int64_t kMagic = 0x6c6c65702d737473;  // "llep-sts"
  static constexpr count_t kUnknown = std::numeric_limits<count_t>::min();

  static count_t first_outside(const std::int32_t* ids, std::size_t pairs, int N) {
    for (std::size_t i = 0; i < pairs; ++i)
      if (ids[i] < 0 || ids[i] >= N) return ids[i];
    return kUnknown;
  }

  // Every rank runs this over the same headers, so every rank throws the same message.
  void check_headers(int P) const {
    const Header& h0 = headers_[0];
    for (int r = 0; r < P; ++r) {
      const Header& h = headers_[static_cast<std::size_t>(r)];
      LLEP_EXPECTS(h.magic == kMagic, "rank ", r,
                   " sent no routing-stats header; every rank must call update() in the same step");
      LLEP_EXPECTS(h.experts > 0, "rank ", r, " has N = ", h.experts, " experts; N must be > 0");
      LLEP_EXPECTS(h.top_k > 0 && h.top_k <= h.experts, "rank ", r, " has K = ", h.top_k,
                   "; top-k must be in [1, N = ", h.experts, "]");
      LLEP_EXPECTS(h.tokens >= 0, "rank ", r, " has B_p = ", h.tokens, " tokens; must be >= 0");
      LLEP_EXPECTS(h.pairs % h.top_k == 0 && h.pairs / h.top_k == h.tokens, "rank ", r, " passed ", h.pairs,
                   " ids but B_p x K = ", h.tokens, " x ", h.top_k);
      LLEP_EXPECTS(!h.null_ids, "rank ", r, " passed null ids for ", h.pairs, " pairs");
      LLEP_EXPECTS(h.experts == h0.experts, "rank ", r, " has N = ", h.experts, " but rank 0 has N = ", h0.experts);
      LLEP_EXPECTS(h.top_k == h0.top_k, "rank ", r, " has K = ", h.top_k, " but rank 0 has K = ", h0.top_k);
      LLEP_EXPECTS(h.config == h0.config, "rank ", r, "'s configuration fingerprint ",
                   static_cast<std::uint64_t>(h.config), " differs from rank 0's ", static_cast<std::uint64_t>(h0.config),
                   ": P, N, K, the native placement and replicas, the expert shape, the weight codec, and the "
                   "planner and its settings must be the same on every rank, and every rank must be in prepare() "
                   "or every rank in forward()");
      LLEP_EXPECTS(!h.nonfinite_weights, "rank ", r, " has non-finite (NaN or Inf) top-k weights");
    }
  }

  void check_records(int P, int N) const {
    const std::size_t R = static_cast<std::size_t>(N) + 2;
    for (int r = 0; r < P; ++r) {
      const count_t* rec = gathered_.data() + static_cast<std::size_t>(r) * R;
      const count_t bad = rec[N], first = rec[N + 1];
      if (bad > 0) {
        if (first != kUnknown)
          LLEP_FAIL("rank ", r, " routed expert id ", first, " outside [0, ", N, ") (", bad, " of ",
                    headers_[static_cast<std::size_t>(r)].pairs, " ids are out of range)");
        LLEP_FAIL("rank ", r, " routed ", bad, " expert id(s) outside [0, ", N, ")");
      }
      count_t total = 0;
      for (int e = 0; e < N; ++e) total += rec[e];
      LLEP_EXPECTS(total == headers_[static_cast<std::size_t>(r)].pairs, "rank ", r, "'s histogram counts ", total,
                   " pairs but it routed ", headers_[static_cast<std::size_t>(r)].pairs);
    }
  }

  std::vector<Header> headers_;
  std::vector<count_t> local_, gathered_, counts_, loads_;
  int rank_ = 0, ranks_ = 0, experts_ = 0;
};

static_assert(check_routing_stats<ExactCounts, HostExec, detail::TransportArchetype<MemorySpace::host>>());

}  // namespace llep
