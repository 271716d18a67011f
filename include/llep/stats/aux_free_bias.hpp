#pragma once
// AuxFreeBias: ExactCounts plus DeepSeek-V3's auxiliary-loss-free router bias. After every
// successful step each expert's bias moves toward balance,
//   sign rule          b_e += u * sign(mean - l_e)
//   proportional rule  b_e += u * (mean - l_e) / mean
// where l are the exact global loads of the step and mean = sum(l) / N. The engine's router
// adds b to the scores for top-k selection only (route_topk.hpp), never to the gates.
// The update is a pure function of the gathered loads, which are the same on every rank,
// so every rank holds the same bits without any extra communication. (Ranks built from
// different binaries could round the proportional rule differently; the sign rule is
// exact integer logic plus one float add.)
#include <cstddef>
#include <cstdint>
#include <ostream>
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

enum class BiasRule { sign, proportional };

inline std::ostream& operator<<(std::ostream& os, BiasRule r) {
  return os << (r == BiasRule::sign ? "sign" : "proportional");
}

struct AuxFreeBiasConfig {
  double rate = 1e-3;  ///< u, in units of the router's scores (DeepSeek-V3: 1e-3)
  BiasRule rule = BiasRule::sign;

  void check() const {
    LLEP_EXPECTS(rate > 0.0 && rate < 1e30, "AuxFreeBias rate u = ", rate, " must be finite and > 0");
  }
  friend bool operator==(const AuxFreeBiasConfig&, const AuxFreeBiasConfig&) = default;
  friend std::ostream& operator<<(std::ostream& os, const AuxFreeBiasConfig& c) {
    return os << "AuxFreeBiasConfig{rate = " << c.rate << ", rule = " << c.rule << "}";
  }
};

/// One bias step from the loads of a step (loads.size() == bias.size()). A step that
/// routed nothing leaves the biases as they are.
inline void adjust_biases(std::span<float> bias, std::span<const count_t> loads, const AuxFreeBiasConfig& config) {
  LLEP_EXPECTS(bias.size() == loads.size(), "adjust_biases: ", bias.size(), " biases for ", loads.size(),
               " expert loads");
  const auto N = static_cast<count_t>(loads.size());
  count_t total = 0;
  for (count_t l : loads) {
    LLEP_EXPECTS(l >= 0, "adjust_biases: a load of ", l, " is negative");
    total += l;
  }
  if (N == 0 || total == 0) return;
  if (config.rule == BiasRule::sign) {
    // Exact comparison of l_e with mean = q + r / N, no floating point and no overflow.
    const count_t q = total / N, r = total % N;
    const float u = static_cast<float>(config.rate);
    for (std::size_t e = 0; e < bias.size(); ++e) {
      const count_t l = loads[e];
      if (l < q || (l == q && r > 0))
        bias[e] += u;
      else if (l > q)
        bias[e] -= u;
    }
  } else {
    const double mean = static_cast<double>(total) / static_cast<double>(N);
    for (std::size_t e = 0; e < bias.size(); ++e)
      bias[e] += static_cast<float>(config.rate * ((mean - static_cast<double>(loads[e])) / mean));
  }
}

// Extends ExactCounts: the same exchange and views, plus the biases.
class AuxFreeBias : private ExactCounts {
 public:
  static constexpr std::string_view name = "aux-free-bias";

  AuxFreeBias() : AuxFreeBias(AuxFreeBiasConfig{}) {}
  explicit AuxFreeBias(AuxFreeBiasConfig config) : config_(config) { config_.check(); }

  /// As ExactCounts::update, then one bias step from the gathered loads. A step that throws
  /// (on every rank alike) leaves the biases unchanged. The first step sizes the biases to
  /// N zeros; a later step with another N throws on every rank (call reset_biases()).
  template <class Exec, class T>
  void update(Exec& exec, T& transport, const std::int32_t* ids, std::size_t pairs, StepShape shape,
              RouteFlags flags = {}) {
    ExactCounts::update(exec, transport, ids, pairs, shape, flags);
    const auto l = loads();
    if (steps_ == 0) bias_.assign(l.size(), 0.0f);
    LLEP_EXPECTS(l.size() == bias_.size(), "AuxFreeBias holds biases of N = ", bias_.size(),
                 " experts but this step has N = ", l.size(), "; call reset_biases() first");
    adjust_biases(bias_, l, config_);
    ++steps_;
  }

  using ExactCounts::counts;
  using ExactCounts::loads;
  using ExactCounts::local_counts;
  using ExactCounts::workspace_bytes;

  /// b_e for the router's next step (empty before the first step): pass to route_topk.
  [[nodiscard]] std::span<const float> biases() const noexcept { return bias_; }
  [[nodiscard]] std::uint64_t steps() const noexcept { return steps_; }
  [[nodiscard]] const AuxFreeBiasConfig& config() const noexcept { return config_; }
  /// Back to no bias (e.g. when the expert count changes); the next step starts from zeros.
  void reset_biases() noexcept {
    bias_.clear();
    steps_ = 0;
  }

 private:
  AuxFreeBiasConfig config_;
  std::vector<float> bias_;
  std::uint64_t steps_ = 0;
};

static_assert(check_routing_stats<AuxFreeBias, HostExec, detail::TransportArchetype<MemorySpace::host>>());

}  // namespace llep
