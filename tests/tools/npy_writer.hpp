#pragma once
// Writes .npy files byte by byte for the tests of the trace reader and llep-replay: good
// ones (int32 / int64, format 1.0, 2.0, 3.0) and deliberately broken ones, without NumPy.
#include <doctest/doctest.h>

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace testutil {

struct NpySpec {
  std::string descr = "<i4";
  std::string shape;  // Python tuple text; empty: "(rows, k)" from the values
  bool fortran = false;
  int version = 1;
  std::string magic = std::string("\x93NUMPY", 6);
  std::size_t item = 0;  // bytes per value; 0: from descr (<i8: 8, otherwise 4)
};

/// The bytes of a .npy file holding `values` (row-major) under the header `spec` gives.
inline std::string npy_bytes(const std::vector<std::int64_t>& values, std::int64_t rows, std::int64_t k,
                             const NpySpec& spec = {}) {
  const std::string shape =
      spec.shape.empty() ? "(" + std::to_string(rows) + ", " + std::to_string(k) + ")" : spec.shape;
  std::string header = "{'descr': '" + spec.descr + "', 'fortran_order': " + (spec.fortran ? "True" : "False") +
                       ", 'shape': " + shape + ", }";
  const std::size_t len_size = spec.version == 1 ? 2 : 4;
  const std::size_t pre = spec.magic.size() + 2 + len_size;
  header.append((64 - (pre + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string out = spec.magic;
  out += static_cast<char>(spec.version);
  out += '\0';
  for (std::size_t b = 0; b < len_size; ++b) out += static_cast<char>((header.size() >> (8 * b)) & 0xff);
  out += header;
  const std::size_t item = spec.item ? spec.item : spec.descr == "<i8" ? 8 : 4;
  for (std::int64_t v : values) {
    const auto u = static_cast<std::uint64_t>(v);
    for (std::size_t b = 0; b < item; ++b) out += static_cast<char>((u >> (8 * b)) & 0xff);
  }
  return out;
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  REQUIRE_MESSAGE(f.good(), "cannot write ", path);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(f.good());
}

/// A fresh directory under /tmp, removed with everything in it at scope exit.
struct TempDir {
  std::string path;
  TempDir() {
    char name[] = "/tmp/llep-replay-test-XXXXXX";
    REQUIRE(::mkdtemp(name) != nullptr);
    path = name;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] std::string operator/(const std::string& name) const { return path + "/" + name; }
};

}  // namespace testutil
