// The MoE layer over the Mpi transport, one process per rank (mpirun -np 2, 3, 4): every
// planner against the dense MoE on each process's own rows, repeated steps bit-identical,
// a bad expert id on one process is llep::Error on every process (layer_body.hpp).
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
