// libFuzzer target: the GEMM curve CSV reader (llep/sim/gemm_csv.hpp) on arbitrary text,
// then the time of a few GEMMs on what it accepted (monotone in rows, finite, > 0).
// Anything but llep::Error is a finding.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "llep/sim/gemm_csv.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const char* mode : {"per_expert", "grouped"}) {
    try {
      const auto g = llep::sim::parse_gemm_csv(text, "fuzz", mode);
      (void)g.describe();
      const llep::sim::FfnShape shape{"a", 64, 64};
      double last = 0;
      for (const double rows : {1.0, 16.0, 1000.0, 1e6}) {
        const double t = g.ffn_seconds(rows, shape, 2);
        if (!std::isfinite(t) || t <= 0 || t < last) std::abort();
        last = t;
      }
    } catch (const llep::Error&) {
    }
  }
  return 0;
}
