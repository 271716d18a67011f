#pragma once
// Per-expert loads l[0..N) as text, e.g. "10,0,3,7" or one per line: what llep-plan reads
// from --loads and --loads-file, in the library so that a tool, a test and the fuzzer share
// one parser.
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/sim/file.hpp"

namespace llep::sim {

/// Words separated by any run of commas and whitespace (space, tab, CR, LF); each must be a
/// whole decimal integer in [0, 2^63). Throws llep::Error "<where>: ..." naming the word
/// and the expert for a non-integer, an out-of-range or negative load, no load at all, or
/// more than `max_loads` of them (N is an int).
[[nodiscard]] inline std::vector<count_t> parse_loads(std::string_view text, std::string_view where,
                                                      std::size_t max_loads = std::numeric_limits<int>::max()) {
  std::vector<count_t> loads;
  auto is_sep = [](char c) { return c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  std::size_t i = 0;
  while (i < text.size()) {
    if (is_sep(text[i])) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < text.size() && !is_sep(text[j])) ++j;
    const std::string_view word = text.substr(i, j - i);
    count_t v = 0;
    const auto [end, ec] = std::from_chars(word.data(), word.data() + word.size(), v);
    LLEP_EXPECTS(ec != std::errc::result_out_of_range, where, ": load '", word,
                 "' is out of range for a 64-bit integer");
    LLEP_EXPECTS(ec == std::errc() && end == word.data() + word.size(), where, ": '", word, "' is not an integer");
    LLEP_EXPECTS(v >= 0, where, ": load ", word, " of expert ", loads.size(), " is negative");
    LLEP_EXPECTS(loads.size() < max_loads, where, ": more than ", max_loads, " loads");
    loads.push_back(v);
    i = j;
  }
  LLEP_EXPECTS(!loads.empty(), where, ": no loads given");
  return loads;
}

/// parse_loads of a regular file of at most `max_bytes`.
[[nodiscard]] inline std::vector<count_t> load_loads_file(const std::string& path, std::string_view where,
                                                          std::uint64_t max_bytes = kMaxTextFileBytes) {
  return parse_loads(read_regular_file(path, max_bytes, where), where);
}

}  // namespace llep::sim
