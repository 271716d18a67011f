// README.md shows the compiled example examples/01-plan/choose_planner.cpp verbatim, the
// output the built program prints, and the memory bound table of `llep-model --bounds`.
// Paths come from Meson in the environment.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string env_path(const char* name) {
  const char* p = std::getenv(name);
  REQUIRE_MESSAGE(p != nullptr, name, " is not set (meson test sets it)");
  return p;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot read ", path);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// Bodies of the fenced blocks opened by a line "```<lang>" (lang may be empty) and closed
// by a line "```"; each body ends with a newline, as a file does.
std::vector<std::string> fenced_blocks(const std::string& text, const std::string& lang) {
  std::vector<std::string> blocks;
  std::istringstream in(text);
  std::string line, body;
  bool inside = false, wanted = false;
  while (std::getline(in, line)) {
    if (!inside && line.rfind("```", 0) == 0) {
      inside = true;
      wanted = line.substr(3) == lang;
      body.clear();
    } else if (inside && line == "```") {
      inside = false;
      if (wanted) blocks.push_back(body);
    } else if (inside) {
      body += line + '\n';
    }
  }
  return blocks;
}

// What `command` prints on stdout; the command must exit 0.
std::string output_of(const std::string& command) {
  std::FILE* p = ::popen(command.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  CHECK(::pclose(p) == 0);
  return out;
}

bool contains(const std::vector<std::string>& blocks, const std::string& s) {
  for (const auto& b : blocks)
    if (b == s) return true;
  return false;
}

}  // namespace

TEST_CASE("README shows examples/01-plan/choose_planner.cpp verbatim in a ```cpp block") {
  const std::string readme = read_file(env_path("LLEP_README"));
  const std::string source = read_file(env_path("LLEP_CHOOSE_PLANNER_SRC"));
  REQUIRE(!source.empty());
  const auto blocks = fenced_blocks(readme, "cpp");
  REQUIRE_MESSAGE(!blocks.empty(), "README.md has no ```cpp block");
  CHECK_MESSAGE(contains(blocks, source),
                "no ```cpp block of README.md equals examples/01-plan/choose_planner.cpp; copy the file into README");
}

TEST_CASE("README shows what choose-planner prints") {
  const char* exe = std::getenv("LLEP_CHOOSE_PLANNER");
  if (exe == nullptr) {
    MESSAGE("examples are not built: choose-planner's output is not checked");
    return;
  }
  const std::string out = output_of(std::string("'") + exe + "'");
  REQUIRE(!out.empty());
  const auto blocks = fenced_blocks(read_file(env_path("LLEP_README")), "");
  CHECK_MESSAGE(contains(blocks, out), "no plain ``` block of README.md equals choose-planner's output:\n", out);
}

TEST_CASE("README shows the memory bound table that llep-model --bounds prints") {
  const char* exe = std::getenv("LLEP_MODEL");
  if (exe == nullptr) {
    MESSAGE("tools are not built: the memory bound table is not checked");
    return;
  }
  const std::string out = output_of(std::string("'") + exe + "' --bounds");
  const std::string readme = read_file(env_path("LLEP_README"));
  std::istringstream in(out);
  int rows = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("| ", 0) != 0) continue;
    ++rows;
    CHECK_MESSAGE(readme.find("\n" + line + "\n") != std::string::npos,
                  "README.md lacks this line of `llep-model --bounds`:\n", line);
  }
  CHECK(rows >= 4);  // header and at least one shape's rows
}

TEST_CASE("fenced_blocks reads fences line by line") {
  const auto b = fenced_blocks("text\n```cpp\nint x;\n```\n```\nout\n```\n```cpp\n```\n", "cpp");
  REQUIRE(b.size() == 2);
  CHECK(b[0] == "int x;\n");
  CHECK(b[1].empty());
  CHECK(fenced_blocks("```\nout\n```\n", "") == std::vector<std::string>{"out\n"});
}
