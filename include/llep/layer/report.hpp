#pragma once
// What one forward step did, for benchmarks and users.
#include <cstddef>
#include <ostream>
#include <string>
#include <vector>

#include "llep/core/config.hpp"

namespace llep {

struct StepReport {
  std::string policy;                     ///< planner that made the step's plan ("ep", "llep", ...)
  int rank = 0;
  std::vector<count_t> native_rows;       ///< per rank: rows of experts whose weights it holds (native or replica)
  std::vector<count_t> foreign_rows;      ///< per rank: rows of experts whose weights it received this step
  std::vector<std::size_t> peak_bytes;    ///< per rank: planned expert activations (in, intermediate, out) + foreign weights
  count_t capacity = 0;                   ///< the plan's per-rank budget
  double imbalance_before = 1.0;          ///< max/mean rank load under native placement
  double imbalance_after = 1.0;           ///< max/mean rank load under the plan
  std::size_t weight_transfers = 0;       ///< transfers in the plan (all ranks)
  // This rank:
  std::size_t token_bytes_sent = 0;       ///< dispatch + combine rows sent
  std::size_t token_bytes_received = 0;
  std::size_t weight_bytes_sent = 0;
  std::size_t weight_bytes_received = 0;
  std::size_t workspace_bytes = 0;        ///< all step memory of this rank (buffers, indices, scratch)
  // Plan-ahead (MoeLayer::prepare):
  bool prepared = false;                  ///< the step ran on the plan and weights of prepare()
  bool prepare_mismatch = false;          ///< a prepare() was pending but some rank's routing differed: re-planned
  std::size_t weight_bytes_prefetched = 0;  ///< of weight_bytes_received, the bytes that moved in prepare()
  std::size_t replica_bytes_saved = 0;    ///< resident bytes this rank's encoded replicas save (set_encoded_replicas)

  [[nodiscard]] count_t rows(int r) const {
    return native_rows[static_cast<std::size_t>(r)] + foreign_rows[static_cast<std::size_t>(r)];
  }
};

}  // namespace llep
