// libFuzzer target: the per-expert loads parser of llep-plan (llep/sim/loads_text.hpp) on
// arbitrary text. Anything but llep::Error is a finding; accepted loads must be >= 0.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "llep/sim/loads_text.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto loads = llep::sim::parse_loads(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    for (const llep::count_t l : loads)
      if (l < 0) std::abort();
  } catch (const llep::Error&) {
  }
  return 0;
}
