// The llep-plan tool as a user runs it: a child process with arguments, its stdout, stderr
// and exit code. Checks the JSON keys of issue 2, that the printed plan is consistent with
// the loads given (recomputed here from the JSON alone), that it is the plan the library
// makes, and that malformed input gives exit code 2 and one "error: " line on stderr.
//
// The binary's path comes from Meson in the environment variable LLEP_PLAN.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "../common/spawn.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/cost_aware.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/node_aware.hpp"
#include "llep/plan/quota_search.hpp"
#include "llep/plan/replicated.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

using llep::count_t;
using json = nlohmann::json;
using testutil::Run;
using testutil::run_binary;

std::string plan_binary() {
  const char* p = std::getenv("LLEP_PLAN");
  REQUIRE_MESSAGE(p != nullptr, "LLEP_PLAN must name the llep-plan binary (meson test sets it)");
  return p;
}

Run run_plan(const std::vector<std::string>& args) { return run_binary(plan_binary(), args); }

std::string join(const std::vector<count_t>& v, const char* sep = ",") {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + std::to_string(v[i]);
  return s;
}

double max_over_mean(const std::vector<count_t>& rank_loads) {
  count_t total = 0, peak = 0;
  for (count_t l : rank_loads) {
    total += l;
    peak = std::max(peak, l);
  }
  return total == 0 ? 1.0 : static_cast<double>(peak) * static_cast<double>(rank_loads.size()) / static_cast<double>(total);
}

struct Config {
  std::string policy = "llep";
  double alpha = 1.0;
  count_t min_gemm = 1024;
  double lambda = 1.3;
  std::vector<std::string> args() const {
    return {"--policy", policy, "--alpha", std::to_string(alpha), "--min-gemm", std::to_string(min_gemm),
            "--lambda", std::to_string(lambda)};
  }
};

using Triple = std::tuple<std::int64_t, std::int64_t, std::int64_t>;

// The plan in `j` against the loads, from the JSON alone: the keys of issue 2, segments
// tiling [0, l[e]) for every expert with load, rank loads as their sums, weight transfers
// as the off-native segments' (e, e / (N/P), rank), imbalance as max/mean.
void check_plan_json(const json& j, const std::vector<count_t>& loads, int P, const std::string& policy) {
  const int N = static_cast<int>(loads.size());
  for (const char* key : {"policy", "ranks", "experts", "capacity", "assignments", "weight_transfers", "rank_loads",
                          "imbalance_before", "imbalance_after"})
    REQUIRE_MESSAGE(j.contains(key), "missing key ", key);
  CHECK(j["policy"] == policy);
  CHECK(j["ranks"] == P);
  CHECK(j["experts"] == N);
  REQUIRE(j["capacity"].is_number_integer());
  CHECK(j["capacity"].get<count_t>() >= 1);
  const int M = N / P;

  std::vector<count_t> sums(static_cast<std::size_t>(P), 0);
  std::set<Triple> expected_transfers;
  std::set<int> seen;
  REQUIRE(j["assignments"].is_array());
  for (const json& a : j["assignments"]) {
    REQUIRE(a.contains("expert"));
    REQUIRE(a.contains("segments"));
    const int e = a["expert"].get<int>();
    REQUIRE(e >= 0);
    REQUIRE(e < N);
    CHECK_MESSAGE(seen.insert(e).second, "expert ", e, " listed twice");
    const count_t l = loads[static_cast<std::size_t>(e)];
    CHECK_MESSAGE(l > 0, "expert ", e, " has no load but is assigned");
    std::vector<std::tuple<count_t, count_t, int>> segs;
    for (const json& s : a["segments"]) {
      for (const char* key : {"rank", "begin", "end"}) REQUIRE_MESSAGE(s.contains(key), "segment without ", key);
      segs.emplace_back(s["begin"].get<count_t>(), s["end"].get<count_t>(), s["rank"].get<int>());
    }
    std::sort(segs.begin(), segs.end());
    count_t next = 0;
    for (const auto& seg : segs) {
      const count_t b = std::get<0>(seg), en = std::get<1>(seg);  // not bindings: captured (clang 14)
      const int r = std::get<2>(seg);
      CHECK_MESSAGE(b == next, "expert ", e, ": a segment begins at ", b, ", expected ", next);
      CHECK_MESSAGE(en > b, "expert ", e, ": empty segment [", b, ", ", en, ")");
      REQUIRE(r >= 0);
      REQUIRE(r < P);
      sums[static_cast<std::size_t>(r)] += en - b;
      if (r != e / M) expected_transfers.insert({e, e / M, r});
      next = en;
    }
    CHECK_MESSAGE(next == l, "expert ", e, ": segments end at ", next, ", load is ", l);
  }
  for (int e = 0; e < N; ++e)
    if (loads[static_cast<std::size_t>(e)] > 0) CHECK_MESSAGE(seen.count(e) == 1, "expert ", e, " has load but no assignment");

  const auto rank_loads = j["rank_loads"].get<std::vector<count_t>>();
  CHECK(rank_loads == sums);

  std::set<Triple> transfers;
  REQUIRE(j["weight_transfers"].is_array());
  for (const json& t : j["weight_transfers"]) {
    for (const char* key : {"expert", "src", "dst"}) REQUIRE_MESSAGE(t.contains(key), "transfer without ", key);
    CHECK_MESSAGE(transfers.insert({t["expert"].get<std::int64_t>(), t["src"].get<std::int64_t>(),
                                    t["dst"].get<std::int64_t>()})
                      .second,
                  "duplicate weight transfer ", t.dump());
  }
  CHECK(transfers == expected_transfers);

  std::vector<count_t> native(static_cast<std::size_t>(P), 0);
  for (int e = 0; e < N; ++e) native[static_cast<std::size_t>(e / M)] += loads[static_cast<std::size_t>(e)];
  CHECK(j["imbalance_before"].get<double>() == doctest::Approx(max_over_mean(native)).epsilon(1e-12));
  CHECK(j["imbalance_after"].get<double>() == doctest::Approx(max_over_mean(sums)).epsilon(1e-12));
}

// The plan the library makes for the same input, with the JSON's segments compared to it.
void check_same_as_library(const json& j, const std::vector<count_t>& loads, int P, const Config& c) {
  const llep::Topology topo(P, static_cast<int>(loads.size()));
  const llep::LeastLoaded ll{c.alpha, c.min_gemm};
  llep::Plan plan;
  if (c.policy == "ep")
    llep::StandardEp{}.plan(loads, topo, plan);
  else if (c.policy == "llep")
    ll.plan(loads, topo, plan);
  else
    llep::Adaptive<>{c.lambda, ll}.plan(loads, topo, plan);
  CHECK(j["capacity"].get<count_t>() == plan.capacity());
  std::vector<std::tuple<int, int, count_t, count_t>> got, want;
  for (const json& a : j["assignments"])
    for (const json& s : a["segments"])
      got.emplace_back(a["expert"].get<int>(), s["rank"].get<int>(), s["begin"].get<count_t>(), s["end"].get<count_t>());
  for (const llep::Segment& s : plan.segments()) want.emplace_back(s.expert, s.rank, s.begin, s.end);
  CHECK(got == want);
}

json run_ok(const std::vector<count_t>& loads, int P, const Config& c) {
  auto args = c.args();
  args.insert(args.end(), {"--loads", join(loads), "--ranks", std::to_string(P)});
  const Run r = run_plan(args);
  INFO("llep-plan --loads ", join(loads), " --ranks ", P, " --policy ", c.policy, "\nstderr: ", r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.empty());
  const json j = json::parse(r.out);
  check_plan_json(j, loads, P, c.policy);
  check_same_as_library(j, loads, P, c);
  return j;
}

count_t ceil_div_alpha(double alpha, count_t total, int P) {
  return std::max<count_t>(1, static_cast<count_t>(std::ceil(alpha * static_cast<double>(total) / P)));
}

std::vector<count_t> skewed(int N, std::uint64_t seed, count_t hot, int hot_experts) {
  std::vector<count_t> l(static_cast<std::size_t>(N));
  std::uint64_t x = seed;
  for (auto& v : l) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    v = static_cast<count_t>((x >> 33) % 200);
  }
  for (int i = 0; i < hot_experts; ++i) l[static_cast<std::size_t>((i * 7 + 3) % N)] += hot;
  return l;
}

void check_error(const std::vector<std::string>& args, const std::string& mentions = "") {
  const Run r = run_plan(args);
  std::string shown;
  for (const auto& a : args) shown += a + " ";
  INFO("llep-plan ", shown, "\nstdout: ", r.out, "\nstderr: ", r.err);
  CHECK(r.code == 2);
  CHECK(r.out.empty());
  REQUIRE(!r.err.empty());
  CHECK(r.err.rfind("error: ", 0) == 0);
  CHECK(r.err.back() == '\n');
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  if (!mentions.empty()) CHECK_MESSAGE(r.err.find(mentions) != std::string::npos, "message should name '", mentions, "'");
}

}  // namespace

TEST_CASE("llep-plan: worked example from the tool's header (N=8, P=4, min-gemm 0)") {
  const std::vector<count_t> loads{900, 10, 10, 10, 5, 5, 5, 5};
  Config c;
  c.min_gemm = 0;
  const json j = run_ok(loads, 4, c);
  // cap = ceil(950 / 4) = 238; expert 0 keeps 228 on rank 0 (its native expert 1 still
  // pending 10), then spills 228 to rank 2, 228 to rank 3 (ties by lower rank), 216 to rank 1.
  CHECK(j["capacity"] == 238);
  CHECK(j["assignments"][0]["segments"] ==
        json::parse(R"([{"rank":0,"begin":0,"end":228},{"rank":2,"begin":228,"end":456},)"
                    R"({"rank":3,"begin":456,"end":684},{"rank":1,"begin":684,"end":900}])"));
  CHECK(j["rank_loads"] == json::parse("[238,236,238,238]"));
  CHECK(j["weight_transfers"] == json::parse(R"([{"expert":0,"src":0,"dst":1},{"expert":0,"src":0,"dst":2},)"
                                             R"({"expert":0,"src":0,"dst":3}])"));
  CHECK(j["imbalance_before"].get<double>() == doctest::Approx(910.0 * 4 / 950));
  CHECK(j["imbalance_after"].get<double>() == doctest::Approx(238.0 * 4 / 950));
}

TEST_CASE("llep-plan: ep, llep and adaptive plans are consistent with the loads") {
  struct Case {
    std::vector<count_t> loads;
    int P;
  };
  const std::vector<Case> cases{
      {{900, 10, 10, 10, 5, 5, 5, 5}, 4},
      {{0, 0, 0, 0, 0, 0, 0, 0}, 2},                         // all zero
      {{5, 0, 7, 3}, 1},                                     // single rank
      {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 50000, 0, 0, 0, 0}, 8},  // all load on one expert
      {{100, 100, 100, 100, 100, 100, 100, 100}, 4},         // balanced
      {skewed(64, 1, 20000, 1), 8},
      {skewed(64, 2, 5000, 4), 16},
      {skewed(128, 3, 3000, 16), 32},
      {skewed(32, 4, 0, 0), 8},
  };
  for (const Case& k : cases) {
    count_t total = 0;
    for (count_t l : k.loads) total += l;
    for (const double alpha : {1.0, 1.5, 0.25}) {
      for (const count_t min_gemm : {count_t{0}, count_t{64}, count_t{1024}}) {
        CAPTURE(alpha);
        CAPTURE(min_gemm);
        Config c;
        c.alpha = alpha;
        c.min_gemm = min_gemm;

        c.policy = "ep";
        const json ep = run_ok(k.loads, k.P, c);
        CHECK(ep["weight_transfers"].empty());
        CHECK(ep["imbalance_after"].get<double>() == doctest::Approx(ep["imbalance_before"].get<double>()));

        c.policy = "llep";
        const json ll = run_ok(k.loads, k.P, c);
        CHECK(ll["capacity"].get<count_t>() == ceil_div_alpha(alpha, total, k.P));
        if (k.P == 1) CHECK(ll["weight_transfers"].empty());

        c.policy = "adaptive";
        const json ad = run_ok(k.loads, k.P, c);
        const bool skewed_enough = ad["imbalance_before"].get<double>() >= c.lambda;
        const json& same = skewed_enough ? ll : ep;
        CHECK(ad["assignments"] == same["assignments"]);
        CHECK(ad["weight_transfers"] == same["weight_transfers"]);
        CHECK(ad["rank_loads"] == same["rank_loads"]);
        CHECK(ad["capacity"] == same["capacity"]);
      }
    }
  }
}

TEST_CASE("llep-plan: offers every planner, each plan the library's for the same settings") {
  const std::vector<count_t> loads = skewed(32, 5, 9000, 3);
  const int P = 8, rpn = 4;
  const count_t m = 64, cap = 5000;
  const int slots = 2;
  const llep::Topology topo(P, static_cast<int>(loads.size()), rpn);
  const llep::LeastLoaded ll{1.0, m};
  auto model = std::make_shared<const llep::sim::CostModel>();
  const llep::sim::FfnShape shape{"gpt-oss-120b", 2880, 2880};  // --shape's default
  struct Want {
    std::string policy;
    llep::Plan plan;
  };
  std::vector<Want> want(5);
  want[0].policy = "node-aware";
  llep::NodeAware{1.0, m}.plan(loads, topo, want[0].plan);
  want[1].policy = "quota";
  llep::QuotaSearch{m}.plan(loads, topo, want[1].plan);
  want[2].policy = "cost_aware";
  llep::CostAware{1.0, m, model, shape}.plan(loads, topo, want[2].plan);
  want[3].policy = "replicated";  // placed from this step's loads (no history yet)
  const std::vector<double> history(loads.begin(), loads.end());
  llep::Replicated{}.plan(loads, llep::Replicated::place(history, topo, topo.experts_per_rank() + slots), want[3].plan);
  want[4].policy = "capped";
  llep::Capped<llep::LeastLoaded>{ll, llep::MemoryCap::rows(cap)}.plan(loads, topo, want[4].plan);
  for (const Want& w : want) {
    CAPTURE(w.policy);
    const Run r = run_plan({"--loads", join(loads), "--ranks", std::to_string(P), "--ranks-per-node",
                            std::to_string(rpn), "--policy", w.policy, "--min-gemm", std::to_string(m),
                            "--replica-slots", std::to_string(slots), "--cap-rows", std::to_string(cap)});
    REQUIRE_MESSAGE(r.code == 0, r.err);
    const json j = json::parse(r.out);
    CHECK(j["policy"] == w.policy);
    CHECK(j["chosen"] == std::string(w.plan.policy()));
    CHECK(j["capacity"].get<count_t>() == w.plan.capacity());
    std::vector<std::tuple<int, int, count_t, count_t>> got, expect;
    for (const json& a : j["assignments"])
      for (const json& sg : a["segments"])
        got.emplace_back(a["expert"].get<int>(), sg["rank"].get<int>(), sg["begin"].get<count_t>(),
                         sg["end"].get<count_t>());
    for (const llep::Segment& sg : w.plan.segments()) expect.emplace_back(sg.expert, sg.rank, sg.begin, sg.end);
    CHECK(got == expect);
    CHECK(j["weight_transfers"].size() == w.plan.weight_transfers().size());
  }
  // capped needs its cap; the help lists every planner.
  const Run no_cap = run_plan({"--loads", "1,2", "--ranks", "1", "--policy", "capped"});
  CHECK(no_cap.code == 2);
  CHECK(no_cap.err.find("--cap-rows") != std::string::npos);
  const Run help = run_plan({"--help"});
  for (const char* name : {"ep", "llep", "adaptive", "node-aware", "quota", "cost_aware", "replicated", "capped"})
    CHECK_MESSAGE(help.out.find(name) != std::string::npos, "--help lacks ", name);
}

TEST_CASE("llep-plan: adaptive switches at lambda") {
  // Native rank loads 30 and 10: max/mean = 1.5.
  const std::vector<count_t> loads{20, 10, 5, 5};
  Config c;
  c.policy = "adaptive";
  c.min_gemm = 0;
  c.lambda = 1.5;  // at lambda: the inner planner
  json j = run_ok(loads, 2, c);
  CHECK(j["chosen"] == "llep");
  CHECK(j["rank_loads"] == json::parse("[20,20]"));
  c.lambda = 1.6;  // below lambda: standard EP
  j = run_ok(loads, 2, c);
  CHECK(j["chosen"] == "ep");
  CHECK(j["rank_loads"] == json::parse("[30,10]"));
  CHECK(j["weight_transfers"].empty());
}

TEST_CASE("llep-plan: --loads-file takes commas, spaces, tabs and newlines") {
  const std::vector<count_t> loads{900, 10, 10, 10, 5, 5, 5, 5};
  char name[] = "/tmp/llep-plan-loads-XXXXXX";
  const int fd = ::mkstemp(name);
  REQUIRE(fd >= 0);
  ::close(fd);
  {
    std::ofstream f(name, std::ios::binary);
    f << "900, 10\n10\t10 ,5\r\n\n  5 5,,5\n";
  }
  const std::vector<std::string> common{"--ranks", "4", "--min-gemm", "0", "--compact"};
  auto with = [&](std::vector<std::string> a) {
    a.insert(a.end(), common.begin(), common.end());
    return run_plan(a);
  };
  const Run from_file = with({"--loads-file", name});
  const Run from_list = with({"--loads", join(loads)});
  const Run from_spaces = with({"--loads", join(loads, " ")});
  ::unlink(name);
  REQUIRE(from_file.code == 0);
  CHECK(from_file.err.empty());
  CHECK(std::count(from_file.out.begin(), from_file.out.end(), '\n') == 1);  // --compact: one line
  check_plan_json(json::parse(from_file.out), loads, 4, "llep");
  CHECK(from_file.out == from_list.out);
  CHECK(from_file.out == from_spaces.out);
}

TEST_CASE("llep-plan: malformed input gives exit code 2 and one 'error: ' line") {
  const std::vector<std::string> ok{"--ranks", "2"};
  auto plus = [&](std::vector<std::string> a) {
    a.insert(a.end(), ok.begin(), ok.end());
    return a;
  };
  SUBCASE("a word that is not an integer") {
    check_error(plus({"--loads", "10,x,3,4"}), "'x'");
    check_error(plus({"--loads", "10,1.5,3,4"}), "'1.5'");
    check_error(plus({"--loads", "10,3e2,3,4"}), "'3e2'");
    check_error(plus({"--loads", "99999999999999999999,1"}), "99999999999999999999");
  }
  SUBCASE("a negative load") { check_error(plus({"--loads", "10,-3,3,4"}), "-3"); }
  SUBCASE("N not a multiple of P") { check_error({"--loads", "1,2,3", "--ranks", "2"}, "multiple"); }
  SUBCASE("P = 0") { check_error({"--loads", "1,2", "--ranks", "0"}, "0"); }
  SUBCASE("a missing value") {
    check_error({"--loads", "1,2", "--ranks"}, "--ranks");
    check_error({"--ranks", "2", "--loads"}, "--loads");
    check_error({"--loads", "1,2"}, "--ranks");           // --ranks absent
    check_error({"--ranks", "2"}, "--loads");             // loads absent
    check_error(plus({"--loads", ",, ,"}), "no loads");  // nothing but separators
    check_error(plus({"--loads", "1,2", "--alpha"}), "--alpha");
  }
  SUBCASE("an unknown flag or argument") {
    check_error(plus({"--loads", "1,2", "--bogus"}), "--bogus");
    check_error(plus({"--loads", "1,2", "stray"}), "stray");
  }
  SUBCASE("a bad policy") { check_error(plus({"--loads", "1,2", "--policy", "greedy"}), "greedy"); }
  SUBCASE("alpha <= 0") {
    for (const char* policy : {"ep", "llep", "adaptive"}) {  // a bad flag is an error even where unused
      CAPTURE(policy);
      check_error(plus({"--loads", "1,2", "--policy", policy, "--alpha", "0"}), "alpha");
      check_error(plus({"--loads", "1,2", "--policy", policy, "--alpha", "-1"}), "alpha");
    }
    check_error(plus({"--loads", "1,2", "--alpha", "abc"}), "--alpha");
  }
  SUBCASE("other bad values") {
    check_error(plus({"--loads", "1,2", "--policy", "adaptive", "--lambda", "0"}), "lambda");
    check_error(plus({"--loads", "1,2", "--min-gemm", "-1"}), "min_tokens_per_gemm");
    check_error({"--loads", "1,2", "--ranks", "x"}, "--ranks");
    check_error(plus({"--loads", "1,2", "--loads-file", "/nonexistent"}), "exactly one");
    check_error({"--loads-file", "/nonexistent/llep-loads", "--ranks", "1"}, "/nonexistent/llep-loads");
  }
  SUBCASE("a bad word in a loads file") {
    char name[] = "/tmp/llep-plan-loads-XXXXXX";
    const int fd = ::mkstemp(name);
    REQUIRE(fd >= 0);
    ::close(fd);
    {
      std::ofstream f(name, std::ios::binary);
      f << "1, 2\n3;4\n";
    }
    check_error({"--loads-file", name, "--ranks", "1"}, "'3;4'");
    ::unlink(name);
  }
}

TEST_CASE("llep-plan: --help exits 0") {
  const Run r = run_plan({"--help"});
  CHECK(r.code == 0);
  CHECK(r.out.find("--loads-file") != std::string::npos);
}
