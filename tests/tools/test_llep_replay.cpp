// The llep-replay tool as a user runs it, on .npy traces written here: the loads it reports
// equal a histogram of the ids computed in the test (tokens split over ranks in contiguous
// blocks), its JSON keys are the documented ones, int32 and int64 traces (format 1.0 and
// 2.0) give the same answer, a directory is replayed in file-name order, and every broken
// trace exits 2 with one "error: FILE: ..." line and nothing on stdout.
//
// The binary's path comes from Meson in the environment variable LLEP_REPLAY.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "../common/spawn.hpp"
#include "npy_writer.hpp"

namespace {

using json = nlohmann::ordered_json;  // keeps the keys in the order printed
using testutil::npy_bytes;
using testutil::NpySpec;
using testutil::Run;
using testutil::TempDir;
using testutil::write_file;

std::string replay_binary() {
  const char* p = std::getenv("LLEP_REPLAY");
  REQUIRE_MESSAGE(p != nullptr, "LLEP_REPLAY must name the llep-replay binary (meson test sets it)");
  return p;
}

Run replay(std::vector<std::string> args) { return testutil::run_binary(replay_binary(), args); }

// The documented keys of one JSON object, in order (docs/replay.md).
const std::vector<std::string> kKeys{
    "file",        "step",         "tokens",         "top_k",           "ranks",          "experts",
    "ranks_per_node", "shape",     "hidden",         "intermediate",    "elem_bytes",     "gemm",
    "planner",     "chosen",       "expert_loads",   "native_loads",    "rank_loads",     "capacity",
    "imbalance_before", "imbalance_after", "weight_transfers", "token_bytes", "weight_bytes", "bytes_moved",
    "cross_node_bytes", "peak_bytes", "max_peak_bytes", "compute_s",     "comm_s",         "max_compute_s",
    "max_comm_s",  "step_s",       "critical_rank",  "placement_moves", "step_prefetched_s"};

struct Trace {
  std::int64_t tokens;
  int k;
  std::vector<std::int64_t> ids;
};

// Distinct top-k ids per token, skewed towards expert `hot`.
Trace random_trace(std::int64_t tokens, int k, int experts, int hot, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> any(0, experts - 1);
  Trace t{tokens, k, {}};
  for (std::int64_t i = 0; i < tokens; ++i) {
    std::vector<std::int64_t> row;
    while (static_cast<int>(row.size()) < k) {
      const int e = rng() % 3 == 0 ? hot : any(rng);
      if (std::find(row.begin(), row.end(), e) == row.end()) row.push_back(e);
    }
    t.ids.insert(t.ids.end(), row.begin(), row.end());
  }
  return t;
}

// C[p][e], with rank p holding tokens [floor(p T / P), floor((p + 1) T / P)).
std::vector<std::vector<std::int64_t>> histogram(const Trace& t, int experts, int ranks) {
  std::vector<std::vector<std::int64_t>> c(static_cast<std::size_t>(ranks), std::vector<std::int64_t>(experts, 0));
  for (int p = 0; p < ranks; ++p)
    for (std::int64_t tok = p * t.tokens / ranks; tok < (p + 1) * t.tokens / ranks; ++tok)
      for (int s = 0; s < t.k; ++s) ++c[p][static_cast<std::size_t>(t.ids[static_cast<std::size_t>(tok * t.k + s)])];
  return c;
}

std::vector<json> json_lines(const std::string& out) {
  std::vector<json> v;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) v.push_back(json::parse(line));
  return v;
}

std::string write_trace(const TempDir& dir, const std::string& name, const Trace& t, const NpySpec& spec = {}) {
  const std::string path = dir / name;
  write_file(path, npy_bytes(t.ids, t.tokens, t.k, spec));
  return path;
}

void check_one_error_line(const Run& r, const std::string& must_contain) {
  CHECK(r.code == 2);
  CHECK_MESSAGE(r.out.empty(), "stdout: ", r.out);
  CHECK_MESSAGE(r.err.rfind("error: ", 0) == 0, "stderr: ", r.err);
  CHECK_MESSAGE(std::count(r.err.begin(), r.err.end(), '\n') == 1, "stderr: ", r.err);
  CHECK_MESSAGE(r.err.find(must_contain) != std::string::npos, "stderr '", r.err, "' lacks '", must_contain, "'");
}

constexpr int N = 16, P = 4, D = 64, H = 128;
const std::vector<std::string> kLayer{"--experts", "16", "--ranks", "4", "--hidden", "64", "--intermediate", "128",
                                      "--min-gemm", "0"};

std::vector<std::string> args(std::vector<std::string> a) {
  a.insert(a.end(), kLayer.begin(), kLayer.end());
  return a;
}

// Checks every object of one file against the histogram of `t`.
void check_against_histogram(const std::vector<json>& objs, const Trace& t) {
  const auto c = histogram(t, N, P);
  std::vector<std::int64_t> loads(N, 0), native(P, 0);
  std::int64_t off_native = 0;
  for (int p = 0; p < P; ++p)
    for (int e = 0; e < N; ++e) {
      loads[e] += c[p][e];
      native[e / (N / P)] += c[p][e];
      if (e / (N / P) != p) off_native += c[p][e];
    }
  const double mean = static_cast<double>(t.tokens * t.k) / P;
  const double expert_bytes = 3.0 * D * H * 2;
  std::set<std::string> names;
  for (const json& j : objs) {
    CAPTURE(j.dump());
    names.insert(j["planner"].get<std::string>());
    CHECK(j["tokens"] == t.tokens);
    CHECK(j["top_k"] == t.k);
    CHECK(j["expert_loads"].get<std::vector<std::int64_t>>() == loads);
    CHECK(j["native_loads"].get<std::vector<std::int64_t>>() == native);
    const auto rank_loads = j["rank_loads"].get<std::vector<std::int64_t>>();
    REQUIRE(rank_loads.size() == static_cast<std::size_t>(P));
    std::int64_t sum = 0, peak = 0;
    for (auto l : rank_loads) sum += l, peak = std::max(peak, l);
    CHECK(sum == t.tokens * t.k);
    CHECK(j["imbalance_before"].get<double>() ==
          doctest::Approx(*std::max_element(native.begin(), native.end()) / mean));
    CHECK(j["imbalance_after"].get<double>() == doctest::Approx(peak / mean));
    CHECK(j["weight_bytes"].get<double>() ==
          doctest::Approx((j["weight_transfers"].get<double>() + j["placement_moves"].get<double>()) * expert_bytes));
    CHECK(j["bytes_moved"].get<double>() ==
          doctest::Approx(j["token_bytes"].get<double>() + j["weight_bytes"].get<double>()));
    CHECK(j["cross_node_bytes"] == 0);  // one node
    CHECK(j["peak_bytes"].size() == static_cast<std::size_t>(P));
    CHECK(j["step_s"].get<double>() > 0);
    if (j["planner"] == "ep") {
      CHECK(rank_loads == native);
      CHECK(j["weight_transfers"] == 0);
      // Standard EP sends every pair that is not on its expert's rank, there and back.
      CHECK(j["token_bytes"].get<double>() == doctest::Approx(2.0 * off_native * D * 2));
      // Rows in and out, plus the largest GEMM's intermediate (one expert's rows x 3H).
      for (int p = 0; p < P; ++p) {
        std::int64_t biggest = 0;
        for (int e = p * (N / P); e < (p + 1) * (N / P); ++e) biggest = std::max(biggest, loads[e]);
        CHECK(j["peak_bytes"][p].get<double>() == doctest::Approx(native[p] * 2.0 * D * 2 + biggest * 3.0 * H * 2));
      }
    }
  }
  for (const char* want : {"ep", "llep", "adaptive"}) CHECK_MESSAGE(names.count(want) == 1, "no planner ", want);
}

}  // namespace

TEST_CASE("llep-replay: loads equal the histogram of the trace; int32 v1 and int64 v2 agree; keys are stable") {
  TempDir dir;
  const Trace t = random_trace(1001, 3, N, 5, 7);  // 1001 tokens do not split evenly over 4 ranks
  const std::string f32 = write_trace(dir, "t32.npy", t);
  NpySpec s64;
  s64.descr = "<i8";
  s64.version = 2;
  const std::string f64 = write_trace(dir, "t64.npy", t, s64);

  const Run r32 = replay(args({f32, "--json"}));
  REQUIRE_MESSAGE(r32.code == 0, r32.err);
  CHECK(r32.err.empty());
  const auto o32 = json_lines(r32.out);
  REQUIRE(o32.size() >= 3);
  for (const json& j : o32) {
    std::vector<std::string> keys;
    for (const auto& [k, v] : j.items()) keys.push_back(k);
    CHECK(keys == kKeys);
    CHECK(j["file"] == f32);
    CHECK(j["step"] == 0);
    CHECK(j["ranks"] == P);
    CHECK(j["experts"] == N);
    CHECK(j["ranks_per_node"] == P);
    CHECK(j["shape"] == "custom");
    CHECK(j["hidden"] == D);
    CHECK(j["intermediate"] == H);
    CHECK(j["gemm"] == "roofline");
  }
  check_against_histogram(o32, t);

  const Run r64 = replay(args({f64, "--json"}));
  REQUIRE_MESSAGE(r64.code == 0, r64.err);
  const auto o64 = json_lines(r64.out);
  REQUIRE(o64.size() == o32.size());
  for (std::size_t i = 0; i < o32.size(); ++i) {
    json a = o32[i], b = o64[i];
    a.erase("file");
    b.erase("file");
    CHECK(a == b);
  }

  // Table mode: the file, every planner, the native loads.
  const Run table = replay(args({f32}));
  REQUIRE_MESSAGE(table.code == 0, table.err);
  CHECK(table.out.find(f32 + ": tokens 1001, K 3, pairs 3003") != std::string::npos);
  for (const char* p : {"ep", "llep", "adaptive", "imb.bef", "step ms", "peak GB"})
    CHECK_MESSAGE(table.out.find(p) != std::string::npos, "table lacks ", p);
}

TEST_CASE("llep-replay: a directory is replayed in file-name order; other files are ignored") {
  TempDir dir;
  const Trace a = random_trace(64, 2, N, 1, 1), b = random_trace(80, 2, N, 9, 2);
  write_trace(dir, "step-b.npy", b);  // written first, sorted second
  write_trace(dir, "step-a.npy", a, [] {
    NpySpec s;
    s.descr = "<i8";
    return s;
  }());
  write_file(dir / "README.txt", "not a trace");
  const Run r = replay(args({dir.path, "--json", "--planners", "ep,llep"}));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto objs = json_lines(r.out);
  REQUIRE(objs.size() == 4);
  CHECK(objs[0]["file"] == dir / "step-a.npy");
  CHECK(objs[0]["planner"] == "ep");
  CHECK(objs[1]["file"] == dir / "step-a.npy");
  CHECK(objs[1]["planner"] == "llep");
  CHECK(objs[2]["file"] == dir / "step-b.npy");
  CHECK(objs[0]["step"] == 0);
  CHECK(objs[2]["step"] == 1);
  const std::vector<json> first(objs.begin(), objs.begin() + 2), second(objs.begin() + 2, objs.end());
  const auto check_loads = [](const std::vector<json>& o, const Trace& t) {
    const auto c = histogram(t, N, P);
    std::vector<std::int64_t> loads(N, 0);
    for (int p = 0; p < P; ++p)
      for (int e = 0; e < N; ++e) loads[e] += c[p][e];
    for (const json& j : o) CHECK(j["expert_loads"].get<std::vector<std::int64_t>>() == loads);
  };
  check_loads(first, a);
  check_loads(second, b);
}

TEST_CASE("llep-replay: broken traces exit 2 with one line naming the file and the problem") {
  TempDir dir;
  const Trace good = random_trace(10, 2, N, 0, 3);
  struct Case {
    const char* name;
    std::string bytes;
    const char* problem;
  };
  std::vector<Case> cases;
  {
    NpySpec s;
    s.descr = "<f4";
    cases.push_back({"float32.npy", npy_bytes(good.ids, 10, 2, s), "dtype '<f4'"});
  }
  {
    const std::string b = npy_bytes(good.ids, 10, 2);
    cases.push_back({"truncated.npy", b.substr(0, b.size() - 5), "truncated data"});
  }
  {
    NpySpec s;
    s.magic = std::string("PK\x03\x04zz", 6);
    cases.push_back({"magic.npy", npy_bytes(good.ids, 10, 2, s), "bad magic"});
  }
  {
    Trace t = good;
    t.ids[7] = N;
    cases.push_back({"id-n.npy", npy_bytes(t.ids, 10, 2), "expert id 16 at token 3, slot 1 (element 7) is outside [0, N = 16)"});
    t.ids[7] = -3;
    cases.push_back({"negative.npy", npy_bytes(t.ids, 10, 2), "expert id -3 at token 3, slot 1"});
  }
  {
    NpySpec s;
    s.shape = "(5, 2, 2)";
    cases.push_back({"3d.npy", npy_bytes(good.ids, 10, 2, s), "shape (5, 2, 2) is not 2-D"});
  }
  {
    NpySpec s;
    s.fortran = true;
    cases.push_back({"fortran.npy", npy_bytes(good.ids, 10, 2, s), "fortran_order is True"});
  }
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const std::string path = dir / c.name;
    write_file(path, c.bytes);
    check_one_error_line(replay(args({path})), "error: " + path + ": " + c.problem);
    check_one_error_line(replay(args({path, "--json"})), "error: " + path + ": ");
  }
  // In a directory the bad file is named, and no table of the good files is printed first.
  TempDir mixed;
  write_trace(mixed, "a.npy", good);
  write_file(mixed / "b.npy", cases.front().bytes);
  check_one_error_line(replay(args({mixed.path})), "error: " + (mixed / "b.npy") + ": dtype '<f4'");
}

TEST_CASE("llep-replay: bad flags exit 2 with one line") {
  TempDir dir;
  const std::string f = write_trace(dir, "t.npy", random_trace(10, 2, N, 0, 4));
  check_one_error_line(replay({f, "--ranks", "4", "--hidden", "64", "--intermediate", "128"}), "--experts");
  check_one_error_line(replay({f, "--experts", "16", "--ranks", "4"}), "--shape");
  check_one_error_line(replay({f, "--experts", "16", "--ranks", "4", "--hidden", "64"}), "--intermediate");
  check_one_error_line(replay({f, "--experts", "16", "--ranks", "4", "--shape", "llama"}), "unknown shape 'llama'");
  check_one_error_line(replay({f, "--experts", "16", "--ranks", "3", "--shape", "kimi-k2"}),
                       "experts N = 16 must be a multiple of ranks P = 3");
  check_one_error_line(replay({f, "--experts", "16", "--ranks", "4", "--ranks-per-node", "3", "--shape", "kimi-k2"}),
                       "ranks_per_node = 3");
  check_one_error_line(replay(args({f, "--planners", "ep,nope"})), "unknown planner 'nope'");
  check_one_error_line(replay(args({f, "--alpha", "0"})), "alpha = 0");
  check_one_error_line(replay(args({f, "--elem-bytes", "0"})), "--elem-bytes = 0 must be > 0");
  check_one_error_line(replay(args({dir / "missing.npy"})), dir / "missing.npy" + ": no such file or directory");
  TempDir empty;
  check_one_error_line(replay(args({empty.path})), empty.path + ": the directory holds no .npy file");
  check_one_error_line(replay(args({f, "--gemm-csv", dir / "none.csv"})), dir / "none.csv");
}

TEST_CASE("llep-replay: --shape, --ranks-per-node and --gemm-csv reach the cost model") {
  TempDir dir;
  const std::string f = write_trace(dir, "t.npy", random_trace(4000, 4, N, 2, 5));
  const Run r = replay({f, "--experts", "16", "--ranks", "4", "--ranks-per-node", "2", "--shape", "kimi-k2",
                        "--json", "--planners", "ep"});
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto o = json_lines(r.out);
  REQUIRE(o.size() == 1);
  CHECK(o[0]["shape"] == "kimi-k2");
  CHECK(o[0]["hidden"] == 7168);
  CHECK(o[0]["intermediate"] == 2048);
  CHECK(o[0]["ranks_per_node"] == 2);
  CHECK(o[0]["cross_node_bytes"].get<double>() > 0);  // standard EP sends rows to the other node

  // A measured curve for kimi-k2 makes the FFN time of any rows at least 1 s here.
  const std::string csv = dir / "curve.csv";
  write_file(csv, "shape,mode,rows,ms,tflops\nkimi-k2,per_expert,1,1000,0.001\nkimi-k2,per_expert,100000,2000,1\n");
  const Run c = replay({f, "--experts", "16", "--ranks", "4", "--shape", "kimi-k2", "--json", "--planners", "ep",
                        "--gemm-csv", csv});
  REQUIRE_MESSAGE(c.code == 0, c.err);
  const auto oc = json_lines(c.out);
  REQUIRE(oc.size() == 1);
  CHECK(oc[0]["gemm"] == csv);
  CHECK(oc[0]["step_s"].get<double>() > 1.0);
  // No curve for the shape: an error, not a silent roofline.
  check_one_error_line(replay({f, "--experts", "16", "--ranks", "4", "--shape", "deepseek-v3", "--gemm-csv", csv}),
                       "no measured GEMM curve for shape 'deepseek-v3'");
}

TEST_CASE("llep-replay: --prefetch shows the time plan-ahead hides: the weight round, nothing else") {
  TempDir dir;
  const std::string f = write_trace(dir, "t.npy", random_trace(4000, 4, N, 2, 5));
  const Run r = replay(args({f, "--json", "--planners", "ep,llep"}));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto o = json_lines(r.out);
  REQUIRE(o.size() == 2);
  // Standard EP moves no weights: nothing to hide. LLEP spills here: its weight round goes.
  CHECK(o[0]["planner"] == "ep");
  CHECK(o[0]["step_prefetched_s"].get<double>() == o[0]["step_s"].get<double>());
  CHECK(o[1]["planner"] == "llep");
  REQUIRE(o[1]["weight_transfers"].get<int>() > 0);
  const double step = o[1]["step_s"].get<double>(), ahead = o[1]["step_prefetched_s"].get<double>();
  CHECK(ahead < step);
  CHECK(ahead > 0);
  // Hiding the weights cannot beat the step without any weight bytes' time: comm minus the
  // weights' share is still there, so the hidden time is at most the largest comm_s.
  CHECK(step - ahead <= o[1]["max_comm_s"].get<double>() + 1e-12);

  const Run table = replay(args({f, "--prefetch", "--planners", "ep,llep"}));
  REQUIRE_MESSAGE(table.code == 0, table.err);
  CHECK(table.out.find("ahead ms") != std::string::npos);
  char line[128];
  std::snprintf(line, sizeof line, "prepared ahead: %.3f ms, %.3f ms of its step hidden", ahead * 1e3,
                (step - ahead) * 1e3);
  CHECK_MESSAGE(table.out.find(line) != std::string::npos, table.out, " lacks ", line);
  const Run plain = replay(args({f, "--planners", "ep,llep"}));
  CHECK(plain.out.find("ahead ms") == std::string::npos);
  CHECK(plain.out.find("prefetch:") == std::string::npos);
}

TEST_CASE("llep-replay: --help documents every flag") {
  const Run r = replay({"--help"});
  CHECK(r.code == 0);
  for (const char* flag : {"--experts", "--ranks", "--ranks-per-node", "--shape", "--hidden", "--intermediate",
                           "--elem-bytes", "--gemm-csv", "--gemm-mode", "--alpha", "--min-gemm", "--lambda",
                           "--planners", "--json", "--prefetch", "contiguous"})
    CHECK_MESSAGE(r.out.find(flag) != std::string::npos, "--help lacks ", flag);
}

TEST_CASE("llep-replay: Replicated, when built, reports its placement moves and lags the routing") {
  if (replay({"--help"}).out.find("replicated") == std::string::npos) return;  // not built yet
  TempDir dir;
  const Trace t = random_trace(2000, 2, N, 3, 6);
  write_trace(dir, "s0.npy", t);
  write_trace(dir, "s1.npy", t);  // the same routing: the placement stays
  const Run r = replay(args({dir.path, "--json", "--planners", "replicated", "--replica-slots", "2"}));
  REQUIRE_MESSAGE(r.code == 0, r.err);
  const auto o = json_lines(r.out);
  REQUIRE(o.size() == 2);
  CHECK(o[0]["placement_moves"] == 2 * P);  // every rank receives its 2 replicas
  CHECK(o[1]["placement_moves"] == 0);
  CHECK(o[0]["weight_transfers"] == 0);     // replicas compute without per-step transfers
  // More replica slots than the node has other experts: an error before any output.
  check_one_error_line(replay(args({dir.path, "--planners", "replicated", "--replica-slots", "13"})), "slots_per_rank");
}
