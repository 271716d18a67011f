// A toy router balancing itself with AuxFreeBias, beside standard EP and LLEP.
// P ranks run as host threads. Every step each rank routes fresh tokens twice from the same
// skewed logits: once unbiased (what standard EP and LLEP compute), once with the biases
// AuxFreeBias learned from the previous steps. Printed: the rows of the busiest rank, the
// weight transfers of LLEP's plan, and max/mean expert load under the biased router.
// Exits 1 if, after 100 steps or more, the biased router's busiest rank is not within 20%
// of a balanced step (the example checks itself; it runs as a test).
//   llep-aux-free-bias [steps] [rate]
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "llep/exec/host.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/stats/aux_free_bias.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/stats/route_topk.hpp"
#include "llep/transport/host_threads.hpp"

namespace {

constexpr int P = 8, N = 64, K = 4, B = 1024;  // 8 experts per rank, 1024 tokens per rank

// Logits: expert e's mean falls with e (so rank 0's experts are the hot ones), plus noise.
void skewed_logits(std::mt19937& rng, std::vector<float>& x) {
  std::normal_distribution<float> noise(0.0f, 1.0f);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const auto e = static_cast<float>(i % N);
    x[i] = 2.5f * (1.0f - e / (N - 1)) + noise(rng);
  }
}

llep::count_t busiest(const llep::Plan& plan) {
  const auto r = plan.rank_loads();
  return *std::max_element(r.begin(), r.end());
}

double expert_max_over_mean(std::span<const llep::count_t> l) {
  llep::count_t total = 0;
  for (auto v : l) total += v;
  return static_cast<double>(*std::max_element(l.begin(), l.end())) * N / static_cast<double>(total);
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 300;
  const double rate = argc > 2 ? std::atof(argv[2]) : 1e-3;
  if (steps <= 0 || !(rate > 0)) {
    std::fprintf(stderr, "usage: llep-aux-free-bias [steps > 0] [rate > 0]\n");
    return 2;
  }
  const llep::Topology topo(P, N);
  const llep::StandardEp standard_ep;
  const llep::LeastLoaded llep_planner{.alpha = 1.0, .min_tokens_per_gemm = 256};
  llep::HostGroup group(P);
  bool balanced = false;  // written by rank 0
  std::printf("P = %d ranks, N = %d experts, K = %d, B = %d tokens per rank, rate u = %g (sign rule)\n", P, N, K, B,
              rate);
  std::printf("rows of the busiest rank (a balanced step has %d)\n", B * K);
  std::printf("%6s %12s %16s %14s %22s %13s\n", "step", "standard EP", "LLEP (transfers)", "aux-free bias",
              "bias + LLEP (transfers)", "max/mean (b)");
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    llep::HostExec exec;
    std::mt19937 rng(1000 + static_cast<unsigned>(t.rank()));
    llep::ExactCounts plain;
    llep::AuxFreeBias biased({rate, llep::BiasRule::sign});
    std::vector<float> x(static_cast<std::size_t>(B) * N), gates(static_cast<std::size_t>(B) * K);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(B) * K);
    llep::Plan plan;
    for (int s = 0; s < steps; ++s) {
      const bool last = s + 1 == steps;
      skewed_logits(rng, x);
      llep::route_topk(x, {}, N, K, llep::GateNorm::sigmoid, ids, gates);
      plain.update(exec, t, ids.data(), ids.size(), {N, K, B});
      // The biases of the steps so far choose the experts; the gates stay unbiased.
      llep::route_topk(x, biased.biases(), N, K, llep::GateNorm::sigmoid, ids, gates);
      biased.update(exec, t, ids.data(), ids.size(), {N, K, B});
      if (t.rank() != 0 || !(s < 10 || (s + 1) % 25 == 0 || last)) continue;
      standard_ep.plan(plain.loads(), topo, plan);
      const auto ep = busiest(plan);
      llep_planner.plan(plain.loads(), topo, plan);
      const auto ll = busiest(plan);
      const auto ll_moves = plan.weight_transfers().size();
      standard_ep.plan(biased.loads(), topo, plan);
      const auto af = busiest(plan);
      llep_planner.plan(biased.loads(), topo, plan);
      const auto both = busiest(plan);
      std::printf("%6d %12lld %10lld (%3zu) %14lld %16lld (%3zu) %13.2f\n", s + 1, static_cast<long long>(ep),
                  static_cast<long long>(ll), ll_moves, static_cast<long long>(af), static_cast<long long>(both),
                  plan.weight_transfers().size(), expert_max_over_mean(biased.loads()));
      if (last) balanced = 5 * af <= 6 * static_cast<llep::count_t>(B) * K;
    }
  });
  if (steps >= 100 && !balanced) {
    std::fprintf(stderr, "the aux-free bias did not balance the router within %d steps\n", steps);
    return 1;
  }
  return 0;
}
