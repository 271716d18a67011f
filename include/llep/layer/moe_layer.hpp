#pragma once
// MoeLayer: one rank's forward step, wiring the five policies (DESIGN.md, "Data flow of one
// forward step"). Read top to bottom: count, plan, layout, dispatch, compute, combine.
//
// Host synchronisation: the plan needs the counts on the host, so each step copies the
// gathered counts matrix to the host once; everything after that is stream-ordered. A
// device transport must order its work on the same stream as the execution space.
//
// Overlap: with a transport that has exchange_weights/join_weights (Nccl), expert weights
// travel on their own stream while the tokens move and the native experts compute; the
// foreign experts wait for them. Other transports move the weights before the tokens.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>
#include <vector>

#include "llep/core/concepts.hpp"
#include "llep/core/plan.hpp"
#include "llep/layer/check_plan.hpp"
#include "llep/layer/fingerprint.hpp"
#include "llep/layer/layout.hpp"
#include "llep/layer/report.hpp"
#include "llep/layer/row_ops.hpp"
#include "llep/stats/routing_stats.hpp"
#include "llep/transport/transport.hpp"

namespace llep {

template <class Stats, Planner Plnr, Transport Tr, class Experts, class Exec>
  requires ExpertCompute<Experts, Exec>
class MoeLayer {
 public:
  using value_type = typename Experts::value_type;
  using T = value_type;

  /// `transport` must outlive the layer; its rank is this layer's rank.
  MoeLayer(const Topology& topo, int top_k, Plnr planner, Experts experts, Tr& transport, Exec exec = Exec{},
           Stats stats = Stats{})
      : topo_(topo),
        top_k_(top_k),
        planner_(std::move(planner)),
        experts_(std::move(experts)),
        transport_(&transport),
        exec_(std::move(exec)),
        stats_(std::move(stats)) {
    static_assert(Tr::memory == Exec::memory,
                  "llep: the transport and the execution space must use the same memory (host with HostExec, "
                  "device with CudaExec)");
    LLEP_EXPECTS(top_k >= 1, "top_k K = ", top_k, " must be >= 1");
    LLEP_EXPECTS(transport.size() == topo.ranks(), "transport has ", transport.size(), " ranks but the topology has P = ",
                 topo.ranks());
    rank_ = transport.rank();
    build_slots();
  }

  /// Every expert this rank holds (Topology::holds: its natives and, with replication, its
  /// replicas), serialised (experts/weight_layout.hpp) back to back in ascending expert id,
  /// in the execution space's memory: Topology::slots_per_rank() experts. Without replicas
  /// these are the native experts. Not copied: must stay valid. Its size must be exactly
  /// slots_per_rank() x weight_elems().
  void set_native_weights(std::span<const T> weights) {
    check_weights(topo_, weights);
    native_weights_ = weights.data();
  }

  /// A new placement (from Replicated::place, say) and this rank's weights under it, laid
  /// out as set_native_weights says. Same P and N; every rank must switch before the same
  /// step, after the weights moved (placement_moves lists them).
  void set_placement(const Topology& topo, std::span<const T> weights) {
    LLEP_EXPECTS(topo.ranks() == topo_.ranks() && topo.experts() == topo_.experts(), "new placement is for P = ",
                 topo.ranks(), ", N = ", topo.experts(), " but the layer has P = ", topo_.ranks(), ", N = ",
                 topo_.experts());
    check_weights(topo, weights);
    topo_ = topo;
    build_slots();
    native_weights_ = weights.data();
  }

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] const Topology& topology() const noexcept { return topo_; }
  [[nodiscard]] const Plan& plan() const noexcept { return plan_; }
  [[nodiscard]] const Layout& layout() const noexcept { return layout_; }
  [[nodiscard]] const StepReport& report() const noexcept { return report_; }
  [[nodiscard]] Stats& stats() noexcept { return stats_; }
  [[nodiscard]] Exec& exec() noexcept { return exec_; }
  [[nodiscard]] const Experts& experts() const noexcept { return experts_; }
  [[nodiscard]] int top_k() const noexcept { return top_k_; }
  [[nodiscard]] Tr& transport() noexcept { return *transport_; }
  /// What set_native_weights / set_placement gave (null before).
  [[nodiscard]] const T* native_weights() const noexcept { return native_weights_; }

  /// hidden [B x D], topk_ids [B x K], topk_weights [B x K] -> out [B x D], all in the
  /// execution space's memory. Collective: every rank calls it, with its own B (may be 0).
  ///
  /// Errors: a local error aborts the transport so that no other rank waits for this one;
  /// every rank's forward then throws llep::Error. With a RecoverableTransport (HostThreads,
  /// PeerCopy) each rank then waits, before it rethrows, until every rank has left the
  /// failed step and clears the abort, so the next step works on the same group. Other
  /// transports (Nccl) stay aborted: rebuild the communicator.
  template <class G>
  const StepReport& forward(std::span<const T> hidden, std::span<const std::int32_t> topk_ids,
                            std::span<const G> topk_weights, std::span<T> out) {
    try {
      step(hidden, topk_ids, topk_weights, out);
    } catch (const std::exception& e) {
      transport_->abort(e.what());
      if constexpr (RecoverableTransport<Tr>) (void)transport_->recover();
      throw;
    }
    return report_;
  }

  /// The configuration fingerprint this rank sends with its counts (layer/fingerprint.hpp).
  [[nodiscard]] std::uint64_t config_fingerprint() const noexcept { return config_; }

 private:
  template <class G>
  void step(std::span<const T> hidden, std::span<const std::int32_t> ids, std::span<const G> gates, std::span<T> out) {
    const auto D = static_cast<std::size_t>(experts_.hidden());
    const auto K = static_cast<std::size_t>(top_k_);
    const int N = topo_.experts();
    LLEP_EXPECTS(hidden.size() % D == 0, "hidden has ", hidden.size(), " elements, not a multiple of D = ", D);
    const std::size_t B = hidden.size() / D;
    LLEP_EXPECTS(ids.size() == B * K, "topk_ids has ", ids.size(), " entries; B x K = ", B, " x ", K);
    LLEP_EXPECTS(gates.size() == B * K, "topk_weights has ", gates.size(), " entries; B x K = ", B, " x ", K);
    LLEP_EXPECTS(out.size() == B * D, "out has ", out.size(), " elements; B x D = ", B, " x ", D);
    LLEP_EXPECTS(native_weights_ != nullptr || topo_.experts_per_rank() == 0,
                 "rank ", rank_, " has no native expert weights: call set_native_weights first");
    LLEP_EXPECTS(B * K <= static_cast<std::size_t>(INT32_MAX), "B x K = ", B * K, " pairs exceed 2^31 on rank ", rank_);

    // 1-2. Count and gather C (one device-to-host copy), then plan: same plan on every rank.
    stats_.update(exec_, *transport_, ids.data(), B * K, StepShape{N, top_k_, static_cast<count_t>(B), config_});
    planner_.plan(stats_.loads(), topo_, plan_);
    check_plan(plan_, stats_.loads(), topo_, Plnr::name, check_);
    layout_.build(stats_.counts(), plan_, topo_, rank_);

    // 3. Step memory, carved from the execution space's workspace.
    const std::size_t pairs = B * K, rows = static_cast<std::size_t>(layout_.compute_rows());
    const auto tasks = layout_.tasks();
    std::size_t max_task = 0;
    for (const ComputeTask& t : tasks) max_task = std::max(max_task, static_cast<std::size_t>(t.rows));
    incoming_.clear();
    for (const WeightTransfer& w : plan_.weight_transfers())
      if (w.dst == rank_) incoming_.push_back(w.expert);
    const std::size_t welems = experts_.weight_elems();
    Carve c;
    const std::size_t o_send = c.take(pairs * D * sizeof(T)), o_recv = c.take(rows * D * sizeof(T)),
                      o_cin = c.take(rows * D * sizeof(T)), o_cout = c.take(rows * D * sizeof(T)),
                      o_foreign = c.take(incoming_.size() * welems * sizeof(T)),
                      o_scratch = c.take(experts_.scratch_bytes(static_cast<count_t>(max_task), static_cast<count_t>(rows))),
                      o_order = c.take(pairs * sizeof(std::int32_t)), o_pair_row = c.take(pairs * sizeof(std::int32_t)),
                      o_row_pair = c.take(pairs * sizeof(std::int32_t)), o_crow = c.take(rows * sizeof(std::int32_t)),
                      o_blocks = c.take(layout_.send_blocks().size_bytes()),
                      o_chunks = c.take(layout_.recv_chunks().size_bytes());
    std::byte* ws = exec_.workspace(c.size);
    auto at = [&](std::size_t off) { return ws + off; };
    T* send = reinterpret_cast<T*>(at(o_send));
    T* recv = reinterpret_cast<T*>(at(o_recv));
    T* cin = reinterpret_cast<T*>(at(o_cin));
    T* cout = reinterpret_cast<T*>(at(o_cout));
    T* foreign = reinterpret_cast<T*>(at(o_foreign));
    auto* order = reinterpret_cast<std::int32_t*>(at(o_order));
    auto* pair_row = reinterpret_cast<std::int32_t*>(at(o_pair_row));
    auto* row_pair = reinterpret_cast<std::int32_t*>(at(o_row_pair));
    auto* crow = reinterpret_cast<std::int32_t*>(at(o_crow));
    auto* blocks = reinterpret_cast<SendBlock*>(at(o_blocks));
    auto* chunks = reinterpret_cast<RecvChunk*>(at(o_chunks));
    exec_.from_host(blocks, layout_.send_blocks().data(), layout_.send_blocks().size_bytes());
    exec_.from_host(chunks, layout_.recv_chunks().data(), layout_.recv_chunks().size_bytes());

    // 4. Dispatch: sort pairs by expert, permute K-repeated token rows into send order.
    exec_.sort_by_expert(ids.data(), pairs, N, order);
    exec_.for_each_n(pairs, AssignSendRows{blocks, static_cast<std::int32_t>(layout_.send_blocks().size()), order,
                                           pair_row, row_pair});
    const std::size_t row_bytes = D * sizeof(T);
    copy_rows(exec_, true, send, hidden.data(), row_pair, pairs, row_bytes, top_k_);

    // Weights of spilled experts travel native -> helper, then the tokens.
    weight_ops_.clear();
    for (const WeightTransfer& w : plan_.weight_transfers()) {
      if (w.src == rank_)
        weight_ops_.push_back(P2pOp{P2pOp::Kind::send, w.dst,
                                    const_cast<T*>(native_weights_ + static_cast<std::size_t>(slot(w.expert)) * welems),
                                    welems * sizeof(T)});
      if (w.dst == rank_)
        weight_ops_.push_back(P2pOp{P2pOp::Kind::recv, w.src, foreign + foreign_index(w.expert) * welems,
                                    welems * sizeof(T)});
    }
    // A transport with a separate weights path (Nccl) moves them while the tokens move and
    // the native experts compute; the others move them first.
    constexpr bool overlap = WeightsPathTransport<Tr>;
    if constexpr (overlap) transport_->exchange_weights(weight_ops_);
    else transport_->exchange(weight_ops_);
    to_bytes(layout_.send_counts(), layout_.send_offsets(), row_bytes, send_bytes_, send_offs_);
    to_bytes(layout_.recv_counts(), layout_.recv_offsets(), row_bytes, recv_bytes_, recv_offs_);
    transport_->all_to_all_v(send, send_bytes_, send_offs_, recv, recv_bytes_, recv_offs_);

    // 5. Compute: received rows into task order, every (expert, segment) through its FFN.
    exec_.for_each_n(rows, AssignComputeRows{chunks, static_cast<std::int32_t>(layout_.recv_chunks().size()), crow});
    copy_rows(exec_, false, cin, recv, crow, rows, row_bytes);
    // Native experts first: they need no transferred weights. Then the foreign ones.
    expert_tasks_.clear();
    std::size_t natives = 0;
    for (const bool native : {true, false})
      for (const ComputeTask& t : tasks) {
        if (t.native != native) continue;
        const T* w = t.native ? native_weights_ + static_cast<std::size_t>(slot(t.expert)) * welems
                              : foreign + foreign_index(t.expert) * welems;
        const auto off = static_cast<std::size_t>(t.row) * D;
        expert_tasks_.push_back(ExpertTask<T>{t.expert, w, cin + off, cout + off, t.rows});
        natives += native ? 1 : 0;
      }
    const std::span<const ExpertTask<T>> all(expert_tasks_);
    experts_.compute(exec_, all.first(natives), at(o_scratch));
    if constexpr (overlap) transport_->join_weights();
    if (natives < all.size()) experts_.compute(exec_, all.subspan(natives), at(o_scratch));

    // 6. Combine: back to receive order, reverse all-to-all, weighted sum over K.
    copy_rows(exec_, true, recv, cout, crow, rows, row_bytes);
    transport_->all_to_all_v(recv, recv_bytes_, recv_offs_, send, send_bytes_, send_offs_);
    exec_.for_each_n(B * D, CombineTopK<T, G>{out.data(), send, pair_row, gates.data(), top_k_, D});

    fill_report(c.size, row_bytes, welems * sizeof(T));
  }

  void fill_report(std::size_t workspace, std::size_t row_bytes, std::size_t expert_bytes) {
    const int P = topo_.ranks();
    StepReport& r = report_;
    r.policy = plan_.policy();
    r.rank = rank_;
    r.capacity = plan_.capacity();
    r.native_rows.assign(static_cast<std::size_t>(P), 0);
    r.foreign_rows.assign(static_cast<std::size_t>(P), 0);
    max_rows_.assign(static_cast<std::size_t>(P), 0);
    for (const Segment& s : plan_.segments()) {
      // Rows on a rank that holds the expert (native or replica) count as native rows:
      // no weights moved for them.
      auto& bucket = topo_.holds(s.expert, s.rank) ? r.native_rows : r.foreign_rows;
      bucket[static_cast<std::size_t>(s.rank)] += s.size();
      max_rows_[static_cast<std::size_t>(s.rank)] = std::max(max_rows_[static_cast<std::size_t>(s.rank)], s.size());
    }
    r.peak_bytes.assign(static_cast<std::size_t>(P), 0);
    for (int q = 0; q < P; ++q) {
      const auto rows = r.rows(q);
      r.peak_bytes[static_cast<std::size_t>(q)] = static_cast<std::size_t>(rows) * 2 * row_bytes +
                                                  experts_.scratch_bytes(max_rows_[static_cast<std::size_t>(q)], rows);
    }
    for (const WeightTransfer& w : plan_.weight_transfers()) r.peak_bytes[static_cast<std::size_t>(w.dst)] += expert_bytes;
    r.weight_transfers = plan_.weight_transfers().size();
    r.imbalance_after = imbalance(plan_.rank_loads());
    max_rows_.resize(static_cast<std::size_t>(P));
    native_rank_loads(stats_.loads(), topo_, max_rows_);
    r.imbalance_before = imbalance(max_rows_);
    r.token_bytes_sent = r.token_bytes_received = 0;
    for (int q = 0; q < P; ++q) {
      if (q == rank_) continue;
      r.token_bytes_sent += send_bytes_[static_cast<std::size_t>(q)] + recv_bytes_[static_cast<std::size_t>(q)];
      r.token_bytes_received += recv_bytes_[static_cast<std::size_t>(q)] + send_bytes_[static_cast<std::size_t>(q)];
    }
    r.weight_bytes_sent = r.weight_bytes_received = 0;
    for (const P2pOp& op : weight_ops_) (op.kind == P2pOp::Kind::send ? r.weight_bytes_sent : r.weight_bytes_received) += op.bytes;
    r.workspace_bytes = workspace;
    (void)row_bytes;
  }

  /// Aligned offsets into one workspace allocation.
  struct Carve {
    std::size_t size = 0;
    std::size_t take(std::size_t bytes) {
      const std::size_t off = (size + 255) / 256 * 256;
      size = off + bytes;
      return off;
    }
  };

  void check_weights(const Topology& topo, std::span<const T> weights) const {
    const std::size_t want = static_cast<std::size_t>(topo.slots_per_rank()) * experts_.weight_elems();
    LLEP_EXPECTS(weights.size() == want && (weights.data() != nullptr || want == 0), "rank ", rank_,
                 "'s weights hold ", weights.size(), " elements but it holds ", topo.slots_per_rank(),
                 " experts (natives and replicas) of ", experts_.weight_elems(), " elements each = ", want);
  }

  // Slot of each expert this rank holds in its weights, -1 for the others; and the
  // configuration fingerprint, which depends on the placement.
  void build_slots() {
    config_ = llep::config_fingerprint(topo_, top_k_, planner_,
                                       {experts_.hidden(), experts_.intermediate(),
                                        static_cast<std::int64_t>(experts_.weight_elems()),
                                        static_cast<std::int64_t>(sizeof(T))});
    native_slot_.assign(static_cast<std::size_t>(topo_.experts()), -1);
    int slot = 0;
    for (int e = 0; e < topo_.experts(); ++e)
      if (topo_.holds(e, rank_)) native_slot_[static_cast<std::size_t>(e)] = slot++;
  }

  [[nodiscard]] int slot(int expert) const { return native_slot_[static_cast<std::size_t>(expert)]; }
  [[nodiscard]] std::size_t foreign_index(int expert) const {
    return static_cast<std::size_t>(std::find(incoming_.begin(), incoming_.end(), expert) - incoming_.begin());
  }
  static void to_bytes(std::span<const count_t> rows, std::span<const count_t> offs, std::size_t row_bytes,
                       std::vector<std::size_t>& bytes, std::vector<std::size_t>& byte_offs) {
    bytes.resize(rows.size());
    byte_offs.resize(rows.size());
    for (std::size_t i = 0; i < rows.size(); ++i) {
      bytes[i] = static_cast<std::size_t>(rows[i]) * row_bytes;
      byte_offs[i] = static_cast<std::size_t>(offs[i]) * row_bytes;
    }
  }

  Topology topo_;
  int top_k_;
  Plnr planner_;
  Experts experts_;
  Tr* transport_;
  Exec exec_;
  Stats stats_;
  int rank_ = 0;
  const T* native_weights_ = nullptr;
  std::vector<int> native_slot_;
  std::uint64_t config_ = 0;
  Plan plan_;
  PlanCheckScratch check_;
  Layout layout_;
  StepReport report_;
  std::vector<int> incoming_;
  std::vector<P2pOp> weight_ops_;
  std::vector<ExpertTask<T>> expert_tasks_;
  std::vector<std::size_t> send_bytes_, send_offs_, recv_bytes_, recv_offs_;
  std::vector<count_t> max_rows_;
};

}  // namespace llep
