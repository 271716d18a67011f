#include <doctest/doctest.h>

#include <vector>

#include "llep/core/plan.hpp"

TEST_CASE("topology rejects N not a multiple of P, naming both") {
  CHECK_THROWS_WITH_AS(llep::Topology(3, 8), doctest::Contains("N = 8"), llep::Error);
  CHECK_THROWS_AS(llep::Topology(0, 8), llep::Error);
}
