#pragma once
// The stages of one forward step as separate functions (DESIGN.md, "Data flow of one
// forward step"): count, plan, layout, dispatch, compute, combine. MoeLayer::forward
// composes them; an engine may call them itself (to plan ahead, or to keep the plan).
// Each reads and writes plain data: host tables (Plan, Layout, ByteCounts) and the step's
// buffers in the execution space's memory (StepBuffers), carved from caller memory.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "llep/codec/exchange.hpp"
#include "llep/core/memory_space.hpp"
#include "llep/exec/execution_space.hpp"
#include "llep/experts/expert_compute.hpp"
#include "llep/core/plan.hpp"
#include "llep/core/topology.hpp"
#include "llep/layer/check_plan.hpp"
#include "llep/layer/layout.hpp"
#include "llep/layer/limits.hpp"
#include "llep/layer/row_ops.hpp"
#include "llep/plan/planner.hpp"
#include "llep/stats/routing_stats.hpp"
#include "llep/transport/transport.hpp"

namespace llep {

/// Pointers to every region of one step, in the execution space's memory.
template <class T>
struct StepBuffers {
  T* send = nullptr;
  T* recv = nullptr;
  T* expert_in = nullptr;
  T* expert_out = nullptr;
  T* foreign_weights = nullptr;
  void* scratch = nullptr;
  std::size_t scratch_bytes = 0;  ///< the scratch region's size (the sort borrows it before compute)
  std::int32_t* order = nullptr;
  std::int32_t* pair_row = nullptr;
  std::int32_t* row_pair = nullptr;
  std::int32_t* compute_row = nullptr;
  SendBlock* send_blocks = nullptr;
  RecvChunk* recv_chunks = nullptr;

  /// Regions selected by `kept` from `kept_base` (a handle's memory), the others from
  /// `base` (the workspace); every region is checked against its buffer's capacity.
  static StepBuffers carve(const WorkspaceLayout& ws, std::byte* base, std::size_t capacity,
                           const WorkspaceLayout& kept, std::byte* kept_base, std::size_t kept_capacity,
                           std::uint32_t kept_regions) {
    auto at = [&]<class U>(WorkspaceRegion r, U*) -> U* {
      return (kept_regions & WorkspaceLayout::bit(r)) ? kept.at<U>(kept_base, kept_capacity, r)
                                                       : ws.at<U>(base, capacity, r);
    };
    using R = WorkspaceRegion;
    StepBuffers b;
    b.send = at(R::send, b.send);
    b.recv = at(R::recv, b.recv);
    b.expert_in = at(R::expert_in, b.expert_in);
    b.expert_out = at(R::expert_out, b.expert_out);
    b.foreign_weights = at(R::foreign_weights, b.foreign_weights);
    b.scratch = at(R::scratch, static_cast<std::byte*>(nullptr));
    b.scratch_bytes = (kept_regions & WorkspaceLayout::bit(R::scratch)) ? kept.bytes(R::scratch) : ws.bytes(R::scratch);
    b.order = at(R::order, b.order);
    b.pair_row = at(R::pair_row, b.pair_row);
    b.row_pair = at(R::row_pair, b.row_pair);
    b.compute_row = at(R::compute_row, b.compute_row);
    b.send_blocks = at(R::send_blocks, b.send_blocks);
    b.recv_chunks = at(R::recv_chunks, b.recv_chunks);
    return b;
  }
};

/// Byte counts and offsets per peer of the token all-to-all (host, P entries each).
struct ByteCounts {
  std::vector<std::size_t> send_bytes, send_offsets, recv_bytes, recv_offsets;

  void reserve(int ranks) {
    for (auto* v : {&send_bytes, &send_offsets, &recv_bytes, &recv_offsets}) v->reserve(static_cast<std::size_t>(ranks));
  }
  void assign(const Layout& layout, std::size_t row_bytes) {
    fill(layout.send_counts(), layout.send_offsets(), row_bytes, send_bytes, send_offsets);
    fill(layout.recv_counts(), layout.recv_offsets(), row_bytes, recv_bytes, recv_offsets);
  }

 private:
  static void fill(std::span<const count_t> rows, std::span<const count_t> offs, std::size_t row_bytes,
                   std::vector<std::size_t>& bytes, std::vector<std::size_t>& byte_offs) {
    bytes.resize(rows.size());
    byte_offs.resize(rows.size());
    for (std::size_t i = 0; i < rows.size(); ++i) {
      bytes[i] = static_cast<std::size_t>(rows[i]) * row_bytes;
      byte_offs[i] = static_cast<std::size_t>(offs[i]) * row_bytes;
    }
  }
};

/// Where each expert's weights are on this rank: its slot among the held (native and
/// replica) experts, or its place among the foreign experts received this step.
template <class T>
struct WeightsOnRank {
  const T* held = nullptr;      ///< slots_per_rank x elems, ascending expert id
  T* foreign = nullptr;         ///< foreign.size() x elems, in `incoming` order
  std::span<const int> slot;    ///< N entries: slot of a held expert, -1 otherwise
  std::span<const int> incoming;  ///< experts received this step, ascending
  std::size_t elems = 0;        ///< elements of one expert
  std::span<const T* const> held_at = {};  ///< optional, N entries: each held expert's weights

  [[nodiscard]] const T* held_expert(int e) const {
    if (!held_at.empty()) return held_at[static_cast<std::size_t>(e)];
    return held + static_cast<std::size_t>(slot[static_cast<std::size_t>(e)]) * elems;
  }
  [[nodiscard]] T* foreign_expert(int e) const {
    const auto it = std::lower_bound(incoming.begin(), incoming.end(), e);
    return foreign + static_cast<std::size_t>(it - incoming.begin()) * elems;
  }
};

// ---------------------------------------------------------------------------------------
// 1. Count: every rank's histogram of its ids, gathered so every rank holds C and l.
//    Collective; bad input on any rank throws the same llep::Error on every rank.
template <class Stats, class Exec, class Tr>
void count_stage(Stats& stats, Exec& exec, Tr& transport, std::span<const std::int32_t> ids, StepShape shape) {
  stats.update(exec, transport, ids.data(), ids.size(), shape);
}

// 2. Plan: the planner's plan of the loads, checked before anything indexes by it (a
//    user's planner may break the rules). Deterministic: the same plan on every rank.
template <Planner Plnr>
void plan_stage(const Plnr& planner, std::span<const count_t> loads, const Topology& topo, Plan& plan,
                PlanCheckScratch& scratch) {
  planner.plan(loads, topo, plan);
  check_plan(plan, loads, topo, Plnr::name, scratch);
}

// 3. Layout: who sends which rows where, what arrives from whom, which tasks run here.
inline void layout_stage(CountsView counts, const Plan& plan, const Topology& topo, int rank, Layout& layout) {
  layout.build(counts, plan, topo, rank);
}

/// The figures that size this rank's step memory; `incoming` receives the foreign experts
/// (ascending: transfers are sorted by expert).
inline StepSizes step_sizes(const Layout& layout, const Plan& plan, int rank, std::vector<int>& incoming) {
  incoming.clear();
  for (const WeightTransfer& w : plan.weight_transfers())
    if (w.dst == rank) incoming.push_back(w.expert);
  return StepSizes{layout.pairs(), layout.compute_rows(), static_cast<int>(incoming.size()),
                   static_cast<std::int64_t>(layout.send_blocks().size()),
                   static_cast<std::int64_t>(layout.recv_chunks().size())};
}

// 4a. Dispatch weights: every transfer of the plan, native rank -> helper. With a second
//     weights path (WeightsPathTransport) they travel while the tokens move and the
//     native experts compute (compute_stage joins them); otherwise they move now.
template <class Tr, class T>
void dispatch_weights(Tr& transport, const Plan& plan, int rank, const WeightsOnRank<T>& w, std::vector<P2pOp>& ops) {
  ops.clear();
  const std::size_t bytes = w.elems * sizeof(T);
  for (const WeightTransfer& t : plan.weight_transfers()) {
    if (t.src == rank) ops.push_back(P2pOp{P2pOp::Kind::send, t.dst, const_cast<T*>(w.held_expert(t.expert)), bytes});
    if (t.dst == rank) ops.push_back(P2pOp{P2pOp::Kind::recv, t.src, w.foreign_expert(t.expert), bytes});
  }
  if constexpr (WeightsPathTransport<Tr>) transport.exchange_weights(ops);
  else transport.exchange(ops);
}

// 4a with the layer's codec: dispatch_weights when it is exact; otherwise encoded on the
//     wire, decoded on arrival (codec/exchange.hpp on the host; codec/exchange.cuh on a
//     device, in `codec_scratch` of device_codec_scratch_bytes). `encoded` is the host
//     exchange's reused storage; `ops` receives the wire ops. Forward's dispatch and
//     backward's refetch both move weights through here.
template <WeightCodec Codec, class Exec, class Tr, class T>
void move_weights(const Codec& codec, Exec& exec, Tr& transport, const Plan& plan, int rank,
                  const WeightsOnRank<T>& weights, std::span<std::byte> codec_scratch, EncodedWeights& encoded,
                  std::vector<P2pOp>& ops) {
  if constexpr (Codec::exact) {
    dispatch_weights(transport, plan, rank, weights, ops);
  } else {
    auto held = [&](int e) { return weights.held_expert(e); };
    auto foreign = [&](int e) { return weights.foreign_expert(e); };
    if constexpr (Exec::memory == MemorySpace::device) {
      device_encode_exchange_decode(codec, transport, exec, plan.weight_transfers(), rank, weights.elems, held,
                                    foreign, codec_scratch, ops);
    } else {
      encode_exchange_decode(codec, transport, plan.weight_transfers(), rank, weights.elems, held, foreign, encoded);
      ops.assign(encoded.ops.begin(), encoded.ops.end());  // the reports count wire bytes
    }
  }
}

// 4b. Dispatch tokens: sort pairs by expert, permute the K-repeated token rows into send
//     order (filling pair_row / row_pair), and all-to-all them. The sort borrows the
//     scratch region, free until compute (sized for it: exec_sort_scratch_bytes).
template <class Exec, class Tr, class T>
void dispatch_tokens(Exec& exec, Tr& transport, const Layout& layout, const StepBuffers<T>& b, const T* hidden,
                     const std::int32_t* ids, int experts, int top_k, std::size_t row_bytes, const ByteCounts& bc) {
  const auto pairs = static_cast<std::size_t>(layout.pairs());
  exec.from_host(b.send_blocks, layout.send_blocks().data(), layout.send_blocks().size_bytes());
  exec.from_host(b.recv_chunks, layout.recv_chunks().data(), layout.recv_chunks().size_bytes());
  sort_by_expert_in(exec, ids, pairs, experts, b.order,
                    std::span<std::byte>(static_cast<std::byte*>(b.scratch), b.scratch_bytes));
  exec.for_each_n(pairs, AssignSendRows{b.send_blocks, static_cast<std::int32_t>(layout.send_blocks().size()), b.order,
                                        b.pair_row, b.row_pair});
  copy_rows(exec, true, b.send, hidden, b.row_pair, pairs, row_bytes, top_k);
  transport.all_to_all_v(b.send, bc.send_bytes, bc.send_offsets, b.recv, bc.recv_bytes, bc.recv_offsets);
}

// 5. Compute: received rows into task order, then every task through its expert: the
//    natives first (their weights are here), then, once the weights arrived, the foreign
//    ones. `tasks` is reused storage for the functor's task list. With `saved` (rows x
//    saved_row_bytes), the functor keeps the pre-activations there, rows in this order.
template <class Exec, class Tr, class Experts, class T>
void compute_stage(Exec& exec, Tr& transport, const Experts& experts, const Layout& layout, const StepBuffers<T>& b,
                   const WeightsOnRank<T>& w, std::size_t row_bytes, std::vector<ExpertTask<T>>& tasks,
                   std::byte* saved = nullptr, std::size_t saved_row_bytes = 0) {
  const auto rows = static_cast<std::size_t>(layout.compute_rows());
  const auto D = static_cast<std::size_t>(experts.hidden());
  exec.for_each_n(rows, AssignComputeRows{b.recv_chunks, static_cast<std::int32_t>(layout.recv_chunks().size()),
                                          b.compute_row});
  copy_rows(exec, false, b.expert_in, b.recv, b.compute_row, rows, row_bytes);
  tasks.clear();
  std::size_t natives = 0, native_rows = 0;
  for (const bool native : {true, false})
    for (const ComputeTask& t : layout.tasks()) {
      if (t.native != native) continue;
      const T* weights = native ? w.held_expert(t.expert) : w.foreign_expert(t.expert);
      const auto off = static_cast<std::size_t>(t.row) * D;
      tasks.push_back(ExpertTask<T>{t.expert, weights, b.expert_in + off, b.expert_out + off, t.rows});
      natives += native ? 1 : 0;
      native_rows += native ? static_cast<std::size_t>(t.rows) : 0;
    }
  const std::span<const ExpertTask<T>> all(tasks);
  auto run = [&](std::span<const ExpertTask<T>> part, std::size_t first_row) {
    if constexpr (requires { experts.compute(exec, part, b.scratch, static_cast<void*>(saved)); }) {
      if (saved != nullptr) return experts.compute(exec, part, b.scratch, saved + first_row * saved_row_bytes);
    }
    experts.compute(exec, part, b.scratch);
  };
  run(all.first(natives), 0);
  if constexpr (WeightsPathTransport<Tr>) transport.join_weights();
  if (natives < all.size()) run(all.subspan(natives), native_rows);
}

// 6. Combine: expert outputs back to receive order, the reverse all-to-all, and the
//    weighted sum over K in a fixed order (the same input gives the same bits).
template <class Exec, class Tr, class T, class G>
void combine_stage(Exec& exec, Tr& transport, const Layout& layout, const StepBuffers<T>& b, const ByteCounts& bc,
                   std::span<const G> gates, std::span<T> out, int top_k, std::size_t hidden, std::size_t row_bytes) {
  const auto rows = static_cast<std::size_t>(layout.compute_rows());
  copy_rows(exec, true, b.recv, b.expert_out, b.compute_row, rows, row_bytes);
  transport.all_to_all_v(b.recv, bc.recv_bytes, bc.recv_offsets, b.send, bc.send_bytes, bc.send_offsets);
  exec.for_each_n(out.size(), CombineTopK<T, G>{out.data(), b.send, b.pair_row, gates.data(), top_k, hidden});
}

}  // namespace llep
