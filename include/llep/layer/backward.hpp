#pragma once
// backward: one rank's backward pass of a MoeLayer step, collective like forward. Read top
// to bottom: checks and agreement, permutations, dispatch (inputs, upstream gradients,
// gates), experts (recomputed output, then backward), combine (input and gate gradients),
// weight gradients returned to their holders.
//
// Given the forward's plan and layout (ForwardRecord) and the upstream gradient
// grad_out [B x D] of out = sum_k gate_k * expert_k(hidden):
//   grad_hidden[t]       = sum_k gate_k * d expert_k / d x (grad_out[t])     rows back, summed over K
//   grad_topk_weights[t][k] = <grad_out[t], expert_k(hidden[t])>             biases included
//   expert weights       += sum over the expert's rows of its weight gradient
// grad_out rows travel like the tokens (the same all-to-all), the input gradients come
// back like the outputs (sizes swapped). Each computing rank scales its rows by the gate
// and runs the expert functor's backward (experts/expert_backward.hpp).
//
// Weight gradients, deterministically: a rank that computed a foreign expert (one or more
// segments: ONE gradient per expert) sends it to every holder of that expert. A holder that
// is the expert's only holder adds its own rows' gradient into the caller's buffer
// (GradMode) and then each helper's, in ascending helper rank. With replicas, holders also
// send each other their own partials, and every holder forms the same sum, over all
// contributors in ascending rank, so replicated weights stay identical after a step. The
// order depends only on the plan: not on timing or transport.
//
// Memory: recompute, nothing kept from forward but the plan and layout: the token rows are
// dispatched again, the foreign weights fetched again, and the experts' outputs (for the
// gate gradients) recomputed by a forward of the experts. Temporary gradients exist only
// for foreign experts and replicated ones; the caller's buffers take the natives' directly.
// BackwardReport says what each part held and moved.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "llep/core/concepts.hpp"
#include "llep/core/error.hpp"
#include "llep/core/plan.hpp"
#include "llep/experts/expert_backward.hpp"
#include "llep/layer/layout.hpp"
#include "llep/layer/report.hpp"
#include "llep/layer/row_ops.hpp"

namespace llep {

/// What backward needs from a forward step (filled by forward_recorded): the plan and the
/// layout, host data. One backward per forward.
struct ForwardRecord {
  Plan plan;
  Layout layout;
  int top_k = 0;
  count_t tokens = 0;
  bool filled = false;  ///< the last forward with this record succeeded
  bool used = false;    ///< a backward ran on it
  // Host bookkeeping of backward, kept so that a warm record does not allocate.
  std::vector<int> incoming, temp_experts, recv_of, helpers;
  std::vector<std::uint64_t> fingerprints;
  std::vector<P2pOp> ops;
  std::vector<std::size_t> sizes[4], scalar_sizes[4];
};

/// What one backward did on this rank.
struct BackwardReport {
  std::size_t workspace_bytes = 0;        ///< all of backward's step memory on this rank
  std::size_t token_bytes_sent = 0;       ///< rows and scalars, both directions
  std::size_t token_bytes_received = 0;
  std::size_t weight_bytes_received = 0;  ///< foreign weights fetched again
  std::size_t grad_bytes_sent = 0;        ///< weight gradients to holders
  std::size_t grad_bytes_received = 0;
  std::size_t temp_grad_bytes = 0;        ///< gradients of foreign and replicated experts held in the step
  count_t rows = 0;                       ///< rows this rank's experts ran backward on
};

/// The arguments of backward, in the execution space's memory. `hidden`, `topk_ids` and
/// `topk_weights` are forward's; `grad_weights` holds one gradient per expert this rank
/// holds, laid out as set_native_weights' weights (Topology::slots_per_rank() x
/// weight_elems() of GW: T, or float for 16-bit T where the functor allows it).
template <class T, class G, class GW>
struct BackwardArgs {
  std::span<const T> hidden;
  std::span<const std::int32_t> topk_ids;
  std::span<const G> topk_weights;
  std::span<const T> grad_out;      ///< [B x D]
  std::span<T> grad_hidden;         ///< [B x D], overwritten
  std::span<G> grad_topk_weights;   ///< [B x K], overwritten
  std::span<GW> grad_weights;
  GradMode mode = GradMode::overwrite;
};

/// forward, and fill `rec` for a later backward.
template <class Layer, class G>
const StepReport& forward_recorded(Layer& layer, ForwardRecord& rec, std::span<const typename Layer::value_type> hidden,
                                   std::span<const std::int32_t> topk_ids, std::span<const G> topk_weights,
                                   std::span<typename Layer::value_type> out) {
  rec.filled = false;
  const StepReport& r = layer.forward(hidden, topk_ids, topk_weights, out);
  rec.plan = layer.plan();
  rec.layout = layer.layout();
  rec.top_k = layer.top_k();
  rec.tokens = static_cast<count_t>(hidden.size() / static_cast<std::size_t>(layer.experts().hidden()));
  rec.filled = true;
  rec.used = false;
  return r;
}

namespace detail::backward {

/// Per compute row r: s[r] = <g[r], y[r]> (the gate's gradient), then g[r] *= gate[r] (the
/// expert's upstream gradient).
template <class T, class G>
struct GateGradients {
  T* g;
  const T* y;
  const G* gate;
  G* s;
  std::size_t hidden;
  LLEP_HOST_DEVICE void operator()(std::size_t r) const {
    using A = accumulate_t<T>;
    A dot = A(0);
    const A w = static_cast<A>(gate[r]);
    for (std::size_t d = 0; d < hidden; ++d) {
      const std::size_t i = r * hidden + d;
      dot += static_cast<A>(g[i]) * static_cast<A>(y[i]);
      g[i] = static_cast<T>(w * static_cast<A>(g[i]));
    }
    s[r] = static_cast<G>(dot);
  }
};

/// dst[i] = dst[i] + src[i] (add) or src[i], in the accumulation type.
template <class GW>
struct AddGradient {
  GW* dst;
  const GW* src;
  bool add;
  LLEP_HOST_DEVICE void operator()(std::size_t i) const {
    using A = accumulate_t<GW>;
    dst[i] = add ? static_cast<GW>(static_cast<A>(dst[i]) + static_cast<A>(src[i])) : src[i];
  }
};

inline std::uint64_t mix(std::uint64_t h, std::uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
  return h;
}

/// What every rank must agree on before backward moves a byte.
inline std::uint64_t agreement(const ForwardRecord& rec, GradMode mode, std::size_t g_bytes, std::size_t gw_bytes) {
  std::uint64_t h = mix(0, static_cast<std::uint64_t>(mode));
  h = mix(h, g_bytes);
  h = mix(h, gw_bytes);
  h = mix(h, static_cast<std::uint64_t>(rec.top_k));
  for (const Segment& s : rec.plan.segments()) {
    h = mix(h, static_cast<std::uint64_t>(s.expert));
    h = mix(h, static_cast<std::uint64_t>(s.rank));
    h = mix(h, static_cast<std::uint64_t>(s.begin));
    h = mix(h, static_cast<std::uint64_t>(s.end));
  }
  for (const WeightTransfer& w : rec.plan.weight_transfers())
    h = mix(mix(mix(h, static_cast<std::uint64_t>(w.expert)), static_cast<std::uint64_t>(w.src)),
            static_cast<std::uint64_t>(w.dst));
  return h;
}

inline void to_bytes(std::span<const count_t> rows, std::size_t unit, std::vector<std::size_t>& out) {
  out.resize(rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) out[i] = static_cast<std::size_t>(rows[i]) * unit;
}

/// The ranks that computed a foreign segment of `expert` (distinct, ascending).
inline void helpers_of(const Plan& plan, int expert, std::vector<int>& out) {
  out.clear();
  for (const WeightTransfer& w : plan.weight_transfers())
    if (w.expert == expert && std::find(out.begin(), out.end(), w.dst) == out.end()) out.push_back(w.dst);
  std::sort(out.begin(), out.end());
}

}  // namespace detail::backward

namespace detail::backward {

template <class Layer, class G, class GW>
BackwardReport run(Layer& layer, ForwardRecord& rec, const BackwardArgs<typename Layer::value_type, G, GW>& a) {
  using T = typename Layer::value_type;
  const Topology& topo = layer.topology();
  const auto& experts = layer.experts();
  auto& exec = layer.exec();
  auto& tr = layer.transport();
  const int rank = layer.rank(), P = topo.ranks(), N = topo.experts();
  const auto D = static_cast<std::size_t>(experts.hidden());
  const std::size_t W = experts.weight_elems(), row_bytes = D * sizeof(T);

  // 0. Local checks, then agreement: every rank sees every rank's fingerprint.
  LLEP_EXPECTS(rec.filled, "rank ", rank, ": backward without a successful forward on this record");
  LLEP_EXPECTS(!rec.used, "rank ", rank, ": second backward on one forward record; run forward again");
  rec.used = true;
  const auto K = static_cast<std::size_t>(rec.top_k);
  const auto B = static_cast<std::size_t>(rec.tokens);
  const std::size_t pairs = B * K;
  LLEP_EXPECTS(a.hidden.size() == B * D, "rank ", rank, ": hidden has ", a.hidden.size(), " elements; forward had B x D = ",
               B, " x ", D);
  LLEP_EXPECTS(a.grad_out.size() == B * D, "rank ", rank, ": grad_out has ", a.grad_out.size(),
               " elements; B x D = ", B, " x ", D);
  LLEP_EXPECTS(a.grad_hidden.size() == B * D, "rank ", rank, ": grad_hidden has ", a.grad_hidden.size(),
               " elements; B x D = ", B, " x ", D);
  LLEP_EXPECTS(a.topk_ids.size() == pairs && a.topk_weights.size() == pairs && a.grad_topk_weights.size() == pairs,
               "rank ", rank, ": topk_ids, topk_weights and grad_topk_weights have ", a.topk_ids.size(), ", ",
               a.topk_weights.size(), " and ", a.grad_topk_weights.size(), " entries; B x K = ", B, " x ", K);
  const auto slots = static_cast<std::size_t>(topo.slots_per_rank());
  LLEP_EXPECTS(a.grad_weights.size() == slots * W, "rank ", rank, ": grad_weights has ", a.grad_weights.size(),
               " elements; ", slots, " held experts x ", W, " = ", slots * W);
  LLEP_EXPECTS(static_cast<std::size_t>(rec.layout.pairs()) == pairs && rec.layout.rank() == rank, "rank ", rank,
               ": the record's layout is for another batch or rank");
  LLEP_EXPECTS(layer.native_weights() != nullptr, "rank ", rank, " has no weights: call set_native_weights");
  // Host bookkeeping: foreign weights (one slot per transfer received, as forward), and the
  // experts whose gradient lives in a temporary: foreign ones and those with replicas.
  const Plan& plan = rec.plan;
  const Layout& layout = rec.layout;
  auto holders = [&](int e) {
    int n = 0;
    for (int q = 0; q < P; ++q) n += topo.holds(e, q) ? 1 : 0;
    return n;
  };
  auto slot_of = [&](int e) {
    int s = 0;
    for (int f = 0; f < e; ++f) s += topo.holds(f, rank) ? 1 : 0;
    return static_cast<std::size_t>(s);
  };
  rec.incoming.clear();
  for (const WeightTransfer& w : plan.weight_transfers())
    if (w.dst == rank) rec.incoming.push_back(w.expert);
  auto foreign_index = [&](int e) {
    return static_cast<std::size_t>(std::find(rec.incoming.begin(), rec.incoming.end(), e) - rec.incoming.begin());
  };
  rec.temp_experts.clear();
  for (int e = 0; e < N; ++e) {
    const bool held = topo.holds(e, rank);
    const bool foreign = !held && std::find(rec.incoming.begin(), rec.incoming.end(), e) != rec.incoming.end();
    if (foreign || (held && holders(e) > 1)) rec.temp_experts.push_back(e);
  }
  auto temp_index = [&](int e) {
    const auto it = std::find(rec.temp_experts.begin(), rec.temp_experts.end(), e);
    return it == rec.temp_experts.end() ? SIZE_MAX : static_cast<std::size_t>(it - rec.temp_experts.begin());
  };
  // Gradients this rank receives: for each held expert, from each other contributor
  // (helpers, and the other holders when replicated), ascending expert then rank.
  std::vector<int>& helpers = rec.helpers;
  rec.recv_of.clear();  // flattened (expert, rank) pairs
  for (int e = 0; e < N; ++e) {
    if (!topo.holds(e, rank)) continue;
    detail::backward::helpers_of(plan, e, helpers);
    const bool replicated = holders(e) > 1;
    for (int q = 0; q < P; ++q) {
      if (q == rank) continue;
      const bool helper = std::find(helpers.begin(), helpers.end(), q) != helpers.end();
      if (helper || (replicated && topo.holds(e, q))) {
        rec.recv_of.push_back(e);
        rec.recv_of.push_back(q);
      }
    }
  }
  const std::size_t n_recv = rec.recv_of.size() / 2;

  // Step memory.
  const std::size_t rows = static_cast<std::size_t>(layout.compute_rows());
  const auto tasks = layout.tasks();
  count_t max_task = 0;
  for (const ComputeTask& t : tasks) max_task = std::max<count_t>(max_task, t.rows);
  const std::size_t scratch_bytes =
      std::max(experts.scratch_bytes(max_task, static_cast<count_t>(rows)),
               experts.backward_scratch_bytes(max_task, static_cast<count_t>(rows)));
  std::size_t ws_bytes = 0;
  auto take = [&ws_bytes](std::size_t bytes) {  // 256-aligned regions of one allocation
    const std::size_t at = (ws_bytes + 255) & ~std::size_t{255};
    ws_bytes = at + bytes;
    return at;
  };
  const std::size_t o_order = take(pairs * 4), o_pair_row = take(pairs * 4), o_row_pair = take(pairs * 4),
                    o_crow = take(rows * 4), o_blocks = take(layout.send_blocks().size_bytes()),
                    o_chunks = take(layout.recv_chunks().size_bytes()), o_send = take(pairs * row_bytes),
                    o_recv = take(rows * row_bytes), o_cin = take(rows * row_bytes), o_cg = take(rows * row_bytes),
                    o_cy = take(rows * row_bytes), o_gsend = take(pairs * sizeof(G)),
                    o_grecv = take(rows * sizeof(G)), o_cgate = take(rows * sizeof(G)),
                    o_cs = take(rows * sizeof(G)), o_foreign = take(rec.incoming.size() * W * sizeof(T)),
                    o_temp = take(rec.temp_experts.size() * W * sizeof(GW)),
                    o_grecvw = take(n_recv * W * sizeof(GW)), o_scratch = take(scratch_bytes),
                    o_agree = take((static_cast<std::size_t>(P) + 1) * sizeof(std::uint64_t));
  std::byte* ws = exec.workspace(ws_bytes);
  auto at = [&](std::size_t off) { return ws + off; };
  auto* order = reinterpret_cast<std::int32_t*>(at(o_order));
  auto* pair_row = reinterpret_cast<std::int32_t*>(at(o_pair_row));
  auto* row_pair = reinterpret_cast<std::int32_t*>(at(o_row_pair));
  auto* crow = reinterpret_cast<std::int32_t*>(at(o_crow));
  auto* blocks = reinterpret_cast<SendBlock*>(at(o_blocks));
  auto* chunks = reinterpret_cast<RecvChunk*>(at(o_chunks));
  T* send = reinterpret_cast<T*>(at(o_send));
  T* recv = reinterpret_cast<T*>(at(o_recv));
  T* cin = reinterpret_cast<T*>(at(o_cin));
  T* cg = reinterpret_cast<T*>(at(o_cg));
  T* cy = reinterpret_cast<T*>(at(o_cy));
  G* gsend = reinterpret_cast<G*>(at(o_gsend));
  G* grecv = reinterpret_cast<G*>(at(o_grecv));
  G* cgate = reinterpret_cast<G*>(at(o_cgate));
  G* cs = reinterpret_cast<G*>(at(o_cs));
  T* foreign = reinterpret_cast<T*>(at(o_foreign));
  GW* temp = reinterpret_cast<GW*>(at(o_temp));
  GW* grecvw = reinterpret_cast<GW*>(at(o_grecvw));
  void* scratch = at(o_scratch);

  // Agreement before any other collective: every rank sees every rank's fingerprint (in
  // the transport's memory, so through the execution space).
  {
    auto* agree = reinterpret_cast<std::uint64_t*>(at(o_agree));
    const std::uint64_t mine = agreement(rec, a.mode, sizeof(G), sizeof(GW));
    exec.from_host(agree, &mine, sizeof(mine));
    tr.all_gather(agree, sizeof(mine), agree + 1);
    std::vector<std::uint64_t>& all = rec.fingerprints;
    all.resize(static_cast<std::size_t>(P));
    exec.to_host(all.data(), agree + 1, all.size() * sizeof(mine));
    exec.synchronize();
    for (int q = 0; q < P; ++q)
      LLEP_EXPECTS(all[static_cast<std::size_t>(q)] == all[0], "backward: rank ", q,
                   " disagrees with rank 0 on the plan, the gradient mode or the gradient types");
  }

  // 1. Permutations, as forward made them (the same layout, the same ids).
  exec.from_host(blocks, layout.send_blocks().data(), layout.send_blocks().size_bytes());
  exec.from_host(chunks, layout.recv_chunks().data(), layout.recv_chunks().size_bytes());
  exec.sort_by_expert(a.topk_ids.data(), pairs, N, order);
  exec.for_each_n(pairs, AssignSendRows{blocks, static_cast<std::int32_t>(layout.send_blocks().size()), order, pair_row,
                                        row_pair});
  exec.for_each_n(rows, AssignComputeRows{chunks, static_cast<std::int32_t>(layout.recv_chunks().size()), crow});

  // 2. Foreign weights again, as forward received them.
  const T* native = layer.native_weights();
  rec.ops.clear();
  for (const WeightTransfer& w : plan.weight_transfers()) {
    if (w.src == rank)
      rec.ops.push_back(P2pOp{P2pOp::Kind::send, w.dst, const_cast<T*>(native + slot_of(w.expert) * W), W * sizeof(T)});
    if (w.dst == rank)
      rec.ops.push_back(P2pOp{P2pOp::Kind::recv, w.src, foreign + foreign_index(w.expert) * W, W * sizeof(T)});
  }
  BackwardReport report;
  for (const P2pOp& op : rec.ops)
    if (op.kind == P2pOp::Kind::recv) report.weight_bytes_received += op.bytes;
  tr.exchange(rec.ops);

  // 3. Dispatch the token rows, the upstream gradients and the gates like forward's tokens.
  auto& [sb, so, rb, ro] = rec.sizes;
  to_bytes(layout.send_counts(), row_bytes, sb);
  to_bytes(layout.send_offsets(), row_bytes, so);
  to_bytes(layout.recv_counts(), row_bytes, rb);
  to_bytes(layout.recv_offsets(), row_bytes, ro);
  auto& [ssb, sso, srb, sro] = rec.scalar_sizes;
  to_bytes(layout.send_counts(), sizeof(G), ssb);
  to_bytes(layout.send_offsets(), sizeof(G), sso);
  to_bytes(layout.recv_counts(), sizeof(G), srb);
  to_bytes(layout.recv_offsets(), sizeof(G), sro);
  const auto top_k = static_cast<std::int32_t>(K);
  for (const auto& [src, dst] : {std::pair{a.hidden.data(), cin}, std::pair{a.grad_out.data(), cg}}) {
    copy_rows(exec, true, send, src, row_pair, pairs, row_bytes, top_k);
    tr.all_to_all_v(send, sb, so, recv, rb, ro);
    copy_rows(exec, false, dst, recv, crow, rows, row_bytes);
  }
  copy_rows(exec, true, gsend, a.topk_weights.data(), row_pair, pairs, sizeof(G));
  tr.all_to_all_v(gsend, ssb, sso, grecv, srb, sro);
  copy_rows(exec, false, cgate, grecv, crow, rows, sizeof(G));

  // 4. Experts: outputs again (for the gate gradients), then backward. Gradients of
  // experts held here alone go to the caller's buffer; the others to temporaries.
  auto weights_of = [&](const ComputeTask& t) {
    return t.native ? native + slot_of(t.expert) * W : foreign + foreign_index(t.expert) * W;
  };
  // Task lists per thread and instantiation: no allocation once warm.
  thread_local std::vector<ExpertTask<T>> fwd;
  thread_local std::vector<ExpertGradTask<T, GW>> direct, temps;
  fwd.clear();
  direct.clear();
  temps.clear();
  for (const ComputeTask& t : tasks) {
    const auto off = static_cast<std::size_t>(t.row) * D;
    fwd.push_back(ExpertTask<T>{t.expert, weights_of(t), cin + off, cy + off, t.rows});
  }
  experts.compute(exec, std::span<const ExpertTask<T>>(fwd), scratch);
  exec.for_each_n(rows, GateGradients<T, G>{cg, cy, cgate, cs, D});

  for (int e = 0; e < N; ++e) {
    const std::size_t ti = temp_index(e);
    const bool held = topo.holds(e, rank);
    if (!held && ti == SIZE_MAX) continue;
    GW* buf = ti != SIZE_MAX ? temp + ti * W : a.grad_weights.data() + slot_of(e) * W;
    auto& list = ti != SIZE_MAX ? temps : direct;
    const std::size_t before = list.size();
    for (const ComputeTask& t : tasks) {
      if (t.expert != e) continue;
      const auto off = static_cast<std::size_t>(t.row) * D;
      list.push_back(ExpertGradTask<T, GW>{e, weights_of(t), cin + off, cg + off, cy + off, buf, nullptr, t.rows});
    }
    if (list.size() == before) list.push_back(ExpertGradTask<T, GW>{e, nullptr, nullptr, nullptr, nullptr, buf, nullptr, 0});
  }
  experts.backward(exec, std::span<const ExpertGradTask<T, GW>>(direct), a.mode, scratch);
  experts.backward(exec, std::span<const ExpertGradTask<T, GW>>(temps), GradMode::overwrite, scratch);

  // 5. Combine: input gradients and gate gradients back to the tokens' ranks.
  copy_rows(exec, true, recv, cy, crow, rows, row_bytes);
  tr.all_to_all_v(recv, rb, ro, send, sb, so);
  // The rows carry their gate already: a combine with unit weights.
  exec.for_each_n(B * D, CombineTopK<T, G>{a.grad_hidden.data(), send, pair_row, nullptr, top_k, D});
  copy_rows(exec, true, grecv, cs, crow, rows, sizeof(G));
  tr.all_to_all_v(grecv, srb, sro, gsend, ssb, sso);
  copy_rows(exec, true, a.grad_topk_weights.data(), gsend, pair_row, pairs, sizeof(G));

  // 6. Weight gradients to the holders: per expert ascending, one message per (expert,
  // peer) pair, so both sides list their operations with a peer in the same order.
  rec.ops.clear();
  std::size_t r_next = 0;
  for (int e = 0; e < N; ++e) {
    const std::size_t ti = temp_index(e);
    const bool held = topo.holds(e, rank);
    if (ti != SIZE_MAX)  // foreign, or held with replicas: to every other holder
      for (int q = 0; q < P; ++q)
        if (q != rank && topo.holds(e, q))
          rec.ops.push_back(P2pOp{P2pOp::Kind::send, q, temp + ti * W, W * sizeof(GW)});
    if (held)
      for (; r_next < n_recv && rec.recv_of[2 * r_next] == e; ++r_next)
        rec.ops.push_back(P2pOp{P2pOp::Kind::recv, rec.recv_of[2 * r_next + 1], grecvw + r_next * W, W * sizeof(GW)});
  }
  for (const P2pOp& op : rec.ops) (op.kind == P2pOp::Kind::send ? report.grad_bytes_sent : report.grad_bytes_received) += op.bytes;
  tr.exchange(rec.ops);

  // Sums in ascending contributor rank. Alone: the caller's buffer already holds this
  // rank's part. Replicated: every holder runs the same sequence over the same terms.
  for (std::size_t i = 0; i < n_recv;) {
    const int e = rec.recv_of[2 * i];
    std::size_t j = i;
    while (j < n_recv && rec.recv_of[2 * j] == e) ++j;
    GW* buf = a.grad_weights.data() + slot_of(e) * W;
    const std::size_t ti = temp_index(e);
    if (ti == SIZE_MAX) {
      for (std::size_t k = i; k < j; ++k) exec.for_each_n(W, AddGradient<GW>{buf, grecvw + k * W, true});
    } else {
      // Terms k = i .. j - 1 are received (ascending rank); this rank's own goes in between.
      bool add = a.mode == GradMode::accumulate, mine = false;
      for (std::size_t k = i; k < j || !mine; ++k) {
        if (!mine && (k == j || rec.recv_of[2 * k + 1] > rank)) {
          exec.for_each_n(W, AddGradient<GW>{buf, temp + ti * W, add});
          add = mine = true;
        }
        if (k < j) {
          exec.for_each_n(W, AddGradient<GW>{buf, grecvw + k * W, add});
          add = true;
        }
      }
    }
    i = j;
  }

  report.workspace_bytes = ws_bytes;
  report.rows = static_cast<count_t>(rows);
  report.temp_grad_bytes = rec.temp_experts.size() * W * sizeof(GW);
  for (int q = 0; q < P; ++q) {
    if (q == rank) continue;
    const auto uq = static_cast<std::size_t>(q);
    report.token_bytes_sent += 2 * sb[uq] + ssb[uq] + rb[uq] + srb[uq];
    report.token_bytes_received += 2 * rb[uq] + srb[uq] + sb[uq] + ssb[uq];
  }
  return report;
}

}  // namespace detail::backward

/// One rank's backward of the step recorded in `rec` (see the header comment). Collective:
/// every rank calls it after the same forward. A local error aborts the transport so that
/// no rank waits; ranks that disagree (mode, gradient type, plan) all throw llep::Error.
template <class Layer, class G, class GW>
BackwardReport backward(Layer& layer, ForwardRecord& rec, const BackwardArgs<typename Layer::value_type, G, GW>& args) {
  using E = std::remove_cvref_t<decltype(layer.experts())>;
  using Exec = std::remove_cvref_t<decltype(layer.exec())>;
  static_assert(ExpertBackward<E, Exec>,
                "llep: backward needs an expert functor with a backward pass (llep::ExpertBackward; see "
                "llep/experts/expert_backward.hpp for the members to add)");
  if constexpr (ExpertBackward<E, Exec>) {
    try {
      return detail::backward::run(layer, rec, args);
    } catch (const std::exception& e) {
      layer.transport().abort(e.what());
      throw;
    }
  }
  return {};
}

}  // namespace llep
