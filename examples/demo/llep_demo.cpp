// llep-demo: one MoE layer on P host threads under skewed routing, standard EP vs LLEP.
//
//   llep-demo --ranks 8 --hot-experts 1 --hot-share 0.95
//
// Prints per-rank rows, imbalance, planned peak memory per rank, wall time per step for both
// planners, and whether both outputs agree with a dense single-process MoE.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <thread>

#include "common/cli.hpp"
#include "../common/demo_flags.hpp"
#include "llep/layer/host_layer.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

using llep::examples::DemoOptions;
using llep::examples::DemoRun;
using llep::examples::DemoScenario;

template <class Plnr>
DemoRun run(const DemoOptions& o, const Plnr& planner, const DemoScenario& sc) {
  const llep::Topology topo(o.ranks, o.experts);
  llep::HostGroup group(o.ranks);
  DemoRun r;
  r.reports.resize(static_cast<std::size_t>(o.ranks));
  r.out.resize(static_cast<std::size_t>(o.ranks));
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    const std::vector<float> weights = sc.native_weights(t.rank(), o.ranks);
    llep::HostMoeLayer<Plnr> layer(topo, o.top_k, planner, llep::HostSwiGlu<float>(o.shape()), t);
    layer.set_native_weights(weights);
    std::vector<float> out(sc.x[p].size());
    auto step = [&] {
      r.reports[p] = layer.forward(std::span<const float>(sc.x[p]), std::span<const std::int32_t>(sc.ids[p]),
                                   std::span<const float>(sc.gates[p]), std::span<float>(out));
    };
    auto ms = llep::examples::timed_steps(t, o.steps, step);
    if (p == 0) r.step_ms = std::move(ms);
    r.out[p] = out;
  });
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  DemoOptions o;
  CLI::App app{"llep-demo: an MoE layer on P host threads under skewed routing, standard EP vs LLEP.\n"
               "Each rank holds N/P experts and its own tokens; the hot experts are 0..h-1, all on rank 0.\n"
               "A bad flag prints one 'error: ...' line and exits 2."};
  llep::examples::add_demo_flags(app, o);
  if (const auto rc = llep::examples::parse(app, argc, argv)) return *rc;
  try {
    o.validate();
    const DemoScenario sc(o);
    const DemoRun ep = run(o, llep::StandardEp{}, sc);
    const DemoRun ll = run(o, o.planner(), sc);
    std::printf("llep-demo: P = %d ranks as host threads (%u hardware threads here), N = %d experts, K = %d, "
                "%d tokens per rank, D = %d, H = %d, float\n",
                o.ranks, std::thread::hardware_concurrency(), o.experts, o.top_k, o.tokens, o.hidden, o.intermediate);
    // float tokens and weights, float accumulation over D and H terms: 1e-4 of the output scale.
    const bool ok = llep::examples::print_comparison(o, sc, ep, ll, 1e-4);
    std::printf("(the rank threads share this machine's cores, so wall-time gains are capped by the core count; "
                "max rows is what one GPU per rank would see)\n");
    return ok ? 0 : 1;
  } catch (const llep::Error& e) {
    return llep::examples::fail(e.what());
  }
}
