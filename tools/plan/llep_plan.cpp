// llep-plan: the plan a planner makes for one set of expert loads, as JSON.
//
//   llep-plan --loads 900,10,10,10,5,5,5,5 --ranks 4 --policy llep --min-gemm 0
//
// Malformed input prints one line "error: ..." to stderr and exits 2.
#include <CLI/CLI.hpp>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "common/cli.hpp"
#include "common/plan_json.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

using llep::count_t;

struct UsageError {
  std::string what;
};

// Words separated by any run of commas and whitespace; each must be a whole integer.
std::vector<count_t> parse_loads(std::string_view text, std::string_view where) {
  std::vector<count_t> loads;
  auto is_sep = [](char c) { return c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  std::size_t i = 0;
  while (i < text.size()) {
    if (is_sep(text[i])) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < text.size() && !is_sep(text[j])) ++j;
    const std::string_view word = text.substr(i, j - i);
    count_t v = 0;
    const auto [end, ec] = std::from_chars(word.data(), word.data() + word.size(), v);
    if (ec == std::errc::result_out_of_range)
      throw UsageError{std::string(where) + ": load '" + std::string(word) + "' is out of range for a 64-bit integer"};
    if (ec != std::errc() || end != word.data() + word.size())
      throw UsageError{std::string(where) + ": '" + std::string(word) + "' is not an integer"};
    if (v < 0) throw UsageError{std::string(where) + ": load " + std::string(word) + " of expert " +
                                std::to_string(loads.size()) + " is negative"};
    loads.push_back(v);
    i = j;
  }
  if (loads.empty()) throw UsageError{std::string(where) + ": no loads given"};
  return loads;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError{"--loads-file: cannot read '" + path + "'"};
  std::ostringstream os;
  os << in.rdbuf();
  if (in.bad()) throw UsageError{"--loads-file: cannot read '" + path + "'"};
  return os.str();
}

using llep::examples::fail;
using llep::examples::one_line;

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "llep-plan: prints, as JSON, the plan a planner makes for one set of per-expert loads.\n"
      "Expert e lives on rank e / (N / P). Malformed input: one 'error: ...' line, exit code 2."};
  std::string loads_text, loads_file, policy = "llep";
  int ranks = 0;
  const llep::LeastLoaded ll_defaults{};
  const llep::Adaptive<> ad_defaults{};
  double alpha = ll_defaults.alpha, lambda = ad_defaults.lambda;
  count_t min_gemm = ll_defaults.min_tokens_per_gemm;
  bool compact = false;
  app.add_option("--loads", loads_text, "Per-expert loads l[0..N), e.g. 10,0,3,7 (commas or spaces)");
  app.add_option("--loads-file", loads_file, "File of per-expert loads separated by commas, spaces or newlines");
  app.add_option("--ranks", ranks, "EP world size P; N must be a multiple of P")->required();
  app.add_option("--policy", policy, "Planner: ep (standard EP), llep (LeastLoaded) or adaptive")
      ->capture_default_str();
  app.add_option("--alpha", alpha, "LLEP capacity factor: cap = max(1, ceil(alpha * sum(l) / P))")
      ->capture_default_str();
  app.add_option("--min-gemm", min_gemm, "LLEP min_tokens_per_gemm: smallest spilled slice that leaves tokens behind")
      ->capture_default_str();
  app.add_option("--lambda", lambda, "Adaptive: LLEP when native max/mean rank load >= lambda, else EP")
      ->capture_default_str();
  app.add_flag("--compact", compact, "Print the JSON on one line");

  if (const auto rc = llep::examples::parse(app, argc, argv)) return *rc;

  try {
    const bool has_list = app.count("--loads") > 0, has_file = app.count("--loads-file") > 0;
    if (has_list == has_file) return fail("give the loads with exactly one of --loads and --loads-file");
    const std::vector<count_t> loads =
        has_list ? parse_loads(loads_text, "--loads") : parse_loads(read_file(loads_file), "--loads-file");
    if (policy != "ep" && policy != "llep" && policy != "adaptive")
      return fail("--policy: unknown policy '" + policy + "' (use ep, llep or adaptive)");

    const llep::Topology topo(ranks, static_cast<int>(loads.size()));
    const llep::LeastLoaded ll{alpha, min_gemm};
    ll.check();  // a bad --alpha or --min-gemm is an error whatever the policy
    LLEP_EXPECTS(std::isfinite(lambda) && lambda > 0, "--lambda = ", lambda, " must be a finite number > 0");
    llep::Plan plan;
    if (policy == "ep")
      llep::StandardEp{}.plan(loads, topo, plan);
    else if (policy == "llep")
      ll.plan(loads, topo, plan);
    else
      llep::Adaptive<>{lambda, ll}.plan(loads, topo, plan);
    const auto v = llep::validate(plan, loads, topo);
    if (!v.ok) return fail("internal: the plan is invalid: " + v.message);

    nlohmann::ordered_json out;
    out["policy"] = policy;
    const auto body = llep::examples::plan_to_json(plan, loads, topo);  // named: items() refers into it
    for (const auto& [key, value] : body.items()) out[key] = value;
    out["config"] = {{"alpha", alpha}, {"min_tokens_per_gemm", min_gemm}, {"lambda", lambda}};
    std::cout << out.dump(compact ? -1 : 2) << '\n';
    return 0;
  } catch (const UsageError& e) {
    return fail(e.what);
  } catch (const llep::Error& e) {
    return fail(e.what());
  }
}
