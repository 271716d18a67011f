#pragma once
// How the tools and demos report bad input: one line "error: ..." on stderr, exit code 2.
#include <CLI/CLI.hpp>

#include <iostream>
#include <optional>
#include <string>

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

/// Parses the command line: nullopt to go on, else the exit code to return (0 after
/// --help, 2 with one error line on a bad flag).
inline std::optional<int> parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    return fail(e.what());
  }
  return std::nullopt;
}

}  // namespace llep::examples
