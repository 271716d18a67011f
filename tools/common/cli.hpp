#pragma once
// How the tools and demos report bad input: one line "error: ..." on stderr, exit code 2.
#include <CLI/CLI.hpp>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <optional>
#include <string>
#include <system_error>

#include "llep/core/error.hpp"

namespace llep::examples {

/// The message on one line, without the library's "llep: " prefix.
inline std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  if (s.rfind("llep: ", 0) == 0) s.erase(0, 6);
  return s;
}

/// Prints "error: <what>" and returns the tools' exit code for bad input.
inline int fail(const std::string& what) {
  std::cerr << "error: " << one_line(what) << '\n';
  return 2;
}

/// A CLI11 check that a number flag's text is a plain decimal number that fits its type
/// whole: CLI11 alone clamps an out-of-range 64-bit integer (99999999999999999999 would
/// become INT64_MAX) and reads "010" as octal. Floating values must be finite.
enum class Number { signed_int, unsigned_int, floating };

inline CLI::Validator exact_number(Number kind) {
  return CLI::Validator(
      [kind](std::string& text) -> std::string {
        const char* b = text.data();
        const char* e = b + text.size();
        if (kind != Number::floating) {
          if (b != e && *b == '+') ++b;
          const char* digits = b != e && *b == '-' ? b + 1 : b;
          std::from_chars_result r{};
          if (kind == Number::signed_int) {
            std::int64_t v = 0;
            r = std::from_chars(b, e, v);
          } else {
            std::uint64_t v = 0;
            r = std::from_chars(b, e, v);
          }
          if (r.ec == std::errc::result_out_of_range)
            return "'" + text + "' is out of range for a " + (kind == Number::signed_int ? "signed" : "unsigned") +
                   " 64-bit integer";
          if (r.ec != std::errc() || r.ptr != e || (e - digits > 1 && *digits == '0'))
            return "'" + text + "' is not a decimal integer";
        } else {
          double v = 0;
          const auto r = std::from_chars(b, e, v);
          if (r.ec != std::errc() || r.ptr != e || !std::isfinite(v)) return "'" + text + "' is not a finite number";
        }
        return {};
      },
      "", "exact number");
}

/// Parses the command line: nullopt to go on, else the exit code to return (0 after
/// --help, 2 with one error line on a bad flag). Every integer and floating-point option
/// gets exact_number() first: a value CLI11 would clamp or misread is refused.
inline std::optional<int> parse(CLI::App& app, int argc, char** argv) {
  for (CLI::Option* opt : app.get_options()) {
    const std::string type = opt->get_type_name();
    if (type == "INT") opt->check(exact_number(Number::signed_int));
    if (type == "UINT") opt->check(exact_number(Number::unsigned_int));
    if (type == "FLOAT") opt->check(exact_number(Number::floating));
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    return fail(e.what());
  }
  return std::nullopt;
}

/// Default bound, in GB (1e9 bytes), on the memory a tool run may plan to use; each tool's
/// --max-memory-gb changes it.
inline constexpr double kDefaultMaxMemoryGb = 4;

inline void add_memory_flag(CLI::App& app, double& gb) {
  app.add_option("--max-memory-gb", gb,
                 "Refuse a run whose estimated memory exceeds this many GB (1e9 bytes) before allocating it")
      ->capture_default_str();
}

/// Throws llep::Error when `bytes` (an estimate in floating point, so that the estimate
/// itself cannot overflow) exceeds `limit_gb`, naming what needs it and both figures.
inline void check_memory(double bytes, double limit_gb, const std::string& what) {
  LLEP_EXPECTS(std::isfinite(limit_gb) && limit_gb > 0, "--max-memory-gb = ", limit_gb, " must be > 0");
  LLEP_EXPECTS(bytes <= limit_gb * 1e9, what, " needs about ", bytes / 1e9, " GB, more than --max-memory-gb ", limit_gb,
               "; shrink the run or raise the limit");
}

}  // namespace llep::examples
