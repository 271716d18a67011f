// llep-model: the LLEP paper's Fig. 4 table (step time and peak memory per rank, LLEP vs
// standard EP) predicted by the cost model for any P, one node or several.
//
//   llep-model                                   # P = 8, one node, roofline default
//   llep-model --ranks 64 --ranks-per-node 8 --markdown p64.md
//   llep-model --gemm-csv bench/results/gemm-curve-h100.csv --csv model.csv
//   llep-model --bounds                          # per-rank memory bounds, EP vs LLEP (Markdown)
//
// Every number it prints is a prediction, not a measurement. Bad input: one line
// "error: ..." on stderr and exit code 2.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "common/cli.hpp"
#include "common/scenarios.hpp"
#include "llep/experts/weight_layout.hpp"
#include "llep/layer/limits.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/cost_model.hpp"
#include "llep/sim/gemm_csv.hpp"

namespace {

using llep::count_t;
namespace bench = llep::bench;
namespace sim = llep::sim;

struct Row {
  std::string shape, routing, chosen, paper;
  int ranks = 0, nodes = 0;
  double imbalance = 1;
  double ep_ms = 0, llep_ms = 0, lla_ms = 0, ideal_ms = 0;
  double ep_compute_ms = 0, ep_comm_ms = 0, llep_compute_ms = 0, llep_comm_ms = 0;
  double ep_peak_gb = 0, llep_peak_gb = 0, lla_peak_gb = 0;
  std::size_t llep_weight_transfers = 0;
  [[nodiscard]] double speedup() const { return ep_ms / llep_ms; }
  [[nodiscard]] double lla_speedup() const { return ep_ms / lla_ms; }
  [[nodiscard]] double mem_ratio() const { return ep_peak_gb / llep_peak_gb; }
  [[nodiscard]] double frac_ideal() const { return ideal_ms / llep_ms; }
};

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string paper_text(const bench::LayerShape& shape, const sim::Skew& skew) {
  const auto p = bench::paper_fig4_speedup(shape.name, skew);
  if (!p) return "";
  if (p->low == p->high) return fmt("%.2fx", p->low);
  return fmt("%.2f", p->low) + "-" + fmt("%.2fx", p->high) + " (all shapes)";
}

using llep::examples::fail;
using llep::examples::one_line;

/// The per-rank memory bound of a bf16 SwiGLU layer of `shape` under `planner`: the step
/// workspace the layer sizes from LayerLimits (layer/limits.hpp), which holds for every
/// routing with at most the shape's tokens per rank, plus the native weights a rank holds.
template <class Planner>
void print_bound_row(const bench::LayerShape& shape, const llep::Topology& topo, const char* name,
                     const Planner& planner) {
  constexpr std::size_t elem = 2;  // bf16
  const llep::ExpertShape ffn{.hidden = shape.hidden, .intermediate = shape.intermediate};
  llep::LayerLimits l;
  l.max_tokens_per_rank = shape.tokens_per_rank;
  l.top_k = shape.top_k;
  l.hidden = shape.hidden;
  l.intermediate = shape.intermediate;
  l.ranks = topo.ranks();
  l.experts = topo.experts();
  l.row_bytes = static_cast<std::size_t>(shape.hidden) * elem;
  l.weight_bytes = ffn.elems() * elem;
  l.plan = llep::plan_bounds(planner, topo, l.max_pairs_per_rank());
  const double step_gb = static_cast<double>(llep::workspace_bytes(l)) / 1e9;
  const double native_gb = static_cast<double>(topo.experts_per_rank()) * static_cast<double>(l.weight_bytes) / 1e9;
  std::printf("| %s | %d | %lld x %d | %s | %lld | %d | %.2f | %.2f | %.2f |\n", std::string(shape.name).c_str(),
              topo.ranks(), static_cast<long long>(shape.tokens_per_rank), shape.top_k, name,
              static_cast<long long>(l.plan.rows_per_rank), l.plan.foreign_experts_per_rank, step_gb, native_gb,
              step_gb + native_gb);
}

int print_bounds(int ranks, int rpn, const llep::LeastLoaded& lla, const llep::Adaptive<llep::LeastLoaded>& llep_planner,
                 const std::string& settings) {
  std::printf("Per-rank memory bounds: what no step can exceed, for every routing with at most B tokens per\n"
              "rank (K experts each), bf16 weights and rows. Step workspace = `llep::workspace_bytes(limits)`\n"
              "(tokens sent and received, expert input and output rows, foreign weights, index maps), without\n"
              "the expert functor's scratch; native = the N/P experts a rank holds. GB = 1e9 bytes.\n"
              "Planners: %s.\n\n",
              settings.c_str());
  std::printf("| shape | P | B x K | planner | rows/rank <= | foreign experts <= | step workspace GB | native GB | "
              "total GB |\n|---|--:|--:|---|--:|--:|--:|--:|--:|\n");
  for (const bench::LayerShape& shape : bench::kPaperShapes) {
    if (shape.experts % ranks != 0) continue;
    const llep::Topology topo(ranks, shape.experts, rpn);
    print_bound_row(shape, topo, "standard EP", llep::StandardEp{});
    print_bound_row(shape, topo, "LLEP", llep_planner);
    print_bound_row(shape, topo, "LLA", lla);
  }
  return 0;
}

template <class Planner>
llep::Plan make_plan(const Planner& planner, const std::vector<count_t>& loads, const llep::Topology& topo) {
  llep::Plan plan;
  planner.plan(loads, topo, plan);
  const auto v = llep::validate(plan, loads, topo);
  LLEP_EXPECTS(v.ok, "internal: invalid plan: ", v.message);
  return plan;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "llep-model: the LLEP paper's Fig. 4 scenarios (3 layer shapes x 13 routings), step time and peak\n"
      "memory per rank of standard EP and LLEP, PREDICTED by the cost model of llep/sim/cost_model.hpp\n"
      "(roofline GEMM default unless --gemm-csv; communication over NVLink inside a node and the network\n"
      "between nodes). LLEP is Adaptive<LeastLoaded> with the paper's lambda, alpha and m; LLA is\n"
      "LeastLoaded alone. Shapes whose N is not a multiple of P are skipped."};
  int ranks = bench::kPaperRanks, ranks_per_node = 8;
  std::string gemm_csv, gemm_mode = "per_expert", csv_path, md_path;
  double link_gbps = 370, inter_gbps = 50, intra_lat_us = 10, inter_lat_us = 25;
  double lambda = bench::kPaperLambda, alpha = bench::kPaperAlpha;
  count_t min_gemm = bench::kPaperMinTokensPerGemm;
  bool json = false, bounds = false;
  app.add_option("--ranks", ranks, "EP world size P")->capture_default_str();
  app.add_option("--ranks-per-node", ranks_per_node, "Ranks (GPUs) per node; P below it means one node of P")
      ->capture_default_str();
  app.add_option("--gemm-csv", gemm_csv, "Measured GEMM curve CSV (shape,mode,rows,ms,tflops); default: roofline");
  app.add_option("--gemm-mode", gemm_mode, "Rows of the CSV to use: per_expert or grouped")->capture_default_str();
  app.add_option("--link-gbps", link_gbps, "Intra-node bandwidth per GPU and direction, GB/s")->capture_default_str();
  app.add_option("--inter-node-gbps", inter_gbps, "Inter-node bandwidth per GPU and direction, GB/s")
      ->capture_default_str();
  app.add_option("--latency-us", intra_lat_us, "Latency of one communication round inside a node, us")
      ->capture_default_str();
  app.add_option("--inter-node-latency-us", inter_lat_us, "Latency of one round when P spans nodes, us")
      ->capture_default_str();
  app.add_option("--lambda", lambda, "LLEP: plan with LLA when native max/mean rank load >= lambda")
      ->capture_default_str();
  app.add_option("--alpha", alpha, "LLEP capacity factor")->capture_default_str();
  app.add_option("--min-gemm", min_gemm, "LLEP min_tokens_per_gemm (m)")->capture_default_str();
  app.add_option("--csv", csv_path, "Also write the rows as CSV to FILE");
  app.add_option("--markdown", md_path, "Also write a Markdown report to FILE");
  app.add_flag("--json", json, "Print one JSON object per row instead of the table");
  app.add_flag("--bounds", bounds,
               "Print instead the per-rank memory bound of each planner for the paper's shapes (Markdown)");
  if (const auto rc = llep::examples::parse(app, argc, argv)) return *rc;

  std::string command = "llep-model";
  for (int i = 1; i < argc; ++i) command += std::string(" ") + argv[i];

  try {
    LLEP_EXPECTS(ranks > 0, "--ranks ", ranks, " must be > 0");
    LLEP_EXPECTS(ranks_per_node > 0, "--ranks-per-node ", ranks_per_node, " must be > 0");
    const int rpn = ranks < ranks_per_node ? ranks : ranks_per_node;
    LLEP_EXPECTS(ranks % rpn == 0, "--ranks-per-node ", ranks_per_node, " must divide --ranks ", ranks);
    sim::CostModel model;
    if (!gemm_csv.empty()) model.gemm = sim::load_gemm_csv(gemm_csv, gemm_mode);
    model.link = sim::LinkModel{link_gbps * 1e9, inter_gbps * 1e9, intra_lat_us * 1e-6, inter_lat_us * 1e-6};
    model.link.check();
    const llep::LeastLoaded lla{alpha, min_gemm};
    const llep::Adaptive<llep::LeastLoaded> llep_planner{lambda, lla};
    lla.check();
    LLEP_EXPECTS(std::isfinite(lambda) && lambda > 0, "--lambda ", lambda, " must be > 0");

    const std::string settings = "LLEP = Adaptive{lambda " + fmt("%g", lambda) + "} of LeastLoaded{alpha " +
                                 fmt("%g", alpha) + ", m " + std::to_string(min_gemm) + "}; LLA = LeastLoaded alone";
    if (bounds) return print_bounds(ranks, rpn, lla, llep_planner, settings);

    std::vector<Row> rows;
    std::vector<std::string> skipped;
    for (const bench::LayerShape& shape : bench::kPaperShapes) {
      if (shape.experts % ranks != 0) {
        skipped.push_back(std::string(shape.name) + " (N = " + std::to_string(shape.experts) +
                          " is not a multiple of P = " + std::to_string(ranks) + ")");
        continue;
      }
      const llep::Topology topo(ranks, shape.experts, rpn);
      const sim::FfnShape ffn{std::string(shape.name), shape.hidden, shape.intermediate};
      for (const sim::Skew& skew : bench::paper_routings()) {
        const auto counts = sim::skewed_counts(ranks, shape.experts, shape.pairs_per_rank(), skew);
        const llep::CountsView cv(counts, ranks, shape.experts);
        std::vector<count_t> loads(static_cast<std::size_t>(shape.experts));
        llep::loads_from_counts(cv, loads);
        const auto ep = model.step(make_plan(llep::StandardEp{}, loads, topo), cv, topo, ffn);
        const auto ll_plan = make_plan(llep_planner, loads, topo);
        const auto ll = model.step(ll_plan, cv, topo, ffn);
        const auto la = model.step(make_plan(lla, loads, topo), cv, topo, ffn);
        const auto ideal = model.ideal_step(loads, topo, ffn);
        std::vector<count_t> native(static_cast<std::size_t>(ranks));
        llep::native_rank_loads(loads, topo, native);
        Row r;
        r.shape = shape.name;
        r.routing = skew.name();
        r.chosen = ll_plan.policy();
        r.paper = ranks == bench::kPaperRanks && topo.nodes() == 1 ? paper_text(shape, skew) : "";
        r.ranks = ranks;
        r.nodes = topo.nodes();
        r.imbalance = llep::imbalance(native);
        r.ep_ms = ep.step_s * 1e3;
        r.llep_ms = ll.step_s * 1e3;
        r.lla_ms = la.step_s * 1e3;
        r.ideal_ms = ideal.step_s * 1e3;
        const auto& ec = ep.ranks[static_cast<std::size_t>(ep.critical_rank)];
        const auto& lc = ll.ranks[static_cast<std::size_t>(ll.critical_rank)];
        r.ep_compute_ms = ec.compute_s * 1e3;
        r.ep_comm_ms = ec.comm_s * 1e3;
        r.llep_compute_ms = lc.compute_s * 1e3;
        r.llep_comm_ms = lc.comm_s * 1e3;
        r.ep_peak_gb = ep.max_peak_bytes() / 1e9;
        r.llep_peak_gb = ll.max_peak_bytes() / 1e9;
        r.lla_peak_gb = la.max_peak_bytes() / 1e9;
        r.llep_weight_transfers = ll_plan.weight_transfers().size();
        rows.push_back(r);
      }
    }

    const std::string profile = model.gemm.describe();
    const std::string links = fmt("%g", link_gbps) + " GB/s per direction inside a node, " + fmt("%g", inter_gbps) +
                              " GB/s between nodes, round latency " + fmt("%g", intra_lat_us) + " us (" +
                              fmt("%g", inter_lat_us) + " us across nodes)";
    const std::string topo_text = "P = " + std::to_string(ranks) + " ranks, " + std::to_string(rpn) +
                                  " per node (" + std::to_string(ranks / rpn) + (ranks / rpn == 1 ? " node)" : " nodes)");

    if (json) {
      for (const Row& r : rows) {
        nlohmann::ordered_json j{{"shape", r.shape},
                                 {"routing", r.routing},
                                 {"ranks", r.ranks},
                                 {"nodes", r.nodes},
                                 {"imbalance_before", r.imbalance},
                                 {"llep_chosen", r.chosen},
                                 {"ep_ms", r.ep_ms},
                                 {"llep_ms", r.llep_ms},
                                 {"speedup", r.speedup()},
                                 {"lla_ms", r.lla_ms},
                                 {"lla_speedup", r.lla_speedup()},
                                 {"ep_compute_ms", r.ep_compute_ms},
                                 {"ep_comm_ms", r.ep_comm_ms},
                                 {"llep_compute_ms", r.llep_compute_ms},
                                 {"llep_comm_ms", r.llep_comm_ms},
                                 {"ep_peak_gb", r.ep_peak_gb},
                                 {"llep_peak_gb", r.llep_peak_gb},
                                 {"lla_peak_gb", r.lla_peak_gb},
                                 {"mem_ratio", r.mem_ratio()},
                                 {"ideal_ms", r.ideal_ms},
                                 {"llep_frac_ideal", r.frac_ideal()},
                                 {"llep_weight_transfers", r.llep_weight_transfers},
                                 {"paper_fig4_speedup", r.paper},
                                 {"source", "predicted by the cost model"}};
        std::cout << j.dump() << '\n';
      }
      for (const std::string& s : skipped) std::cout << nlohmann::json{{"skipped", s}}.dump() << '\n';
    } else {
      std::printf("# llep-model: PREDICTED by the cost model (%s), not measured\n", profile.c_str());
      std::printf("# %s; %s\n# %s\n", topo_text.c_str(), links.c_str(), settings.c_str());
      std::printf("# step = max over ranks of compute + comm (no overlap); peak = max over ranks; frac_ideal = ideal/LLEP\n");
      std::printf("%-13s %-10s %6s %5s %9s %9s %7s %9s %7s %8s %8s %6s %7s %s\n", "shape", "routing", "imb", "llep",
                  "ep_ms", "llep_ms", "speedup", "lla_ms", "lla_x", "ep_GB", "llep_GB", "mem_x", "f_ideal", "paper");
      for (const Row& r : rows)
        std::printf("%-13s %-10s %6.2f %5s %9.3f %9.3f %6.2fx %9.3f %6.2fx %8.2f %8.2f %5.2fx %6.1f%% %s\n",
                    r.shape.c_str(), r.routing.c_str(), r.imbalance, r.chosen.c_str(), r.ep_ms, r.llep_ms, r.speedup(),
                    r.lla_ms, r.lla_speedup(), r.ep_peak_gb, r.llep_peak_gb, r.mem_ratio(), 100 * r.frac_ideal(),
                    r.paper.c_str());
      for (const std::string& s : skipped) std::printf("# skipped: %s\n", s.c_str());
    }

    if (!csv_path.empty()) {
      std::ofstream out(csv_path);
      LLEP_EXPECTS(out.good(), "--csv: cannot write '", csv_path, "'");
      out << "shape,routing,ranks,nodes,imbalance_before,llep_chosen,ep_ms,llep_ms,speedup,lla_ms,lla_speedup,"
             "ep_compute_ms,ep_comm_ms,llep_compute_ms,llep_comm_ms,ep_peak_gb,llep_peak_gb,lla_peak_gb,mem_ratio,"
             "ideal_ms,llep_frac_ideal,llep_weight_transfers,source\n";
      for (const Row& r : rows)
        out << r.shape << ',' << r.routing << ',' << r.ranks << ',' << r.nodes << ',' << r.imbalance << ','
            << r.chosen << ',' << r.ep_ms << ',' << r.llep_ms << ',' << r.speedup() << ',' << r.lla_ms << ','
            << r.lla_speedup() << ',' << r.ep_compute_ms << ',' << r.ep_comm_ms << ',' << r.llep_compute_ms << ','
            << r.llep_comm_ms << ',' << r.ep_peak_gb << ',' << r.llep_peak_gb << ',' << r.lla_peak_gb << ','
            << r.mem_ratio() << ',' << r.ideal_ms << ',' << r.frac_ideal() << ',' << r.llep_weight_transfers
            << ",predicted\n";
      LLEP_EXPECTS(out.good(), "--csv: cannot write '", csv_path, "'");
    }

    if (!md_path.empty()) {
      std::ofstream out(md_path);
      LLEP_EXPECTS(out.good(), "--markdown: cannot write '", md_path, "'");
      const bool paper_col = ranks == bench::kPaperRanks && ranks / rpn == 1;
      out << "# LLEP vs standard EP, " << topo_text << ": predicted by the cost model\n\n"
          << "**Predicted by the cost model (" << (model.gemm.calibrated() ? "measured GEMM curve" : "roofline default")
          << ", not measured).** Nothing here ran on a GPU.\n\n"
          << "- command: `" << command << "`\n"
          << "- GEMM profile: " << profile << "\n"
          << "- links: " << links << "\n"
          << "- planners: " << settings << "\n"
          << "- step = max over ranks of (compute + communication), no overlap; peak = largest per-rank peak "
             "(expert rows in + out, largest GEMM's intermediate, foreign weights), GB = 1e9 bytes\n"
          << "- frac ideal = ideal / LLEP step time, the ideal being every rank computing total/P rows "
             "(N/P GEMMs of total/N rows) with no communication\n"
          << "- model and assumptions: docs/cost-model.md\n\n"
          << "| shape | routing | imbalance | LLEP ran | EP ms | LLEP ms | speedup | LLA ms | LLA speedup | "
             "EP peak GB | LLEP peak GB | memory ratio | LLEP / ideal |"
          << (paper_col ? " paper Fig. 4 speedup (measured, 8 x H200) |" : "") << "\n"
          << "|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|" << (paper_col ? "--:|" : "") << "\n";
      for (const Row& r : rows) {
        out << "| " << r.shape << " | " << r.routing << " | " << fmt("%.2f", r.imbalance) << " | " << r.chosen
            << " | " << fmt("%.2f", r.ep_ms) << " | " << fmt("%.2f", r.llep_ms) << " | " << fmt("%.2fx", r.speedup())
            << " | " << fmt("%.2f", r.lla_ms) << " | " << fmt("%.2fx", r.lla_speedup()) << " | "
            << fmt("%.2f", r.ep_peak_gb) << " | " << fmt("%.2f", r.llep_peak_gb) << " | "
            << fmt("%.2fx", r.mem_ratio()) << " | " << fmt("%.1f%%", 100 * r.frac_ideal()) << " |";
        if (paper_col) out << ' ' << (r.paper.empty() ? "n/a" : r.paper) << " |";
        out << '\n';
      }
      for (const std::string& s : skipped) out << "\nSkipped: " << s << ".\n";
      LLEP_EXPECTS(out.good(), "--markdown: cannot write '", md_path, "'");
    }
    return 0;
  } catch (const llep::Error& e) {
    return fail(e.what());
  }
}
