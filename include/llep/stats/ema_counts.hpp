#pragma once
// EmaCounts: ExactCounts plus an exponential moving average of past loads, for planners
// that place experts from history (EPLB-style replication) rather than from this step.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/core/counts.hpp"
#include "llep/core/error.hpp"
#include "llep/exec/host.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/stats/routing_stats.hpp"
#include "llep/transport/transport.hpp"

namespace llep {

class EmaCounts {
 public:
  static constexpr std::string_view name = "ema";

  /// h <- decay * l + (1 - decay) * h after each step; the first step sets h = l.
  /// decay = 1 keeps only the last step; smaller values remember longer.
  explicit EmaCounts(double decay) : decay_(decay) {
    LLEP_EXPECTS(decay > 0.0 && decay <= 1.0, "EmaCounts decay = ", decay, " must be in (0, 1]");
  }

  /// As ExactCounts::update; the history moves only when the step succeeds on every rank.
  template <class Exec, class T>
  void update(Exec& exec, T& transport, const std::int32_t* ids, std::size_t pairs, StepShape shape,
              RouteFlags flags = {}) {
    exact_.update(exec, transport, ids, pairs, shape, flags);
    const auto l = exact_.loads();
    if (steps_ == 0) {
      history_.assign(l.begin(), l.end());
    } else {
      // Every rank saw the same N, so every rank throws here alike.
      LLEP_EXPECTS(l.size() == history_.size(), "EmaCounts holds a history of N = ", history_.size(),
                   " experts but this step has N = ", l.size(), "; call reset_history() first");
      for (std::size_t e = 0; e < l.size(); ++e)
        history_[e] = decay_ * static_cast<double>(l[e]) + (1.0 - decay_) * history_[e];
    }
    ++steps_;
  }

  /// As ExactCounts::workspace_bytes.
  [[nodiscard]] static constexpr std::size_t workspace_bytes(int ranks, int experts) noexcept {
    return ExactCounts::workspace_bytes(ranks, experts);
  }

  [[nodiscard]] CountsView counts() const { return exact_.counts(); }
  [[nodiscard]] std::span<const count_t> loads() const { return exact_.loads(); }
  [[nodiscard]] std::span<const count_t> local_counts() const { return exact_.local_counts(); }

  /// The smoothed load of every expert (empty before the first step).
  [[nodiscard]] std::span<const double> history_loads() const noexcept { return history_; }
  [[nodiscard]] std::uint64_t steps() const noexcept { return steps_; }
  [[nodiscard]] double decay() const noexcept { return decay_; }
  void reset_history() noexcept {
    history_.clear();
    steps_ = 0;
  }

 private:
  ExactCounts exact_;
  double decay_;
  std::vector<double> history_;
  std::uint64_t steps_ = 0;
};

static_assert(check_history_stats<EmaCounts, HostExec, detail::TransportArchetype<MemorySpace::host>>());

}  // namespace llep
