// The README's main demo, run as a user would: a small skewed layer must agree with the
// dense reference under both planners, LLEP must balance it, and bad flags exit 2.
#include <doctest/doctest.h>

#include <cstdlib>
#include <string>

#include "../common/spawn.hpp"

namespace {
std::string demo_binary() {
  const char* p = std::getenv("LLEP_DEMO");
  REQUIRE_MESSAGE(p != nullptr, "LLEP_DEMO must name the llep-demo binary (meson test sets it)");
  return p;
}
}  // namespace

TEST_CASE("llep-demo: both planners agree with the dense MoE and LLEP balances the ranks") {
  const auto r = testutil::run_binary(demo_binary(), {"--ranks", "4", "--experts", "16", "--tokens", "64", "--hidden",
                                                      "32", "--intermediate", "16", "--steps", "1", "--min-gemm", "8"});
  INFO(r.out, r.err);
  CHECK(r.code == 0);
  CHECK(r.out.find("both agree") != std::string::npos);
  // The LLEP row of the summary reports imbalance 1.00 under the default 95%-on-1 skew.
  CHECK(r.out.find("\nLLEP        1.00") != std::string::npos);
}

TEST_CASE("llep-demo: bad flags are one error line and exit code 2") {
  for (const auto& args : {std::vector<std::string>{"--bogus"}, {"--ranks", "three"}, {"--ranks", "3"},
                           {"--hot-share", "1.5"}, {"--alpha", "0"}, {"--top-k", "99", "--experts", "8"}}) {
    const auto r = testutil::run_binary(demo_binary(), args);
    INFO(args.front(), ": ", r.err);
    CHECK(r.code == 2);
    CHECK(r.err.rfind("error: ", 0) == 0);
    CHECK(r.out.empty());
  }
  const auto help = testutil::run_binary(demo_binary(), {"--help"});
  CHECK(help.code == 0);
  for (const char* flag : {"--ranks", "--experts", "--top-k", "--tokens", "--hidden", "--intermediate", "--hot-experts",
                           "--hot-share", "--alpha", "--min-gemm", "--steps", "--seed", "--no-check"})
    CHECK(help.out.find(flag) != std::string::npos);
}
