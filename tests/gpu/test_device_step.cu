// A step's control path on the device for logical ranks of one process (issue 14 items 1, 3
// and 5): each PeerCopy rank histograms its ids on its stream, the counts matrix is
// all-gathered by peer copies (gather_counts), the device planner plans from it and the
// device layout builds from that plan, with no host copy in between. Checked afterwards
// against the host: every rank's gathered matrix is the brute-force one, its plan the host
// planner's and its layout the host Layout's, bit for bit. A bad id on one rank sets that
// rank's status word, and the host check throws the same llep::Error on every rank.
// The sync-free exchanges over symmetric memory (device/symmetric_exchange.hpp): the same
// functors and the same steps as tests/device/test_symmetric.cpp, on logical ranks, eager
// and captured in a CUDA graph per rank replayed with new ids, rows and weights.
// The whole sync-free layer (layer/sync_free.hpp) on those exchanges with GroupedSwiGlu:
// equal to the dense MoE, and with B in device memory and from graph replays, eager's bits.
#include <doctest/doctest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "../common/dense_moe.hpp"
#include "../common/errors.hpp"
#include "../common/layer_helpers.hpp"
#include "../device/symmetric_cases.hpp"
#include "../layer/layout_reference.hpp"
#include "device_array.hpp"
#include "streams.hpp"
#include "symmetric_steps.hpp"
#include "llep/device/device_layout.cuh"
#include "llep/device/gather_counts.hpp"
#include "llep/device/status_word.hpp"
#include "llep/device/symmetric_exchange.hpp"
#include "llep/device/symmetric_peer.cuh"
#include "llep/exec/cuda.cuh"
#include "llep/experts/grouped_swiglu.cuh"
#include "llep/layer/sync_free.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/device_planner.cuh"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/transport/peer_copy.cuh"

namespace {

using llep::count_t;

// Logical ranks spin-wait on each other's signals from their own streams: give each
// stream its own hardware queue (the default is 8), so no rank's wait sits in front of
// another rank's signal. Set before the first CUDA call of the process.
[[maybe_unused]] const int kConnections = setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);


std::vector<std::vector<std::int32_t>> routing(std::mt19937_64& rng, int P, int N, bool skewed, int bad_rank) {
  std::vector<std::vector<std::int32_t>> ids(static_cast<std::size_t>(P));
  const int hot = static_cast<int>(rng() % static_cast<unsigned>(N));
  for (int r = 0; r < P; ++r) {
    auto& v = ids[static_cast<std::size_t>(r)];
    v.resize(rng() % 3000);
    for (auto& id : v) id = skewed && rng() % 10 < 7 ? hot : static_cast<std::int32_t>(rng() % static_cast<unsigned>(N));
    if (r == bad_rank) {
      if (v.empty()) v.push_back(0);
      v[v.size() / 2] = N + 3;
    }
  }
  return ids;
}

struct RankOut {
  std::vector<count_t> counts;
  llep::Plan plan;
  llep::DeviceLayout::Host layout;
  std::string error;
};

template <class Planner>
std::vector<RankOut> device_step(const Planner& planner, const llep::Topology& topo,
                                 const std::vector<std::vector<std::int32_t>>& ids) {
  const int P = topo.ranks(), N = topo.experts();
  gputest::Streams streams(P, 0);
  llep::PeerCopyGroup group(streams.ranks(0));
  std::vector<RankOut> out(static_cast<std::size_t>(P));
  llep::run_ranks(group, [&](llep::PeerCopy& t) {
    const auto r = static_cast<std::size_t>(t.rank());
    llep::CudaExec exec(t.stream());
    gputest::DeviceArray<std::int32_t> d_ids(ids[r]);
    gputest::DeviceArray<std::byte> memory(llep::gather_counts_bytes(P, N));
    gputest::DeviceArray<llep::status_word_t> words(llep::StatusWords::bytes(P) / sizeof(llep::status_word_t));
    llep::StatusWords status(exec, words.get(), P);
    const llep::DevicePlanner<Planner> dp(planner, topo);
    const llep::DeviceLayout dl(topo, t.rank());
    const llep::GatheredCounts g = llep::GatheredCounts::carve(memory.get(), N);
    // The step's control path: histogram, gather, plan, layout; nothing waits on the host.
    llep::gather_counts(exec, t, d_ids.get(), ids[r].size(), N, g, &status);
    dl.plan_and_build(t.stream(), dp, g.counts);
    // Then the host check and the downloads for the comparison.
    try {
      status.check(exec, t, N);
    } catch (const llep::Error& e) {
      out[r].error = e.what();
    }
    out[r].counts.resize(static_cast<std::size_t>(P) * static_cast<std::size_t>(N));
    exec.to_host(out[r].counts.data(), g.counts, out[r].counts.size() * sizeof(count_t));
    exec.synchronize();
    dp.download(t.stream(), out[r].plan);
    out[r].layout = dl.download(t.stream());
  });
  return out;
}

template <class Planner>
void check_step(const Planner& planner, const llep::Topology& topo, std::mt19937_64& rng, bool skewed) {
  const int P = topo.ranks(), N = topo.experts();
  const auto ids = routing(rng, P, N, skewed, -1);
  const auto out = device_step(planner, topo, ids);
  std::vector<count_t> C(static_cast<std::size_t>(P) * static_cast<std::size_t>(N), 0);
  for (int r = 0; r < P; ++r)
    for (const auto id : ids[static_cast<std::size_t>(r)])
      ++C[static_cast<std::size_t>(r) * static_cast<std::size_t>(N) + static_cast<std::size_t>(id)];
  std::vector<count_t> loads(static_cast<std::size_t>(N), 0);
  llep::loads_from_counts(llep::CountsView(C, P, N), loads);
  llep::Plan host;
  planner.plan(loads, topo, host);
  llep::Layout L;
  for (int r = 0; r < P; ++r) {
    CAPTURE(r);
    const RankOut& o = out[static_cast<std::size_t>(r)];
    CHECK(o.error.empty());
    REQUIRE(o.counts == C);
    REQUIRE(std::vector<llep::Segment>(o.plan.segments().begin(), o.plan.segments().end()) ==
            std::vector<llep::Segment>(host.segments().begin(), host.segments().end()));
    L.build(llep::CountsView(C, P, N), host, topo, r);
    testref::require_same(testref::tables_of_fields(o.layout), testref::tables_of(L));
  }
}

}  // namespace

TEST_CASE("counts gathered by peer copies feed the device planner and layout: the host's plan and layout") {
  std::mt19937_64 rng(99);
  for (const int P : {1, 2, 4, 8}) {
    CAPTURE(P);
    const llep::Topology topo(P, 8 * P);
    for (const bool skewed : {false, true}) {
      check_step(llep::StandardEp{}, topo, rng, skewed);
      check_step(llep::LeastLoaded{1.0, 16}, topo, rng, skewed);
      check_step(llep::Adaptive<>{1.3, llep::LeastLoaded{1.0, 16}}, topo, rng, skewed);
    }
  }
}

TEST_CASE("a bad id on one rank's device sets its status word; the host check fails every rank alike") {
  std::mt19937_64 rng(3);
  const int P = 4, N = 16;
  const llep::Topology topo(P, N);
  const auto ids = routing(rng, P, N, false, 2);
  const auto out = device_step(llep::LeastLoaded{}, topo, ids);
  const std::size_t at = ids[2].size() / 2;
  const std::string want = "llep: rank 2 routed expert id " + std::to_string(N + 3) + " outside [0, " +
                           std::to_string(N) + ") (pair " + std::to_string(at) + ", found in the step)";
  for (int r = 0; r < P; ++r) {
    CAPTURE(r);
    CHECK(out[static_cast<std::size_t>(r)].error.rfind(want, 0) == 0);
  }
}

namespace {

// Every rank's results of every step; eager, or one graph per rank captured on the first
// step and replayed for each (new inputs uploaded before each replay, outside the graph).
std::vector<std::vector<symtest::StepResult>> symmetric_steps(const symtest::Rig& rig,
                                                              const std::vector<symtest::StepCase>& cases, bool graph,
                                                              std::vector<std::string>& errors) {
  const int P = rig.P;
  gputest::Streams streams(P, 0);
  llep::PeerCopyGroup group(streams.ranks(0));
  std::vector<std::vector<symtest::StepResult>> out(static_cast<std::size_t>(P));
  errors.assign(static_cast<std::size_t>(P), {});
  llep::run_ranks(group, [&](llep::PeerCopy& t) {
    const int p = t.rank();
    llep::CudaExec exec(t.stream());
    gputest::SymmetricBuffers mem(rig);
    const symtest::RankBuffers b = mem.view();
    llep::StatusWords status(exec, mem.words.get(), P);
    llep::PeerSymmetricMemory sym(t, rig.layout);
    out[static_cast<std::size_t>(p)] = gputest::rank_steps(exec, sym.view(), rig, cases, graph, b, status);
    try {
      status.check(exec, t, rig.N);  // also the last collective: no rank frees its region early
    } catch (const llep::Error& e) {
      errors[static_cast<std::size_t>(p)] = e.what();
    }
  });
  return out;
}

}  // namespace

TEST_CASE("symmetric exchanges on logical ranks, eager and replayed from a CUDA graph, equal brute force") {
  std::mt19937_64 rng(14);
  for (const int P : {1, 2, 4, 8}) {
    for (const std::size_t row_bytes : {std::size_t{64}, std::size_t{12}}) {
      CAPTURE(P);
      CAPTURE(row_bytes);
      const symtest::Rig rig(P, 2 * P, 6, row_bytes, 4 * row_bytes);
      std::vector<symtest::StepCase> cases;
      for (int s = 0; s < 6; ++s) cases.push_back(symtest::make_step(rng, P, rig.N, s, rig.max_rows));
      std::vector<std::string> eager_errors, graph_errors;
      const auto eager = symmetric_steps(rig, cases, false, eager_errors);
      const auto replayed = symmetric_steps(rig, cases, true, graph_errors);
      for (int p = 0; p < P; ++p) {
        CAPTURE(p);
        CHECK(eager_errors[static_cast<std::size_t>(p)].empty());
        CHECK(graph_errors[static_cast<std::size_t>(p)].empty());
        for (const symtest::StepCase& c : cases) {
          CAPTURE(c.step);
          const symtest::StepResult want = symtest::expected_step(rig, c, p);
          CHECK(eager[static_cast<std::size_t>(p)][static_cast<std::size_t>(c.step)] == want);
          CHECK(replayed[static_cast<std::size_t>(p)][static_cast<std::size_t>(c.step)] == want);
        }
      }
    }
  }
}

TEST_CASE("a logical rank that never arrives gives the waiting ranks the timeout error, no hang") {
  const int P = 2;
  const symtest::Rig rig(P, P, 3, 16, 16);
  std::mt19937_64 rng(8);
  const symtest::StepCase c = symtest::make_step(rng, P, rig.N, 0, rig.max_rows);
  gputest::Streams streams(P, 0);
  llep::PeerCopyGroup group(streams.ranks(0));
  std::vector<std::string> errors(static_cast<std::size_t>(P));
  llep::run_ranks(group, [&](llep::PeerCopy& t) {
    const int p = t.rank();
    llep::CudaExec exec(t.stream());
    gputest::SymmetricBuffers mem(rig);
    llep::StatusWords status(exec, mem.words.get(), P);
    llep::PeerSymmetricMemory sym(t, rig.layout);
    if (p == 0) {
      llep::SignalOptions quick;
      quick.timeout_ns = 50'000'000;
      symtest::upload_step(exec, sym.view(), rig, c, mem.view());
      symtest::enqueue_step(exec, sym.view(), rig, mem.view(), symtest::kPairsOnDevice, status, 256, quick);
      errors[0] = testutil::error_of([&] { status.check_mine(exec, p, rig.N); });
    }
    t.barrier();  // rank 1 keeps its region until rank 0 is done
  });
  CHECK(errors[0].rfind("llep: rank 0: peer 1 did not signal step 1", 0) == 0);
}

namespace {

// The sync-free layer on P logical ranks of one GPU: CudaExec per rank, symmetric memory
// through peer pointers, GroupedSwiGlu<float>. Every step's outputs per rank, run as
//   host_b   forward(hidden, ids, gates, out): B from the host, eager;
//   device_b forward(tokens, ...) over buffers of B_max, B in device memory, eager;
//   graph    device_b captured once per rank, replayed each step after uploading that
//            step's inputs and B (so replays change routing and batch size).
enum class SyncFreeMode { host_b, device_b, graph };

struct SyncFreeRun {
  std::vector<std::vector<std::vector<float>>> out;  // [step][rank]
  std::vector<std::string> errors;                   // per rank, from the last check()
  // With backward (train): the gradients of each step, grad_out = upstream(s, rank, i).
  std::vector<std::vector<std::vector<float>>> grad_hidden, grad_gates, grad_weights;
};

// The upstream gradient of step s on rank p, element i (the dense reference uses the same).
float upstream(std::size_t s, std::size_t p, std::size_t i) {
  return static_cast<float>((i * 7 + p * 3 + s) % 11) / 11.0f - 0.5f;
}

template <class To, class From>
std::vector<To> as(const std::vector<From>& v) {
  std::vector<To> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<To>(static_cast<float>(v[i]));
  return out;
}

// Element type T in and out (the dense reference sees the floats converted back).
template <class T, class Plnr>
SyncFreeRun run_sync_free(int P, int N, Plnr planner, const dense::Moe& moe,
                          const std::vector<std::vector<layertest::RankInput>>& steps, int b_max, SyncFreeMode mode,
                          bool train = false) {
  constexpr int K = 2, D = 16, H = 8;
  using Experts = llep::GroupedSwiGlu<T>;
  using Layer = llep::SyncFreeLayer<Plnr, Experts, llep::CudaExec>;
  const llep::Topology topo(P, N);
  const Experts experts({D, H, false});
  const auto limits = Layer::make_limits(topo, K, planner, experts, b_max);
  gputest::Streams streams(P, 0);
  llep::PeerCopyGroup group(streams.ranks(0));
  SyncFreeRun run;
  run.out.assign(steps.size(), std::vector<std::vector<float>>(static_cast<std::size_t>(P)));
  run.errors.assign(static_cast<std::size_t>(P), {});
  run.grad_hidden = run.grad_gates = run.grad_weights = run.out;
  const std::size_t grad_bytes = train ? Layer::template grad_bytes<float>(experts) : 0;
  llep::run_ranks(group, [&](llep::PeerCopy& t) {
    const int p = t.rank();
    const auto up = static_cast<std::size_t>(p);
    llep::PeerSymmetricMemory sym(t, Layer::symmetric_layout(topo, limits, grad_bytes));
    const std::size_t need = Layer::workspace_bytes(topo, limits);
    gputest::DeviceArray<std::byte> ws(need);
    Layer layer(topo, K, planner, experts, llep::CudaExec(t.stream()), sym.view(), limits,
                std::span<std::byte>(ws.get(), need), {}, grad_bytes);
    const std::size_t back_need = train ? layer.template backward_workspace_bytes<float, float>() : 0;
    gputest::DeviceArray<std::byte> back_ws(std::max<std::size_t>(back_need, 1));
    gputest::DeviceArray<T> weights(as<T>(layertest::held_weights(moe, topo, p)));
    layer.set_native_weights(std::span<const T>(weights.get(), weights.size()));
    CHECK(std::string(layer.exchange()) == "peer pointers");
    llep::CudaExec& exec = layer.exec();
    const auto B = static_cast<std::size_t>(b_max);
    gputest::DeviceArray<T> x(B * D), out(B * D);
    gputest::DeviceArray<float> gates(B * K);
    gputest::DeviceArray<std::int32_t> ids(B * K);
    gputest::DeviceArray<llep::count_t> tokens(1);
    const std::size_t W = experts.weight_elems() * static_cast<std::size_t>(topo.slots_per_rank());
    gputest::DeviceArray<T> grad_out(B * D), grad_hidden(B * D);
    gputest::DeviceArray<float> grad_gates(B * K), grad_weights(train ? W : 1);
    std::optional<llep::CudaGraph> replay;
    auto backward = [&](std::size_t b) {  // over forward's bound b
      layer.backward(std::span<const T>(grad_out.get(), b * D), std::span<const float>(gates.get(), b * K),
                     std::span<T>(grad_hidden.get(), b * D), std::span<float>(grad_gates.get(), b * K),
                     std::span<float>(grad_weights.get(), W), llep::GradMode::overwrite,
                     std::span<std::byte>(back_ws.get(), back_need));
    };
    auto device_b = [&] {
      layer.forward(tokens.get(), std::span<const T>(x.get(), B * D), std::span<const std::int32_t>(ids.get(), B * K),
                    std::span<const float>(gates.get(), B * K), std::span<T>(out.get(), B * D));
      if (train) backward(B);
    };
    for (std::size_t s = 0; s < steps.size(); ++s) {
      const auto& in = steps[s][up];
      const std::size_t b = in.x.size() / D;
      const auto count = static_cast<llep::count_t>(b);
      const std::vector<T> xt = as<T>(in.x);
      exec.from_host(x.get(), xt.data(), xt.size() * sizeof(T));
      exec.from_host(ids.get(), in.ids.data(), in.ids.size() * sizeof(std::int32_t));
      exec.from_host(gates.get(), in.gates.data(), in.gates.size() * sizeof(float));
      exec.from_host(tokens.get(), &count, sizeof count);
      std::vector<T> g(B * D);
      for (std::size_t i = 0; i < g.size(); ++i) g[i] = static_cast<T>(upstream(s, up, i));
      exec.from_host(grad_out.get(), g.data(), g.size() * sizeof(T));
      if (mode == SyncFreeMode::host_b) {
        layer.forward(std::span<const T>(x.get(), b * D), std::span<const std::int32_t>(ids.get(), b * K),
                      std::span<const float>(gates.get(), b * K), std::span<T>(out.get(), b * D));
        if (train) backward(b);
      } else if (mode == SyncFreeMode::device_b) {
        device_b();
      } else {
        if (!replay) replay.emplace(t.stream(), device_b);
        replay->launch(t.stream());
      }
      std::vector<T> o(b * D);
      exec.to_host(o.data(), out.get(), o.size() * sizeof(T));
      exec.synchronize();
      run.out[s][up] = as<float>(o);
      if (train) {
        std::vector<T> gh(b * D);
        std::vector<float> gg(b * K), gw(W);
        exec.to_host(gh.data(), grad_hidden.get(), gh.size() * sizeof(T));
        exec.to_host(gg.data(), grad_gates.get(), gg.size() * sizeof(float));
        exec.to_host(gw.data(), grad_weights.get(), gw.size() * sizeof(float));
        exec.synchronize();
        run.grad_hidden[s][up] = as<float>(gh);
        run.grad_gates[s][up] = gg;
        run.grad_weights[s][up] = gw;
      }
    }
    try {
      layer.check(t);  // also the last collective: no rank frees its region while a peer reads it
    } catch (const llep::Error& e) {
      run.errors[up] = e.what();
    }
  });
  return run;
}

}  // namespace

TEST_CASE("SyncFreeLayer on logical ranks equals the dense MoE; B in device memory and CUDA-graph replays give eager's bits") {
  constexpr int K = 2, D = 16, H = 8, Bmax = 24, S = 5;
  for (const int P : {1, 2, 4, 8}) {
    CAPTURE(P);
    const int N = 2 * P + 2;
    const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 40 + static_cast<std::uint64_t>(P));
    std::vector<std::vector<layertest::RankInput>> steps;
    for (int s = 0; s < S; ++s) {
      const auto skew = s == 0 ? llep::sim::Skew{} : llep::sim::Skew{1, s % 2 ? 0.9 : 0.6};
      steps.push_back(layertest::make_inputs(P, N, K, D, skew, 70 + static_cast<std::uint64_t>(s), {0, Bmax}));
    }
    // fp32 within 1e-4 of the dense MoE in double; bf16 / fp16 within test_gpu_layer.cu's
    // bounds (3e-2, 5e-3: rounding of weights, h and out) plus the rounding of the inputs,
    // which that test's reference sees and this one's does not.
    auto check_run = [&](const SyncFreeRun& r, double tolerance) {
      for (int p = 0; p < P; ++p) CHECK(r.errors[static_cast<std::size_t>(p)].empty());
      for (std::size_t s = 0; s < steps.size(); ++s)
        CHECK(layertest::relative_error(moe, steps[s], r.out[s], K) < tolerance);
    };
    const llep::LeastLoaded lla{1.0, 2};
    check_run(run_sync_free<float>(P, N, llep::StandardEp{}, moe, steps, Bmax, SyncFreeMode::host_b), 1e-4);
    check_run(run_sync_free<float>(P, N, llep::Adaptive<>{1.2, lla}, moe, steps, Bmax, SyncFreeMode::host_b), 1e-4);
    check_run(run_sync_free<float>(P, N, llep::Capped<>{lla, llep::MemoryCap::rows(4 * Bmax * K)}, moe, steps, Bmax,
                                   SyncFreeMode::host_b),
              1e-4);
    check_run(run_sync_free<__nv_bfloat16>(P, N, lla, moe, steps, Bmax, SyncFreeMode::graph), 4e-2);
    check_run(run_sync_free<__half>(P, N, lla, moe, steps, Bmax, SyncFreeMode::graph), 6e-3);
    const auto eager = run_sync_free<float>(P, N, lla, moe, steps, Bmax, SyncFreeMode::host_b);
    const auto device_b = run_sync_free<float>(P, N, lla, moe, steps, Bmax, SyncFreeMode::device_b);
    const auto replayed = run_sync_free<float>(P, N, lla, moe, steps, Bmax, SyncFreeMode::graph);
    check_run(eager, 1e-4);
    CHECK(device_b.out == eager.out);
    CHECK(replayed.out == eager.out);
  }
}

TEST_CASE("SyncFreeLayer on logical ranks: a bad id is the same llep::Error on every rank at check()") {
  constexpr int P = 4, N = 8, K = 2, D = 16, H = 8, Bmax = 12;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 3);
  auto in = layertest::make_inputs(P, N, K, D, llep::sim::Skew{1, 0.8}, 5, {Bmax, Bmax});
  in[2].ids[7] = -4;
  const auto r = run_sync_free<float>(P, N, llep::LeastLoaded{1.0, 1}, moe, {in}, Bmax, SyncFreeMode::graph);
  for (int p = 0; p < P; ++p) {
    CHECK(r.errors[static_cast<std::size_t>(p)] == r.errors[0]);
    if (p != 2)
      CHECK(layertest::relative_error(moe, in[static_cast<std::size_t>(p)], r.out[0][static_cast<std::size_t>(p)], K) <
            1e-4);
  }
  CHECK(r.errors[0].find("rank 2 routed expert id -4") != std::string::npos);
}

TEST_CASE("SyncFreeLayer backward on logical ranks equals the dense gradients; CUDA-graph replays of forward + backward give eager's bits") {
  constexpr int K = 2, D = 16, H = 8, Bmax = 16, S = 3;
  for (const int P : {1, 2, 4}) {
    CAPTURE(P);
    const int N = 2 * P + 2;
    const llep::Topology topo(P, N);
    const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 50 + static_cast<std::uint64_t>(P));
    std::vector<std::vector<layertest::RankInput>> steps;
    for (int s = 0; s < S; ++s)
      steps.push_back(layertest::make_inputs(P, N, K, D, llep::sim::Skew{1, s % 2 ? 0.9 : 0.6},
                                             90 + static_cast<std::uint64_t>(s), {1, Bmax}));
    const llep::LeastLoaded lla{1.0, 2};
    const auto eager = run_sync_free<float>(P, N, lla, moe, steps, Bmax, SyncFreeMode::host_b, true);
    const auto replayed = run_sync_free<float>(P, N, lla, moe, steps, Bmax, SyncFreeMode::graph, true);
    for (int p = 0; p < P; ++p) CHECK(eager.errors[static_cast<std::size_t>(p)].empty());
    CHECK(replayed.out == eager.out);
    CHECK(replayed.grad_weights == eager.grad_weights);
    for (std::size_t s = 0; s < steps.size(); ++s) {
      // The dense gradients of every rank's tokens; the experts' summed over the ranks.
      dense::Moe sum = moe;
      for (auto& e : sum.w) e = moe.zero_expert();
      double err = 0, scale = 1e-3;
      auto near = [&](double got, double want) { err = std::max(err, std::abs(got - want)), scale = std::max(scale, std::abs(want)); };
      for (int p = 0; p < P; ++p) {
        const auto up = static_cast<std::size_t>(p);
        const auto& in = steps[s][up];
        std::vector<double> g(in.x.size());
        for (std::size_t i = 0; i < g.size(); ++i) g[i] = upstream(s, up, i);
        const auto want = moe.backward(std::vector<double>(in.x.begin(), in.x.end()), in.ids,
                                       std::vector<double>(in.gates.begin(), in.gates.end()), K, g);
        const std::size_t b = in.x.size() / D;
        // The replays ran over B_max buffers: compare their first b tokens.
        for (std::size_t i = 0; i < b * D; ++i) {
          near(eager.grad_hidden[s][up][i], want.hidden[i]);
          CHECK(replayed.grad_hidden[s][up][i] == eager.grad_hidden[s][up][i]);
        }
        for (std::size_t i = 0; i < b * K; ++i) {
          near(eager.grad_gates[s][up][i], want.gates[i]);
          CHECK(replayed.grad_gates[s][up][i] == eager.grad_gates[s][up][i]);
        }
        for (int e = 0; e < N; ++e) {
          auto& to = sum.w[static_cast<std::size_t>(e)];
          const auto& from = want.experts[static_cast<std::size_t>(e)];
          for (auto [a, b] : {std::pair{&to.w_gate, &from.w_gate}, std::pair{&to.w_up, &from.w_up},
                              std::pair{&to.w_down, &from.w_down}})
            for (std::size_t i = 0; i < a->size(); ++i) (*a)[i] += (*b)[i];
        }
      }
      for (int p = 0; p < P; ++p) {
        const auto want_w = layertest::held_weights(sum, topo, p);
        const auto& got_w = eager.grad_weights[s][static_cast<std::size_t>(p)];
        REQUIRE(got_w.size() == want_w.size());
        for (std::size_t i = 0; i < got_w.size(); ++i) near(got_w[i], want_w[i]);
      }
      CHECK(err / scale < 1e-4);
    }
  }
}

// ---------------------------------------------------------------------------------------
// SyncFreeLayer over CollectiveExchange<Tr> (device/collective_exchange.hpp): fixed-capacity
// collectives on the CudaExec's stream instead of symmetric memory. PeerCopy logical ranks
// run the device pack and unpack kernels with P > 1 (eager: PeerCopy's rendezvous is per
// call); one Nccl rank (ncclAllGather, grouped ncclSend/ncclRecv), where NCCL is found
// (LLEP_TEST_NCCL), also runs the step captured in a CUDA graph.
#include "llep/device/collective_exchange.hpp"

namespace {

constexpr int kCollK = 2, kCollD = 16, kCollH = 8, kCollBmax = 24;

// Every step of `steps` (this rank's inputs) on rank t's SyncFreeLayer over
// CollectiveExchange<Tr>, LeastLoaded, GroupedSwiGlu<float>, B in device memory: eagerly,
// or (graph) replayed from one CUDA graph with each step's inputs and B. Returns the
// outputs; `error` gets check()'s message, if any.
template <class Tr>
std::vector<std::vector<float>> collective_steps(Tr& t, const llep::Topology& topo, const dense::Moe& moe,
                                                 const std::vector<layertest::RankInput>& steps, bool graph,
                                                 std::string& error) {
  constexpr int K = kCollK, D = kCollD;
  constexpr std::size_t B = kCollBmax;
  using X = llep::CollectiveExchange<Tr>;
  using Experts = llep::GroupedSwiGlu<float>;
  using Layer = llep::SyncFreeLayer<llep::LeastLoaded, Experts, llep::CudaExec, X>;
  const Experts experts({D, kCollH, false});
  const llep::LeastLoaded planner{1.0, 2};
  const auto limits = Layer::make_limits(topo, K, planner, experts, kCollBmax);
  const auto sizes = Layer::exchange_sizes(topo, limits);
  gputest::DeviceArray<std::byte> xm(X::bytes(sizes)), ws(Layer::workspace_bytes(topo, limits));
  Layer layer(topo, K, planner, experts, llep::CudaExec(t.stream()), X(t, sizes, std::span<std::byte>(xm.get(), xm.size())),
              limits, std::span<std::byte>(ws.get(), ws.size()));
  CHECK(std::string(layer.exchange()) == "fixed-capacity collectives (" + std::string(Tr::name) + ")");
  gputest::DeviceArray<float> weights(layertest::held_weights(moe, topo, t.rank()));
  layer.set_native_weights(std::span<const float>(weights.get(), weights.size()));
  llep::CudaExec& exec = layer.exec();
  gputest::DeviceArray<float> x(B * D), out(B * D), gates(B * K);
  gputest::DeviceArray<std::int32_t> ids(B * K);
  gputest::DeviceArray<llep::count_t> tokens(1);
  auto step = [&] {
    layer.forward(tokens.get(), std::span<const float>(x.get(), B * D), std::span<const std::int32_t>(ids.get(), B * K),
                  std::span<const float>(gates.get(), B * K), std::span<float>(out.get(), B * D));
  };
  std::optional<llep::CudaGraph> replay;
  std::vector<std::vector<float>> outs;
  for (const auto& in : steps) {
    const auto b = static_cast<llep::count_t>(in.x.size() / D);
    exec.from_host(x.get(), in.x.data(), in.x.size() * sizeof(float));
    exec.from_host(ids.get(), in.ids.data(), in.ids.size() * sizeof(std::int32_t));
    exec.from_host(gates.get(), in.gates.data(), in.gates.size() * sizeof(float));
    exec.from_host(tokens.get(), &b, sizeof b);
    if (!graph) {
      step();
    } else {
      if (!replay) replay.emplace(t.stream(), step);
      replay->launch(t.stream());
    }
    outs.emplace_back(in.x.size());
    exec.to_host(outs.back().data(), out.get(), in.x.size() * sizeof(float));
    exec.synchronize();
  }
  error = testutil::error_of([&] { layer.check(t); });
  return outs;
}

// Steps of changing routing and B (some ranks empty) for P ranks: [step][rank].
std::vector<std::vector<layertest::RankInput>> collective_inputs(int P, int N, int S) {
  std::vector<std::vector<layertest::RankInput>> steps;
  for (int s = 0; s < S; ++s)
    steps.push_back(layertest::make_inputs(P, N, kCollK, kCollD, llep::sim::Skew{1, s % 2 ? 0.9 : 0.6},
                                           80 + static_cast<std::uint64_t>(s), {s == 1 ? 0 : 1, kCollBmax}));
  return steps;
}

}  // namespace

TEST_CASE("SyncFreeLayer over CollectiveExchange<PeerCopy> on logical ranks equals the dense MoE") {
  constexpr int S = 4;
  for (const int P : {2, 4}) {
    CAPTURE(P);
    const int N = 2 * P + 2;
    const llep::Topology topo(P, N);
    const auto moe = dense::Moe::random(N, kCollD, kCollH, dense::Act::silu, 60 + static_cast<std::uint64_t>(P));
    const auto steps = collective_inputs(P, N, S);
    std::vector<std::vector<std::vector<float>>> outs(static_cast<std::size_t>(P));
    std::vector<std::string> errors(static_cast<std::size_t>(P));
    gputest::Streams streams(P, 0);
    llep::PeerCopyGroup group(streams.ranks(0));
    llep::run_ranks(group, [&](llep::PeerCopy& t) {
      const auto up = static_cast<std::size_t>(t.rank());
      std::vector<layertest::RankInput> mine;
      for (const auto& st : steps) mine.push_back(st[up]);
      outs[up] = collective_steps(t, topo, moe, mine, false, errors[up]);
    });
    for (int p = 0; p < P; ++p) CHECK(errors[static_cast<std::size_t>(p)] == testutil::kNoError);
    for (std::size_t s = 0; s < steps.size(); ++s) {
      std::vector<std::vector<float>> got;
      for (const auto& o : outs) got.push_back(o[s]);
      CHECK(layertest::relative_error(moe, steps[s], got, kCollK) < 1e-4);
    }
  }
}

#if defined(LLEP_TEST_NCCL)
#include "llep/transport/nccl.hpp"
#include "llep/transport/nccl_bootstrap.hpp"

TEST_CASE("SyncFreeLayer over CollectiveExchange<Nccl> (one rank) equals the dense MoE, eager and from a CUDA graph; a capture with wait_each_call is refused") {
  constexpr int N = 4, S = 4;
  const llep::Topology topo(1, N);
  const auto moe = dense::Moe::random(N, kCollD, kCollH, dense::Act::silu, 61);
  std::vector<layertest::RankInput> steps;  // B changing, 0 included
  for (const auto& st : collective_inputs(1, N, S)) steps.push_back(st[0]);
  LLEP_CUDA_CHECK(cudaSetDevice(0));
  cudaStream_t stream = nullptr;
  LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  {
    llep::Nccl nccl = llep::Nccl::init(1, 0, llep::new_unique_id(), stream);
    std::string eager_error, graph_error;
    const auto eager = collective_steps(nccl, topo, moe, steps, false, eager_error);
    const auto replayed = collective_steps(nccl, topo, moe, steps, true, graph_error);
    CHECK(eager_error == testutil::kNoError);
    CHECK(graph_error == testutil::kNoError);
    for (std::size_t s = 0; s < steps.size(); ++s)
      CHECK(layertest::relative_error(moe, steps[s], eager[s], kCollK) < 1e-4);
    CHECK(replayed == eager);
    // A transport that waits after each call cannot be captured: refused before any NCCL
    // call, the communicator intact (the eager steps after it are right).
    llep::NcclOptions waits;
    waits.wait_each_call = true;
    llep::Nccl waiting = llep::Nccl::init(1, 0, llep::new_unique_id(), stream, waits);
    std::string error;
    CHECK(testutil::error_of([&] { (void)collective_steps(waiting, topo, moe, steps, true, error); })
              .find("NcclOptions::wait_each_call = true") != std::string::npos);
    CHECK(collective_steps(waiting, topo, moe, steps, false, error) == eager);
    CHECK(error == testutil::kNoError);
  }
  LLEP_CUDA_CHECK(cudaStreamDestroy(stream));
}
#endif
