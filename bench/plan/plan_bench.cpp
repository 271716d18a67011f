// llep-plan-bench: host time of one plan for EP, LLEP and Adaptive over the paper's
// skews (bench/common/scenarios.hpp; loads from llep::sim), N in {32, 128, 256, 384},
// P in {8, 16, 32, 64}; every rank routes the gpt-oss-120b shape's 32K tokens x K=4.
// One Plan object per policy is reused, as an engine would: after warm-up, planning
// allocates nothing, so the time is the planner's alone.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/scenarios.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

using llep::count_t;
using Clock = std::chrono::steady_clock;

struct Result {
  double median_ns = 0;
  double imbalance_after = 0;
  std::string chosen;  // the plan's own policy (for adaptive: ep or llep)
};

template <class Planner>
Result measure(const Planner& planner, const std::vector<count_t>& loads, const llep::Topology& topo, int reps) {
  llep::Plan plan;
  for (int i = 0; i < std::max(20, reps / 10); ++i) planner.plan(loads, topo, plan);  // warm-up
  std::vector<double> ns(static_cast<std::size_t>(reps));
  for (auto& t : ns) {
    const auto t0 = Clock::now();
    planner.plan(loads, topo, plan);
    const auto t1 = Clock::now();
    t = std::chrono::duration<double, std::nano>(t1 - t0).count();
  }
  std::nth_element(ns.begin(), ns.begin() + reps / 2, ns.end());
  return {ns[static_cast<std::size_t>(reps / 2)], llep::imbalance(plan.rank_loads()), std::string(plan.policy())};
}

int usage(std::FILE* to, int code) {
  std::fprintf(to,
               "usage: llep-plan-bench [--json] [--reps N] [--experts N] [--ranks P] [--scenario S]\n"
               "                       [--policy ep|llep|adaptive]\n"
               "  Median host time of one plan (ep, llep, adaptive with the paper's settings) per\n"
               "  N in {32,128,256,384} x P in {8,16,32,64} x the paper's skews.\n"
               "  --json    one JSON object per line instead of the table\n"
               "  --reps N  timed plans per row, after warm-up (default 2001)\n"
               "  --experts N, --ranks P  only that N (or P) of the grid\n"
               "  --scenario S  only that skew (e.g. 50%%-on-4), for profiling one plan\n"
               "  --policy X    time only that policy (the others print 0)\n");
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  bool json = false;
  int reps = 2001, only_n = 0, only_p = 0;
  std::string only_scenario, only_policy;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json")) {
      json = true;
    } else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) {
      char* end = nullptr;
      const long r = std::strtol(argv[++i], &end, 10);
      if (*end != '\0' || r < 1 || r > 10000000) {
        std::fprintf(stderr, "error: --reps '%s' is not an integer in [1, 10000000]\n", argv[i]);
        return 2;
      }
      reps = static_cast<int>(r);
    } else if ((!std::strcmp(argv[i], "--experts") || !std::strcmp(argv[i], "--ranks")) && i + 1 < argc) {
      const bool experts = !std::strcmp(argv[i], "--experts");
      char* end = nullptr;
      const long v = std::strtol(argv[++i], &end, 10);
      if (*end != '\0' || v < 1 || v > 65536) {
        std::fprintf(stderr, "error: %s '%s' is not an integer in [1, 65536]\n", argv[i - 1], argv[i]);
        return 2;
      }
      (experts ? only_n : only_p) = static_cast<int>(v);
    } else if (!std::strcmp(argv[i], "--scenario") && i + 1 < argc) {
      only_scenario = argv[++i];
    } else if (!std::strcmp(argv[i], "--policy") && i + 1 < argc) {
      only_policy = argv[++i];
      if (only_policy != "ep" && only_policy != "llep" && only_policy != "adaptive") {
        std::fprintf(stderr, "error: --policy '%s' is not one of ep, llep, adaptive\n", argv[i]);
        return 2;
      }
    } else if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) {
      return usage(stdout, 0);
    } else {
      std::fprintf(stderr, "error: unknown argument '%s' (see --help)\n", argv[i]);
      return 2;
    }
  }

  const llep::StandardEp ep{};
  const llep::LeastLoaded llep_planner = llep::bench::paper_lla();
  const llep::Adaptive<> adaptive = llep::bench::paper_llep();
  const llep::bench::LayerShape& shape = llep::bench::kGptOss120b;
  if (!json) {
    std::printf("# llep-plan-bench: median ns per plan over %d plans after warm-up; one Plan reused\n", reps);
    std::printf("# loads: P x %lld tokens x K=%d pairs; LLEP alpha=%g m=%lld; Adaptive lambda=%g\n",
                static_cast<long long>(shape.tokens_per_rank), shape.top_k, llep_planner.alpha,
                static_cast<long long>(llep_planner.min_tokens_per_gemm), adaptive.lambda);
    std::printf("# imbalance = max/mean rank load: 'before' under native placement, then each plan's\n");
    std::printf("%5s %4s %-12s %9s %9s %9s %8s %8s %8s %6s\n", "N", "P", "scenario", "ep_ns", "llep_ns",
                "adapt_ns", "imb_ep", "imb_llep", "imb_adpt", "chosen");
  }
  for (int N : {32, 128, 256, 384}) {
    for (int P : {8, 16, 32, 64}) {
      if ((only_n != 0 && N != only_n) || (only_p != 0 && P != only_p)) continue;
      if (N % P != 0) {
        if (json)
          std::printf("{\"experts\": %d, \"ranks\": %d, \"skipped\": \"N %% P != 0\"}\n", N, P);
        else
          std::printf("%5d %4d skipped: N %% P != 0\n", N, P);
        continue;
      }
      const llep::Topology topo(P, N);
      const count_t total = static_cast<count_t>(P) * shape.pairs_per_rank();
      for (const llep::sim::Skew& skew : llep::bench::paper_routings()) {
        const std::string name = skew.name();
        if (!only_scenario.empty() && name != only_scenario) continue;
        const auto loads = llep::sim::skewed_loads(N, total, skew);
        std::vector<count_t> native(static_cast<std::size_t>(P));
        llep::native_rank_loads(loads, topo, native);
        const double before = llep::imbalance(native);
        auto want = [&](const char* p) { return only_policy.empty() || only_policy == p; };
        const Result r[] = {want("ep") ? measure(ep, loads, topo, reps) : Result{},
                            want("llep") ? measure(llep_planner, loads, topo, reps) : Result{},
                            want("adaptive") ? measure(adaptive, loads, topo, reps) : Result{}};
        const char* names[] = {"ep", "llep", "adaptive"};
        if (json) {
          for (int k = 0; k < 3; ++k)
            std::printf(
                "{\"experts\": %d, \"ranks\": %d, \"scenario\": \"%s\", \"policy\": \"%s\", \"median_ns\": %.0f, "
                "\"imbalance_before\": %.4f, \"imbalance_after\": %.4f, \"chosen\": \"%s\"}\n",
                N, P, name.c_str(), names[k], r[k].median_ns, before, r[k].imbalance_after, r[k].chosen.c_str());
        } else {
          std::printf("%5d %4d %-12s %9.0f %9.0f %9.0f %8.3f %8.3f %8.3f %6s\n", N, P, name.c_str(), r[0].median_ns,
                      r[1].median_ns, r[2].median_ns, before, r[1].imbalance_after, r[2].imbalance_after,
                      r[2].chosen.c_str());
        }
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
