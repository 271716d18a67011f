#pragma once
// Bootstrap for the Nccl transport: who am I (launch_from_env) and the shared
// ncclUniqueId (an environment variable, or a file on a shared filesystem). Needs only
// <nccl.h>; ncclGetUniqueId is called by new_unique_id() alone.
//
//   auto L = llep::launch_from_env();                         // torchrun, mpirun, srun, plain
//   auto id = llep::unique_id_via_file("/shared/job42.id", L.rank);
//   cudaSetDevice(L.local_rank);
//   auto t = llep::Nccl::init(L.world_size, L.rank, id, stream);
//
// Or: the launcher exports LLEP_NCCL_ID=$(a program printing llep::unique_id_to_hex(
// llep::new_unique_id())) to every rank, and each calls llep::unique_id_from_env().
#include <nccl.h>

#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>

#include "llep/core/error.hpp"

namespace llep {

/// ncclUniqueId as 2 * NCCL_UNIQUE_ID_BYTES lowercase hex digits.
[[nodiscard]] inline std::string unique_id_to_hex(const ncclUniqueId& id) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * sizeof(id.internal));
  for (const char c : id.internal) {
    const auto b = static_cast<unsigned char>(c);
    out += digits[b >> 4];
    out += digits[b & 0xf];
  }
  return out;
}

/// The inverse of unique_id_to_hex; surrounding whitespace is ignored, upper case accepted.
/// A wrong length or a non-hex digit throws llep::Error naming it.
[[nodiscard]] inline ncclUniqueId unique_id_from_hex(std::string_view hex) {
  const auto space = [](char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; };
  while (!hex.empty() && space(hex.front())) hex.remove_prefix(1);
  while (!hex.empty() && space(hex.back())) hex.remove_suffix(1);
  ncclUniqueId id{};
  LLEP_EXPECTS(hex.size() == 2 * sizeof(id.internal), "ncclUniqueId hex has ", hex.size(), " digits; expected ",
               2 * sizeof(id.internal), " (2 per byte of NCCL_UNIQUE_ID_BYTES)");
  const auto value = [&](std::size_t i) {
    const char c = hex[i];
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    LLEP_FAIL("ncclUniqueId hex has '", c, "' at position ", i, "; expected a digit 0-9, a-f or A-F");
  };
  for (std::size_t i = 0; i < sizeof(id.internal); ++i)
    id.internal[i] = static_cast<char>(value(2 * i) * 16 + value(2 * i + 1));
  return id;
}

/// A fresh id (ncclGetUniqueId): call on one rank only, then share it.
[[nodiscard]] inline ncclUniqueId new_unique_id() {
  ncclUniqueId id{};
  const ncclResult_t r = ncclGetUniqueId(&id);
  LLEP_EXPECTS(r == ncclSuccess, "ncclGetUniqueId failed: ", ncclGetErrorString(r), " (", ncclGetLastError(nullptr),
               ")");
  return id;
}

/// The id in environment variable `var` (hex, as unique_id_to_hex writes it). Unset or
/// malformed: llep::Error naming the variable.
[[nodiscard]] inline ncclUniqueId unique_id_from_env(const char* var = "LLEP_NCCL_ID") {
  const char* value = std::getenv(var);
  LLEP_EXPECTS(value != nullptr && *value != '\0', "environment variable ", var,
               " is not set; export the hex of llep::new_unique_id() (llep::unique_id_to_hex) to every rank");
  try {
    return unique_id_from_hex(value);
  } catch (const Error& e) {
    LLEP_FAIL("environment variable ", var, ": ", e.what());
  }
}

/// Writes `id` to `path` atomically (a temporary file in the same folder, then rename), so
/// a reader never sees a partial id.
inline void publish_unique_id(const std::filesystem::path& path, const ncclUniqueId& id) {
  std::random_device entropy;
  std::filesystem::path tmp = path;
  tmp += detail::concat(".tmp.", entropy(), entropy());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << unique_id_to_hex(id) << '\n';
    out.flush();
    LLEP_EXPECTS(out.good(), "cannot write the ncclUniqueId to ", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    LLEP_FAIL("cannot rename ", tmp, " to ", path, " (publishing the ncclUniqueId)");
  }
}

/// Polls `path` until it holds an id (written by publish_unique_id) or `timeout` passes:
/// then llep::Error naming the path.
[[nodiscard]] inline ncclUniqueId await_unique_id(const std::filesystem::path& path,
                                                  std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::ifstream in(path);
    if (in) {
      std::string hex;
      std::getline(in, hex);
      try {
        return unique_id_from_hex(hex);
      } catch (const Error& e) {
        LLEP_FAIL("the ncclUniqueId file ", path, " is malformed: ", e.what());
      }
    }
    if (std::chrono::steady_clock::now() >= deadline)
      LLEP_FAIL("waited ", timeout.count(), " ms for the ncclUniqueId file ", path,
                " that rank 0 writes; is rank 0 running, and is the path on a filesystem every rank sees?");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

/// Rank 0 creates the id and publishes it at `path`; every other rank waits for it. Use a
/// path fresh for each job (e.g. with the job id): a stale file from an earlier run would be
/// read by ranks that arrive before rank 0 replaces it.
[[nodiscard]] inline ncclUniqueId unique_id_via_file(const std::filesystem::path& path, int rank,
                                                     std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  LLEP_EXPECTS(rank >= 0, "unique_id_via_file: rank ", rank, " must be >= 0");
  if (rank == 0) {
    const ncclUniqueId id = new_unique_id();
    publish_unique_id(path, id);
    return id;
  }
  return await_unique_id(path, timeout);
}

/// This process's place in the job, as launchers export it.
struct Launch {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;  // the GPU index on this node, by convention

  friend bool operator==(const Launch&, const Launch&) = default;
};

namespace detail {
// The first of `names` that is set, parsed strictly as an int; nullopt when none is set.
inline std::optional<int> int_from_env(std::initializer_list<const char*> names) {
  for (const char* name : names) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') continue;
    int out = 0;
    const char* end = v + std::strlen(v);
    const auto [ptr, ec] = std::from_chars(v, end, out);
    LLEP_EXPECTS(ec == std::errc() && ptr == end, "environment variable ", name, " = '", v, "' is not an integer");
    return out;
  }
  return std::nullopt;
}
}  // namespace detail

/// Reads RANK / WORLD_SIZE / LOCAL_RANK (torchrun), else Open MPI's OMPI_COMM_WORLD_*,
/// else PMI_RANK / PMI_SIZE (MPICH, Intel MPI), else SLURM_PROCID / SLURM_NTASKS /
/// SLURM_LOCALID; none set: a single process {0, 1, 0}. LOCAL_RANK defaults to the rank.
/// Values outside their ranges throw llep::Error naming them.
[[nodiscard]] inline Launch launch_from_env() {
  Launch L;
  const auto rank = detail::int_from_env({"RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"});
  const auto size = detail::int_from_env({"WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"});
  const auto local =
      detail::int_from_env({"LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"});
  LLEP_EXPECTS(rank.has_value() == size.has_value(), "launch_from_env: found a ", rank ? "rank" : "world size",
               " variable but no ", rank ? "world size (WORLD_SIZE)" : "rank (RANK)", " variable");
  if (rank) {
    L.rank = *rank;
    L.world_size = *size;
  }
  L.local_rank = local.value_or(L.rank);
  LLEP_EXPECTS(L.world_size > 0, "launch_from_env: world size ", L.world_size, " must be > 0");
  LLEP_EXPECTS(L.rank >= 0 && L.rank < L.world_size, "launch_from_env: rank ", L.rank, " is outside [0, ",
               L.world_size, ")");
  LLEP_EXPECTS(L.local_rank >= 0, "launch_from_env: local rank ", L.local_rank, " must be >= 0");
  return L;
}

}  // namespace llep
