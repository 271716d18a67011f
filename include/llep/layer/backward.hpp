#pragma once
// backward: one rank's backward pass of a MoeLayer step, collective like forward. Read top
// to bottom: checks and agreement, permutations, dispatch (inputs, upstream gradients,
// gates), experts (recomputed output, then backward), combine (input and gate gradients),
// weight gradients returned to their holders.
//
// Given forward's handle (layer/handle.hpp: plan, layout, tasks, permutations, received
// weights, optionally the experts' inputs) and the upstream gradient grad_out [B x D] of
// out = sum_k gate_k * expert_k(hidden):
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
// Memory: the handle keeps the permutations; the received foreign weights unless
// handle.refetch_weights, else backward fetches them again from their holders (the plan's
// transfers once more); with handle.save_inputs the experts' inputs, else the token rows
// are dispatched again; with handle.saved_memory the experts' pre-activations, else the
// functor recomputes them; with handle.save_outputs the experts' outputs (for the gate
// gradients), else a forward of the experts recomputes them. Every choice gives the same
// bits. Temporary gradients exist only for foreign experts and replicated ones; the
// caller's buffers take the natives' directly. BackwardReport says what each part held
// and moved; backward_workspace_bytes(limits, keeps) bounds backward's step memory.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "llep/core/accumulate.hpp"
#include "llep/core/carve.hpp"
#include "llep/core/error.hpp"
#include "llep/core/plan.hpp"
#include "llep/experts/expert_backward.hpp"
#include "llep/layer/handle.hpp"
#include "llep/layer/layout.hpp"
#include "llep/layer/limits.hpp"
#include "llep/layer/row_ops.hpp"
#include "llep/layer/stages.hpp"
#include "llep/codec/exchange.hpp"
#include "llep/transport/transport.hpp"

namespace llep {

/// What one backward did on this rank.
struct BackwardReport {
  std::size_t workspace_bytes = 0;        ///< all of backward's step memory on this rank
  std::size_t token_bytes_sent = 0;       ///< rows and scalars, both directions
  std::size_t token_bytes_received = 0;
  std::size_t grad_bytes_sent = 0;        ///< weight gradients to holders
  std::size_t grad_bytes_received = 0;
  std::size_t temp_grad_bytes = 0;        ///< gradients of foreign and replicated experts held in the step
  count_t rows = 0;                       ///< rows this rank's experts ran backward on
  bool inputs_dispatched_again = false;   ///< the handle did not keep the experts' inputs
  std::size_t saved_bytes = 0;            ///< pre-activations the handle kept (0: recomputed)
  // What the handle held from forward to backward for each memory option (0: not kept),
  // and what backward did instead.
  std::size_t kept_input_bytes = 0;       ///< experts' inputs (save_inputs)
  std::size_t kept_weight_bytes = 0;      ///< received foreign weights (0 with refetch_weights)
  std::size_t kept_output_bytes = 0;      ///< experts' outputs (save_outputs)
  bool weights_fetched_again = false;     ///< refetch_weights: the plan's transfers ran again
  std::size_t refetch_bytes_sent = 0;     ///< weight bytes of that second exchange (wire bytes)
  std::size_t refetch_bytes_received = 0;
  bool outputs_recomputed = false;        ///< the experts ran forward again for the gate gradients
};

/// The arguments of backward, in the execution space's memory. `hidden` and
/// `topk_weights` are forward's (`hidden` may be empty when the handle saved the experts'
/// inputs); `grad_weights` holds one gradient per expert this rank holds, laid out as
/// set_native_weights' weights (Topology::slots_per_rank() x weight_elems() of GW: T, or
/// float for 16-bit T where the functor allows it).
template <class T, class G, class GW>
struct BackwardArgs {
  std::span<const T> hidden;
  std::span<const G> topk_weights;
  std::span<const T> grad_out;      ///< [B x D]
  std::span<T> grad_hidden;         ///< [B x D], overwritten
  std::span<G> grad_topk_weights;   ///< [B x K], overwritten
  std::span<GW> grad_weights;
  GradMode mode = GradMode::overwrite;
};

namespace detail::backward {

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

inline std::uint64_t mix(std::uint64_t h, std::uint64_t v) { return h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2)); }

/// What every rank must agree on before backward moves a byte.
inline std::uint64_t agreement(const Plan& plan, int top_k, GradMode mode, std::size_t g_bytes, std::size_t gw_bytes,
                               bool refetch) {
  std::uint64_t h = mix(mix(mix(mix(mix(0, static_cast<std::uint64_t>(mode)), g_bytes), gw_bytes),
                            static_cast<std::uint64_t>(top_k)),
                        refetch ? 1 : 0);
  for (const Segment& s : plan.segments())
    for (const std::int64_t v : {std::int64_t{s.expert}, std::int64_t{s.rank}, std::int64_t{s.begin}, std::int64_t{s.end}})
      h = mix(h, static_cast<std::uint64_t>(v));
  for (const WeightTransfer& w : plan.weight_transfers())
    for (const std::int32_t v : {w.expert, w.src, w.dst}) h = mix(h, static_cast<std::uint64_t>(v));
  return h;
}

inline void to_bytes(std::span<const count_t> rows, std::size_t unit, std::vector<std::size_t>& out) {
  out.resize(rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) out[i] = static_cast<std::size_t>(rows[i]) * unit;
}

/// The sizes backward's step memory depends on.
struct Sizes {
  std::size_t pairs = 0, rows = 0, temps = 0, received = 0, ranks = 0, scratch = 0;
  std::size_t fetched = 0;  ///< foreign experts whose weights backward fetches again
  bool inputs_saved = false;
};

/// Byte offsets of backward's regions, 256-aligned, in one allocation.
struct Regions {
  std::size_t send, recv, cin, cg, cy, gsend, grecv, cgate, cs, temp, received, fetched, scratch, agree, total = 0;
  Regions(const Sizes& z, std::size_t row_bytes, std::size_t g_bytes, std::size_t expert_grad_bytes,
          std::size_t expert_bytes) {
    llep::Carve carve;
    auto take = [&carve](std::size_t bytes) { return carve.take(bytes); };
    send = take(z.pairs * row_bytes);
    recv = take(z.rows * row_bytes);
    cin = take(z.inputs_saved ? 0 : z.rows * row_bytes);
    cg = take(z.rows * row_bytes);
    cy = take(z.rows * row_bytes);
    gsend = take(z.pairs * g_bytes);
    grecv = take(z.rows * g_bytes);
    cgate = take(z.rows * g_bytes);
    cs = take(z.rows * g_bytes);
    temp = take(z.temps * expert_grad_bytes);
    received = take(z.received * expert_grad_bytes);
    fetched = take(z.fetched * expert_bytes);
    scratch = take(z.scratch);
    agree = take((z.ranks + 1) * sizeof(std::uint64_t));
    total = carve.bytes;
  }
};

/// Host bookkeeping of one rank's backward, reused across steps (no allocation when warm).
struct Book {
  std::vector<int> temp_experts, received, helpers;  // received: (expert, rank) pairs
  std::vector<int> slot, incoming;  // refetch: held experts' slots, foreign experts (ascending)
  std::vector<std::uint64_t> fingerprints;
  std::vector<P2pOp> ops, weight_ops;
  EncodedWeights encoded;
  std::vector<std::size_t> rows[4], scalars[4];
};

template <class Layer, class G, class GW>
BackwardReport run(Layer& layer, ForwardHandle<typename Layer::value_type>& h,
                   const BackwardArgs<typename Layer::value_type, G, GW>& a) {
  using T = typename Layer::value_type;
  const Topology& topo = layer.topology();
  const auto& experts = layer.experts();
  auto& exec = layer.exec();
  auto& tr = layer.transport();
  const int rank = layer.rank(), P = topo.ranks(), N = topo.experts();
  const auto D = static_cast<std::size_t>(experts.hidden());
  const std::size_t W = experts.weight_elems(), row_bytes = D * sizeof(T);
  thread_local Book book;  // one per rank thread

  // 0. Local checks (a failure aborts the transport), then agreement over every rank.
  LLEP_EXPECTS(h.filled, "rank ", rank,
               ": backward needs a forward with this handle before it (none succeeded, or its backward already ran)");
  h.filled = false;  // one backward per forward
  const auto K = static_cast<std::size_t>(h.top_k);
  const auto pairs = static_cast<std::size_t>(h.pairs), B = K > 0 ? pairs / K : 0;
  const bool saved = h.expert_inputs != nullptr;
  LLEP_EXPECTS(saved || a.hidden.size() == B * D, "rank ", rank, ": hidden has ", a.hidden.size(),
               " elements; forward had B x D = ", B, " x ", D, " (or save the inputs in the handle)");
  LLEP_EXPECTS(a.grad_out.size() == B * D, "rank ", rank, ": grad_out has ", a.grad_out.size(),
               " elements; B x D = ", B, " x ", D);
  LLEP_EXPECTS(a.grad_hidden.size() == B * D, "rank ", rank, ": grad_hidden has ", a.grad_hidden.size(),
               " elements; B x D = ", B, " x ", D);
  LLEP_EXPECTS(a.topk_weights.size() == pairs && a.grad_topk_weights.size() == pairs, "rank ", rank,
               ": topk_weights and grad_topk_weights have ", a.topk_weights.size(), " and ",
               a.grad_topk_weights.size(), " entries; B x K = ", B, " x ", K);
  const auto slots = static_cast<std::size_t>(topo.slots_per_rank());
  LLEP_EXPECTS(a.grad_weights.size() == slots * W, "rank ", rank, ": grad_weights has ", a.grad_weights.size(),
               " elements; ", slots, " held experts x ", W, " = ", slots * W);
  LLEP_EXPECTS(h.layout.rank() == rank && h.tasks.size() == h.layout.tasks().size(), "rank ", rank,
               ": the handle was filled by another rank's layer");

  // Host bookkeeping: experts whose gradient lives in a temporary (foreign ones, and held
  // ones with replicas), and the gradients this rank receives: for each held expert, from
  // each other contributor (its helpers, and its other holders when replicated), ascending
  // expert then rank.
  const Plan& plan = h.plan;
  const Layout& layout = h.layout;
  auto holders = [&](int e) {
    int n = 0;
    for (int q = 0; q < P; ++q) n += topo.holds(e, q) ? 1 : 0;
    return n;
  };
  auto slot_of = [&](int e) {
    std::size_t s = 0;
    for (int f = 0; f < e; ++f) s += topo.holds(f, rank) ? 1 : 0;
    return s;
  };
  book.temp_experts.clear();
  for (int e = 0; e < N; ++e) {
    const bool held = topo.holds(e, rank);
    bool foreign = false;
    for (const auto& t : h.tasks) foreign = foreign || (t.expert == e && !t.native);
    if (foreign || (held && holders(e) > 1)) book.temp_experts.push_back(e);
  }
  auto temp_index = [&](int e) {
    const auto it = std::find(book.temp_experts.begin(), book.temp_experts.end(), e);
    return it == book.temp_experts.end() ? SIZE_MAX : static_cast<std::size_t>(it - book.temp_experts.begin());
  };
  book.received.clear();
  for (int e = 0; e < N; ++e) {
    if (!topo.holds(e, rank)) continue;
    book.helpers.clear();
    for (const WeightTransfer& w : plan.weight_transfers())
      if (w.expert == e) book.helpers.push_back(w.dst);
    const bool replicated = holders(e) > 1;
    for (int q = 0; q < P; ++q) {
      const bool helper = std::find(book.helpers.begin(), book.helpers.end(), q) != book.helpers.end();
      if (q != rank && (helper || (replicated && topo.holds(e, q)))) {
        book.received.push_back(e);
        book.received.push_back(q);
      }
    }
  }
  const std::size_t n_received = book.received.size() / 2;

  // Foreign weights: kept in the handle since forward, or fetched again (refetch_weights)
  // into backward's memory, where held_expert / foreign_expert find them as in forward.
  const bool refetch = h.refetch_weights;
  for (const auto& t : h.tasks)
    LLEP_EXPECTS(refetch || t.weights != nullptr, "rank ", rank, ": the handle holds no weights of foreign expert ",
                 t.expert, " (forward ran with refetch_weights; keep the flag as it was until backward)");
  (void)step_sizes(layout, plan, rank, book.incoming);
  book.slot.assign(static_cast<std::size_t>(N), -1);
  for (int e = 0, s = 0; e < N; ++e)
    if (topo.holds(e, rank)) book.slot[static_cast<std::size_t>(e)] = s++;

  // Step memory.
  const std::size_t rows = static_cast<std::size_t>(layout.compute_rows());
  count_t max_task = 0;
  for (const auto& t : h.tasks) max_task = std::max<count_t>(max_task, t.rows);
  Sizes z;
  z.pairs = pairs, z.rows = rows, z.temps = book.temp_experts.size(), z.received = n_received;
  z.ranks = static_cast<std::size_t>(P), z.inputs_saved = saved;
  z.fetched = refetch ? book.incoming.size() : 0;
  z.scratch = std::max(experts.scratch_bytes(max_task, static_cast<count_t>(rows)),
                       experts.backward_scratch_bytes(max_task, static_cast<count_t>(rows)));
  const Regions c(z, row_bytes, sizeof(G), W * sizeof(GW), W * sizeof(T));
  std::byte* ws = exec.workspace(c.total);
  // The null pointer names the region's element type.
  auto at = [ws]<class U>(std::size_t off, U*) { return reinterpret_cast<U*>(ws + off); };
  T* send = at(c.send, static_cast<T*>(nullptr));
  T* recv = at(c.recv, static_cast<T*>(nullptr));
  const T* cin = saved ? h.expert_inputs : at(c.cin, static_cast<T*>(nullptr));
  T* cg = at(c.cg, static_cast<T*>(nullptr));
  T* cy = at(c.cy, static_cast<T*>(nullptr));
  G* gsend = at(c.gsend, static_cast<G*>(nullptr));
  G* grecv = at(c.grecv, static_cast<G*>(nullptr));
  G* cgate = at(c.cgate, static_cast<G*>(nullptr));
  G* cs = at(c.cs, static_cast<G*>(nullptr));
  GW* temp = at(c.temp, static_cast<GW*>(nullptr));
  GW* received = at(c.received, static_cast<GW*>(nullptr));
  const WeightsOnRank<T> again{layer.native_weights(), at(c.fetched, static_cast<T*>(nullptr)), book.slot,
                               book.incoming, W, layer.held_weights_at()};
  void* scratch = ws + c.scratch;

  {  // Agreement, through the execution space's memory (the transport's).
    auto* agree = at(c.agree, static_cast<std::uint64_t*>(nullptr));
    const std::uint64_t mine = agreement(plan, h.top_k, a.mode, sizeof(G), sizeof(GW), refetch);
    exec.from_host(agree, &mine, sizeof(mine));
    tr.all_gather(agree, sizeof(mine), agree + 1);
    book.fingerprints.resize(static_cast<std::size_t>(P));
    exec.to_host(book.fingerprints.data(), agree + 1, book.fingerprints.size() * sizeof(mine));
    exec.synchronize();
    for (int q = 0; q < P; ++q)
      LLEP_EXPECTS(book.fingerprints[static_cast<std::size_t>(q)] == book.fingerprints[0], "backward: rank ", q,
                   " disagrees with rank 0 on the plan, the gradient mode, the gradient types or refetch_weights");
  }

  // 1a. With refetch_weights, the plan's weight transfers once more, as forward's dispatch
  // ran them (through the layer's codec; on a WeightsPathTransport while the rows move).
  BackwardReport report;
  using Tr = std::remove_cvref_t<decltype(tr)>;
  if (refetch) {
    using Codec = std::remove_cvref_t<decltype(layer.codec())>;
    static_assert(Codec::exact || std::remove_cvref_t<decltype(exec)>::memory == MemorySpace::host,
                  "llep: backward's memory holds no device codec scratch; a lossy codec runs on the host only");
    move_weights(layer.codec(), exec, tr, plan, rank, again, {}, book.encoded, book.weight_ops);
    for (const P2pOp& op : book.weight_ops)
      (op.kind == P2pOp::Kind::send ? report.refetch_bytes_sent : report.refetch_bytes_received) += op.bytes;
  }

  // 1. Dispatch the upstream gradients and the gates (and the token rows unless the handle
  // kept the experts' inputs) like forward's tokens, with forward's permutations.
  auto& [sb, so, rb, ro] = book.rows;
  auto& [ssb, sso, srb, sro] = book.scalars;
  to_bytes(layout.send_counts(), row_bytes, sb), to_bytes(layout.send_offsets(), row_bytes, so);
  to_bytes(layout.recv_counts(), row_bytes, rb), to_bytes(layout.recv_offsets(), row_bytes, ro);
  to_bytes(layout.send_counts(), sizeof(G), ssb), to_bytes(layout.send_offsets(), sizeof(G), sso);
  to_bytes(layout.recv_counts(), sizeof(G), srb), to_bytes(layout.recv_offsets(), sizeof(G), sro);
  const auto top_k = static_cast<std::int32_t>(K);
  auto dispatch = [&](const void* src, void* dst, void* s_buf, void* r_buf, std::size_t unit, std::int32_t divisor,
                      const std::vector<std::size_t>(&bytes)[4]) {
    copy_rows(exec, true, s_buf, src, h.row_pair, pairs, unit, divisor);
    tr.all_to_all_v(s_buf, bytes[0], bytes[1], r_buf, bytes[2], bytes[3]);
    copy_rows(exec, false, dst, r_buf, h.compute_row, rows, unit);
  };
  if (!saved) dispatch(a.hidden.data(), const_cast<T*>(cin), send, recv, row_bytes, top_k, book.rows);
  dispatch(a.grad_out.data(), cg, send, recv, row_bytes, top_k, book.rows);
  dispatch(a.topk_weights.data(), cgate, gsend, grecv, sizeof(G), 1, book.scalars);

  // 2. Experts: outputs (kept by forward, or computed again) for the gate gradients, then
  // backward. Gradients of experts held here alone go to the caller's buffer; the others
  // to temporaries.
  if constexpr (WeightsPathTransport<Tr>)
    if (refetch) tr.join_weights();
  auto weights_of = [&](const HandleTask<T>& t) { return refetch && !t.native ? again.foreign_expert(t.expert) : t.weights; };
  thread_local std::vector<ExpertTask<T>> fwd;
  thread_local std::vector<ExpertGradTask<T, GW>> direct, temps;
  fwd.clear(), direct.clear(), temps.clear();
  const T* y = h.expert_outputs;
  if (y == nullptr) {
    for (const auto& t : h.tasks) {
      const auto off = static_cast<std::size_t>(t.row) * D;
      fwd.push_back(ExpertTask<T>{t.expert, weights_of(t), cin + off, cy + off, t.rows});
    }
    experts.compute(exec, std::span<const ExpertTask<T>>(fwd), scratch);
    y = cy;
  }
  exec.for_each_n(rows, GateGradients<T, G>{cg, y, cgate, cs, D});
  for (int e = 0; e < N; ++e) {
    const std::size_t ti = temp_index(e);
    if (!topo.holds(e, rank) && ti == SIZE_MAX) continue;
    GW* buf = ti != SIZE_MAX ? temp + ti * W : a.grad_weights.data() + slot_of(e) * W;
    auto& list = ti != SIZE_MAX ? temps : direct;
    const std::size_t before = list.size();
    for (const auto& t : h.tasks) {
      if (t.expert != e) continue;
      const auto off = static_cast<std::size_t>(t.row) * D;
      const void* kept = h.saved ? h.saved + static_cast<std::size_t>(t.saved_row) * experts.saved_row_bytes() : nullptr;
      list.push_back(ExpertGradTask<T, GW>{e, weights_of(t), cin + off, cg + off, cy + off, buf, kept, t.rows});
    }
    if (list.size() == before) list.push_back(ExpertGradTask<T, GW>{e, nullptr, nullptr, nullptr, nullptr, buf, nullptr, 0});
  }
  experts.backward(exec, std::span<const ExpertGradTask<T, GW>>(direct), a.mode, scratch);
  experts.backward(exec, std::span<const ExpertGradTask<T, GW>>(temps), GradMode::overwrite, scratch);

  // 3. Combine: input gradients and gate gradients back to the tokens' ranks (the rows
  // carry their gate already: a combine with unit weights).
  copy_rows(exec, true, recv, cy, h.compute_row, rows, row_bytes);
  tr.all_to_all_v(recv, rb, ro, send, sb, so);
  exec.for_each_n(B * D, CombineTopK<T, G>{a.grad_hidden.data(), send, h.pair_row, nullptr, top_k, D});
  copy_rows(exec, true, grecv, cs, h.compute_row, rows, sizeof(G));
  tr.all_to_all_v(grecv, srb, sro, gsend, ssb, sso);
  copy_rows(exec, true, a.grad_topk_weights.data(), gsend, h.pair_row, pairs, sizeof(G));

  // 4. Weight gradients to the holders: per expert ascending, one message per (expert,
  // peer), so both sides list their operations with a peer in the same order.
  book.ops.clear();
  std::size_t next = 0;
  for (int e = 0; e < N; ++e) {
    const std::size_t ti = temp_index(e);
    if (ti != SIZE_MAX)  // foreign, or held with replicas: to every other holder
      for (int q = 0; q < P; ++q)
        if (q != rank && topo.holds(e, q)) book.ops.push_back(P2pOp{P2pOp::Kind::send, q, temp + ti * W, W * sizeof(GW)});
    for (; next < n_received && book.received[2 * next] == e; ++next)
      book.ops.push_back(P2pOp{P2pOp::Kind::recv, book.received[2 * next + 1], received + next * W, W * sizeof(GW)});
  }
  for (const P2pOp& op : book.ops) (op.kind == P2pOp::Kind::send ? report.grad_bytes_sent : report.grad_bytes_received) += op.bytes;
  tr.exchange(book.ops);

  // Sums in ascending contributor rank. Sole holder: the caller's buffer already holds this
  // rank's part. Replicated: every holder runs the same sequence over the same terms.
  for (std::size_t i = 0; i < n_received;) {
    const int e = book.received[2 * i];
    std::size_t j = i;
    while (j < n_received && book.received[2 * j] == e) ++j;
    GW* buf = a.grad_weights.data() + slot_of(e) * W;
    const std::size_t ti = temp_index(e);
    if (ti == SIZE_MAX) {
      for (std::size_t k = i; k < j; ++k) exec.for_each_n(W, AddGradient<GW>{buf, received + k * W, true});
    } else {
      bool add = a.mode == GradMode::accumulate, mine = false;
      for (std::size_t k = i; k < j || !mine; ++k) {
        if (!mine && (k == j || book.received[2 * k + 1] > rank)) {  // this rank's own term
          exec.for_each_n(W, AddGradient<GW>{buf, temp + ti * W, add});
          add = mine = true;
        }
        if (k < j) {
          exec.for_each_n(W, AddGradient<GW>{buf, received + k * W, add});
          add = true;
        }
      }
    }
    i = j;
  }

  report.workspace_bytes = c.total;
  report.rows = static_cast<count_t>(rows);
  report.temp_grad_bytes = book.temp_experts.size() * W * sizeof(GW);
  report.inputs_dispatched_again = !saved;
  report.saved_bytes = h.saved_bytes;
  report.kept_input_bytes = saved ? rows * row_bytes : 0;
  report.kept_weight_bytes = refetch ? 0 : book.incoming.size() * W * sizeof(T);
  report.kept_output_bytes = h.expert_outputs != nullptr ? rows * row_bytes : 0;
  report.weights_fetched_again = refetch;
  report.outputs_recomputed = h.expert_outputs == nullptr;
  for (int q = 0; q < P; ++q) {
    if (q == rank) continue;
    const auto uq = static_cast<std::size_t>(q);
    const std::size_t rows_out = (saved ? 1 : 2) * sb[uq] + rb[uq], rows_in = (saved ? 1 : 2) * rb[uq] + sb[uq];
    report.token_bytes_sent += rows_out + ssb[uq] + srb[uq];
    report.token_bytes_received += rows_in + srb[uq] + ssb[uq];
  }
  return report;
}

}  // namespace detail::backward

/// Bytes of backward's step memory (from the execution space's workspace) that no step
/// within `limits` exceeds, for gradients of type GW and gates of type G, for a handle that
/// keeps what `keeps` says (ForwardHandle::keeps()): inputs not kept take a buffer for
/// their second dispatch, foreign weights not kept one for their second fetch. An engine
/// that supplies the workspace sizes it as the larger of this and
/// MoeLayer::workspace_bytes(limits).
template <class GW, class G, class Layer>
std::size_t backward_workspace_bytes(const Layer& layer, const LayerLimits& limits, HandleKeeps keeps) {
  const Topology& topo = layer.topology();
  const auto rows = static_cast<count_t>(limits.plan.rows_per_rank);
  detail::backward::Sizes z;
  z.pairs = static_cast<std::size_t>(limits.max_pairs_per_rank());
  z.rows = static_cast<std::size_t>(rows);
  const auto slots = static_cast<std::size_t>(topo.slots_per_rank()), P = static_cast<std::size_t>(topo.ranks());
  z.temps = static_cast<std::size_t>(limits.plan.foreign_experts_per_rank) + slots;
  z.received = slots * (P > 0 ? P - 1 : 0);
  z.ranks = P;
  z.inputs_saved = keeps.inputs;
  z.fetched = keeps.foreign_weights ? 0 : static_cast<std::size_t>(limits.plan.foreign_experts_per_rank);
  z.scratch = std::max(layer.experts().scratch_bytes(rows, rows), layer.experts().backward_scratch_bytes(rows, rows));
  const std::size_t W = layer.experts().weight_elems();
  return detail::backward::Regions(z, limits.row_bytes, sizeof(G), W * sizeof(GW), W * sizeof(typename Layer::value_type))
      .total;
}
/// The same with `inputs_saved` when the handle keeps the experts' inputs (and the
/// foreign weights, as by default).
template <class GW, class G, class Layer>
std::size_t backward_workspace_bytes(const Layer& layer, const LayerLimits& limits, bool inputs_saved) {
  return backward_workspace_bytes<GW, G>(layer, limits, HandleKeeps{inputs_saved});
}

/// One rank's backward of the step forward filled `handle` with (see the header comment).
/// Collective: every rank calls it after the same forward. A local error aborts the
/// transport so that no rank waits; ranks that disagree (mode, gradient type, plan) all
/// throw llep::Error. The handle serves one backward; forward fills it again.
template <class Layer, class G, class GW>
BackwardReport backward(Layer& layer, ForwardHandle<typename Layer::value_type>& handle,
                        const BackwardArgs<typename Layer::value_type, G, GW>& args) {
  using E = std::remove_cvref_t<decltype(layer.experts())>;
  using Exec = std::remove_cvref_t<decltype(layer.exec())>;
  static_assert(ExpertBackward<E, Exec>,
                "llep: backward needs an expert functor with a backward pass (llep::ExpertBackward; see "
                "llep/experts/expert_backward.hpp for the members to add)");
  if constexpr (ExpertBackward<E, Exec>) {
    try {
      return detail::backward::run(layer, handle, args);
    } catch (const std::exception& e) {
      auto& tr = layer.transport();
      tr.abort(e.what());
      if constexpr (RecoverableTransport<std::remove_cvref_t<decltype(tr)>>) (void)tr.recover();
      throw;
    }
  }
  return {};
}

}  // namespace llep
