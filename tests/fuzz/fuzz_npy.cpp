// libFuzzer target: the .npy trace reader (llep/sim/npy.hpp) on arbitrary bytes, then the
// counts of what it accepted. Anything but llep::Error (a crash, a sanitizer report, another
// exception, a huge allocation) is a finding.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "llep/sim/npy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto ids = llep::sim::parse_topk_ids(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
    (void)llep::sim::trace_counts(ids, 3, 16, "fuzz");
  } catch (const llep::Error&) {
  }
  return 0;
}
