#pragma once
// One rank's side of the symmetric-exchange GPU tests (tests/device/symmetric_cases.hpp's
// steps on the device): its device buffers, and its steps run eagerly or captured once in
// a CUDA graph (thread-local capture) and replayed with each step's new inputs (ids and
// their count, rows, tables, weights), uploaded before each replay, outside the graph.
#include <cuda_runtime.h>

#include <cstddef>
#include <optional>
#include <vector>

#include "../device/symmetric_cases.hpp"
#include "device_array.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/exec/cuda.cuh"

namespace gputest {

/// One rank's exec memory on the device, sized by the Rig.
struct SymmetricBuffers {
  DeviceArray<std::int32_t> ids;
  DeviceArray<llep::count_t> pairs;
  DeviceArray<std::byte> counts_memory, recv, back, foreign, places;
  DeviceArray<llep::count_t> tables;
  DeviceArray<llep::PlanView> plan;
  DeviceArray<llep::WeightTransfer> transfers;
  DeviceArray<std::int32_t> native_slot;
  DeviceArray<llep::status_word_t> words;
  explicit SymmetricBuffers(const symtest::Rig& rig)
      : ids(symtest::kMaxIds), pairs(1), counts_memory(llep::SharedCounts::bytes(rig.P, rig.N)), recv(rig.rows_bytes()),
        back(rig.rows_bytes()), foreign(rig.max_transfers() * rig.expert_bytes), places(rig.places_bytes()),
        tables(4 * static_cast<std::size_t>(rig.P)), plan(1), transfers(rig.max_transfers()),
        native_slot(symtest::native_slots(rig.P, rig.N)),
        words(llep::StatusWords::bytes(rig.P) / sizeof(llep::status_word_t)) {}
  [[nodiscard]] symtest::RankBuffers view() const {
    return {ids.get(), pairs.get(), counts_memory.get(), tables.get(), recv.get(), back.get(), plan.get(), transfers.get(),
            native_slot.get(), foreign.get(), places.get()};
  }
};

/// This rank's results of every step, eager (the pair count from the host) or replayed from
/// a graph (the pair count read from memory, so each replay has its own batch size).
inline std::vector<symtest::StepResult> rank_steps(llep::CudaExec& exec, const llep::SymmetricView& v,
                                                   const symtest::Rig& rig, const std::vector<symtest::StepCase>& cases,
                                                   bool graph, const symtest::RankBuffers& b, llep::StatusWords& status,
                                                   const llep::SignalOptions& options = {}) {
  std::vector<symtest::StepResult> out;
  std::optional<llep::CudaGraph> replay;
  for (const symtest::StepCase& c : cases) {
    symtest::upload_step(exec, v, rig, c, b);
    if (!graph) {
      symtest::enqueue_step(exec, v, rig, b, c.ids[static_cast<std::size_t>(v.rank)].size(), status, 1024, options);
    } else {
      if (!replay)
        replay.emplace(exec.stream(), [&] {
          symtest::enqueue_step(exec, v, rig, b, symtest::kPairsOnDevice, status, 1024, options);
        });
      replay->launch(exec.stream());
    }
    out.push_back(symtest::download_step(exec, rig, c, v.rank, b));
  }
  return out;
}

}  // namespace gputest
