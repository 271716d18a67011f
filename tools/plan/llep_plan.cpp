// llep-plan: the plan a planner makes for one set of expert loads, as JSON.
//
//   llep-plan --loads 900,10,10,10,5,5,5,5 --ranks 4 --policy llep --min-gemm 0
//
// Malformed input prints one line "error: ..." to stderr and exits 2.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "common/cli.hpp"
#include "common/plan_json.hpp"
#include "common/planners.hpp"
#include "common/scenarios.hpp"
#include "llep/sim/loads_text.hpp"

namespace {

using llep::count_t;
using llep::examples::fail;

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "llep-plan: prints, as JSON, the plan a planner makes for one set of per-expert loads.\n"
      "Expert e lives on rank e / (N / P). Malformed input: one 'error: ...' line, exit code 2."};
  std::string loads_text, loads_file, policy = "llep", shape_name = "gpt-oss-120b";
  int ranks = 0, ranks_per_node = 0;
  llep::examples::PlannerSettings set;
  const llep::LeastLoaded ll_defaults{};
  const llep::Adaptive<> ad_defaults{};
  set.alpha = ll_defaults.alpha;
  set.min_gemm = ll_defaults.min_tokens_per_gemm;
  set.lambda = ad_defaults.lambda;
  double max_memory_gb = llep::examples::kDefaultMaxMemoryGb;
  bool compact = false;
  const std::string names = llep::examples::planner_names();
  app.add_option("--loads", loads_text, "Per-expert loads l[0..N), e.g. 10,0,3,7 (commas or spaces)");
  app.add_option("--loads-file", loads_file,
                 "Regular file (at most 64 MiB) of per-expert loads separated by commas, spaces or newlines");
  app.add_option("--ranks", ranks, "EP world size P; N must be a multiple of P")->required();
  app.add_option("--ranks-per-node", ranks_per_node, "Ranks per node (must divide P); 0: one node holds every rank")
      ->capture_default_str();
  app.add_option("--policy", policy, "Planner: one of " + names)->capture_default_str();
  app.add_option("--alpha", set.alpha, "LLEP capacity factor: cap = max(1, ceil(alpha * sum(l) / P))")
      ->capture_default_str();
  app.add_option("--min-gemm", set.min_gemm,
                 "LLEP min_tokens_per_gemm: smallest spilled slice that leaves tokens behind")
      ->capture_default_str();
  app.add_option("--lambda", set.lambda, "Adaptive: LLEP when native max/mean rank load >= lambda, else EP")
      ->capture_default_str();
  app.add_option("--replica-slots", set.replica_slots, "replicated: replica slots per rank besides its N / P natives")
      ->capture_default_str();
  app.add_option("--cap-rows", set.cap_rows, "capped: at most this many rows per rank (required by --policy capped)")
      ->capture_default_str();
  app.add_option("--shape", shape_name,
                 "cost_aware: layer shape of the cost model (roofline): gpt-oss-120b, deepseek-v3 or kimi-k2")
      ->capture_default_str();
  llep::examples::add_memory_flag(app, max_memory_gb);
  app.add_flag("--compact", compact, "Print the JSON on one line");

  if (const auto rc = llep::examples::parse(app, argc, argv)) return *rc;

  try {
    const bool has_list = app.count("--loads") > 0, has_file = app.count("--loads-file") > 0;
    if (has_list == has_file) return fail("give the loads with exactly one of --loads and --loads-file");
    const std::vector<count_t> loads =
        has_list ? llep::sim::parse_loads(loads_text, "--loads") : llep::sim::load_loads_file(loads_file, "--loads-file");
    if (("," + names + ",").find("," + policy + ",") == std::string::npos)
      return fail("--policy: unknown policy '" + policy + "' (use one of " + names + ")");
    if (policy == "capped" && set.cap_rows == 0) return fail("--policy capped needs --cap-rows > 0");
    for (const auto& s : llep::bench::kPaperShapes)
      if (s.name == shape_name) set.shape = {std::string(s.name), s.hidden, s.intermediate};
    if (set.shape.name != shape_name)
      return fail("--shape: unknown shape '" + shape_name + "' (use gpt-oss-120b, deepseek-v3 or kimi-k2)");

    // The topology, the plan (segments and transfers, with slack) and the loads, per expert
    // and per rank, before any of them is allocated.
    const double N = static_cast<double>(loads.size()), P = ranks;
    llep::examples::check_memory(256 * N + 64 * P, max_memory_gb, "planning N = " + std::to_string(loads.size()) +
                                                                     " experts on P = " + std::to_string(ranks));
    const llep::Topology topo(ranks, static_cast<int>(loads.size()), ranks_per_node);
    set.check(topo, policy == "replicated");  // a bad setting is an error whatever the policy
    const auto all = llep::examples::planners(set);
    const auto chosen = std::find_if(all.begin(), all.end(), [&](const auto& p) { return p.name == policy; });
    llep::Plan plan;
    const llep::examples::Placement placed = chosen->plan(loads, 0, topo, plan);
    const llep::Topology& plan_topo = placed.topo ? *placed.topo : topo;
    const auto v = llep::validate(plan, loads, plan_topo);
    if (!v.ok) return fail("internal: the plan is invalid: " + v.message);

    llep::examples::JsonWriter w(std::cout, compact ? -1 : 2);
    w.begin_object();
    w.value("policy", policy);
    llep::examples::write_plan_members(w, plan, loads, topo);
    w.begin_object("config");
    w.value("alpha", set.alpha);
    w.value("min_tokens_per_gemm", set.min_gemm);
    w.value("lambda", set.lambda);
    w.end_object();
    w.end_object();
    std::cout << '\n';
    std::cout.flush();
    return std::cout.good() ? 0 : 1;
  } catch (const llep::Error& e) {
    return fail(e.what());
  }
}
