// MoeLayer::prepare over Mpi, a real WeightsPathTransport (mpirun -np 2, 3, 4): the
// prefetch's Isend/Irecv are joined by the next forward, whose output and plan are those
// of a plain forward bit for bit; a routing that differs on one process re-plans on all.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "layer_body.hpp"
#include "llep/exec/host.hpp"
#include "llep/experts/host_swiglu.hpp"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/mpi.hpp"

namespace {

using Layer = llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::Mpi, llep::HostSwiGlu<float>, llep::HostExec>;

struct Step {
  std::vector<float> out;
  llep::StepReport report;
  llep::Plan plan;
};

// Step 1, then (optionally prepare(announced), then) step 2; returns step 2.
Step run(llep::Mpi& t, const dense::Moe& moe, const llep::Topology& topo, int K, const mpitest::RankInput& first,
         const mpitest::RankInput& second, const std::vector<std::int32_t>* announced) {
  const int p = t.rank();
  const auto weights = moe.packed_rank<float>(p, topo.ranks());
  Layer layer(topo, K, llep::LeastLoaded{1.0, 2}, llep::HostSwiGlu<float>({moe.hidden, moe.intermediate, false}), t);
  layer.set_native_weights(weights);
  std::vector<float> out(first.x.size());
  layer.forward(std::span<const float>(first.x), std::span<const std::int32_t>(first.ids),
                std::span<const float>(first.gates), std::span<float>(out));
  std::vector<std::byte> memory(Layer::prepare_bytes(layer.limits(64)));
  if (announced) layer.prepare(std::span<const std::int32_t>(*announced), memory);
  Step s;
  s.out.assign(second.x.size(), -7.0f);
  s.report = layer.forward(std::span<const float>(second.x), std::span<const std::int32_t>(second.ids),
                           std::span<const float>(second.gates), std::span<float>(s.out));
  s.plan = layer.plan();
  return s;
}

bool same(const Step& a, const Step& b) {
  return a.out.size() == b.out.size() && std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)) == 0 &&
         std::ranges::equal(a.plan.segments(), b.plan.segments()) &&
         std::ranges::equal(a.plan.weight_transfers(), b.plan.weight_transfers());
}

}  // namespace

TEST_CASE("Mpi MoeLayer::prepare: the same bits and plan as a plain forward; a mismatch on one process re-plans") {
  const int P = mpitest::world_size(), p = mpitest::world_rank(), N = 4 * P, K = 2, D = 12, H = 8;
  llep::Mpi t(MPI_COMM_WORLD, llep::MpiOptions{.timeout = std::chrono::milliseconds(20'000)});
  const llep::Topology topo(P, N);
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 5);
  const auto first = mpitest::make_inputs(P, N, K, D, llep::sim::Skew{}, false, 1)[static_cast<std::size_t>(p)];
  const auto second = mpitest::make_inputs(P, N, K, D, llep::sim::Skew{1, 0.9}, false, 2)[static_cast<std::size_t>(p)];

  const Step plain = run(t, moe, topo, K, first, second, nullptr);
  const Step ahead = run(t, moe, topo, K, first, second, &second.ids);
  CHECK(same(ahead, plain));
  CHECK(ahead.report.prepared);
  CHECK(ahead.report.weight_bytes_prefetched == plain.report.weight_bytes_received);
  CHECK(mpitest::same_everywhere(static_cast<std::int64_t>(ahead.plan.weight_transfers().size())));
  if (P > 1) CHECK(ahead.plan.weight_transfers().size() > 0);  // 90% on one expert spills
  CHECK(mpitest::relative_error(moe, second, ahead.out, K) <= 1e-4);

  auto announced = second.ids;
  if (p == P - 1 && announced.size() >= 2) {  // one pair to another expert on the last process
    announced[0] = (announced[0] + 1) % N;
    if (announced[0] == announced[1]) announced[0] = (announced[0] + 1) % N;
  }
  const Step replanned = run(t, moe, topo, K, first, second, &announced);
  CHECK(same(replanned, plain));
  CHECK_FALSE(replanned.report.prepared);
  CHECK(replanned.report.prepare_mismatch);
}
