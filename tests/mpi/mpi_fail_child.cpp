// A job that fails mid-step, for test_mpi_failure.cpp (run under mpirun, never alone):
//
//   mpi_fail_child MODE FAILING_RANK TIMEOUT_MS
//
// Every process runs MoeLayer<Mpi> steps on a skewed routing (weights and tokens move). At
// step 2, inside the expert compute (after the token dispatch, before the combine), rank
// FAILING_RANK does MODE: `throw` (an exception out of forward), `exit` (std::_Exit(3),
// no MPI_Finalize, no word to anyone) or `stall` (sleeps far past the others' deadline).
// Every process that leaves a step with an exception prints one line
//   llep-mpi-fail: rank R error after MS ms: WHAT
// (MS: from the start of that step) and exits 1 without MPI_Finalize, as an engine should
// after a failed step: MPI_Finalize waits for every process, a stalled one included. It
// waits a grace period first, so that the peers released by the same abort notice print
// before the runtime, seeing an exit without MPI_Finalize, ends the job. One that finishes
// every step prints "llep-mpi-fail: rank R completed" and exits 0.
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "llep/exec/host.hpp"
#include "llep/experts/host_swiglu.hpp"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/sim/routing.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/mpi.hpp"

namespace {

enum class Mode { throw_, exit_, stall };

// HostSwiGlu whose compute fails on one rank at one step.
struct Faulty : llep::HostSwiGlu<float> {
  Mode mode = Mode::throw_;
  const bool* armed = nullptr;  // the driver's flag: this rank's failing step

  using HostSwiGlu::HostSwiGlu;
  void compute(llep::HostExec& exec, std::span<const llep::ExpertTask<float>> tasks, void* scratch) const {
    if (armed != nullptr && *armed) {
      if (mode == Mode::throw_) throw std::runtime_error("injected failure in the expert compute");
      if (mode == Mode::exit_) std::_Exit(3);
      std::this_thread::sleep_for(std::chrono::minutes(10));
    }
    HostSwiGlu::compute(exec, tasks, scratch);
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: mpi_fail_child throw|exit|stall FAILING_RANK TIMEOUT_MS\n");
    return 2;
  }
  const std::string m = argv[1];
  const Mode mode = m == "exit" ? Mode::exit_ : m == "stall" ? Mode::stall : Mode::throw_;
  const int failing = std::atoi(argv[2]);
  const std::chrono::milliseconds timeout(std::atol(argv[3]));

  MPI_Init(&argc, &argv);
  int me = 0, P = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  MPI_Comm_size(MPI_COMM_WORLD, &P);
  const int N = 4 * P, K = 2, D = 16, H = 16, B = 32;
  const llep::ExpertShape shape{D, H, false};

  // Every rank's weights are the same function of the expert id; tokens skewed to expert 0
  // so LeastLoaded spills it and weights travel too.
  std::vector<float> weights(static_cast<std::size_t>(N / P) * shape.elems());
  for (std::size_t i = 0; i < weights.size(); ++i) weights[i] = static_cast<float>((i * 7 + me) % 13) * 0.01f;
  std::vector<float> x(static_cast<std::size_t>(B * D), 0.5f), gates(static_cast<std::size_t>(B * K));
  std::vector<std::int32_t> ids(gates.size());
  llep::sim::random_routing(static_cast<std::uint64_t>(me) + 1, N, K, llep::sim::Skew{1, 0.9},
                            std::span<std::int32_t>(ids), std::span<float>(gates));
  std::vector<float> out(x.size());

  int rc = 0;
  {
    llep::Mpi transport(MPI_COMM_WORLD, llep::MpiOptions{.timeout = timeout});
    bool armed = false;
    Faulty experts(shape);
    experts.mode = mode;
    experts.armed = &armed;
    llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::Mpi, Faulty, llep::HostExec> layer(
        llep::Topology(P, N), K, llep::LeastLoaded{1.0, 4}, experts, transport);
    layer.set_native_weights(weights);
    for (int step = 0; step < 5 && rc == 0; ++step) {
      armed = me == failing && step == 2;
      const auto start = std::chrono::steady_clock::now();
      try {
        layer.forward(std::span<const float>(x), std::span<const std::int32_t>(ids), std::span<const float>(gates),
                      std::span<float>(out));
      } catch (const std::exception& e) {
        const auto ms =
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
        std::printf("llep-mpi-fail: rank %d error after %lld ms: %s\n", me, static_cast<long long>(ms), e.what());
        rc = 1;
      }
    }
    if (rc == 0) std::printf("llep-mpi-fail: rank %d completed\n", me);
    std::fflush(stdout);
    if (rc != 0) {
      std::this_thread::sleep_for(std::chrono::seconds(2));
      std::_Exit(rc);  // the layer and transport stay alive: abandoned operations may still land
    }
  }
  MPI_Finalize();
  return rc;
}
