#pragma once
// The counts matrix C[P][N] (pairs on rank p routed to expert e) and the loads it implies.
#include <algorithm>
#include <cstddef>
#include <limits>
#include <span>

#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/core/topology.hpp"

namespace llep {

/// Non-owning row-major view of C[P][N].
class CountsView {
 public:
  CountsView() = default;
  CountsView(std::span<const count_t> data, int ranks, int experts)
      : data_(data), ranks_(ranks), experts_(experts) {
    LLEP_EXPECTS(ranks >= 0 && experts >= 0 &&
                     data.size() == static_cast<std::size_t>(ranks) * static_cast<std::size_t>(experts),
                 "counts matrix holds ", data.size(), " entries; P x N = ", ranks, " x ", experts);
  }
  [[nodiscard]] int ranks() const noexcept { return ranks_; }
  [[nodiscard]] int experts() const noexcept { return experts_; }
  [[nodiscard]] count_t operator()(int rank, int expert) const noexcept {
    return data_[static_cast<std::size_t>(rank) * static_cast<std::size_t>(experts_) +
                 static_cast<std::size_t>(expert)];
  }
  [[nodiscard]] std::span<const count_t> row(int rank) const noexcept {
    return data_.subspan(static_cast<std::size_t>(rank) * static_cast<std::size_t>(experts_),
                         static_cast<std::size_t>(experts_));
  }
  [[nodiscard]] std::span<const count_t> data() const noexcept { return data_; }

 private:
  std::span<const count_t> data_;
  int ranks_ = 0;
  int experts_ = 0;
};

/// l[e] = sum_p C[p][e].
inline void loads_from_counts(CountsView counts, std::span<count_t> loads) {
  LLEP_EXPECTS(loads.size() == static_cast<std::size_t>(counts.experts()), "loads holds ", loads.size(),
               " entries; N = ", counts.experts());
  std::fill(loads.begin(), loads.end(), count_t{0});
  for (int p = 0; p < counts.ranks(); ++p)
    for (int e = 0; e < counts.experts(); ++e) loads[static_cast<std::size_t>(e)] += counts(p, e);
}

/// Checks that loads fit the topology: N entries, none negative, a total that count_t holds
/// (planners add loads up; an overflow there would be undefined behaviour).
inline void check_loads(std::span<const count_t> loads, const Topology& topo) {
  LLEP_EXPECTS(loads.size() == static_cast<std::size_t>(topo.experts()), "loads has ", loads.size(),
               " entries but the topology has N = ", topo.experts(), " experts");
  // Fast path: no load negative and each below 2^(62 - log2 N), so no sum can overflow.
  count_t bits = 0;
  for (const count_t l : loads) bits |= l;
  int log_n = 0;
  while ((std::size_t{1} << log_n) < loads.size()) ++log_n;
  if (bits >= 0 && log_n < 62 && bits < (count_t{1} << (62 - log_n))) return;
  count_t total = 0;
  for (std::size_t e = 0; e < loads.size(); ++e) {
    LLEP_EXPECTS(loads[e] >= 0, "load ", loads[e], " of expert ", e, " is negative");
    LLEP_EXPECTS(loads[e] <= std::numeric_limits<count_t>::max() - total, "loads sum past ",
                 std::numeric_limits<count_t>::max(), " at expert ", e, " (load ", loads[e], ")");
    total += loads[e];
  }
}

/// Per-rank load under native placement (standard EP).
inline void native_rank_loads(std::span<const count_t> loads, const Topology& topo,
                              std::span<count_t> out) {
  LLEP_EXPECTS(out.size() == static_cast<std::size_t>(topo.ranks()), "rank loads holds ", out.size(),
               " entries; P = ", topo.ranks());
  std::fill(out.begin(), out.end(), count_t{0});
  for (int e = 0; e < topo.experts(); ++e)
    out[static_cast<std::size_t>(topo.native_rank(e))] += loads[static_cast<std::size_t>(e)];
}

/// max / mean of per-rank loads; 1 when every rank is empty.
[[nodiscard]] inline double imbalance(std::span<const count_t> rank_loads) {
  if (rank_loads.empty()) return 1.0;
  count_t total = 0, peak = 0;
  for (count_t l : rank_loads) {
    total += l;
    peak = std::max(peak, l);
  }
  if (total == 0) return 1.0;
  return static_cast<double>(peak) * static_cast<double>(rank_loads.size()) / static_cast<double>(total);
}

}  // namespace llep
