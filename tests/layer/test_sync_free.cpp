// SyncFreeLayer (layer/sync_free.hpp) on P rank threads with HostExec over host symmetric
// memory: the functors a CUDA stream runs, run on the host. Each step equals MoeLayer's
// bit for bit (same planner, same functor, same order of rows and of the sum over K) and
// the dense MoE within float rounding; steps reuse every buffer with new routing and new
// batch sizes; a bad id is the same llep::Error on every rank at check(), and the next
// step after it is right again.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "../common/dense_moe.hpp"
#include "../common/errors.hpp"
#include "../common/layer_helpers.hpp"
#include "sync_free_rig.hpp"
#include "llep/layer/backward.hpp"
#include "llep/layer/host_layer.hpp"
#include "llep/layer/sync_free.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/routing.hpp"

using namespace syncfree;

namespace {

// Every step's inputs: skewed toward a hot expert that moves, batch sizes that change.
std::vector<std::vector<layertest::RankInput>> steps_of(int P, int N, int S, int b_max, std::uint64_t seed) {
  std::vector<std::vector<layertest::RankInput>> steps;
  for (int s = 0; s < S; ++s) {
    const auto skew = s % 3 == 0 ? llep::sim::Skew{} : llep::sim::Skew{1, s % 2 ? 0.9 : 0.6};
    layertest::TokenRange tokens{0, b_max, s == 2, s == 1};
    steps.push_back(layertest::make_inputs(P, N, K, D, skew, seed + static_cast<std::uint64_t>(s), tokens));
    for (auto& r : steps.back())
      for (auto& id : r.ids) id = (id + 3 * s) % N;
  }
  return steps;
}

// Runs every step on a SyncFreeLayer and on a MoeLayer per rank; returns the sync-free outputs.
template <class Plnr>
void compare_with_moe_layer(int P, int N, Plnr planner, std::uint64_t seed) {
  constexpr int S = 6, Bmax = 20;
  const auto steps = steps_of(P, N, S, Bmax, seed);
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, seed);
  const Rig<Plnr> rig(P, N, planner, Bmax);
  std::vector<std::vector<std::vector<float>>> got(S, std::vector<std::vector<float>>(static_cast<std::size_t>(P)));
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto up = static_cast<std::size_t>(t.rank());
    RankPair<Plnr> pair(rig, t, moe);
    auto& [weights, ws, layer, ref] = pair;
    for (int s = 0; s < S; ++s) {
      const auto& in = steps[static_cast<std::size_t>(s)][up];
      std::vector<float> out(in.x.size(), -7.0f), want(in.x.size());
      layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids),
                    std::span<const float>(in.gates), std::span<float>(out));
      layer.check(t);
      ref.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids), std::span<const float>(in.gates),
                  std::span<float>(want));
      CHECK(same_bits(out, want));
      got[static_cast<std::size_t>(s)][up] = out;
    }
  });
  for (int s = 0; s < S; ++s)
    CHECK(layertest::relative_error(moe, steps[static_cast<std::size_t>(s)], got[static_cast<std::size_t>(s)], K) < 1e-4);
}

}  // namespace

TEST_CASE("SyncFreeLayer on host threads equals MoeLayer bit for bit, and the dense MoE") {
  for (const int P : {1, 2, 3, 4}) {
    CAPTURE(P);
    const int N = 4 * P;
    compare_with_moe_layer(P, N, llep::StandardEp{}, 11);
    compare_with_moe_layer(P, N, llep::LeastLoaded{1.0, 2}, 12);
    compare_with_moe_layer(P, N, llep::Adaptive<>{1.2, llep::LeastLoaded{1.0, 2}}, 13);
    compare_with_moe_layer(P, N, llep::Capped<>{llep::LeastLoaded{1.0, 2}, llep::MemoryCap::rows(60)}, 15);
  }
  compare_with_moe_layer(8, 16, llep::LeastLoaded{1.1, 1}, 14);
}

namespace {

// Forward then backward on a SyncFreeLayer and on a MoeLayer per rank, each step: the
// gradients (input, gate, weight) must be MoeLayer's bit for bit; the input and gate
// gradients also the dense MoE's analytic ones within float rounding.
template <class Plnr>
void compare_backward(int P, int N, Plnr planner, llep::GradMode mode, std::uint64_t seed) {
  constexpr int S = 4, Bmax = 12;
  const auto steps = steps_of(P, N, S, Bmax, seed);
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, seed);
  using Layer = typename Rig<Plnr>::Layer;
  const Rig<Plnr> rig(P, N, planner, Bmax, Layer::template grad_bytes<float>(llep::HostSwiGlu<float>{{D, H, false}}));
  std::vector<std::vector<std::vector<float>>> gh(S, std::vector<std::vector<float>>(static_cast<std::size_t>(P))),
      gg = gh;
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto up = static_cast<std::size_t>(t.rank());
    RankPair<Plnr> pair(rig, t, moe);
    auto& [weights, ws, layer, ref] = pair;
    const std::size_t back_bytes = layer.template backward_workspace_bytes<float, float>();
    Aligned back(back_bytes);
    llep::ForwardHandle<float> handle;
    std::vector<std::byte> memory(decltype(ref)::handle_bytes(ref.limits(Bmax), handle.keeps()));
    handle.memory = memory;
    std::vector<float> gw(weights.size(), 0.25f), want_gw(weights.size(), 0.25f);  // accumulate adds to these
    for (int s = 0; s < S; ++s) {
      const auto& in = steps[static_cast<std::size_t>(s)][up];
      std::vector<float> grad_out(in.x.size());
      for (std::size_t i = 0; i < grad_out.size(); ++i) grad_out[i] = static_cast<float>((i * 7 + up * 3 + s) % 11) / 11.0f - 0.5f;
      std::vector<float> out(in.x.size()), want(in.x.size());
      std::vector<float> g_hidden(in.x.size(), -7.0f), g_gates(in.gates.size(), -7.0f);
      std::vector<float> w_hidden(in.x.size()), w_gates(in.gates.size());
      layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids),
                    std::span<const float>(in.gates), std::span<float>(out));
      layer.backward(std::span<const float>(grad_out), std::span<const float>(in.gates), std::span<float>(g_hidden),
                     std::span<float>(g_gates), std::span<float>(gw), mode, back.span(back_bytes));
      layer.check(t);
      ref.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids), std::span<const float>(in.gates),
                  std::span<float>(want), handle);
      llep::backward(ref, handle,
                     llep::BackwardArgs<float, float, float>{in.x, in.gates, grad_out, w_hidden, w_gates, want_gw, mode});
      CHECK(same_bits(g_hidden, w_hidden));
      CHECK(same_bits(g_gates, w_gates));
      CHECK(same_bits(gw, want_gw));
      gh[static_cast<std::size_t>(s)][up] = g_hidden;
      gg[static_cast<std::size_t>(s)][up] = g_gates;
    }
  });
  // The dense MoE's gradients of every rank's tokens (grad_out as above).
  for (int s = 0; s < S; ++s)
    for (int p = 0; p < P; ++p) {
      const auto& in = steps[static_cast<std::size_t>(s)][static_cast<std::size_t>(p)];
      const std::vector<double> x(in.x.begin(), in.x.end()), gates(in.gates.begin(), in.gates.end());
      std::vector<double> grad_out(in.x.size());
      for (std::size_t i = 0; i < grad_out.size(); ++i)
        grad_out[i] = static_cast<double>(static_cast<float>((i * 7 + static_cast<std::size_t>(p) * 3 + static_cast<std::size_t>(s)) % 11) / 11.0f - 0.5f);
      const auto want = moe.backward(x, in.ids, gates, K, grad_out);
      const auto& got_h = gh[static_cast<std::size_t>(s)][static_cast<std::size_t>(p)];
      const auto& got_g = gg[static_cast<std::size_t>(s)][static_cast<std::size_t>(p)];
      REQUIRE(got_h.size() == want.hidden.size());
      REQUIRE(got_g.size() == want.gates.size());
      double err = 0, scale = 1e-6;
      for (std::size_t i = 0; i < got_h.size(); ++i)
        err = std::max(err, std::abs(got_h[i] - want.hidden[i])), scale = std::max(scale, std::abs(want.hidden[i]));
      for (std::size_t i = 0; i < got_g.size(); ++i)
        err = std::max(err, std::abs(got_g[i] - want.gates[i])), scale = std::max(scale, std::abs(want.gates[i]));
      CHECK(err / scale < 1e-4);
    }
}

}  // namespace

TEST_CASE("SyncFreeLayer backward on host threads equals MoeLayer's bit for bit, and the dense gradients") {
  for (const int P : {1, 2, 4}) {
    CAPTURE(P);
    const int N = 4 * P;
    compare_backward(P, N, llep::StandardEp{}, llep::GradMode::overwrite, 21);
    compare_backward(P, N, llep::LeastLoaded{1.0, 2}, llep::GradMode::accumulate, 22);
    compare_backward(P, N, llep::Adaptive<>{1.2, llep::LeastLoaded{1.0, 2}}, llep::GradMode::overwrite, 23);
  }
}

TEST_CASE("SyncFreeLayer: a bad id is the same llep::Error on every rank at check(), then steps work again") {
  constexpr int P = 3, N = 6, Bmax = 8;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 5);
  const Rig rig(P, N, llep::LeastLoaded{1.0, 1}, Bmax);
  const auto inputs = layertest::make_inputs(P, N, K, D, llep::sim::Skew{1, 0.7}, 9, {Bmax, Bmax});
  std::vector<std::string> errors(P);
  std::vector<double> after(P, 1.0);
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    const auto up = static_cast<std::size_t>(p);
    Aligned ws(rig.bytes());
    auto layer = rig.layer(p, ws, moe);
    auto in = inputs[up];
    std::vector<float> out(in.x.size(), -7.0f);
    if (p == 1) in.ids[5] = N + 3;  // pair 5 of rank 1
    layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids), std::span<const float>(in.gates),
                  std::span<float>(out));
    errors[up] = testutil::error_of([&] { layer.check(t); });
    if (p == 1) {  // the rank with the bad id skips its combine: out is not written
      CHECK(std::count(out.begin(), out.end(), -7.0f) == static_cast<std::ptrdiff_t>(out.size()));
    } else {  // the others' steps are whole (their pairs never met the bad one)
      CHECK(layertest::relative_error(moe, inputs[up], out, K) < 1e-4);
    }
    const auto& good = inputs[up];
    layer.forward(std::span<const float>(good.x), std::span<const std::int32_t>(good.ids),
                  std::span<const float>(good.gates), std::span<float>(out));
    layer.check(t);
    after[up] = layertest::relative_error(moe, good, out, K);
  });
  for (int p = 0; p < P; ++p) {
    CHECK(errors[static_cast<std::size_t>(p)] == errors[0]);
    CHECK(after[static_cast<std::size_t>(p)] < 1e-4);
  }
  CHECK(errors[0].find("rank 1") != std::string::npos);
  CHECK(errors[0].find(std::to_string(N + 3)) != std::string::npos);
  CHECK(errors[0].find("pair 5") != std::string::npos);
}

TEST_CASE("SyncFreeLayer checks its configuration on the host") {
  const Rig rig(1, 4, llep::LeastLoaded{1.0, 1}, 4);
  using Layer = decltype(rig)::Layer;
  const std::size_t need = rig.bytes();
  Aligned ws(need);
  CHECK(testutil::error_of([&] {
          Layer(rig.topo, K, rig.planner, rig.experts, llep::HostExec{}, rig.sym.view(0), rig.limits, ws.span(need - 1));
        }).find("needs " + std::to_string(need)) != std::string::npos);
  auto other = rig.limits;
  other.max_tokens_per_rank = 5;
  CHECK(testutil::error_of([&] {
          Layer(rig.topo, K, rig.planner, rig.experts, llep::HostExec{}, rig.sym.view(0), other, ws.span(need));
        }).find("does not describe this layer") != std::string::npos);
  {  // Memory laid out for forward only is too small for a layer that trains (P = 2: it has
     // foreign experts' gradients to hold): refused, not written past.
    const Rig two(2, 4, llep::LeastLoaded{1.0, 1}, 4);
    const std::size_t grad_bytes = Layer::grad_bytes<float>(two.experts);
    Aligned ws2(two.bytes());
    CHECK(testutil::error_of([&] {
            Layer(two.topo, K, two.planner, two.experts, llep::HostExec{}, two.sym.view(0), two.limits,
                  ws2.span(two.bytes()), {}, grad_bytes);
          }).find("these steps need " +
                  std::to_string(Layer::symmetric_layout(two.topo, two.limits, grad_bytes).bytes())) != std::string::npos);
  }
  auto layer = rig.layer(0, ws);
  CHECK(std::string(layer.exchange()) == "host memory");
  std::vector<float> x(5 * D), gates(5 * K), out(5 * D);
  std::vector<std::int32_t> ids(5 * K, 0);
  CHECK(testutil::error_of([&] {
          layer.forward(std::span<const float>(x), std::span<const std::int32_t>(ids), std::span<const float>(gates),
                        std::span<float>(out));
        }).find("B_max = 4") != std::string::npos);
  // Backward needs a forward before it, and an exchange built for gradients.
  std::vector<float> g(D), gg(K), gw(rig.experts.weight_elems() * 4);
  Aligned back(layer.backward_workspace_bytes<float, float>());
  auto run_backward = [&] {
    layer.backward(std::span<const float>(g), std::span<const float>(gg), std::span<float>(g), std::span<float>(gg),
                   std::span<float>(gw), llep::GradMode::overwrite, back.span(layer.backward_workspace_bytes<float, float>()));
  };
  CHECK(testutil::error_of(run_backward).find("needs a forward before it") != std::string::npos);
  layer.forward(std::span<const float>(x.data(), D), std::span<const std::int32_t>(ids.data(), K),
                std::span<const float>(gates.data(), K), std::span<float>(out.data(), D));
  CHECK(testutil::error_of(run_backward).find("holds gradients of 0 bytes") != std::string::npos);
}

TEST_CASE("SyncFreeLayer with the batch size in exec memory: buffers of B_max, any B each step, bits of B alone") {
  constexpr int P = 3, N = 9, Bmax = 16, S = 5;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 21);
  const Rig rig(P, N, llep::LeastLoaded{1.0, 2}, Bmax);
  const auto steps = steps_of(P, N, S, Bmax, 31);
  std::vector<std::string> too_many(P);
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    const auto up = static_cast<std::size_t>(p);
    Aligned ws(rig.bytes()), ws2(rig.bytes());
    auto layer = rig.layer(p, ws, moe);
    auto by_host = rig.layer(p, ws2);  // the same steps with B from the host, for the bits
    // Fixed buffers of B_max tokens, as a captured graph has them; stale data past B.
    std::vector<float> x(Bmax * D, 9.0f), gates(Bmax * K, 9.0f), out(Bmax * D);
    std::vector<std::int32_t> ids(Bmax * K, N + 7);  // past B: out of range, never read as pairs
    llep::count_t tokens = 0;
    for (int s = 0; s < S; ++s) {
      const auto& in = steps[static_cast<std::size_t>(s)][up];
      std::copy(in.x.begin(), in.x.end(), x.begin());
      std::copy(in.ids.begin(), in.ids.end(), ids.begin());
      std::copy(in.gates.begin(), in.gates.end(), gates.begin());
      tokens = static_cast<llep::count_t>(in.x.size() / D);
      layer.forward(&tokens, std::span<const float>(x), std::span<const std::int32_t>(ids), std::span<const float>(gates),
                    std::span<float>(out));
      layer.check(t);
      std::vector<float> want(in.x.size());
      by_host.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids),
                      std::span<const float>(in.gates), std::span<float>(want));
      by_host.check(t);
      CHECK(same_bits(std::vector<float>(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(want.size())), want));
    }
    tokens = p == 2 ? Bmax + 1 : 1;
    layer.forward(&tokens, std::span<const float>(x), std::span<const std::int32_t>(ids), std::span<const float>(gates),
                  std::span<float>(out));
    too_many[up] = testutil::error_of([&] { layer.check(t); });
  });
  for (int p = 0; p < P; ++p) CHECK(too_many[static_cast<std::size_t>(p)] == too_many[0]);
  CHECK(too_many[0].find("rank 2: the step's token count in device memory, " + std::to_string(Bmax + 1)) !=
        std::string::npos);
}

TEST_CASE("SyncFreeLayer: a plan that fails closes the step on every rank; check() says so, the next step works") {
  constexpr int P = 2, N = 4, Bmax = 8;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 17);
  // At most 4 rows a rank: a full batch (32 pairs over 2 ranks) cannot be placed.
  const Rig rig(P, N, llep::Capped<>{llep::LeastLoaded{1.0, 1}, llep::MemoryCap::rows(4)}, Bmax);
  const auto big = layertest::make_inputs(P, N, K, D, llep::sim::Skew{}, 3, {Bmax, Bmax});
  const auto small = layertest::make_inputs(P, N, K, D, llep::sim::Skew{}, 4, {1, 1});
  std::vector<std::string> errors(P);
  std::vector<int> untouched(P, 0);
  std::vector<double> after(P, 1.0);
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    const auto up = static_cast<std::size_t>(p);
    Aligned ws(rig.bytes());
    auto layer = rig.layer(p, ws, moe);
    std::vector<float> out(big[up].x.size(), -7.0f);
    layer.forward(std::span<const float>(big[up].x), std::span<const std::int32_t>(big[up].ids),
                  std::span<const float>(big[up].gates), std::span<float>(out));
    errors[up] = testutil::error_of([&] { layer.check(t); });
    untouched[up] = std::count(out.begin(), out.end(), -7.0f) == static_cast<std::ptrdiff_t>(out.size()) ? 1 : 0;
    std::vector<float> out2(small[up].x.size());
    layer.forward(std::span<const float>(small[up].x), std::span<const std::int32_t>(small[up].ids),
                  std::span<const float>(small[up].gates), std::span<float>(out2));
    layer.check(t);
    after[up] = layertest::relative_error(moe, small[up], out2, K);
  });
  for (int p = 0; p < P; ++p) {
    const auto up = static_cast<std::size_t>(p);
    CHECK(errors[up] == errors[0]);
    CHECK(untouched[up] == 1);
    CHECK(after[up] < 1e-4);
  }
  CHECK(errors[0].find("the device plan failed") != std::string::npos);
}

// ---------------------------------------------------------------------------------------
// SyncFreeLayer over CollectiveExchange (device/collective_exchange.hpp): the fixed-capacity
// collectives instead of symmetric memory, on the same rank threads.
#include "llep/device/collective_exchange.hpp"

namespace {

// Every step on a SyncFreeLayer over CollectiveExchange<HostThreads> and on MoeLayer, per
// rank, bit for bit (and the dense MoE); with `train`, each step's backward too (input,
// gate and accumulated weight gradients, as compare_backward). `inputs` [step][rank].
// Returns each rank's error at the first check that throws (testutil::kNoError when none).
template <class Plnr>
std::vector<std::string> collective_vs_moe_layer(int P, int N, Plnr planner, std::uint64_t seed,
                                                 const std::vector<std::vector<layertest::RankInput>>& inputs,
                                                 int b_max, llep::CollectiveCapacity capacity = {}, bool train = false) {
  using Layer = typename CollectiveRig<Plnr>::Layer;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, seed);
  const CollectiveRig<Plnr> rig(
      P, N, planner, b_max, train ? Layer::template grad_bytes<float>(llep::HostSwiGlu<float>{{D, H, false}}) : 0,
      capacity);
  const llep::Topology& topo = rig.topo;
  const std::size_t S = inputs.size();
  std::vector<std::vector<std::vector<float>>> got(S, std::vector<std::vector<float>>(static_cast<std::size_t>(P)));
  std::vector<std::string> errors(static_cast<std::size_t>(P), testutil::kNoError);
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    const auto up = static_cast<std::size_t>(p);
    const auto weights = layertest::held_weights(moe, topo, p);
    Aligned ws(rig.bytes());
    Layer layer = rig.layer(t, ws);
    CHECK(std::string(layer.exchange()) == "fixed-capacity collectives (host_threads)");
    layer.set_native_weights(weights);
    llep::MoeLayer<llep::ExactCounts, Plnr, llep::HostThreads, llep::HostSwiGlu<float>, llep::HostExec> ref(
        topo, K, planner, rig.experts, t);
    ref.set_native_weights(weights);
    llep::ForwardHandle<float> handle;
    std::vector<std::byte> handle_memory(decltype(ref)::handle_bytes(ref.limits(b_max), handle.keeps()));
    handle.memory = handle_memory;
    const std::size_t back_bytes = train ? layer.template backward_workspace_bytes<float, float>() : 0;
    Aligned back(back_bytes);
    std::vector<float> gw(weights.size(), 0.25f), want_gw = gw;
    for (std::size_t s = 0; s < S; ++s) {
      const auto& in = inputs[s][up];
      std::vector<float> out(in.x.size(), -7.0f), want(in.x.size());
      layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids),
                    std::span<const float>(in.gates), std::span<float>(out));
      errors[up] = testutil::error_of([&] { layer.check(t); });
      if (errors[up] != testutil::kNoError) return;  // the same error on every rank: all leave here
      ref.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids), std::span<const float>(in.gates),
                  std::span<float>(want), handle);
      CHECK(same_bits(out, want));
      got[s][up] = out;
      if (!train) continue;
      std::vector<float> grad_out(in.x.size()), g_hidden(in.x.size()), g_gates(in.gates.size());
      std::vector<float> w_hidden(in.x.size()), w_gates(in.gates.size());
      for (std::size_t i = 0; i < grad_out.size(); ++i) grad_out[i] = static_cast<float>((i * 5 + up + s) % 13) / 13.0f - 0.5f;
      layer.backward(std::span<const float>(grad_out), std::span<const float>(in.gates), std::span<float>(g_hidden),
                     std::span<float>(g_gates), std::span<float>(gw), llep::GradMode::accumulate, back.span(back_bytes));
      layer.check(t);
      llep::backward(ref, handle,
                     llep::BackwardArgs<float, float, float>{in.x, in.gates, grad_out, w_hidden, w_gates, want_gw,
                                                             llep::GradMode::accumulate});
      CHECK(same_bits(g_hidden, w_hidden));
      CHECK(same_bits(g_gates, w_gates));
      CHECK(same_bits(gw, want_gw));
    }
  });
  if (errors[0] == testutil::kNoError)
    for (std::size_t s = 0; s < S; ++s) CHECK(layertest::relative_error(moe, inputs[s], got[s], K) < 1e-4);
  return errors;
}

}  // namespace

TEST_CASE("SyncFreeLayer over CollectiveExchange<HostThreads> equals MoeLayer bit for bit, and the dense MoE") {
  constexpr int Bmax = 20;
  for (const int P : {2, 4}) {
    CAPTURE(P);
    const int N = 4 * P;
    const std::vector<std::string> clean(static_cast<std::size_t>(P), testutil::kNoError);
    CHECK(collective_vs_moe_layer(P, N, llep::StandardEp{}, 41, steps_of(P, N, 4, Bmax, 41), Bmax) == clean);
    CHECK(collective_vs_moe_layer(P, N, llep::LeastLoaded{1.0, 2}, 42, steps_of(P, N, 4, Bmax, 42), Bmax) == clean);
  }
}

TEST_CASE("SyncFreeLayer backward over CollectiveExchange<HostThreads> equals MoeLayer's bit for bit") {
  constexpr int Bmax = 12;
  for (const int P : {2, 4}) {
    CAPTURE(P);
    const int N = 4 * P;
    const std::vector<std::string> clean(static_cast<std::size_t>(P), testutil::kNoError);
    CHECK(collective_vs_moe_layer(P, N, llep::LeastLoaded{1.0, 2}, 43, steps_of(P, N, 3, Bmax, 43), Bmax, {}, true) ==
          clean);
  }
}

TEST_CASE("SyncFreeLayer over CollectiveExchange: a capacity too small is the same llep::Error on every rank") {
  constexpr int P = 2, N = 4, Bmax = 8;
  // Full batches of 16 pairs a rank, uniform over 4 experts: rank 0 sends rank 1 more than 2 rows.
  const auto full = layertest::make_inputs(P, N, K, D, llep::sim::Skew{}, 6, {Bmax, Bmax});
  const auto errors = collective_vs_moe_layer(P, N, llep::StandardEp{}, 7, {full}, Bmax, llep::CollectiveCapacity{2, -1});
  CHECK(errors[1] == errors[0]);
  CHECK(errors[0].find("exceed the fixed-capacity exchange's room per peer (raise CollectiveCapacity)") !=
        std::string::npos);
}

TEST_CASE("SyncFreeLayer over CollectiveExchange: experts past a room per peer below the planner's bound are a "
          "capacity error") {
  constexpr int P = 2, N = 6, Bmax = 6;
  // Every token to rank 0's three natives, evenly: LeastLoaded ships two of them to rank 1.
  auto full = layertest::make_inputs(P, N, K, D, llep::sim::Skew{}, 8, {Bmax, Bmax});
  for (auto& r : full)
    for (std::size_t i = 0; i < r.ids.size(); ++i) r.ids[i] = static_cast<std::int32_t>((i / 2 + i % 2) % 3);
  const auto errors = collective_vs_moe_layer(P, N, llep::LeastLoaded{1.0, 1}, 9, {full}, Bmax,
                                              llep::CollectiveCapacity{llep::CollectiveCapacity::most, 1});
  CHECK(errors[1] == errors[0]);
  CHECK(errors[0].rfind("llep: rank 0: the 2 rows (or experts' weights) between it and peer 1 exceed the "
                        "fixed-capacity exchange's room per peer (raise CollectiveCapacity)",
                        0) == 0);
}
