// llep-mpi-demo: llep-demo's layer and scenario with one process per rank, over MPI.
//
//   mpirun -np 4 llep-mpi-demo --hot-experts 1 --hot-share 0.95
//
// P is the number of processes (--ranks, if given, must equal it). Every process builds the
// same scenario (examples/common/demo_scenario.hpp) and runs its own rank of the layer over
// llep::Mpi; rank 0 gathers the reports' figures and outputs and prints llep-demo's table
// of standard EP against LLEP, and the check against the dense reference.
#include <mpi.h>

#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "../common/demo_flags.hpp"
#include "common/cli.hpp"
#include "llep/exec/host.hpp"
#include "llep/experts/host_swiglu.hpp"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/mpi.hpp"

namespace {

using llep::examples::DemoOptions;
using llep::examples::DemoRun;
using llep::examples::DemoScenario;

// This rank's part of the run; on rank 0 also every rank's output (for the dense check).
template <class Plnr>
DemoRun run(const DemoOptions& o, const Plnr& planner, const DemoScenario& sc, llep::Mpi& t) {
  const int me = t.rank();
  const auto p = static_cast<std::size_t>(me);
  const std::vector<float> weights = sc.native_weights(me, o.ranks);
  llep::MoeLayer<llep::ExactCounts, Plnr, llep::Mpi, llep::HostSwiGlu<float>, llep::HostExec> layer(
      llep::Topology(o.ranks, o.experts), o.top_k, planner, llep::HostSwiGlu<float>(o.shape()), t);
  layer.set_native_weights(weights);
  std::vector<float> out(sc.x[p].size());
  DemoRun r;
  r.reports.resize(1);  // the figures print_comparison reads are plan-wide: any rank's will do
  auto step = [&] {
    r.reports[0] = layer.forward(std::span<const float>(sc.x[p]), std::span<const std::int32_t>(sc.ids[p]),
                                 std::span<const float>(sc.gates[p]), std::span<float>(out));
  };
  r.step_ms = llep::examples::timed_steps(t, o.steps, step);
  // Every rank has the same number of tokens: one all_gather brings all outputs to all.
  std::vector<float> all(out.size() * static_cast<std::size_t>(o.ranks));
  t.all_gather(out.data(), out.size() * sizeof(float), all.data());
  for (int q = 0; q < o.ranks; ++q)
    r.out.emplace_back(all.begin() + static_cast<std::ptrdiff_t>(out.size() * static_cast<std::size_t>(q)),
                       all.begin() + static_cast<std::ptrdiff_t>(out.size() * static_cast<std::size_t>(q + 1)));
  return r;
}

int demo(int argc, char** argv, int me, int P) {
  DemoOptions o;
  o.ranks = P;
  CLI::App app{"llep-mpi-demo: llep-demo's MoE layer with one process per rank (run it under mpirun -np P),\n"
               "standard EP vs LLEP. Each rank holds N/P experts and its own tokens; the hot experts are 0..h-1,\n"
               "all on rank 0. A bad flag prints one 'error: ...' line (rank 0) and exits 2."};
  llep::examples::add_demo_flags(app, o);
  if (const auto rc = llep::examples::parse(app, argc, argv)) return *rc;
  try {
    LLEP_EXPECTS(o.ranks == P, "--ranks ", o.ranks, " differs from the ", P,
                 " processes mpirun started; P is the process count here");
    o.validate();
    const DemoScenario sc(o);
    llep::Mpi t(MPI_COMM_WORLD);
    const DemoRun ep = run(o, llep::StandardEp{}, sc, t);
    const DemoRun ll = run(o, o.planner(), sc, t);
    int ok = 1;
    if (me == 0) {
      std::printf("llep-mpi-demo: P = %d ranks as MPI processes, N = %d experts, K = %d, %d tokens per rank, D = %d, "
                  "H = %d, float\n",
                  o.ranks, o.experts, o.top_k, o.tokens, o.hidden, o.intermediate);
      ok = llep::examples::print_comparison(o, sc, ep, ll, 1e-4) ? 1 : 0;
      std::printf("(step ms are rank 0's, between barriers; processes sharing cores cap the wall-time gains)\n");
      std::fflush(stdout);
    }
    MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return ok != 0 ? 0 : 1;
  } catch (const llep::Error& e) {
    return me == 0 ? llep::examples::fail(e.what()) : 2;
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int me = 0, P = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  MPI_Comm_size(MPI_COMM_WORLD, &P);
  if (me != 0) (void)std::freopen("/dev/null", "w", stderr);  // one copy of the error lines: rank 0 prints
  const int rc = demo(argc, argv, me, P);
  MPI_Finalize();
  return rc;
}
