#pragma once
// The GEMM curve CSV the GPU benchmark writes (`shape,mode,rows,ms,tflops`), read into a
// GemmProfile of the cost model. Kept apart from llep/sim/cost_model.hpp so that planners,
// which may use the cost model, include no file reading.
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "llep/core/error.hpp"
#include "llep/sim/cost_model.hpp"
#include "llep/sim/file.hpp"

namespace llep::sim {

namespace detail_csv {

inline std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

inline bool shape_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
         c == '.';
}

}  // namespace detail_csv

/// Parses the GEMM curve CSV format: a header line `shape,mode,rows,ms,tflops`, then one
/// line per measurement: shape name, mode (per_expert | grouped), rows (integer > 0), ms
/// (time of one expert's whole SwiGLU FFN on those rows, > 0), tflops (> 0; informative:
/// the model derives FLOP/s from ms and its own FLOP count). Blank lines and lines that
/// start with '#' are skipped; fields may carry spaces around them. Anything else (a
/// wrong header, a field count other than 5, a non-number, a non-positive value, an
/// unknown mode, a (shape, mode, rows) given twice) throws llep::Error naming `source`
/// and the line. Keeps the lines of `mode`; at least one must exist. O(n log n) in lines.
[[nodiscard]] inline GemmProfile parse_gemm_csv(std::string_view text, std::string_view source,
                                                std::string_view mode = "per_expert") {
  using detail_csv::trim;
  LLEP_EXPECTS(mode == "per_expert" || mode == "grouped", "GEMM curve mode '", mode,
               "' is neither per_expert nor grouped");
  std::map<std::tuple<std::string, std::string, long long>, std::size_t> seen;  // -> line
  std::map<std::string, std::vector<GemmPoint>> curves;
  bool header = false;
  std::size_t line_no = 0;
  std::vector<std::string_view> f;
  for (std::size_t pos = 0; pos < text.size();) {
    const std::size_t nl = std::min(text.find('\n', pos), text.size());
    const std::string_view line = trim(text.substr(pos, nl - pos));
    pos = nl + 1;
    ++line_no;
    auto bad = [&](auto&&... what) {
      LLEP_FAIL(source, ":", line_no, ": ", what..., " (line: '", std::string(line), "')");
    };
    if (line.empty() || line.front() == '#') continue;
    f.clear();
    for (std::size_t b = 0;;) {
      const std::size_t c = line.find(',', b);
      f.push_back(trim(line.substr(b, c == std::string_view::npos ? std::string_view::npos : c - b)));
      if (c == std::string_view::npos) break;
      b = c + 1;
    }
    if (!header) {
      if (!(f.size() == 5 && f[0] == "shape" && f[1] == "mode" && f[2] == "rows" && f[3] == "ms" && f[4] == "tflops"))
        bad("the header must be 'shape,mode,rows,ms,tflops'");
      header = true;
      continue;
    }
    if (f.size() != 5) bad("expected 5 fields (shape,mode,rows,ms,tflops), found ", f.size());
    if (f[0].empty()) bad("empty shape name");
    for (char ch : f[0])
      if (!detail_csv::shape_char(ch))
        bad("shape name '", std::string(f[0]), "' may only hold letters, digits, '-', '_' and '.'");
    if (f[1] != "per_expert" && f[1] != "grouped") bad("mode '", std::string(f[1]), "' is neither per_expert nor grouped");
    long long rows = 0;
    {
      const auto [end, ec] = std::from_chars(f[2].data(), f[2].data() + f[2].size(), rows);
      if (ec != std::errc() || end != f[2].data() + f[2].size() || rows <= 0)
        bad("rows '", std::string(f[2]), "' is not an integer > 0");
    }
    auto number = [&](std::string_view v, const char* what) {
      double x = 0;
      const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
      if (ec != std::errc() || end != v.data() + v.size() || !std::isfinite(x) || x <= 0)
        bad(what, " '", std::string(v), "' is not a number > 0");
      return x;
    };
    const double ms = number(f[3], "ms");
    (void)number(f[4], "tflops");
    const auto [it, fresh] = seen.try_emplace({std::string(f[0]), std::string(f[1]), rows}, line_no);
    if (!fresh) bad("(", std::string(f[0]), ", ", std::string(f[1]), ", ", rows, ") was already given on line ", it->second);
    if (f[1] == mode) curves[std::string(f[0])].push_back(GemmPoint{static_cast<double>(rows), ms * 1e-3});
  }
  LLEP_EXPECTS(header, source, ": empty GEMM curve CSV (no 'shape,mode,rows,ms,tflops' header)");
  LLEP_EXPECTS(!curves.empty(), source, ": no measurement of mode ", mode);
  std::vector<std::pair<std::string, std::vector<GemmPoint>>> list;
  list.reserve(curves.size());
  for (auto& [name, pts] : curves) list.emplace_back(name, std::move(pts));
  return GemmProfile::measured(std::string(source), std::move(list));
}

/// Reads a GEMM curve CSV file (see parse_gemm_csv): a regular file of at most
/// `max_bytes`; errors start with the path.
[[nodiscard]] inline GemmProfile load_gemm_csv(const std::string& path, std::string_view mode = "per_expert",
                                               std::uint64_t max_bytes = kMaxTextFileBytes) {
  return parse_gemm_csv(read_regular_file(path, max_bytes, "GEMM curve CSV"), path, mode);
}

}  // namespace llep::sim
