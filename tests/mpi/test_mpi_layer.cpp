// The MoE layer over the Mpi transport, one process per rank (mpirun -np 2, 3, 4): every
// planner against the dense MoE on each process's own rows, repeated steps bit-identical,
// a bad expert id on one process is llep::Error on every process (layer_body.hpp); and
// SyncFreeLayer over CollectiveExchange<Mpi> against MoeLayer (at the end).
#include <doctest/doctest.h>

#include <chrono>

#include "layer_body.hpp"
#include "llep/exec/host.hpp"
#include "llep/experts/host_swiglu.hpp"
#include "llep/layer/moe_layer.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/mpi.hpp"

namespace {

// Host memory: Mpi, HostExec, HostSwiGlu<float>.
struct HostMpi {
  static constexpr double tolerance = 1e-4;  // float, as tests/layer/test_moe_layer.cpp
  llep::Mpi transport;
  explicit HostMpi(std::chrono::milliseconds timeout)
      : transport(MPI_COMM_WORLD, llep::MpiOptions{.timeout = timeout}) {}

  template <class Plnr>
  struct Run {
    using Layer = llep::MoeLayer<llep::ExactCounts, Plnr, llep::Mpi, llep::HostSwiGlu<float>, llep::HostExec>;
    Layer layer;
    Run(HostMpi& b, const llep::Topology& topo, int K, Plnr planner, const dense::Moe& moe,
        const std::vector<float>& weights)
        : layer(topo, K, planner, llep::HostSwiGlu<float>(llep::ExpertShape{moe.hidden, moe.intermediate, false}),
                b.transport) {
      layer.set_native_weights(weights);
    }
    std::vector<float> forward(const mpitest::RankInput& in, llep::StepReport& report) {
      std::vector<float> out(in.x.size(), -7.0f);
      report = layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids),
                             std::span<const float>(in.gates), std::span<float>(out));
      return out;
    }
  };
};

}  // namespace

TEST_CASE("Mpi MoeLayer equals the dense MoE on every process, for every planner, bit-identical across steps") {
  mpitest::check_every_planner<HostMpi>();
}

TEST_CASE("Mpi MoeLayer: a bad expert id on one process is llep::Error on every process, promptly") {
  mpitest::check_bad_expert_id<HostMpi>();
}

// SyncFreeLayer across processes: CollectiveExchange<Mpi> (device/collective_exchange.hpp)
// moves its counts, rows and weights with fixed-size MPI collectives.
#include <cstdlib>
#include <memory>

#include "llep/device/collective_exchange.hpp"
#include "llep/layer/sync_free.hpp"

namespace {

// `bytes` of 256-byte-aligned host memory, as the sync-free layer and the exchange take.
struct AlignedBytes {
  explicit AlignedBytes(std::size_t n)
      : bytes(n), p(static_cast<std::byte*>(std::aligned_alloc(256, (n + 255) / 256 * 256 + 256)), std::free) {}
  std::span<std::byte> span() const { return {p.get(), bytes}; }
  std::size_t bytes;
  std::unique_ptr<std::byte, decltype(&std::free)> p;
};

// Three steps of `planner` on this process's rank: the sync-free layer over Mpi gives
// MoeLayer's bits over the same communicator, and the dense MoE within float rounding.
template <class Plnr>
void check_sync_free_over_mpi(Plnr planner, mpitest::Routing routing, std::uint64_t seed) {
  using X = llep::CollectiveExchange<llep::Mpi>;
  using Layer = llep::SyncFreeLayer<Plnr, llep::HostSwiGlu<float>, llep::HostExec, X>;
  const int P = mpitest::world_size(), me = mpitest::world_rank(), N = 4 * P, K = 2, D = 12, H = 8, Bmax = 24;
  const llep::Topology topo(P, N);
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, seed);
  const llep::HostSwiGlu<float> experts(llep::ExpertShape{D, H, false});
  const auto weights = mpitest::held_weights(moe, topo, me);
  llep::Mpi t(MPI_COMM_WORLD, llep::MpiOptions{.timeout = std::chrono::milliseconds(30'000)});
  const auto limits = Layer::make_limits(topo, K, planner, experts, Bmax);
  const auto sizes = Layer::exchange_sizes(topo, limits);
  AlignedBytes xm(X::bytes(sizes)), ws(Layer::workspace_bytes(topo, limits));
  Layer layer(topo, K, planner, experts, llep::HostExec{}, X(t, sizes, xm.span()), limits, ws.span());
  layer.set_native_weights(weights);
  CHECK(std::string(layer.exchange()) == "fixed-capacity collectives (mpi)");
  llep::MoeLayer<llep::ExactCounts, Plnr, llep::Mpi, llep::HostSwiGlu<float>, llep::HostExec> ref(topo, K, planner,
                                                                                                   experts, t);
  ref.set_native_weights(weights);
  const llep::sim::Skew skew = routing == mpitest::Routing::hot_one_expert ? llep::sim::Skew{1, 0.95} : llep::sim::Skew{};
  for (int s = 0; s < 3; ++s) {
    const auto in = mpitest::make_inputs(P, N, K, D, skew, s == 1, seed * 31 + static_cast<std::uint64_t>(s));
    const auto& mine = in[static_cast<std::size_t>(me)];
    std::vector<float> out(mine.x.size(), -7.0f), want(mine.x.size());
    layer.forward(std::span<const float>(mine.x), std::span<const std::int32_t>(mine.ids),
                  std::span<const float>(mine.gates), std::span<float>(out));
    layer.check(t);
    ref.forward(std::span<const float>(mine.x), std::span<const std::int32_t>(mine.ids),
                std::span<const float>(mine.gates), std::span<float>(want));
    INFO("P = ", P, ", step ", s, ", routing: ", mpitest::routing_name(routing), ", rank ", me);
    CHECK(out == want);  // bit for bit
    CHECK(mpitest::relative_error(moe, mine, out, K) <= HostMpi::tolerance);
  }
}

// A capacity too small (one row per peer, rank 0 included) under full batches: the same
// llep::Error on every process at check(), promptly (fixed sizes leave no process waiting).
void check_capacity_error_over_mpi() {
  using X = llep::CollectiveExchange<llep::Mpi>;
  using Layer = llep::SyncFreeLayer<llep::StandardEp, llep::HostSwiGlu<float>, llep::HostExec, X>;
  const int P = mpitest::world_size(), me = mpitest::world_rank(), N = 2 * P, K = 2, D = 12, H = 8;
  const llep::Topology topo(P, N);
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 5);
  const llep::HostSwiGlu<float> experts(llep::ExpertShape{D, H, false});
  llep::Mpi t(MPI_COMM_WORLD, llep::MpiOptions{.timeout = std::chrono::milliseconds(30'000)});
  const auto limits = Layer::make_limits(topo, K, llep::StandardEp{}, experts, 8);
  const auto sizes = Layer::exchange_sizes(topo, limits);
  const X::Capacity one{1, -1};
  AlignedBytes xm(X::bytes(sizes, one)), ws(Layer::workspace_bytes(topo, limits));
  Layer layer(topo, K, llep::StandardEp{}, experts, llep::HostExec{}, X(t, sizes, xm.span(), one), limits, ws.span());
  layer.set_native_weights(mpitest::held_weights(moe, topo, me));
  const auto in = layertest::make_inputs(P, N, K, D, {}, 12, {8, 8});  // 16 pairs a rank over 2P experts
  const auto& mine = in[static_cast<std::size_t>(me)];
  std::vector<float> out(mine.x.size());
  const auto start = std::chrono::steady_clock::now();
  layer.forward(std::span<const float>(mine.x), std::span<const std::int32_t>(mine.ids),
                std::span<const float>(mine.gates), std::span<float>(out));
  std::string error;
  try {
    layer.check(t);
  } catch (const llep::Error& e) {
    error = e.what();
  }
  INFO("rank ", me, ": '", error, "'");
  CHECK(error.find("exceed the fixed-capacity exchange's room per peer") != std::string::npos);
  CHECK(error.rfind("llep: rank 0: ", 0) == 0);  // every process names the lowest rank that noted it
  CHECK(mpitest::same_everywhere(static_cast<std::int64_t>(error.size())));
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
}

}  // namespace

TEST_CASE("Mpi SyncFreeLayer over CollectiveExchange equals MoeLayer bit for bit and the dense MoE on every process") {
  for (const auto routing : {mpitest::Routing::uniform, mpitest::Routing::hot_one_expert}) {
    check_sync_free_over_mpi(llep::StandardEp{}, routing, 300);
    check_sync_free_over_mpi(mpitest::kSmallGemm, routing, 301);
  }
}

TEST_CASE("Mpi SyncFreeLayer over CollectiveExchange: a capacity too small is the same llep::Error on every process") {
  check_capacity_error_over_mpi();
}
