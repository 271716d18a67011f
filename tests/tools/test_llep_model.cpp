// llep-model --bounds as a user runs it: the per-rank memory bounds it prints for the
// paper's shapes agree with bounds derived here by hand (standard EP: every pair of every
// rank on one rank; every bound covers the rows and weights it names), LLEP's bound is
// below EP's, and bad flags exit 2 with one "error: " line. LLEP_MODEL names the binary.
#include <doctest/doctest.h>

#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../common/spawn.hpp"

namespace {

testutil::Run model(const std::vector<std::string>& args) {
  const char* p = std::getenv("LLEP_MODEL");
  REQUIRE_MESSAGE(p != nullptr, "LLEP_MODEL must name the llep-model binary (meson test sets it)");
  return testutil::run_binary(p, args);
}

struct BoundRow {
  std::string shape, planner;
  int ranks = 0;
  long long tokens = 0, top_k = 0, rows = 0, foreign = 0;
  double step_gb = 0, native_gb = 0, total_gb = 0;
};

std::vector<std::string> cells(const std::string& line) {
  std::vector<std::string> out;
  std::stringstream ss(line);
  std::string c;
  std::getline(ss, c, '|');  // before the first bar
  while (std::getline(ss, c, '|')) {
    const auto b = c.find_first_not_of(' '), e = c.find_last_not_of(' ');
    out.push_back(b == std::string::npos ? "" : c.substr(b, e - b + 1));
  }
  return out;
}

std::vector<BoundRow> parse(const std::string& out) {
  std::vector<BoundRow> rows;
  std::stringstream ss(out);
  for (std::string line; std::getline(ss, line);) {
    if (line.rfind("| ", 0) != 0 || line.rfind("| shape", 0) == 0) continue;
    const auto c = cells(line);
    REQUIRE(c.size() >= 9);
    BoundRow r;
    r.shape = c[0];
    r.ranks = std::stoi(c[1]);
    const auto x = c[2].find(" x ");
    REQUIRE(x != std::string::npos);
    r.tokens = std::stoll(c[2].substr(0, x));
    r.top_k = std::stoll(c[2].substr(x + 3));
    r.planner = c[3];
    r.rows = std::stoll(c[4]);
    r.foreign = std::stoll(c[5]);
    r.step_gb = std::stod(c[6]);
    r.native_gb = std::stod(c[7]);
    r.total_gb = std::stod(c[8]);
    rows.push_back(r);
  }
  return rows;
}

struct Dims {
  int experts, hidden, intermediate;
};
// The paper's layer shapes (arXiv 2601.17111, Sec. 5), written out independently of tools/.
const std::map<std::string, Dims> kShapes{
    {"gpt-oss-120b", {128, 2880, 2880}}, {"deepseek-v3", {256, 7168, 2048}}, {"kimi-k2", {384, 7168, 2048}}};

}  // namespace

TEST_CASE("llep-model --bounds: EP's bound is every pair on one rank, LLEP's is lower, every figure covers its rows") {
  for (const int ranks : {8, 16}) {
    CAPTURE(ranks);
    const auto r = model({"--bounds", "--ranks", std::to_string(ranks)});
    REQUIRE_MESSAGE(r.code == 0, r.err);
    const auto rows = parse(r.out);
    REQUIRE(rows.size() == 9);  // three shapes (N divisible by 8 and 16) x three planners
    std::map<std::string, double> ep_total;
    for (const BoundRow& b : rows) {
      CAPTURE(b.shape);
      CAPTURE(b.planner);
      REQUIRE(kShapes.count(b.shape) == 1);
      const Dims d = kShapes.at(b.shape);
      CHECK(b.ranks == ranks);
      const double row_gb = 2.0 * d.hidden / 1e9, weight_gb = 3.0 * d.hidden * d.intermediate * 2 / 1e9;
      // Received rows, expert input and output rows, the pairs sent and the foreign weights
      // all lie in the step workspace (printed to 2 decimals).
      const double floor_gb = 3 * static_cast<double>(b.rows) * row_gb +
                              static_cast<double>(b.tokens * b.top_k) * row_gb +
                              static_cast<double>(b.foreign) * weight_gb;
      CHECK(b.step_gb >= floor_gb - 0.006);
      CHECK(b.native_gb == doctest::Approx(d.experts / ranks * weight_gb).epsilon(0.01));
      CHECK(b.total_gb == doctest::Approx(b.step_gb + b.native_gb).epsilon(0.001));
      CHECK(b.rows >= b.tokens * b.top_k);  // a rank can always be sent its own pairs' worth
      if (b.planner == "standard EP") {
        CHECK(b.rows == ranks * b.tokens * b.top_k);
        CHECK(b.foreign == 0);
        ep_total[b.shape] = b.total_gb;
      } else {
        CHECK(b.rows < ranks * b.tokens * b.top_k);
        CHECK(b.foreign <= d.experts - d.experts / ranks);
        REQUIRE(ep_total.count(b.shape) == 1);  // EP's row comes first
        CHECK(b.total_gb < ep_total[b.shape]);
      }
    }
  }
}

TEST_CASE("llep-model --bounds refuses bad flags with exit 2 and one error line") {
  for (const auto& args : std::vector<std::vector<std::string>>{{"--bounds", "--ranks", "0"},
                                                                {"--bounds", "--ranks", "8", "--alpha", "-1"}}) {
    const auto r = model(args);
    CHECK(r.code == 2);
    CHECK(r.err.rfind("error: ", 0) == 0);
  }
}
