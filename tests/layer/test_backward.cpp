// The layer's backward on P rank threads against the analytic gradients of the independent
// dense MoE (tests/common/dense_moe.hpp): every planner, P in {1, 2, 3, 4, 8}, K up to 8,
// empty ranks, 95% of pairs on one expert, a helper with two segments of one expert,
// replicas (every holder ends with the same bits), accumulate and overwrite, repeated runs
// bit for bit, and bad input giving llep::Error on every rank without a hang.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../common/dense_moe.hpp"
#include "llep/layer/backward.hpp"
#include "llep/layer/host_layer.hpp"
#include "llep/codec/block_scaled.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/cost_aware.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/node_aware.hpp"
#include "llep/plan/quota_search.hpp"
#include "llep/plan/replicated.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/routing.hpp"

namespace {

using llep::count_t;

enum class Routing { uniform, hot_one_expert, empty_ranks };

constexpr count_t kMaxTokens = 20;  // make_inputs draws 1..20 tokens per rank

template <class T>
struct RankInput {
  std::vector<T> x, gates, grad_out;
  std::vector<std::int32_t> ids;
};

template <class T>
std::vector<RankInput<T>> make_inputs(int P, int N, int K, int D, Routing routing, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::uniform_int_distribution<int> tokens(1, 20);
  llep::sim::Skew skew;
  if (routing == Routing::hot_one_expert && N > 1) skew = {1, 0.95};
  std::vector<RankInput<T>> in(static_cast<std::size_t>(P));
  for (int p = 0; p < P; ++p) {
    auto& r = in[static_cast<std::size_t>(p)];
    int B = tokens(rng);
    if (routing == Routing::empty_ranks && (p % 2 == 1 || P == 1)) B = 0;
    r.x.resize(static_cast<std::size_t>(B * D));
    r.grad_out.resize(r.x.size());
    for (T& v : r.x) v = static_cast<T>(u(rng));
    for (T& v : r.grad_out) v = static_cast<T>(u(rng));
    r.ids.resize(static_cast<std::size_t>(B * K));
    r.gates.resize(r.ids.size());
    llep::sim::random_routing(rng(), N, K, skew, std::span<std::int32_t>(r.ids), std::span<T>(r.gates));
  }
  return in;
}

// Every expert `rank` holds under `topo`, packed back to back in ascending id.
template <class T>
std::vector<T> held_weights(const dense::Moe& moe, const llep::Topology& topo, int rank) {
  std::vector<T> out;
  for (int e = 0; e < topo.experts(); ++e)
    if (topo.holds(e, rank)) {
      const auto one = moe.packed<T>(e);
      out.insert(out.end(), one.begin(), one.end());
    }
  return out;
}

template <class T>
struct RankGrads {
  std::vector<T> hidden, gates, weights;
  llep::BackwardReport report;
};

// forward (filling a handle) + backward on P threads, `repeats` times (each must give the
// same bits). `old` presets the weight-gradient buffers (accumulate adds onto it). With
// `save_inputs` the handle keeps the experts' inputs, else backward dispatches them again;
// with `keep_preacts` it keeps the experts' pre-activations, else backward recomputes them;
// with `refetch` backward fetches the foreign weights again instead of the handle keeping
// them; with `keep_outputs` the handle keeps the experts' outputs. With either of the last
// two, the layer runs in a fixed workspace of exactly the larger of workspace_bytes and
// backward_workspace_bytes (HostExec throws beyond it) and the handle in exactly
// handle_bytes(limits, keeps()).
template <class T, class Act, class Plnr, class Codec = llep::Identity<T>>
std::vector<RankGrads<T>> run_backward(const dense::Moe& moe, const llep::Topology& topo, int K,
                                       const std::vector<RankInput<T>>& in, Plnr planner, Act act,
                                       llep::GradMode mode, T old, llep::Plan* plan_out = nullptr,
                                       bool save_inputs = false, int repeats = 2, bool keep_preacts = false,
                                       bool refetch = false, bool keep_outputs = false, Codec codec = Codec{}) {
  const int P = topo.ranks();
  const llep::ExpertShape shape{moe.hidden, moe.intermediate, Act::has_bias};
  llep::HostGroup group(P, llep::HostGroupOptions{std::chrono::milliseconds(20'000)});
  std::vector<RankGrads<T>> res(static_cast<std::size_t>(P));
  using Layer = llep::MoeLayer<llep::ExactCounts, Plnr, llep::HostThreads, llep::HostSwiGlu<T, Act>, llep::HostExec, Codec>;
  const llep::HandleKeeps keeps{save_inputs, !refetch, keep_outputs};
  const bool exact_memory = refetch || keep_outputs;
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    const auto weights = held_weights<T>(moe, topo, t.rank());
    std::vector<std::byte> ws;
    if (exact_memory) {
      const Layer sizer(topo, K, planner, llep::HostSwiGlu<T, Act>(shape, act), t);
      const auto limits = sizer.limits(kMaxTokens);
      ws.resize(std::max(Layer::workspace_bytes(limits), llep::backward_workspace_bytes<T, T>(sizer, limits, keeps)));
    }
    Layer layer(topo, K, planner, llep::HostSwiGlu<T, Act>(shape, act), t,
                exact_memory ? llep::HostExec(ws) : llep::HostExec());
    layer.set_native_weights(weights);
    layer.set_codec(codec);
    const auto& r = in[p];
    llep::ForwardHandle<T> handle;
    handle.save_inputs = save_inputs, handle.refetch_weights = refetch, handle.save_outputs = keep_outputs;
    std::vector<std::byte> memory(Layer::handle_bytes(layer.limits(kMaxTokens), handle.keeps()));
    handle.memory = memory;
    std::vector<std::byte> saved(keep_preacts ? layer.saved_bytes(layer.limits(kMaxTokens)) : 0);
    handle.saved_memory = saved;
    for (int s = 0; s < repeats; ++s) {
      RankGrads<T> g;
      std::vector<T> out(r.x.size());
      g.hidden.assign(r.x.size(), T(-7));
      g.gates.assign(r.gates.size(), T(-7));
      g.weights.assign(weights.size(), old);
      layer.forward(std::span<const T>(r.x), std::span<const std::int32_t>(r.ids), std::span<const T>(r.gates),
                    std::span<T>(out), handle);
      const std::span<const T> hidden = save_inputs ? std::span<const T>() : std::span<const T>(r.x);
      const llep::BackwardArgs<T, T, T> args{hidden, r.gates, r.grad_out, g.hidden, g.gates, g.weights, mode};
      g.report = llep::backward(layer, handle, args);
      if (g.report.inputs_dispatched_again == save_inputs) throw std::runtime_error("inputs not as the handle says");
      if (s == 0) res[p] = g;
      else if (g.hidden != res[p].hidden || g.gates != res[p].gates || g.weights != res[p].weights)
        throw std::runtime_error("a repeated backward gave different bits");
    }
    if (plan_out != nullptr && p == 0) *plan_out = handle.plan;
  });
  return res;
}

// Max error relative to the largest |reference| (floored): double 1e-10 (sums of at most a
// few hundred rows of O(1) products: ~1e-14), float 1e-4 as the forward layer tests (a
// few dozen float roundings of O(1) terms, far above float error, far below a lost or
// misplaced contribution, which is O(1)).
template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, double> ? 1e-10 : 1e-4;
}

template <class T>
double rel_error(const std::vector<T>& got, const std::vector<double>& ref) {
  REQUIRE(got.size() == ref.size());
  double scale = 1e-3, err = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    scale = std::max(scale, std::abs(ref[i]));
    err = std::max(err, std::abs(static_cast<double>(got[i]) - ref[i]));
  }
  return err / scale;
}

// The dense MoE's gradients of every rank's tokens, and each expert's weight gradient
// summed over all of them.
template <class T>
struct DenseGrads {
  std::vector<dense::Grads> ranks;
  std::vector<dense::Expert> total;
};

template <class T>
DenseGrads<T> dense_grads(const dense::Moe& moe, int K, const std::vector<RankInput<T>>& in) {
  DenseGrads<T> d;
  d.total.assign(static_cast<std::size_t>(moe.experts), moe.zero_expert());
  for (const auto& r : in) {
    const std::vector<double> x(r.x.begin(), r.x.end()), g(r.gates.begin(), r.gates.end()),
        go(r.grad_out.begin(), r.grad_out.end());
    d.ranks.push_back(moe.backward(x, r.ids, g, K, go));
    for (std::size_t e = 0; e < d.total.size(); ++e) {
      auto add = [](std::vector<double>& a, const std::vector<double>& b) {
        for (std::size_t i = 0; i < a.size(); ++i) a[i] += b[i];
      };
      auto& t = d.total[e];
      const auto& s = d.ranks.back().experts[e];
      add(t.w_gate, s.w_gate), add(t.w_up, s.w_up), add(t.w_down, s.w_down);
      add(t.b_gate, s.b_gate), add(t.b_up, s.b_up), add(t.b_down, s.b_down);
    }
  }
  return d;
}

// Each rank's weight gradients (its held experts in slot order) against the summed dense
// ones (plus `old` when accumulating); every holder of an expert must have the same bits.
template <class GW>
double weight_error(const dense::Moe& moe, const llep::Topology& topo, const std::vector<dense::Expert>& total,
                    const std::vector<std::vector<GW>>& weights, llep::GradMode mode, double old) {
  const int P = topo.ranks(), N = moe.experts;
  const std::size_t W = llep::ExpertShape{moe.hidden, moe.intermediate, moe.act == dense::Act::gpt_oss}.elems();
  std::vector<const GW*> first_holder(static_cast<std::size_t>(N), nullptr);
  double err = 0;
  for (int p = 0; p < P; ++p) {
    std::size_t slot = 0;
    for (int e = 0; e < N; ++e) {
      if (!topo.holds(e, p)) continue;
      const GW* g = weights[static_cast<std::size_t>(p)].data() + slot++ * W;
      auto want = moe.packed_of<double>(total[static_cast<std::size_t>(e)]);
      if (mode == llep::GradMode::accumulate)
        for (double& v : want) v += old;
      err = std::max(err, rel_error(std::vector<GW>(g, g + W), want));
      const GW*& first = first_holder[static_cast<std::size_t>(e)];
      if (first == nullptr) first = g;
      else CHECK_MESSAGE(std::memcmp(first, g, W * sizeof(GW)) == 0, "holders of expert ", e, " differ");
    }
  }
  return err;
}

template <class T>
void check_grads(const dense::Moe& moe, const llep::Topology& topo, int K, const std::vector<RankInput<T>>& in,
                 const std::vector<RankGrads<T>>& got, llep::GradMode mode, T old) {
  const auto d = dense_grads(moe, K, in);
  double e_hidden = 0, e_gates = 0;
  std::vector<std::vector<T>> weights;
  for (std::size_t p = 0; p < in.size(); ++p) {
    e_hidden = std::max(e_hidden, rel_error(got[p].hidden, d.ranks[p].hidden));
    e_gates = std::max(e_gates, rel_error(got[p].gates, d.ranks[p].gates));
    weights.push_back(got[p].weights);
  }
  CHECK(e_hidden <= tolerance<T>());
  CHECK(e_gates <= tolerance<T>());
  CHECK(weight_error(moe, topo, d.total, weights, mode, static_cast<double>(old)) <= tolerance<T>());
}

template <class T, class Act, class Plnr>
void check_case(int P, int N, int K, Routing routing, Plnr planner, Act act, std::uint64_t seed,
                llep::GradMode mode = llep::GradMode::overwrite, bool save_inputs = false) {
  const int D = 10, H = 7;
  auto moe = dense::Moe::random(N, D, H, Act::has_bias ? dense::Act::gpt_oss : dense::Act::silu, seed);
  if constexpr (Act::has_bias) moe.limit = act.limit, moe.alpha = act.alpha;
  const auto in = make_inputs<T>(P, N, K, D, routing, seed * 17 + 3);
  const llep::Topology topo(P, N);
  const T old = mode == llep::GradMode::accumulate ? T(0.25) : T(-3);
  const auto got = run_backward<T>(moe, topo, K, in, planner, act, mode, old, nullptr, save_inputs);
  INFO("P = ", P, ", N = ", N, ", K = ", K, ", routing ", static_cast<int>(routing), ", planner ", Plnr::name);
  check_grads(moe, topo, K, in, got, mode, old);
}

const llep::LeastLoaded kSmallGemm{1.0, 2};

// The same step with the handle keeping the experts' pre-activations and without: the
// same bits on every rank, and the kept bytes are the rows times the functor's row size.
template <class T, class Act, class Plnr>
void check_kept_preacts(int P, int N, int K, const llep::Topology& topo, Plnr planner, Act act, std::uint64_t seed,
                        llep::GradMode mode) {
  const int D = 10, H = 7;
  auto moe = dense::Moe::random(N, D, H, Act::has_bias ? dense::Act::gpt_oss : dense::Act::silu, seed);
  if constexpr (Act::has_bias) moe.limit = act.limit, moe.alpha = act.alpha;
  const auto in = make_inputs<T>(P, N, K, D, Routing::hot_one_expert, seed * 17 + 3);
  const T old = mode == llep::GradMode::accumulate ? T(0.25) : T(-3);
  const auto ref = run_backward<T>(moe, topo, K, in, planner, act, mode, old, nullptr, false, 1, false);
  const auto kept = run_backward<T>(moe, topo, K, in, planner, act, mode, old, nullptr, false, 2, true);
  const std::size_t row = llep::HostSwiGlu<T, Act>(llep::ExpertShape{D, H, Act::has_bias}, act).saved_row_bytes();
  INFO("P = ", P, ", K = ", K, ", planner ", Plnr::name);
  count_t rows = 0, pairs = 0;
  for (const auto& r : in) pairs += static_cast<count_t>(r.ids.size());
  for (std::size_t p = 0; p < ref.size(); ++p) {
    CHECK(ref[p].report.saved_bytes == 0);
    CHECK(kept[p].report.saved_bytes == static_cast<std::size_t>(kept[p].report.rows) * row);
    CHECK(kept[p].hidden == ref[p].hidden);
    CHECK(kept[p].gates == ref[p].gates);
    CHECK(kept[p].weights == ref[p].weights);
    rows += kept[p].report.rows;
  }
  CHECK(rows == pairs);  // every pair computed once
  check_grads(moe, topo, K, in, kept, mode, old);
}

// The same step with the foreign weights kept in the handle (the reference) and fetched
// again in backward, and with the experts' outputs kept or recomputed: the same bits on
// every rank for every combination. The report's bytes are checked against the plan: a
// rank keeps (or receives again) exactly its incoming transfers' weights and sends again
// exactly its outgoing ones. Returns the foreign weight bytes the reference kept over all
// ranks, and the most foreign experts one rank received.
struct Spilled {
  std::size_t bytes = 0, most = 0;
};
template <class T, class Act, class Plnr, class Codec = llep::Identity<T>>
Spilled check_memory_options(int P, int N, int K, const llep::Topology& topo, Plnr planner, Act act, std::uint64_t seed,
                             llep::GradMode mode, Codec codec = Codec{}, Routing routing = Routing::hot_one_expert) {
  const int D = 10, H = 7;
  auto moe = dense::Moe::random(N, D, H, Act::has_bias ? dense::Act::gpt_oss : dense::Act::silu, seed);
  if constexpr (Act::has_bias) moe.limit = act.limit, moe.alpha = act.alpha;
  const auto in = make_inputs<T>(P, N, K, D, routing, seed * 17 + 3);
  const T old = mode == llep::GradMode::accumulate ? T(0.25) : T(-3);
  llep::Plan plan;
  const auto ref = run_backward<T>(moe, topo, K, in, planner, act, mode, old, &plan, false, 1, false, false, false, codec);
  const std::size_t W = llep::ExpertShape{D, H, Act::has_bias}.elems();
  const std::size_t wire = codec.encoded_bytes(W);
  Spilled kept;
  for (const bool save_inputs : {false, true})
    for (const bool refetch : {false, true})
      for (const bool outputs : {false, true}) {
        if (!refetch && !outputs) continue;  // the reference
        INFO("P = ", P, ", K = ", K, ", planner ", Plnr::name, ", save_inputs ", save_inputs, ", refetch ", refetch,
             ", outputs kept ", outputs);
        const auto got = run_backward<T>(moe, topo, K, in, planner, act, mode, old, nullptr, save_inputs, 2, false,
                                         refetch, outputs, codec);
        for (std::size_t p = 0; p < ref.size(); ++p) {
          INFO("rank ", p);
          CHECK(got[p].hidden == ref[p].hidden);
          CHECK(got[p].gates == ref[p].gates);
          CHECK(got[p].weights == ref[p].weights);
          std::size_t in_w = 0, out_w = 0;
          for (const auto& w : plan.weight_transfers()) {
            in_w += static_cast<std::size_t>(w.dst) == p ? 1 : 0;
            out_w += static_cast<std::size_t>(w.src) == p ? 1 : 0;
          }
          const auto& g = got[p].report;
          CHECK(ref[p].report.kept_weight_bytes == in_w * W * sizeof(T));
          CHECK_FALSE(ref[p].report.weights_fetched_again);
          CHECK(ref[p].report.refetch_bytes_received + ref[p].report.refetch_bytes_sent == 0);
          CHECK(g.weights_fetched_again == refetch);
          CHECK(g.kept_weight_bytes == (refetch ? 0 : in_w * W * sizeof(T)));
          CHECK(g.refetch_bytes_received == (refetch ? in_w * wire : 0));
          CHECK(g.refetch_bytes_sent == (refetch ? out_w * wire : 0));
          CHECK(g.outputs_recomputed == !outputs);
          const std::size_t rows_bytes = static_cast<std::size_t>(g.rows) * D * sizeof(T);
          CHECK(g.kept_output_bytes == (outputs ? rows_bytes : 0));
          CHECK(g.kept_input_bytes == (save_inputs ? rows_bytes : 0));
          if (!save_inputs && refetch && !outputs) {
            kept.bytes += ref[p].report.kept_weight_bytes;
            kept.most = std::max(kept.most, in_w);
          }
        }
        if constexpr (Codec::exact) check_grads(moe, topo, K, in, got, mode, old);  // lossy: not the dense weights
      }
  return kept;
}

// Test planners: `split(e, l, native)` places expert e's l > 0 pairs with out.add_segment,
// or returns false to leave them all on the native rank.
template <class Split>
void plan_split(std::span<const count_t> loads, const llep::Topology& topo, llep::Plan& out, const char* name,
                Split split) {
  out.reset(topo, name);
  for (int e = 0; e < topo.experts(); ++e) {
    const count_t l = loads[static_cast<std::size_t>(e)];
    if (l > 0 && !split(e, l, topo.native_rank(e))) out.add_segment(e, topo.native_rank(e), 0, l);
  }
  out.set_capacity(1);
  out.finish(topo);
}

// A plan in which one helper computes two segments of one expert, and so does its native
// rank: expert 0's pairs in quarters on ranks (h, native, h, native), h = native + 1.
// Everything else on its native rank.
struct TwoSegmentsOnOneHelper {
  static constexpr const char* name = "two-segments";
  void plan(std::span<const count_t> loads, const llep::Topology& topo, llep::Plan& out) const {
    plan_split(loads, topo, out, name, [&](int e, count_t l, int native) {
      if (e != 0 || l < 4 || topo.ranks() == 1) return false;
      const int h = (native + 1) % topo.ranks();
      for (int q = 0; q < 4; ++q) out.add_segment(e, q % 2 == 0 ? h : native, q * l / 4, (q + 1) * l / 4);
      return true;
    });
  }
};

// Every expert's second half goes to the next rank: with P > 1 each rank receives the
// weights of several foreign experts (so one expert's weights cannot stand in for another's).
struct HalfToNext {
  static constexpr const char* name = "half-to-next";
  void plan(std::span<const count_t> loads, const llep::Topology& topo, llep::Plan& out) const {
    plan_split(loads, topo, out, name, [&](int e, count_t l, int native) {
      const int next = (native + 1) % topo.ranks();
      if (l < 2 || next == native) return false;
      out.add_segment(e, native, 0, l / 2);
      out.add_segment(e, next, l / 2, l);
      return true;
    });
  }
};

}  // namespace

TEST_CASE("backward equals the dense gradients: planners, P, K, skew, empty ranks (float)") {
  std::uint64_t seed = 1;
  for (int P : {1, 2, 3, 4, 8})
    for (int K : {1, 2, 4, 8})
      for (Routing routing : {Routing::uniform, Routing::hot_one_expert, Routing::empty_ranks}) {
        const int N = 4 * P;
        if (K > N) continue;
        ++seed;
        check_case<float>(P, N, K, routing, llep::StandardEp{}, llep::SiluGlu{}, seed);
        check_case<float>(P, N, K, routing, kSmallGemm, llep::SiluGlu{}, seed, llep::GradMode::overwrite, true);
        check_case<float>(P, N, K, routing, llep::Adaptive<llep::LeastLoaded>{1.3, kSmallGemm}, llep::SiluGlu{},
                          seed, llep::GradMode::accumulate);
      }
}

TEST_CASE("backward under every other planner of the library") {
  const auto model = std::make_shared<llep::sim::CostModel>();
  std::uint64_t seed = 300;
  for (int P : {2, 3, 4, 8})
    for (int K : {1, 4})
      for (Routing routing : {Routing::hot_one_expert, Routing::empty_ranks}) {
        const int N = 4 * P;
        ++seed;
        check_case<float>(P, N, K, routing, llep::NodeAware{1.0, 2}, llep::SiluGlu{}, seed);
        check_case<float>(P, N, K, routing, llep::QuotaSearch{2}, llep::SiluGlu{}, seed);
        check_case<float>(P, N, K, routing, llep::Capped<llep::LeastLoaded>{kSmallGemm, llep::MemoryCap::rows(20 * K)},
                          llep::SiluGlu{}, seed);
        check_case<float>(P, N, K, routing, llep::CostAware{1.0, 2, model, {"test", 10, 7}}, llep::SiluGlu{}, seed);
      }
}

TEST_CASE("backward in double with gpt-oss's clamps active: 1e-10") {
  std::uint64_t seed = 500;
  for (int P : {1, 2, 4, 8})
    for (int K : {1, 4, 8})
      for (llep::GradMode mode : {llep::GradMode::overwrite, llep::GradMode::accumulate}) {
        ++seed;
        check_case<double>(P, 2 * P, std::min(K, 2 * P), Routing::hot_one_expert, kSmallGemm,
                           llep::GptOssGlu{0.4, 1.702}, seed, mode, K % 2 == 0);
      }
}

TEST_CASE("a helper with two segments of one expert returns one gradient, no deadlock") {
  for (int P : {2, 3, 4}) {
    const int N = 2 * P, K = 2, D = 10, H = 7;
    const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 700 + static_cast<std::uint64_t>(P));
    const auto in = make_inputs<float>(P, N, K, D, Routing::hot_one_expert, 701);
    const llep::Topology topo(P, N);
    llep::Plan plan;
    const auto got = run_backward<float>(moe, topo, K, in, TwoSegmentsOnOneHelper{}, llep::SiluGlu{},
                                         llep::GradMode::overwrite, -3.0f, &plan);
    INFO("P = ", P);
    REQUIRE(plan.segments(0).size() == 4);
    CHECK(plan.segments(0)[0].rank == plan.segments(0)[2].rank);
    CHECK(plan.segments(0)[1].rank == plan.segments(0)[3].rank);
    check_grads(moe, topo, K, in, got, llep::GradMode::overwrite, -3.0f);
    // The helper sent exactly one expert gradient.
    const int helper = plan.segments(0)[0].rank;
    CHECK(got[static_cast<std::size_t>(helper)].report.grad_bytes_sent ==
          llep::ExpertShape{D, H, false}.elems() * sizeof(float));
  }
}

TEST_CASE("replicas: every holder ends with the same summed gradient") {
  const int K = 2, D = 10, H = 7;
  std::size_t ll_helper_grads = 0;
  for (const int P : {2, 3, 4})
    for (const int extra : {1, 2})
      for (llep::GradMode mode : {llep::GradMode::overwrite, llep::GradMode::accumulate}) {
        const int N = 2 * P;
        const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 800 + static_cast<std::uint64_t>(P));
        const auto in = make_inputs<float>(P, N, K, D, Routing::hot_one_expert, 801);
        std::vector<double> history(static_cast<std::size_t>(N), 1.0);
        for (const auto& r : in)
          for (auto id : r.ids) history[static_cast<std::size_t>(id)] += 1;
        const auto topo = llep::Replicated::place(history, P, 2 + extra);
        REQUIRE(topo.has_replicas());
        INFO("P = ", P, ", slots = ", 2 + extra);
        const float old = mode == llep::GradMode::accumulate ? 0.5f : -3.0f;
        llep::Plan plan;
        const auto rep = run_backward<float>(moe, topo, K, in, llep::Replicated{}, llep::SiluGlu{}, mode, old, &plan);
        CHECK(plan.segments(0).size() > 1);  // the hot expert is split over its holders
        check_grads(moe, topo, K, in, rep, mode, old);
        std::size_t shared = 0;  // holders exchanged their partial gradients
        for (const auto& g : rep) shared += g.report.grad_bytes_received;
        CHECK(shared > 0);
        // Replicas and helpers together: LeastLoaded on the replicated placement.
        const auto ll = run_backward<float>(moe, topo, K, in, kSmallGemm, llep::SiluGlu{}, mode, old);
        check_grads(moe, topo, K, in, ll, mode, old);
        for (const auto& g : ll) ll_helper_grads += g.report.grad_bytes_sent;
      }
  CHECK(ll_helper_grads > 0);
}

namespace {

// The cases of the memory-option tests: P in {1, 3, 4}, both gradient modes, N = 2P, K = 2;
// f(P, N, K, topo, rep, seed, mode) with `rep` a placement replicating expert 0 (P > 1).
template <class F>
void each_memory_case(std::uint64_t seed, F f) {
  for (const int P : {1, 3, 4})
    for (llep::GradMode mode : {llep::GradMode::overwrite, llep::GradMode::accumulate}) {
      const int N = 2 * P, K = 2;
      ++seed;
      const llep::Topology topo(P, N);
      std::vector<double> history(static_cast<std::size_t>(N), 1.0);
      history[0] = 10.0 * N;  // expert 0 gets the replicas
      const auto rep = P > 1 ? llep::Replicated::place(history, P, 3) : topo;
      CHECK(rep.has_replicas() == (P > 1));
      f(P, N, K, topo, rep, seed, mode);
    }
}

}  // namespace

TEST_CASE("kept pre-activations: the same bits as recomputing them, rows x saved_row_bytes held") {
  each_memory_case(900, [](int P, int N, int K, const llep::Topology& topo, const llep::Topology& rep,
                           std::uint64_t seed, llep::GradMode mode) {
    check_kept_preacts<float>(P, N, K, topo, llep::StandardEp{}, llep::SiluGlu{}, seed, mode);
    check_kept_preacts<float>(P, N, K, topo, kSmallGemm, llep::SiluGlu{}, seed, mode);
    check_kept_preacts<double>(P, N, K, topo, kSmallGemm, llep::GptOssGlu{0.4, 1.702}, seed, mode);
    check_kept_preacts<float>(P, N, K, rep, llep::Replicated{}, llep::SiluGlu{}, seed, mode);
    check_kept_preacts<float>(P, N, K, rep, kSmallGemm, llep::SiluGlu{}, seed, mode);
  });
  // Too little saved_memory for the step's rows: llep::Error before anything moves.
  const int N = 2, K = 2, D = 10, H = 7;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 950);
  const auto in = make_inputs<float>(1, N, K, D, Routing::uniform, 951);
  const llep::Topology topo(1, N);
  llep::HostGroup group(1);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    llep::HostMoeLayer<llep::StandardEp> layer(topo, K, {}, llep::HostSwiGlu<float>({D, H, false}), t);
    const auto w = held_weights<float>(moe, topo, 0);
    layer.set_native_weights(w);
    const auto& r = in[0];
    std::vector<float> out(r.x.size());
    std::vector<std::byte> memory(decltype(layer)::handle_bytes(layer.limits(kMaxTokens), false));
    std::vector<std::byte> saved(static_cast<std::size_t>(r.ids.size()) * layer.experts().saved_row_bytes() - 1);
    llep::ForwardHandle<float> handle(memory);
    handle.saved_memory = saved;
    CHECK_THROWS_WITH_AS(layer.forward(std::span<const float>(r.x), std::span<const std::int32_t>(r.ids),
                                       std::span<const float>(r.gates), std::span<float>(out), handle),
                         doctest::Contains("saved_memory"), llep::Error);
    CHECK_FALSE(handle.filled);
  });
}

TEST_CASE("memory options: refetched foreign weights and kept outputs give the same bits, bytes as the plan says") {
  std::size_t spilled = 0;
  each_memory_case(1200, [&](int P, int N, int K, const llep::Topology& topo, const llep::Topology& rep,
                             std::uint64_t seed, llep::GradMode mode) {
    CHECK(check_memory_options<float>(P, N, K, topo, llep::StandardEp{}, llep::SiluGlu{}, seed, mode).bytes == 0);
    spilled += check_memory_options<float>(P, N, K, topo, kSmallGemm, llep::SiluGlu{}, seed, mode).bytes;
    // Several foreign experts on one helper: each must get its own weights back.
    const auto several = check_memory_options<float>(P, N, K, topo, HalfToNext{}, llep::SiluGlu{}, seed, mode,
                                                     llep::Identity<float>{}, Routing::uniform);
    CHECK(several.most >= (P > 1 ? 2u : 0u));
    spilled += check_memory_options<double>(P, N, K, topo, kSmallGemm, llep::GptOssGlu{0.4, 1.702}, seed, mode).bytes;
    (void)check_memory_options<float>(P, N, K, rep, llep::Replicated{}, llep::SiluGlu{}, seed, mode);
    spilled += check_memory_options<float>(P, N, K, rep, kSmallGemm, llep::SiluGlu{}, seed, mode).bytes;
  });
  CHECK(spilled > 0);  // weights did spill, so refetching was exercised
  // A lossy codec: the weights fetched again decode to the same bits as forward's.
  const llep::Topology topo(4, 8);
  CHECK(check_memory_options<float>(4, 8, 2, topo, kSmallGemm, llep::SiluGlu{}, 1300, llep::GradMode::overwrite,
                                    llep::Fp8Blocks<float>())
            .bytes > 0);
}

TEST_CASE("refetch_weights: the handle and backward's workspace hold what the limits say") {
  const int P = 4, N = 8, K = 2, D = 10, H = 7;
  const llep::Topology topo(P, N);
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const llep::HostMoeLayer<llep::LeastLoaded> layer(topo, K, kSmallGemm, llep::HostSwiGlu<float>({D, H, false}), t);
    const auto limits = layer.limits(kMaxTokens);
    REQUIRE(limits.plan.foreign_experts_per_rank > 0);
    const std::size_t weights = static_cast<std::size_t>(limits.plan.foreign_experts_per_rank) * limits.weight_bytes;
    for (const bool inputs : {false, true})
      for (const bool outputs : {false, true}) {
        const llep::HandleKeeps keep{inputs, true, outputs}, refetch{inputs, false, outputs};
        const std::size_t kept = decltype(layer)::handle_bytes(limits, keep);
        const std::size_t fetched = decltype(layer)::handle_bytes(limits, refetch);
        // The foreign weights' region leaves the handle (up to the 256-byte alignment)...
        CHECK(fetched < kept);
        CHECK(kept - fetched + 256 > weights);
        CHECK(kept - fetched <= weights + 256);
        // ... and backward's workspace gains it.
        const std::size_t bk = llep::backward_workspace_bytes<float, float>(layer, limits, keep);
        const std::size_t bf = llep::backward_workspace_bytes<float, float>(layer, limits, refetch);
        CHECK(bf > bk);
        CHECK(bf - bk + 256 > weights);
        CHECK(bf - bk <= weights + 256);
      }
    // Outputs kept: rows x D more in the handle.
    const std::size_t rows = static_cast<std::size_t>(limits.plan.rows_per_rank) * limits.row_bytes;
    const std::size_t base = decltype(layer)::handle_bytes(limits, llep::HandleKeeps{});
    const std::size_t with_out = decltype(layer)::handle_bytes(limits, llep::HandleKeeps{false, true, true});
    CHECK(with_out - base + 256 > rows);
    CHECK(with_out - base <= rows + 256);
    CHECK(decltype(layer)::handle_bytes(limits, false) == base);  // the bool overload: weights kept
  });
}

TEST_CASE("weight gradients in double for float weights") {
  const int P = 3, N = 6, K = 2, D = 10, H = 7;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 900);
  const auto in = make_inputs<float>(P, N, K, D, Routing::hot_one_expert, 901);
  const llep::Topology topo(P, N);
  llep::HostGroup group(P);
  std::vector<std::vector<double>> grads(static_cast<std::size_t>(P));
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    const auto w = held_weights<float>(moe, topo, t.rank());
    llep::HostMoeLayer<llep::LeastLoaded> layer(topo, K, kSmallGemm, llep::HostSwiGlu<float>({D, H, false}), t);
    layer.set_native_weights(w);
    const auto& r = in[p];
    std::vector<float> out(r.x.size()), gh(r.x.size()), gg(r.gates.size());
    grads[p].assign(w.size(), 1.0);
    std::vector<std::byte> memory(decltype(layer)::handle_bytes(layer.limits(kMaxTokens), true));
    llep::ForwardHandle<float> handle(memory, true);
    layer.forward(std::span<const float>(r.x), std::span<const std::int32_t>(r.ids), std::span<const float>(r.gates),
                  std::span<float>(out), handle);
    llep::backward(layer, handle,
                   llep::BackwardArgs<float, float, double>{{}, r.gates, r.grad_out, gh, gg, grads[p],
                                                            llep::GradMode::accumulate});
  });
  // float inputs and weights, double sums: the float roundings of the products remain (1e-6).
  CHECK(weight_error(moe, topo, dense_grads(moe, K, in).total, grads, llep::GradMode::accumulate, 1.0) <= 1e-5);
}

namespace {

// What `damage` may break on one rank: its upstream gradient, its gradient mode, whether it
// runs forward, backward twice, forward with refetch_weights and the flag cleared before
// backward.
struct Faults {
  std::vector<float>& grad_out;
  llep::GradMode& mode;
  bool forward = true, twice = false, refetch = false, clear_refetch = false;
};

// One forward + backward where `damage(rank, faults)` may break a rank's call; returns each
// rank's llep::Error message ("" if none) and checks nobody waited for the timeout.
template <class Damage>
std::vector<std::string> backward_errors(int P, Damage damage, Routing routing = Routing::uniform) {
  const int N = 2 * P, K = 2, D = 10, H = 7;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 950);
  const auto in = make_inputs<float>(P, N, K, D, routing, 951);
  const llep::Topology topo(P, N);
  llep::HostGroup group(P, llep::HostGroupOptions{std::chrono::milliseconds(5'000)});
  std::vector<std::string> errors(static_cast<std::size_t>(P));
  const auto start = std::chrono::steady_clock::now();
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    const auto w = held_weights<float>(moe, topo, p);
    llep::HostMoeLayer<llep::LeastLoaded> layer(topo, K, kSmallGemm, llep::HostSwiGlu<float>({D, H, false}), t);
    layer.set_native_weights(w);
    const auto& r = in[static_cast<std::size_t>(p)];
    std::vector<float> out(r.x.size()), gh(r.x.size()), gg(r.gates.size()), gw(w.size());
    std::vector<float> grad_out = r.grad_out;
    llep::GradMode mode = llep::GradMode::overwrite;
    Faults f{grad_out, mode};
    damage(p, f);
    llep::ForwardHandle<float> handle;
    handle.refetch_weights = f.refetch;
    std::vector<std::byte> memory(decltype(layer)::handle_bytes(layer.limits(kMaxTokens), handle.keeps()));
    handle.memory = memory;
    try {
      if (f.forward)
        layer.forward(std::span<const float>(r.x), std::span<const std::int32_t>(r.ids),
                      std::span<const float>(r.gates), std::span<float>(out), handle);
      if (f.clear_refetch) handle.refetch_weights = false;
      const llep::BackwardArgs<float, float, float> args{r.x, r.gates, grad_out, gh, gg, gw, mode};
      llep::backward(layer, handle, args);
      if (f.twice) llep::backward(layer, handle, args);
    } catch (const llep::Error& e) {
      errors[static_cast<std::size_t>(p)] = e.what();
    }
  });
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(4));
  return errors;
}

void check_all_failed(const std::vector<std::string>& errors, const std::string& needle) {
  bool named = false;
  for (std::size_t p = 0; p < errors.size(); ++p) {
    INFO("rank ", p, ": '", errors[p], "'");
    CHECK(!errors[p].empty());
    named = named || errors[p].find(needle) != std::string::npos;
  }
  INFO("wanted '", needle, "' in some rank's error");
  CHECK(named);
}

}  // namespace

TEST_CASE("bad backward on one rank: llep::Error on every rank, no hang") {
  for (int P : {1, 2, 4}) {
    INFO("P = ", P);
    const int last = P - 1;
    check_all_failed(backward_errors(P, [&](int p, Faults& f) {
                       if (p == last) f.grad_out.push_back(1.0f);
                     }),
                     "grad_out has");
    check_all_failed(backward_errors(P, [&](int p, Faults& f) {
                       if (p == last) f.forward = false;
                     }),
                     "needs a forward with this handle");
    check_all_failed(backward_errors(P, [&](int, Faults& f) { f.twice = true; }), "its backward already ran");
    if (P > 1) {
      check_all_failed(backward_errors(P, [&](int p, Faults& f) {
                         if (p == last) f.mode = llep::GradMode::accumulate;
                       }),
                       "disagrees");
      // refetch_weights on one rank only: forward works, backward's agreement fails.
      check_all_failed(backward_errors(P, [&](int p, Faults& f) { f.refetch = p == last; }, Routing::hot_one_expert),
                       "disagrees");
      // Forward did not keep the weights, backward is told it did: the helpers name the
      // missing weights instead of reading a stale workspace.
      check_all_failed(backward_errors(
                           P, [&](int, Faults& f) { f.refetch = f.clear_refetch = true; }, Routing::hot_one_expert),
                       "no weights of foreign expert");
    }
  }
}
