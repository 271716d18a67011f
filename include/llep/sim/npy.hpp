#pragma once
// Routing traces as NumPy .npy files: the top-k expert ids of a batch, shape [tokens, K],
// int32 or int64, and the counts matrix C[P][N] they imply when the tokens are split over P
// ranks. In the library (not in a tool) so that engines and benchmarks can replay recorded
// routings through any planner without NumPy or Python.
//
// The .npy format (numpy.lib.format): the magic "\x93NUMPY", a major and a minor version
// byte, the header length (2 bytes little-endian in version 1.0, 4 bytes in 2.0 and 3.0),
// then a Python dict literal {'descr': '<i4', 'fortran_order': False, 'shape': (T, K), }
// padded with spaces and a newline, then the raw data. Version 3.0 only allows UTF-8 in the
// header, which changes nothing for the keys read here.
//
// Accepted: versions 1.0, 2.0, 3.0; descr '<i4' or '<i8' (little-endian; '|' or '=' are
// not what np.save writes for these and are refused, so that a big-endian writer cannot be
// misread); C order; a 2-D shape. Everything else throws llep::Error whose message starts
// with the source name (the path) and states the problem.
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/core/error.hpp"
#include "llep/sim/file.hpp"

namespace llep::sim {

/// What a .npy header says. `data_offset` is where the array's bytes start in the file.
struct NpyHeader {
  int major = 0, minor = 0;
  std::string descr;
  bool fortran_order = false;
  std::vector<std::int64_t> shape;
  std::size_t data_offset = 0;
};

namespace detail_npy {

// The header dict is a Python literal; a small recursive-descent reader for exactly what
// np.save writes (strings, True/False, tuples of integers), so no Python is needed.
class DictReader {
 public:
  DictReader(std::string_view text, std::string_view source) : t_(text), src_(source) {}

  NpyHeader read() {
    NpyHeader h;
    bool has_descr = false, has_order = false, has_shape = false;
    expect('{');
    for (;;) {
      skip_ws();
      if (peek() == '}') break;
      const std::string key = string_literal("a key");
      expect(':');
      skip_ws();
      if (key == "descr") {
        if (peek() == '[') fail("dtype is a structured dtype (a list of fields); only '<i4' and '<i8' are supported");
        h.descr = string_literal("the descr value");
        has_descr = true;
      } else if (key == "fortran_order") {
        h.fortran_order = boolean();
        has_order = true;
      } else if (key == "shape") {
        h.shape = tuple();
        has_shape = true;
      } else {
        fail("unexpected key '", key, "' in the header (expected descr, fortran_order, shape)");
      }
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() != '}') fail("expected ',' or '}' in the header dict at offset ", i_);
    }
    ++i_;
    skip_ws();
    if (i_ != t_.size()) fail("unexpected text after the header dict at offset ", i_);
    if (!has_descr || !has_order || !has_shape)
      fail("the header lacks ", !has_descr ? "'descr'" : !has_order ? "'fortran_order'" : "'shape'");
    return h;
  }

 private:
  template <class... A>
  [[noreturn]] void fail(A&&... what) const {
    LLEP_FAIL(src_, ": ", std::forward<A>(what)...);
  }
  [[nodiscard]] char peek() const { return i_ < t_.size() ? t_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\t' || t_[i_] == '\n' || t_[i_] == '\r')) ++i_;
  }
  void expect(char c) {
    skip_ws();
    if (peek() != c) fail("malformed header: expected '", c, "' at offset ", i_);
    ++i_;
  }
  std::string string_literal(const char* what) {
    skip_ws();
    const char q = peek();
    if (q != '\'' && q != '"') fail("malformed header: expected a quoted string for ", what, " at offset ", i_);
    const std::size_t end = t_.find(q, i_ + 1);
    if (end == std::string_view::npos) fail("malformed header: unterminated string at offset ", i_);
    std::string s(t_.substr(i_ + 1, end - i_ - 1));
    i_ = end + 1;
    return s;
  }
  bool boolean() {
    if (t_.substr(i_, 4) == "True") {
      i_ += 4;
      return true;
    }
    if (t_.substr(i_, 5) == "False") {
      i_ += 5;
      return false;
    }
    fail("malformed header: fortran_order must be True or False");
  }
  std::vector<std::int64_t> tuple() {
    std::vector<std::int64_t> v;
    expect('(');
    for (;;) {
      skip_ws();
      if (peek() == ')') break;
      std::int64_t x = 0;
      const std::size_t start = i_;
      while (i_ < t_.size() && t_[i_] >= '0' && t_[i_] <= '9') {
        const int d = t_[i_] - '0';
        if (x > (std::numeric_limits<std::int64_t>::max() - d) / 10) fail("shape dimension at offset ", start, " overflows");
        x = x * 10 + d;
        ++i_;
      }
      if (i_ == start) fail("malformed header: the shape must be a tuple of integers >= 0");
      if (peek() == 'L') ++i_;  // Python 2 writers spell long integers 3L
      v.push_back(x);
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() != ')') fail("malformed header: expected ',' or ')' in the shape at offset ", i_);
    }
    ++i_;
    return v;
  }

  std::string_view t_;
  std::string_view src_;
  std::size_t i_ = 0;
};

inline std::uint64_t read_le(const unsigned char* p, std::size_t n) noexcept {
  std::uint64_t v = 0;
  for (std::size_t b = 0; b < n; ++b) v |= static_cast<std::uint64_t>(p[b]) << (8 * b);
  return v;
}

inline std::string shape_text(const std::vector<std::int64_t>& s) {
  std::string out = "(";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

}  // namespace detail_npy

/// Parses the preamble and header of a .npy file held in `bytes` (at least the header;
/// the data is not read). `source` names the file in error messages.
[[nodiscard]] inline NpyHeader parse_npy_header(std::string_view bytes, std::string_view source) {
  constexpr std::string_view magic("\x93NUMPY", 6);
  LLEP_EXPECTS(bytes.size() >= magic.size() && bytes.substr(0, magic.size()) == magic, source,
               ": bad magic: not a .npy file (it must start with \\x93NUMPY)");
  LLEP_EXPECTS(bytes.size() >= 8, source, ": truncated .npy preamble (", bytes.size(), " bytes)");
  const auto* u = reinterpret_cast<const unsigned char*>(bytes.data());
  const int major = u[6], minor = u[7];
  LLEP_EXPECTS((major == 1 || major == 2 || major == 3) && minor == 0, source, ": .npy format version ", major, ".",
               minor, " is not supported (1.0, 2.0 or 3.0)");
  const std::size_t len_bytes = major == 1 ? 2 : 4;  // version 1.0: uint16 header length
  LLEP_EXPECTS(bytes.size() >= 8 + len_bytes, source, ": truncated .npy preamble (", bytes.size(), " bytes)");
  const std::size_t header_len = static_cast<std::size_t>(detail_npy::read_le(u + 8, len_bytes));
  const std::size_t offset = 8 + len_bytes;
  LLEP_EXPECTS(header_len <= bytes.size() - offset, source, ": truncated header (", header_len,
               " header bytes announced, ", bytes.size() - offset, " present)");
  NpyHeader h = detail_npy::DictReader(bytes.substr(offset, header_len), source).read();
  h.major = major;
  h.minor = minor;
  h.data_offset = offset + header_len;
  return h;
}

/// Top-k expert ids of one trace, row-major: ids[t * top_k + k] is token t's k-th expert.
struct TopkIds {
  std::int64_t tokens = 0;
  int top_k = 0;
  std::vector<std::int64_t> ids;

  [[nodiscard]] std::int64_t operator()(std::int64_t token, int slot) const {
    return ids[static_cast<std::size_t>(token) * static_cast<std::size_t>(top_k) + static_cast<std::size_t>(slot)];
  }
};

/// Reads a [tokens, K] '<i4' or '<i8' C-order array from the bytes of a .npy file. Throws
/// llep::Error "<source>: <problem>" for a bad magic or version, a malformed header, another
/// dtype (named), Fortran order, a shape that is not 2-D (named) or has K = 0, data shorter
/// than the shape needs (truncated) or bytes after it.
[[nodiscard]] inline TopkIds parse_topk_ids(std::string_view bytes, std::string_view source) {
  const NpyHeader h = parse_npy_header(bytes, source);
  LLEP_EXPECTS(h.descr == "<i4" || h.descr == "<i8", source, ": dtype '", h.descr,
               "' is not supported (expert ids must be '<i4' or '<i8': little-endian int32 or int64)");
  LLEP_EXPECTS(!h.fortran_order, source, ": fortran_order is True; write the trace in C order (np.ascontiguousarray)");
  LLEP_EXPECTS(h.shape.size() == 2, source, ": shape ", detail_npy::shape_text(h.shape),
               " is not 2-D; a trace is [tokens, K]");
  LLEP_EXPECTS(h.shape[1] >= 1 && h.shape[1] <= std::numeric_limits<int>::max(), source, ": shape ",
               detail_npy::shape_text(h.shape), " has K = ", h.shape[1], "; K must be >= 1");
  const std::size_t item = h.descr == "<i4" ? 4 : 8;
  const auto T = static_cast<std::uint64_t>(h.shape[0]), K = static_cast<std::uint64_t>(h.shape[1]);
  const std::uint64_t limit = std::numeric_limits<std::size_t>::max() / 8;
  LLEP_EXPECTS(T <= limit / K, source, ": shape ", detail_npy::shape_text(h.shape), " is too large");
  const std::size_t count = static_cast<std::size_t>(T * K), need = count * item;
  const std::size_t have = bytes.size() - h.data_offset;
  LLEP_EXPECTS(have >= need, source, ": truncated data: shape ", detail_npy::shape_text(h.shape), " of '", h.descr,
               "' needs ", need, " bytes, the file has ", have);
  // np.load would ignore them, but extra bytes mean the file is not what its header says.
  LLEP_EXPECTS(have == need, source, ": ", have - need, " bytes after the ", need, " bytes of data the shape ",
               detail_npy::shape_text(h.shape), " announces");
  TopkIds out;
  out.tokens = h.shape[0];
  out.top_k = static_cast<int>(h.shape[1]);
  out.ids.resize(count);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data()) + h.data_offset;
  for (std::size_t i = 0; i < count; ++i, p += item) {
    const std::uint64_t v = detail_npy::read_le(p, item);
    // Sign-extend: two's complement of the stored width.
    out.ids[i] = item == 4 ? static_cast<std::int64_t>(static_cast<std::int32_t>(static_cast<std::uint32_t>(v)))
                           : static_cast<std::int64_t>(v);
  }
  return out;
}

/// Reads a .npy trace file (see parse_topk_ids): a regular file of at most `max_bytes`;
/// errors start with the path.
[[nodiscard]] inline TopkIds load_topk_ids(const std::string& path, std::uint64_t max_bytes = kMaxTraceFileBytes) {
  const std::string bytes = read_regular_file(path, max_bytes, ".npy trace");
  return parse_topk_ids(bytes, path);
}

/// First token of rank `rank` when `tokens` tokens are split over `ranks` ranks in
/// contiguous blocks of near-equal size: rank p holds [first(p), first(p + 1)), where
/// first(p) = floor(p * tokens / ranks). Block sizes differ by at most one (the larger ones
/// last); with fewer tokens than ranks, some ranks hold none.
[[nodiscard]] inline std::int64_t first_token_of(int rank, std::int64_t tokens, int ranks) noexcept {
  // 128-bit-free: tokens <= 2^63 / ranks is not guaranteed, so divide before multiplying.
  const std::int64_t q = tokens / ranks, r = tokens % ranks;
  return q * rank + r * rank / ranks;
}

/// The counts matrix C[P][N] (row-major) of a trace whose tokens are split over `ranks`
/// ranks as first_token_of says. Throws llep::Error naming `source`, the id and its
/// position when an id is outside [0, experts).
[[nodiscard]] inline std::vector<count_t> trace_counts(const TopkIds& trace, int ranks, int experts,
                                                       std::string_view source) {
  LLEP_EXPECTS(ranks > 0, "ranks P = ", ranks, " must be > 0");
  LLEP_EXPECTS(experts > 0, "experts N = ", experts, " must be > 0");
  const auto N = static_cast<std::size_t>(experts);
  std::vector<count_t> c(static_cast<std::size_t>(ranks) * N, 0);
  for (int p = 0; p < ranks; ++p) {
    const std::int64_t b = first_token_of(p, trace.tokens, ranks), e = first_token_of(p + 1, trace.tokens, ranks);
    count_t* row = c.data() + static_cast<std::size_t>(p) * N;
    for (std::int64_t t = b; t < e; ++t)
      for (int k = 0; k < trace.top_k; ++k) {
        const std::int64_t id = trace(t, k);
        LLEP_EXPECTS(id >= 0 && id < experts, source, ": expert id ", id, " at token ", t, ", slot ", k,
                     " (element ", t * trace.top_k + k, ") is outside [0, N = ", experts, ")");
        ++row[static_cast<std::size_t>(id)];
      }
  }
  return c;
}

}  // namespace llep::sim
