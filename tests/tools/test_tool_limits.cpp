// What the tools refuse, as a hostile user would try them (issue 9, finding 6): flags so
// large that the run would not fit in memory, numbers that would overflow or be clamped,
// and input files that are not regular files or are beyond the stated size. Each must end
// with exit code 2, nothing on stdout and one "error: " line naming the problem, instead of
// std::bad_alloc, a wrapped number, a silent clamp, a hang or reading gigabytes.
// The binaries come from Meson: LLEP_PLAN, LLEP_REPLAY, LLEP_TUNE, LLEP_DEMO, LLEP_GPU_BENCH
// (each case is skipped when its binary is not built).
#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "../common/spawn.hpp"
#include "npy_writer.hpp"

namespace {

using testutil::Run;
using testutil::TempDir;

// The binary named by `env`, or "" when it is not built.
std::string binary(const char* env) {
  const char* p = std::getenv(env);
  return p == nullptr ? std::string() : std::string(p);
}

void check_refused(const Run& r, const std::vector<std::string>& must_contain) {
  CHECK(r.code == 2);
  CHECK_MESSAGE(r.out.empty(), "stdout: ", r.out.substr(0, 200));
  CHECK_MESSAGE(r.err.rfind("error: ", 0) == 0, "stderr: ", r.err);
  CHECK_MESSAGE(std::count(r.err.begin(), r.err.end(), '\n') == 1, "stderr: ", r.err);
  for (const std::string& w : must_contain)
    CHECK_MESSAGE(r.err.find(w) != std::string::npos, "stderr '", r.err, "' lacks '", w, "'");
}

// A sparse file of `bytes` bytes (no disk space used).
std::string sparse_file(const TempDir& dir, const std::string& name, long long bytes) {
  const std::string path = dir / name;
  { std::ofstream(path).put('1'); }
  REQUIRE(::truncate(path.c_str(), bytes) == 0);
  return path;
}

std::string fifo(const TempDir& dir) {
  const std::string path = dir / "fifo";
  REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
  return path;
}

std::string small_trace(const TempDir& dir) {
  const std::string path = dir / "good.npy";
  testutil::write_file(path, testutil::npy_bytes(std::vector<std::int64_t>{0, 1, 2, 3}, 2, 2));
  return path;
}

constexpr long long kMiB = 1 << 20;

}  // namespace

TEST_CASE("llep-plan refuses clamped numbers, non-regular and oversized files") {
  const std::string bin = binary("LLEP_PLAN");
  if (bin.empty()) return;
  auto run = [&](std::vector<std::string> a) { return testutil::run_binary(bin, a); };
  // CLI11 alone clamps this to INT64_MAX and reads "010" as octal 8.
  check_refused(run({"--loads", "1,2", "--ranks", "1", "--min-gemm", "99999999999999999999"}),
                {"--min-gemm", "99999999999999999999", "out of range"});
  check_refused(run({"--loads", "1,2", "--ranks", "1", "--min-gemm", "010"}), {"--min-gemm", "'010'"});
  check_refused(run({"--loads", "1,2", "--ranks", "1", "--alpha", "1e999"}), {"--alpha", "finite"});
  check_refused(run({"--loads-file", "/dev/zero", "--ranks", "1"}), {"/dev/zero", "not a regular file"});
  TempDir dir;
  check_refused(run({"--loads-file", fifo(dir), "--ranks", "1"}), {"fifo", "not a regular file"});
  check_refused(run({"--loads-file", dir.path, "--ranks", "1"}), {"not a regular file"});
  check_refused(run({"--loads-file", sparse_file(dir, "big.txt", 64 * kMiB + 1), "--ranks", "1"}),
                {"big.txt", "67108865 bytes", "limit of 67108864"});
}

TEST_CASE("llep-plan streams the JSON of a plan with many experts") {
  const std::string bin = binary("LLEP_PLAN");
  if (bin.empty()) return;
  // 300k experts: building the whole JSON tree first took about 1.1 KB per expert
  // (320 MB here; 2.2 GB for 2M experts); streamed, the plan itself dominates (20 MB).
  TempDir dir;
  const std::string path = dir / "loads.txt";
  {
    std::ofstream f(path);
    for (int e = 0; e < 300000; ++e) f << (e % 7 == 0 ? 40 : e % 3) << ',';
  }
  // Under AddressSanitizer, freed memory waits in a 256 MB quarantine: off for this run, so
  // that the figure is the tool's own (30 MB with ASan, 20 MB without).
  const char* asan = std::getenv("ASAN_OPTIONS");
  const std::string opts = (asan ? std::string(asan) + ":" : "") + "quarantine_size_mb=0:detect_stack_use_after_return=0";
  REQUIRE(::setenv("ASAN_OPTIONS", opts.c_str(), 1) == 0);
  const Run r = testutil::run_binary(bin, {"--loads-file", path, "--ranks", "8", "--compact", "--min-gemm", "0"});
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.out.rfind("{\"policy\":\"llep\",\"ranks\":8,\"experts\":300000,", 0) == 0);
  CHECK(r.out.size() > 300000 * 40);
  rusage ru{};
  REQUIRE(::getrusage(RUSAGE_CHILDREN, &ru) == 0);
  CHECK_MESSAGE(ru.ru_maxrss < 200 * 1024, "largest child RSS ", ru.ru_maxrss, " KB");
}

TEST_CASE("llep-replay refuses runs beyond the memory limit, overflowing slots, and bad trace files") {
  const std::string bin = binary("LLEP_REPLAY");
  if (bin.empty()) return;
  auto run = [&](std::vector<std::string> a) { return testutil::run_binary(bin, a); };
  TempDir dir;
  const std::string good = small_trace(dir);
  check_refused(run({good, "--experts", "1000000000", "--ranks", "1000000000", "--shape", "gpt-oss-120b"}),
                {"GB", "--max-memory-gb"});
  // 8 experts on 4 ranks fit; a limit below their few kilobytes is refused with the figure.
  check_refused(run({good, "--experts", "8", "--ranks", "4", "--shape", "gpt-oss-120b", "--max-memory-gb", "1e-9"}),
                {"needs about", "--max-memory-gb 1e-09"});
  // N / P + slots overflowed an int (UndefinedBehaviorSanitizer) and printed a wrapped number.
  check_refused(run({good, "--experts", "8", "--ranks", "4", "--shape", "gpt-oss-120b", "--replica-slots",
                     "2147483647"}),
                {"--replica-slots = 2147483647", "slots_per_rank"});
  const std::vector<std::string> layer{"--experts", "8", "--ranks", "4", "--shape", "gpt-oss-120b"};
  auto with = [&](const std::string& trace) {
    std::vector<std::string> a{trace};
    a.insert(a.end(), layer.begin(), layer.end());
    return a;
  };
  check_refused(run(with("/dev/zero")), {"/dev/zero", "not a regular file"});
  check_refused(run(with(fifo(dir))), {"fifo", "not a regular file"});
  check_refused(run(with(sparse_file(dir, "huge.npy", (1LL << 30) + 1))), {"huge.npy", "limit of 1073741824"});
  std::vector<std::string> csv = with(good);
  csv.insert(csv.end(), {"--gemm-csv", "/dev/zero"});
  check_refused(run(csv), {"/dev/zero", "not a regular file"});
}

TEST_CASE("llep-tune refuses overflowing token counts and runs beyond the memory limit") {
  const std::string bin = binary("LLEP_TUNE");
  if (bin.empty()) return;
  auto run = [&](std::vector<std::string> a) { return testutil::run_binary(bin, a); };
  // tokens x K overflowed 64 bits (UndefinedBehaviorSanitizer) and printed wrapped numbers.
  check_refused(run({"--shape", "gpt-oss-120b", "--tokens", "9223372036854775807"}),
                {"--tokens 9223372036854775807", "2^53"});
  check_refused(run({"--shape", "gpt-oss-120b", "--tokens", "1000000000000000000"}), {"2^53"});
  check_refused(run({"--shape", "gpt-oss-120b", "--tokens", "9223372036854775808"}), {"--tokens", "out of range"});
  // 13 routings x N counts of 8 bytes: about 450 GB; std::bad_alloc (exit 134) before.
  check_refused(run({"--shape", "gpt-oss-120b", "--ranks", "1", "--experts", "2147483647"}),
                {"GB", "--max-memory-gb"});
  check_refused(run({"--shape", "gpt-oss-120b", "--gemm-csv", "/dev/zero"}), {"/dev/zero", "not a regular file"});
}

TEST_CASE("llep-demo refuses a layer beyond the memory limit, inside its flags' ranges") {
  const std::string bin = binary("LLEP_DEMO");
  if (bin.empty()) return;
  // Each flag is inside its documented range; together they need terabytes of weights.
  check_refused(testutil::run_binary(bin, {"--experts", "4096", "--hidden", "16384", "--intermediate", "16384"}),
                {"GB", "--max-memory-gb"});
  check_refused(testutil::run_binary(bin, {"--steps", "1", "--max-memory-gb", "0.000001"}), {"--max-memory-gb 1e-06"});
}

// Registered again from bench/gpu/meson.build with LLEP_GPU_BENCH set and this case alone
// (the binary is built after the tests' folder); skipped in the plain tool-limits run.
TEST_CASE("llep-gpu-bench table: the rows of --shape and --routing lists, refusals, the skip without a device") {
  const std::string bin = binary("LLEP_GPU_BENCH");
  if (bin.empty()) return;
  auto run = [&](std::vector<std::string> a) { return testutil::run_binary(bin, a); };
  // --list needs no device: the rows in the table's order (shapes, then routings, as the
  // paper lists them), whatever order the lists give.
  Run r = run(
      {"table", "--list", "--shape", "kimi-k2,deepseek-v3", "--routing", "95%-on-1,balanced", "--tokens", "2048"});
  REQUIRE_MESSAGE(r.code == 0, r.err);
  CHECK(r.out == "shape,routing,tokens_per_rank\ndeepseek-v3,balanced,2048\ndeepseek-v3,95%-on-1,2048\n"
                 "kimi-k2,balanced,2048\nkimi-k2,95%-on-1,2048\n");
  r = run({"table", "--list", "--shape", "gpt-oss-120b", "--routing", "30%-on-4"});  // the shape's own tokens
  CHECK(r.out == "shape,routing,tokens_per_rank\ngpt-oss-120b,30%-on-4,32768\n");
  r = run({"table", "--list", "--device-step"});  // 3 shapes x 13 routings
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1 + 3 * 13);
  // Refused before any device call: exit 2, an error naming the value, then the usage.
  for (const auto& [args, says] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"table", "--routing", "balanced,95%-on-2"}, "--routing '95%-on-2' is none of: balanced, 30%-on-1"},
           {{"table", "--shape", "gpt-oss-120b,"}, "--shape '' is none of: gpt-oss-120b, deepseek-v3, kimi-k2"},
           {{"experts", "--device-step"}, "--device-step is a flag of table"},
           {{"curve", "--list"}, "--list is a flag of table"}}) {
    r = run(args);
    CHECK(r.code == 2);
    CHECK(r.out.empty());
    CHECK_MESSAGE(r.err.rfind("error: " + says, 0) == 0, "stderr: ", r.err);
  }
  // No device visible: the table, device-step columns and all, skips as the GPU tests do.
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  const std::string saved = visible ? visible : "";
  REQUIRE(::setenv("CUDA_VISIBLE_DEVICES", "", 1) == 0);
  r = run({"table", "--device-step", "--shape", "gpt-oss-120b", "--routing", "balanced", "--tokens", "64"});
  visible ? ::setenv("CUDA_VISIBLE_DEVICES", saved.c_str(), 1) : ::unsetenv("CUDA_VISIBLE_DEVICES");
  CHECK(r.code == 77);
  CHECK(r.err == "SKIP: no CUDA device\n");
}
