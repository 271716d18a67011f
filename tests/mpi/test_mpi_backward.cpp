// The layer's backward over the Mpi transport, one process per rank (mpirun -np 1-4). Mpi
// moves expert weights on their own path (WeightsPathTransport), so with refetch_weights
// backward's second weight exchange overlaps the rows' dispatch and is joined before the
// experts run: the path the host-thread tests (tests/layer/test_backward.cpp) do not take.
// Every memory option gives the default's bits, and the default's gradients equal the dense
// MoE's: this process's input and gate gradients, and each expert it holds summed over all.
// Forward and backward each join the weights they post: none is in flight when they return
// (the data would arrive anyway while the all-to-all polls, so the bits alone cannot tell).
#include <doctest/doctest.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "../common/dense_moe.hpp"
#include "../common/layer_helpers.hpp"
#include "llep/exec/host.hpp"
#include "llep/experts/host_swiglu.hpp"
#include "llep/layer/backward.hpp"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/mpi.hpp"

namespace {

struct Result {
  std::vector<float> hidden, gates, weights;
  llep::BackwardReport report;
};

// Max |got - want| over the largest |want| (at least 1e-3).
double error_of(std::span<const float> got, std::span<const double> want) {
  double scale = 1e-3, err = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::abs(want[i]));
    err = std::max(err, std::abs(static_cast<double>(got[i]) - want[i]));
  }
  return err / scale;
}

}  // namespace

TEST_CASE("Mpi backward: refetched weights and kept outputs give the default's bits, equal to the dense MoE") {
  int P = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &P);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const int N = 2 * P, K = 2, D = 10, H = 7;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 1500);
  const auto all = layertest::make_inputs(P, N, K, D, llep::sim::Skew{1, 0.95}, 1501);
  std::vector<std::vector<float>> grad_outs(static_cast<std::size_t>(P));
  for (int p = 0; p < P; ++p) {  // every process draws every rank's, for the dense sums
    std::mt19937_64 rng(1502 + static_cast<std::uint64_t>(p));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (std::size_t i = 0; i < all[static_cast<std::size_t>(p)].x.size(); ++i)
      grad_outs[static_cast<std::size_t>(p)].push_back(u(rng));
  }
  const auto& in = all[static_cast<std::size_t>(rank)];
  const auto& grad_out = grad_outs[static_cast<std::size_t>(rank)];

  const llep::Topology topo(P, N);
  const auto weights = layertest::held_weights(moe, topo, rank);
  llep::Mpi transport(MPI_COMM_WORLD, llep::MpiOptions{.timeout = std::chrono::milliseconds(20'000)});
  using Layer = llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::Mpi, llep::HostSwiGlu<float>, llep::HostExec>;
  Layer layer(topo, K, llep::LeastLoaded{1.0, 2}, llep::HostSwiGlu<float>(llep::ExpertShape{D, H, false}), transport);
  layer.set_native_weights(weights);
  const auto limits = layer.limits(layertest::TokenRange{}.max);

  auto run = [&](bool refetch, bool outputs) {
    llep::ForwardHandle<float> h;
    h.refetch_weights = refetch, h.save_outputs = outputs;
    std::vector<std::byte> memory(Layer::handle_bytes(limits, h.keeps()));
    h.memory = memory;
    std::vector<float> out(in.x.size());
    layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids), std::span<const float>(in.gates),
                  std::span<float>(out), h);
    CHECK(transport.weights_in_flight() == 0);
    Result r;
    r.hidden.assign(in.x.size(), -7.0f);
    r.gates.assign(in.gates.size(), -7.0f);
    r.weights.assign(weights.size(), -3.0f);
    r.report = llep::backward(layer, h,
                              llep::BackwardArgs<float, float, float>{in.x, in.gates, grad_out, r.hidden, r.gates,
                                                                      r.weights});
    CHECK(transport.weights_in_flight() == 0);
    return r;
  };
  const Result ref = run(false, false);
  unsigned long long fetched = 0;
  for (const bool refetch : {false, true})
    for (const bool outputs : {false, true}) {
      if (!refetch && !outputs) continue;
      INFO("process ", rank, " of ", P, ", refetch ", refetch, ", outputs kept ", outputs);
      const Result got = run(refetch, outputs);
      CHECK(got.hidden == ref.hidden);
      CHECK(got.gates == ref.gates);
      CHECK(got.weights == ref.weights);
      CHECK(got.report.weights_fetched_again == refetch);
      CHECK(got.report.refetch_bytes_received == (refetch ? ref.report.kept_weight_bytes : 0));
      CHECK(got.report.outputs_recomputed == !outputs);
      if (refetch && !outputs) fetched = got.report.refetch_bytes_received;
    }
  // Some process fetched weights again (the hot expert spills) when there are helpers.
  MPI_Allreduce(MPI_IN_PLACE, &fetched, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
  CHECK((fetched > 0) == (P > 1));

  // The dense MoE: this process's input and gate gradients; each held expert's weight
  // gradient summed over every process's rows.
  std::vector<dense::Expert> total(static_cast<std::size_t>(N), moe.zero_expert());
  std::vector<double> want_hidden, want_gates;
  for (int p = 0; p < P; ++p) {
    const auto& r = all[static_cast<std::size_t>(p)];
    const auto& go = grad_outs[static_cast<std::size_t>(p)];
    const auto d = moe.backward(std::vector<double>(r.x.begin(), r.x.end()), r.ids,
                                std::vector<double>(r.gates.begin(), r.gates.end()), K,
                                std::vector<double>(go.begin(), go.end()));
    if (p == rank) want_hidden = d.hidden, want_gates = d.gates;
    for (int e = 0; e < N; ++e) {
      auto& t = total[static_cast<std::size_t>(e)];
      const auto& s = d.experts[static_cast<std::size_t>(e)];
      auto add = [](std::vector<double>& to, const std::vector<double>& from) {
        for (std::size_t i = 0; i < to.size(); ++i) to[i] += from[i];
      };
      add(t.w_gate, s.w_gate), add(t.w_up, s.w_up), add(t.w_down, s.w_down);
      add(t.b_gate, s.b_gate), add(t.b_up, s.b_up), add(t.b_down, s.b_down);
    }
  }
  CHECK(error_of(ref.hidden, want_hidden) <= 1e-4);  // float, as tests/layer/test_backward.cpp
  CHECK(error_of(ref.gates, want_gates) <= 1e-4);
  const std::size_t W = llep::ExpertShape{D, H, false}.elems();
  std::size_t slot = 0;
  for (int e = 0; e < N; ++e)
    if (topo.holds(e, rank)) {
      INFO("expert ", e);
      CHECK(error_of(std::span<const float>(ref.weights).subspan(slot++ * W, W),
                     moe.packed_of<double>(total[static_cast<std::size_t>(e)])) <= 1e-4);
    }
}
