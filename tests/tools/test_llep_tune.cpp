// The llep-tune tool as a user runs it: exit codes, the JSON keys, that the chosen setting's
// predicted mean is no worse than the paper defaults', that the per-routing times are those
// the library's planners and cost model give, and one "error: " line for bad input.
// The binary's path comes from Meson in LLEP_TUNE (LLEP_GEMM_CSV: the measured H100 curve).
#include <doctest/doctest.h>

#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../common/spawn.hpp"

namespace {

using json = nlohmann::json;

testutil::Run tune(const std::vector<std::string>& args) {
  const char* p = std::getenv("LLEP_TUNE");
  REQUIRE_MESSAGE(p != nullptr, "LLEP_TUNE must name the llep-tune binary (meson test sets it)");
  return testutil::run_binary(p, args);
}

json tune_json(std::vector<std::string> args) {
  args.push_back("--json");
  const auto r = tune(args);
  REQUIRE_MESSAGE(r.code == 0, r.err);
  return json::parse(r.out);
}

void check_result(const json& j, std::size_t routings) {
  for (const char* k : {"source", "shape", "topology", "profile", "grid", "objective", "chosen", "paper_defaults",
                        "cost_aware", "ep_mean_ms", "routings"})
    REQUIRE_MESSAGE(j.contains(k), "missing key ", k);
  for (const char* k : {"alpha", "min_tokens_per_gemm", "lambda", "mean_ms"}) {
    CHECK(j["chosen"].contains(k));
    CHECK(j["paper_defaults"].contains(k));
  }
  CHECK(j["paper_defaults"]["alpha"] == 1.0);
  CHECK(j["paper_defaults"]["min_tokens_per_gemm"] == 1024);
  CHECK(j["paper_defaults"]["lambda"] == 1.3);
  CHECK(j["grid"]["alpha"].size() == 7);
  CHECK(j["grid"]["min_tokens_per_gemm"].size() == 33);
  CHECK(j["grid"]["lambda"].size() == 11);
  const double chosen = j["chosen"]["mean_ms"], paper = j["paper_defaults"]["mean_ms"];
  CHECK(chosen <= paper);
  CHECK(chosen > 0);
  REQUIRE(j["routings"].size() == routings);
  double sum_chosen = 0, sum_paper = 0;
  for (const auto& r : j["routings"]) {
    for (const char* k : {"routing", "imbalance_before", "ep_ms", "paper_ms", "chosen_ms", "cost_aware_ms"})
      REQUIRE(r.contains(k));
    sum_chosen += r["chosen_ms"].get<double>();
    sum_paper += r["paper_ms"].get<double>();
    // LLEP under lambda runs standard EP, so below lambda the time is EP's exactly.
    if (r["imbalance_before"].get<double>() < j["chosen"]["lambda"].get<double>()) CHECK(r["chosen_ms"] == r["ep_ms"]);
  }
  CHECK(sum_chosen / static_cast<double>(routings) == doctest::Approx(chosen).epsilon(1e-9));
  CHECK(sum_paper / static_cast<double>(routings) == doctest::Approx(paper).epsilon(1e-9));
}

}  // namespace

TEST_CASE("llep-tune on the paper's routings, roofline and measured curve, one node and several") {
  check_result(tune_json({"--shape", "gpt-oss-120b", "--ranks", "8"}), 13);
  if (const char* csv = std::getenv("LLEP_GEMM_CSV")) {
    const json j = tune_json({"--shape", "deepseek-v3", "--ranks", "16", "--ranks-per-node", "8", "--gemm-csv", csv});
    check_result(j, 13);
    CHECK(j["topology"]["nodes"] == 2);
    CHECK(j["profile"]["gemm"].get<std::string>().find("measured") != std::string::npos);
  }
}

TEST_CASE("llep-tune with a custom shape and a routing list; the table form") {
  const json j = tune_json({"--experts", "32", "--hidden", "1024", "--intermediate", "512", "--top-k", "2",
                            "--tokens", "4096", "--ranks", "4", "--routings", "balanced,95%-on-1,50%-on-4"});
  check_result(j, 3);
  CHECK(j["routings"][1]["routing"] == "95%-on-1");
  CHECK(j["shape"]["experts"] == 32);
  const auto t = tune({"--shape", "kimi-k2", "--ranks", "8", "--routings", "balanced,80%-on-4"});
  REQUIRE(t.code == 0);
  CHECK(t.out.find("PREDICTED") != std::string::npos);
  CHECK(t.out.find("chosen: alpha") != std::string::npos);
  CHECK(t.out.find("80%-on-4") != std::string::npos);
  const auto h = tune({"--help"});
  CHECK(h.code == 0);
  for (const char* flag : {"--shape", "--experts", "--hidden", "--intermediate", "--top-k", "--tokens", "--ranks",
                           "--ranks-per-node", "--gemm-csv", "--link-gbps", "--inter-node-gbps", "--routings", "--json"})
    CHECK_MESSAGE(h.out.find(flag) != std::string::npos, flag);
}

TEST_CASE("llep-tune rejects bad input with one error line and exit code 2") {
  const std::vector<std::vector<std::string>> bad{
      {"--shape", "nope"},
      {"--ranks", "8"},                                         // no shape
      {"--shape", "gpt-oss-120b", "--ranks", "3"},               // N % P
      {"--shape", "gpt-oss-120b", "--ranks", "16", "--ranks-per-node", "3"},
      {"--shape", "gpt-oss-120b", "--link-gbps", "0"},
      {"--shape", "gpt-oss-120b", "--routings", "95%-on-0"},
      {"--shape", "gpt-oss-120b", "--routings", "hot"},
      {"--shape", "gpt-oss-120b", "--gemm-csv", "/nonexistent.csv"},
      {"--shape", "gpt-oss-120b", "--ranks", "x"},
      {"--shape", "gpt-oss-120b", "--bogus"},
  };
  for (const auto& args : bad) {
    const auto r = tune(args);
    INFO(args.back(), ": ", r.err);
    CHECK(r.code == 2);
    CHECK(r.err.rfind("error: ", 0) == 0);
    CHECK(r.err.find('\n') == r.err.size() - 1);
    CHECK(r.out.empty());
  }
}
