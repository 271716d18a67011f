// The .npy trace reader (include/llep/sim/npy.hpp) on bytes written here: every accepted
// header form reads back the ids written, every broken file throws llep::Error whose
// message starts with the source name and names the problem; and the token split and
// counts that llep-replay builds on.
#include <doctest/doctest.h>

#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "../common/errors.hpp"
#include "llep/sim/npy.hpp"
#include "npy_writer.hpp"

namespace {

using llep::count_t;
using testutil::npy_bytes;
using testutil::NpySpec;

// The message of the llep::Error `f` throws; fails the test when it throws nothing.
template <class F>
std::string error_of(F&& f) {
  const std::string what = testutil::error_of(f);
  if (what == testutil::kNoError) FAIL("no llep::Error thrown");
  return what;
}

const std::vector<std::int64_t> kIds{0, 7, 3, -1, 2147483647, -2147483648};  // 3 tokens x K = 2

}  // namespace

TEST_CASE("npy: int32 and int64 in format versions 1.0, 2.0 and 3.0 read back exactly") {
  for (const char* descr : {"<i4", "<i8"})
    for (int version : {1, 2, 3}) {
      CAPTURE(descr);
      CAPTURE(version);
      NpySpec spec;
      spec.descr = descr;
      spec.version = version;
      const std::string bytes = npy_bytes(kIds, 3, 2, spec);
      const llep::sim::NpyHeader h = llep::sim::parse_npy_header(bytes, "t.npy");
      CHECK(h.major == version);
      CHECK(h.descr == descr);
      CHECK(h.shape == std::vector<std::int64_t>{3, 2});
      CHECK(h.data_offset % 64 == 0);
      const llep::sim::TopkIds t = llep::sim::parse_topk_ids(bytes, "t.npy");
      CHECK(t.tokens == 3);
      CHECK(t.top_k == 2);
      CHECK(t.ids == kIds);  // negative values sign-extended from 32 bits
      CHECK(t(1, 1) == -1);
    }
  // 64-bit values beyond 32 bits survive too.
  NpySpec spec;
  spec.descr = "<i8";
  const std::vector<std::int64_t> big{std::int64_t{1} << 40, -(std::int64_t{1} << 40)};
  CHECK(llep::sim::parse_topk_ids(npy_bytes(big, 1, 2, spec), "t.npy").ids == big);
}

TEST_CASE("npy: header variations other writers produce") {
  // Double quotes, other key order, no trailing comma, Python 2 long suffix, no padding.
  const std::string dict = "{\"shape\": (2L, 1L), \"fortran_order\": False, \"descr\": \"<i4\"}\n";
  std::string bytes = std::string("\x93NUMPY\x01\x00", 8);
  bytes += static_cast<char>(dict.size());
  bytes += '\0';
  bytes += dict;
  bytes += std::string("\x05\x00\x00\x00\x06\x00\x00\x00", 8);
  const auto t = llep::sim::parse_topk_ids(bytes, "odd.npy");
  CHECK(t.tokens == 2);
  CHECK(t.top_k == 1);
  CHECK(t.ids == std::vector<std::int64_t>{5, 6});
  // No tokens at all is a valid, empty trace.
  const auto empty = llep::sim::parse_topk_ids(npy_bytes({}, 0, 4), "empty.npy");
  CHECK(empty.tokens == 0);
  CHECK(empty.ids.empty());
}

TEST_CASE("npy: broken files are rejected with the source name and the problem") {
  const std::string good = npy_bytes(kIds, 3, 2);
  struct Case {
    const char* what;
    std::string bytes;
    std::vector<std::string> words;  // the message must contain each
  };
  std::vector<Case> cases;
  {
    NpySpec s;
    s.magic = std::string("\x93NUMPZ", 6);
    cases.push_back({"bad magic", npy_bytes(kIds, 3, 2, s), {"bad magic"}});
  }
  cases.push_back({"empty file", std::string(), {"bad magic"}});
  cases.push_back({"text file", std::string("hello world\n"), {"bad magic"}});
  cases.push_back({"truncated preamble", good.substr(0, 9), {"truncated"}});
  cases.push_back({"truncated header", good.substr(0, 40), {"truncated header"}});
  {
    NpySpec s;
    s.version = 4;
    cases.push_back({"version 4.0", npy_bytes(kIds, 3, 2, s), {"version 4.0"}});
  }
  for (const char* d : {"<f4", ">i4", "|i1", "<u4", "<i2"}) {
    NpySpec s;
    s.descr = d;
    cases.push_back({"dtype", npy_bytes(kIds, 3, 2, s), {std::string("dtype '") + d + "'"}});
  }
  {
    NpySpec s;
    s.fortran = true;
    cases.push_back({"fortran order", npy_bytes(kIds, 3, 2, s), {"fortran_order"}});
  }
  {
    NpySpec s;
    s.shape = "(6,)";
    cases.push_back({"1-D", npy_bytes(kIds, 3, 2, s), {"(6,)", "not 2-D"}});
    s.shape = "(1, 3, 2)";
    cases.push_back({"3-D", npy_bytes(kIds, 3, 2, s), {"(1, 3, 2)", "not 2-D"}});
    s.shape = "()";
    cases.push_back({"0-D", npy_bytes({5}, 1, 1, s), {"()", "not 2-D"}});
    s.shape = "(6, 0)";
    cases.push_back({"K = 0", npy_bytes({}, 6, 0, s), {"K = 0"}});
    s.shape = "(4, 2)";
    cases.push_back({"shape larger than the data", npy_bytes(kIds, 3, 2, s), {"truncated data", "32 bytes", "24"}});
    s.shape = "(2, 2)";
    cases.push_back({"data after the shape", npy_bytes(kIds, 3, 2, s), {"8 bytes after"}});
    s.shape = "(4611686018427387904, 8)";
    cases.push_back({"huge shape", npy_bytes(kIds, 3, 2, s), {"too large"}});
  }
  cases.push_back({"truncated data", good.substr(0, good.size() - 3), {"truncated data"}});
  {
    std::string no_shape = good;
    no_shape.replace(no_shape.find("'shape'"), 7, "'shap' ");
    cases.push_back({"unknown key", no_shape, {"unexpected key 'shap'"}});
    std::string structured = good;
    structured.replace(structured.find("'<i4'"), 5, "[('a'");
    cases.push_back({"structured dtype", structured, {"structured"}});
    std::string bad_bool = good;
    bad_bool.replace(bad_bool.find("False"), 5, "Nope ");
    cases.push_back({"bad fortran_order", bad_bool, {"True or False"}});
  }
  for (const Case& c : cases) {
    CAPTURE(c.what);
    const std::string m = error_of([&] { (void)llep::sim::parse_topk_ids(c.bytes, "dir/x.npy"); });
    CHECK_MESSAGE(m.rfind("llep: dir/x.npy: ", 0) == 0, m);
    for (const std::string& w : c.words) CHECK_MESSAGE(m.find(w) != std::string::npos, m, " lacks ", w);
    CHECK(m.find('\n') == std::string::npos);
  }
}

TEST_CASE("npy: load_topk_ids names a file it cannot open") {
  const std::string m = error_of([] { (void)llep::sim::load_topk_ids("/nonexistent/trace.npy"); });
  CHECK(m.find("/nonexistent/trace.npy: cannot open") != std::string::npos);
  testutil::TempDir dir;
  testutil::write_file(dir / "a.npy", npy_bytes(kIds, 3, 2));
  CHECK(llep::sim::load_topk_ids(dir / "a.npy").ids == kIds);
}

TEST_CASE("npy: tokens split over ranks in contiguous near-equal blocks") {
  using llep::sim::first_token_of;
  CHECK(std::vector<std::int64_t>{first_token_of(0, 10, 4), first_token_of(1, 10, 4), first_token_of(2, 10, 4),
                                  first_token_of(3, 10, 4), first_token_of(4, 10, 4)} ==
        std::vector<std::int64_t>{0, 2, 5, 7, 10});
  for (std::int64_t T : {0, 1, 3, 8, 9, 1000, 1001})
    for (int P : {1, 2, 3, 8, 64}) {
      CAPTURE(T);
      CAPTURE(P);
      CHECK(first_token_of(0, T, P) == 0);
      CHECK(first_token_of(P, T, P) == T);
      for (int p = 0; p < P; ++p) {
        const std::int64_t n = first_token_of(p + 1, T, P) - first_token_of(p, T, P);
        CHECK(n >= T / P);
        CHECK(n <= T / P + 1);
        CHECK(n == (p + 1) * T / P - p * T / P);  // floor(p T / P), without overflow
      }
    }
  // Far beyond what p * T would hold in 64 bits.
  const std::int64_t huge = std::int64_t{1} << 62;
  CHECK(first_token_of(3, huge, 4) == 3 * (huge / 4));
}

TEST_CASE("npy: trace_counts is the per-rank histogram; ids outside [0, N) are named") {
  // 5 tokens, K = 2, over 2 ranks: rank 0 holds tokens 0-1, rank 1 tokens 2-4.
  llep::sim::TopkIds t;
  t.tokens = 5;
  t.top_k = 2;
  t.ids = {0, 1, 1, 3, 2, 3, 3, 0, 1, 2};
  const auto c = llep::sim::trace_counts(t, 2, 4, "t.npy");
  CHECK(c == std::vector<count_t>{1, 2, 0, 1, /* rank 1 */ 1, 1, 2, 2});
  CHECK(std::accumulate(c.begin(), c.end(), count_t{0}) == 10);

  t.ids[7] = 4;  // token 3, slot 1
  std::string m = error_of([&] { (void)llep::sim::trace_counts(t, 2, 4, "t.npy"); });
  CHECK(m == "llep: t.npy: expert id 4 at token 3, slot 1 (element 7) is outside [0, N = 4)");
  t.ids[7] = -1;
  m = error_of([&] { (void)llep::sim::trace_counts(t, 2, 4, "t.npy"); });
  CHECK(m.find("expert id -1 at token 3, slot 1") != std::string::npos);
  t.ids[7] = 0;
  t.ids[0] = std::int64_t{1} << 40;  // would wrap to 0 if narrowed to 32 bits
  m = error_of([&] { (void)llep::sim::trace_counts(t, 2, 4, "t.npy"); });
  CHECK(m.find("expert id 1099511627776 at token 0, slot 0") != std::string::npos);
}
