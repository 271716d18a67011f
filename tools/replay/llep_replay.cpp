// llep-replay: replays recorded routing traces (top-k expert ids as .npy files) through
// every planner and prints what each plan costs: per-rank loads, imbalance, weight
// transfers, bytes moved, planned peak memory and the cost model's step time.
//
//   llep-replay traces/ --experts 128 --ranks 8 --shape gpt-oss-120b [--json]
//
// docs/replay.md describes the format, the flags and every output key. Malformed input
// prints one line "error: ..." to stderr and exits 2; nothing is printed to stdout then,
// because every trace is read and checked before the first plan is made.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "common/cli.hpp"
#include "common/scenarios.hpp"
#include "common/planners.hpp"
#include "llep/core/counts.hpp"
#include "llep/sim/cost_model.hpp"
#include "llep/sim/gemm_csv.hpp"
#include "llep/sim/npy.hpp"

namespace {

using llep::count_t;
namespace fs = std::filesystem;

struct UsageError {
  std::string what;
};

// One trace, read and counted: everything the planners and the cost model need.
struct Trace {
  std::string file;
  std::int64_t tokens = 0;
  int top_k = 0;
  std::vector<count_t> counts;  // C[P][N], row-major
  std::vector<count_t> loads;   // l[e]
};

// What the cost model needs of one trace beside its plan.
struct Context {
  const Trace& trace;
  int step;  // index of the trace in processing order
  llep::CountsView counts;
  const llep::Topology& topo;
  const llep::sim::FfnShape& shape;
  const llep::sim::CostModel& model;
  const llep::sim::CostModel& ahead;  // model with weights_prefetched: MoeLayer::prepare
};

using llep::examples::Placement;
using llep::examples::PlannerEntry;
using llep::examples::fail;
using llep::examples::one_line;

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string w; std::getline(ss, w, ',');)
    if (!w.empty()) out.push_back(w);
  return out;
}

// The files to replay: each path as given, or a directory's *.npy files (regular files,
// not recursing) in file-name order (byte-wise, so step-010 sorts after step-009).
std::vector<std::string> trace_files(const std::vector<std::string>& paths) {
  std::vector<std::string> files;
  for (const std::string& p : paths) {
    std::error_code ec;
    const fs::file_status st = fs::status(p, ec);
    if (ec || !fs::exists(st)) throw UsageError{p + ": no such file or directory"};
    if (!fs::is_directory(st)) {
      files.push_back(p);
      continue;
    }
    std::vector<fs::path> found;
    for (fs::directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec))
      if (it->path().extension() == ".npy" && fs::is_regular_file(it->status())) found.push_back(it->path());
    if (ec) throw UsageError{p + ": cannot list the directory: " + ec.message()};
    if (found.empty()) throw UsageError{p + ": the directory holds no .npy file"};
    std::sort(found.begin(), found.end(),
              [](const fs::path& a, const fs::path& b) { return a.filename().string() < b.filename().string(); });
    for (const fs::path& f : found) files.push_back(f.string());
  }
  return files;
}

struct Result {
  std::string planner, chosen;
  llep::Plan plan;
  llep::sim::StepCost cost;
  double ahead_s = 0;  // step_s with the weight round prepared ahead (hidden)
  Placement placement;
  double token_bytes = 0, weight_bytes = 0, cross_node_bytes = 0;
};

Result replay(const PlannerEntry& p, const Context& c) {
  Result r;
  r.planner = p.name;
  r.placement = p.plan(c.trace.loads, c.step, c.topo, r.plan);
  const llep::Topology& topo = r.placement.topo ? *r.placement.topo : c.topo;
  const auto v = llep::validate(r.plan, c.trace.loads, topo);
  if (!v.ok) throw UsageError{"internal: planner " + p.name + " made an invalid plan for " + c.trace.file + ": " + v.message};
  r.chosen = std::string(r.plan.policy());
  r.cost = c.model.step(r.plan, c.counts, topo, c.shape);
  r.ahead_s = c.ahead.step(r.plan, c.counts, topo, c.shape).step_s;
  const double expert_bytes = c.model.expert_bytes(c.shape);
  for (llep::sim::RankCost& rc : r.cost.ranks) {
    // Sent bytes only: every byte is sent once and received once.
    r.token_bytes += rc.dispatch.intra_sent + rc.dispatch.inter_sent + rc.combine.intra_sent + rc.combine.inter_sent;
    r.weight_bytes += rc.weights.intra_sent + rc.weights.inter_sent;
    r.cross_node_bytes += rc.dispatch.inter_sent + rc.combine.inter_sent + rc.weights.inter_sent;
    rc.peak_bytes += r.placement.replica_slots * expert_bytes;  // resident replicas are foreign weights too
  }
  // Placement copies run between steps (the model's step time leaves them out) but move
  // bytes; Replicated keeps every copy in its native node, so none crosses nodes.
  r.weight_bytes += static_cast<double>(r.placement.moves) * expert_bytes;
  return r;
}

template <class T>
std::string list(const std::vector<T>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? " " : "") + std::to_string(v[i]);
  return s + "]";
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "llep-replay: replays routing traces (top-k expert ids, .npy files of shape [tokens, K], int32 or int64)\n"
      "through every planner and prints per-rank loads, imbalance, weight transfers, bytes moved, planned\n"
      "peak memory and the cost model's predicted step time. Tokens are split over the P ranks in contiguous\n"
      "blocks: rank p holds tokens [floor(p*T/P), floor((p+1)*T/P)). Expert e lives on rank e / (N / P).\n"
      "Malformed input: one 'error: ...' line on stderr, exit code 2. See docs/replay.md."};
  std::vector<std::string> paths;
  int experts = 0, ranks = 0, ranks_per_node = 0, hidden = 0, intermediate = 0;
  std::string shape_name, gemm_csv, gemm_mode = "per_expert", only;
  bool prefetch = false;
  double elem_bytes = 2;
  llep::examples::PlannerSettings set;
  set.alpha = llep::bench::kPaperAlpha;
  set.min_gemm = llep::bench::kPaperMinTokensPerGemm;
  set.lambda = llep::bench::kPaperLambda;
  double max_memory_gb = llep::examples::kDefaultMaxMemoryGb;
  bool json_out = false;
  app.add_option("traces", paths,
                 "Trace files (.npy, [tokens, K], '<i4' or '<i8', C order) or directories of them; a directory's "
                 "*.npy files are replayed in file-name order")
      ->required();
  app.add_option("--experts", experts, "Experts N of the layer; every id must lie in [0, N) (required: never guessed "
                                       "from the largest id)")
      ->required();
  app.add_option("--ranks", ranks, "EP world size P; N must be a multiple of P")->required();
  app.add_option("--ranks-per-node", ranks_per_node, "Ranks per node (must divide P); 0: one node holds every rank")
      ->capture_default_str();
  app.add_option("--shape", shape_name,
                 "Expert FFN shape for D and H (and the GEMM curve's shape): gpt-oss-120b, deepseek-v3 or kimi-k2");
  app.add_option("--hidden", hidden, "Hidden size D (with --intermediate, instead of --shape)");
  app.add_option("--intermediate", intermediate, "Expert intermediate size H (with --hidden, instead of --shape)");
  app.add_option("--elem-bytes", elem_bytes, "Bytes per element of rows and weights (2: bf16)")->capture_default_str();
  app.add_option("--gemm-csv", gemm_csv,
                 "Calibrate GEMM times with the GPU benchmark's curve CSV (shape,mode,rows,ms,tflops); default: the "
                 "roofline (not measured)");
  app.add_option("--gemm-mode", gemm_mode, "Rows of --gemm-csv to use: per_expert or grouped")->capture_default_str();
  app.add_option("--alpha", set.alpha, "Capacity factor of LeastLoaded and the planners built on it (paper: 1)")
      ->capture_default_str();
  app.add_option("--min-gemm", set.min_gemm, "min_tokens_per_gemm of LeastLoaded and the planners built on it (paper: 1024)")
      ->capture_default_str();
  app.add_option("--lambda", set.lambda, "Adaptive threshold on native max/mean rank load (paper: 1.3)")
      ->capture_default_str();
  app.add_option("--replica-slots", set.replica_slots, "Replicated: replica slots per rank besides its N / P natives")
      ->capture_default_str();
  app.add_option("--ema-decay", set.ema_decay,
                 "Replicated: history h <- decay * loads + (1 - decay) * h over the files in order, in (0, 1]")
      ->capture_default_str();
  app.add_option("--cap-rows", set.cap_rows, "Capped (around LeastLoaded): at most this many rows per rank; 0: "
                                             "Capped is not replayed")
      ->capture_default_str();
  const std::string names = llep::examples::planner_names();
  app.add_option("--planners", only,
                 "Comma-separated planners to replay, in this order (default: all: " + names +
                     "; capped only with --cap-rows)");
  llep::examples::add_memory_flag(app, max_memory_gb);
  app.add_flag("--prefetch", prefetch,
               "Add the column 'ahead ms': the step with its weight transfers prepared ahead (MoeLayer::prepare), "
               "so the time hidden is step ms - ahead ms");
  app.add_flag("--json", json_out, "Print JSON Lines: one object per (file, planner) instead of the table");

  if (const auto rc = llep::examples::parse(app, argc, argv)) return *rc;

  try {
    // The layer shape: a paper shape by name, or D and H given.
    llep::sim::FfnShape shape;
    const bool by_name = app.count("--shape") > 0, by_size = app.count("--hidden") + app.count("--intermediate") > 0;
    if (by_name == by_size) return fail("give the FFN shape with --shape, or with --hidden and --intermediate");
    if (by_name) {
      for (const auto& s : llep::bench::kPaperShapes)
        if (s.name == shape_name) shape = {std::string(s.name), s.hidden, s.intermediate};
      if (shape.name.empty())
        return fail("--shape: unknown shape '" + shape_name + "' (use gpt-oss-120b, deepseek-v3 or kimi-k2)");
    } else {
      if (app.count("--hidden") == 0 || app.count("--intermediate") == 0)
        return fail("--hidden and --intermediate go together");
      shape = {"custom", hidden, intermediate};
    }
    shape.check();

    // Before anything of size N or P is allocated: the topology, the cost model's
    // rank-to-rank traffic, one trace's counts C[P][N] (more per trace below).
    LLEP_EXPECTS(ranks > 0 && experts > 0, "--ranks P = ", ranks, " and --experts N = ", experts, " must be > 0");
    const double P = ranks, N = experts;
    double need = 64 * N + 32 * P * P;
    llep::examples::check_memory(need + 16 * P * N, max_memory_gb,
                                 "P = " + std::to_string(ranks) + ", N = " + std::to_string(experts));
    const llep::Topology topo(ranks, experts, ranks_per_node);
    llep::sim::CostModel model;
    model.elem_bytes = elem_bytes;
    LLEP_EXPECTS(std::isfinite(elem_bytes) && elem_bytes > 0, "--elem-bytes = ", elem_bytes, " must be > 0");
    if (!gemm_csv.empty()) model.gemm = llep::sim::load_gemm_csv(gemm_csv, gemm_mode);
    else if (app.count("--gemm-mode") > 0) return fail("--gemm-mode needs --gemm-csv");
    (void)model.gemm.ffn_seconds(1, shape, elem_bytes);  // a curve without this shape fails before any output

    llep::sim::CostModel ahead = model;
    ahead.weights_prefetched = true;

    // Planners: a bad setting fails here, before any trace is read.
    set.model = std::make_shared<const llep::sim::CostModel>(model);
    set.shape = shape;
    std::vector<PlannerEntry> all = llep::examples::planners(set);
    const std::vector<PlannerEntry> regime_ref(all.begin(), all.begin() + 2);  // ep, llep: the table's regime line
    if (!only.empty()) {
      std::vector<PlannerEntry> chosen;
      for (const std::string& want : split_commas(only)) {
        auto it = std::find_if(all.begin(), all.end(), [&](const PlannerEntry& p) { return p.name == want; });
        if (it == all.end() && want == "capped") return fail("--planners capped needs --cap-rows > 0");
        if (it == all.end()) return fail("--planners: unknown planner '" + want + "' (available: " + names + ")");
        chosen.push_back(*it);
      }
      all = std::move(chosen);
    }
    // A --replica-slots the topology cannot hold fails here, before any output.
    const bool replicated =
        std::any_of(all.begin(), all.end(), [](const PlannerEntry& p) { return p.name == llep::Replicated::name; });
    set.check(topo, replicated);
    if (replicated)
      (void)llep::Replicated::place(std::vector<double>(static_cast<std::size_t>(experts), 1.0), topo,
                                    topo.experts_per_rank() + set.replica_slots);

    // Every trace is read and checked first, so a bad file prints nothing but the error.
    std::vector<Trace> traces;
    for (const std::string& f : trace_files(paths)) {
      // Each trace holds its file, its ids, C[P][N] and what its plans and costs need.
      std::error_code ec;
      const auto file_bytes = fs::file_size(f, ec);
      need += 16 * P * N + 64 * N + 3.0 * (ec ? 0.0 : static_cast<double>(file_bytes));
      llep::examples::check_memory(need, max_memory_gb,
                                   "replaying " + std::to_string(traces.size() + 1) + " traces with P = " +
                                       std::to_string(ranks) + ", N = " + std::to_string(experts));
      const llep::sim::TopkIds ids = llep::sim::load_topk_ids(f);
      Trace t;
      t.file = f;
      t.tokens = ids.tokens;
      t.top_k = ids.top_k;
      t.counts = llep::sim::trace_counts(ids, ranks, experts, f);
      t.loads.assign(static_cast<std::size_t>(experts), 0);
      llep::loads_from_counts(llep::CountsView(t.counts, ranks, experts), t.loads);
      traces.push_back(std::move(t));
    }

    const std::string gemm_desc = model.gemm.describe();
    const double expert_bytes = model.expert_bytes(shape);
    if (!json_out) {
      std::cout << "P " << ranks << " (" << topo.ranks_per_node() << " per node), N " << experts << ", shape "
                << shape.name << " (D " << shape.hidden << ", H " << shape.intermediate << "), " << elem_bytes
                << " bytes per element, expert " << fixed(expert_bytes / 1e6, 1) << " MB\n"
                << "GEMM times: " << gemm_desc << "\n"
                << "Predictions of the cost model, not measurements. MB = 1e6 bytes, GB = 1e9 bytes; peak = rows in "
                   "+ out, largest GEMM's intermediate, foreign weights.\n";
    }
    for (std::size_t i = 0; i < traces.size(); ++i) {
      const Trace& t = traces[i];
      const llep::CountsView counts(t.counts, ranks, experts);
      const Context ctx{t, static_cast<int>(i), counts, topo, shape, model, ahead};
      std::vector<count_t> native(static_cast<std::size_t>(ranks));
      llep::native_rank_loads(t.loads, topo, native);
      if (!json_out) {
        std::printf("\n%s: tokens %lld, K %d, pairs %lld, native rank loads %s\n", t.file.c_str(),
                    static_cast<long long>(t.tokens), t.top_k, static_cast<long long>(t.tokens * t.top_k),
                    list(native).c_str());
        std::printf("  %-12s %-12s %8s %8s %9s %10s %10s %10s %10s %9s %9s%s  %s\n", "planner", "chosen", "imb.bef",
                    "imb.aft", "transfers", "token MB", "weight MB", "moved MB", "x-node MB", "peak GB", "step ms",
                    prefetch ? "  ahead ms" : "", "rank loads");
      }
      // The regime of this batch: standard EP's and LeastLoaded's predicted steps.
      Result ep_ref, ll_ref;
      if (!json_out) ep_ref = replay(regime_ref[0], ctx), ll_ref = replay(regime_ref[1], ctx);
      std::string cost_aware_note;
      for (const PlannerEntry& p : all) {
        const Result r = replay(p, ctx);
        const std::vector<count_t> rank_loads(r.plan.rank_loads().begin(), r.plan.rank_loads().end());
        const double before = llep::imbalance(native), after = llep::imbalance(rank_loads);
        if (!json_out && r.chosen == "cost_aware") {
          const bool ep_plan = r.plan.weight_transfers().empty() &&
                               std::ranges::equal(r.plan.rank_loads(), ep_ref.plan.rank_loads());
          cost_aware_note = "; cost_aware " + (ep_plan ? std::string("kept EP's plan")
                                                       : "spilled (" + std::to_string(r.plan.weight_transfers().size()) +
                                                             " weight transfers)");
        }
        if (!json_out) {
          char ahead_col[32] = "";
          if (prefetch) std::snprintf(ahead_col, sizeof ahead_col, " %9.3f", r.ahead_s * 1e3);
          std::printf("  %-12s %-12s %8.3f %8.3f %9zu %10.2f %10.2f %10.2f %10.2f %9.3f %9.3f%s  %s\n",
                      r.planner.c_str(), r.chosen.c_str(), before, after,
                      r.plan.weight_transfers().size() + r.placement.moves,
                      r.token_bytes / 1e6, r.weight_bytes / 1e6, (r.token_bytes + r.weight_bytes) / 1e6,
                      r.cross_node_bytes / 1e6, r.cost.max_peak_bytes() / 1e9, r.cost.step_s * 1e3,
                      ahead_col, list(rank_loads).c_str());
          continue;
        }
        nlohmann::ordered_json j;
        j["file"] = t.file;
        j["step"] = i;
        j["tokens"] = t.tokens;
        j["top_k"] = t.top_k;
        j["ranks"] = ranks;
        j["experts"] = experts;
        j["ranks_per_node"] = topo.ranks_per_node();
        j["shape"] = shape.name;
        j["hidden"] = shape.hidden;
        j["intermediate"] = shape.intermediate;
        j["elem_bytes"] = elem_bytes;
        j["gemm"] = gemm_csv.empty() ? std::string("roofline") : gemm_csv;
        j["planner"] = r.planner;
        j["chosen"] = r.chosen;
        j["expert_loads"] = t.loads;
        j["native_loads"] = native;
        j["rank_loads"] = rank_loads;
        j["capacity"] = r.plan.capacity();
        j["imbalance_before"] = before;
        j["imbalance_after"] = after;
        j["weight_transfers"] = r.plan.weight_transfers().size();
        // Byte counts as integers (the model holds them as doubles; they are whole unless
        // --elem-bytes is fractional, and then rounding is harmless).
        const auto whole = [](double b) { return static_cast<std::int64_t>(std::llround(b)); };
        std::vector<std::int64_t> peaks;
        for (double b : r.cost.peak_bytes()) peaks.push_back(whole(b));
        j["token_bytes"] = whole(r.token_bytes);
        j["weight_bytes"] = whole(r.weight_bytes);
        j["bytes_moved"] = whole(r.token_bytes + r.weight_bytes);
        j["cross_node_bytes"] = whole(r.cross_node_bytes);
        j["peak_bytes"] = peaks;
        j["max_peak_bytes"] = whole(r.cost.max_peak_bytes());
        j["compute_s"] = r.cost.compute_s();
        j["comm_s"] = r.cost.comm_s();
        j["max_compute_s"] = r.cost.max_compute_s();
        j["max_comm_s"] = r.cost.max_comm_s();
        j["step_s"] = r.cost.step_s;
        j["critical_rank"] = r.cost.critical_rank;
        j["placement_moves"] = r.placement.moves;
        j["step_prefetched_s"] = r.ahead_s;
        std::cout << j.dump() << '\n';
      }
      if (!json_out)
        std::printf("  regime: predicted EP %.3f ms, LLEP %.3f ms: %s%s\n", ep_ref.cost.step_s * 1e3,
                    ll_ref.cost.step_s * 1e3,
                    ll_ref.cost.step_s < ep_ref.cost.step_s ? "spilling pays" : "spilling does not pay (EP regime)",
                    cost_aware_note.c_str());
      if (!json_out && prefetch)
        std::printf("  prefetch: LLEP's weights prepared ahead: %.3f ms, %.3f ms of its step hidden\n",
                    ll_ref.ahead_s * 1e3, (ll_ref.cost.step_s - ll_ref.ahead_s) * 1e3);
    }
    std::cout.flush();
    return 0;
  } catch (const UsageError& e) {
    return fail(e.what);
  } catch (const CLI::Error& e) {
    return fail(e.what());
  } catch (const llep::Error& e) {
    return fail(e.what());
  }
}
