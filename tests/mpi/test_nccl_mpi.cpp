// nccl_bootstrap_mpi.hpp under mpirun, no GPU needed: every process gets the root's id; a
// root that fails to make one gives llep::Error on every process. Needs NCCL's headers and
// library (and MPI); only the case that calls ncclGetUniqueId tolerates a machine where
// NCCL cannot make one.
#include <doctest/doctest.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include "../common/errors.hpp"
#include "layer_body.hpp"
#include "llep/transport/nccl_bootstrap_mpi.hpp"

namespace {

ncclUniqueId sample_id(int seed) {
  ncclUniqueId id{};
  for (std::size_t i = 0; i < sizeof(id.internal); ++i) id.internal[i] = static_cast<char>((i * 37 + seed * 11) & 0xff);
  return id;
}

// Every process's hex, gathered on every process.
std::vector<std::string> hex_everywhere(const ncclUniqueId& id) {
  const std::string mine = llep::unique_id_to_hex(id);
  const int P = mpitest::world_size();
  std::vector<char> all(mine.size() * static_cast<std::size_t>(P));
  MPI_Allgather(mine.data(), static_cast<int>(mine.size()), MPI_CHAR, all.data(), static_cast<int>(mine.size()),
                MPI_CHAR, MPI_COMM_WORLD);
  std::vector<std::string> out;
  for (int q = 0; q < P; ++q) out.emplace_back(all.data() + q * mine.size(), mine.size());
  return out;
}

}  // namespace

TEST_CASE("unique_id_via_mpi: every process gets the id the root made, for every root") {
  const int P = mpitest::world_size(), me = mpitest::world_rank();
  for (int root = 0; root < P; ++root) {
    llep::Mpi mpi(MPI_COMM_WORLD);
    // Each process would make a different id: only the root's may come back.
    const ncclUniqueId got = llep::unique_id_via_mpi(mpi, root, [&] { return sample_id(100 + me); });
    INFO("root ", root, ", rank ", me);
    CHECK(llep::unique_id_to_hex(got) == llep::unique_id_to_hex(sample_id(100 + root)));
    for (const auto& h : hex_everywhere(got)) CHECK(h == llep::unique_id_to_hex(got));
  }
}

TEST_CASE("unique_id_via_mpi: a root that cannot make the id gives llep::Error on every process, promptly") {
  const int P = mpitest::world_size(), me = mpitest::world_rank();
  llep::Mpi mpi(MPI_COMM_WORLD, {.timeout = std::chrono::seconds(30)});
  const auto start = std::chrono::steady_clock::now();
  const std::string e = testutil::error_of([&] {
    (void)llep::unique_id_via_mpi(mpi, P - 1, []() -> ncclUniqueId { throw llep::Error("no network for NCCL"); });
  });
  INFO("rank ", me, ": ", e);
  CHECK(e.find("no network for NCCL") != std::string::npos);  // the root's own, or the notice naming it
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(10));
}

TEST_CASE("unique_id_via_mpi(MPI_Comm) with ncclGetUniqueId: the same id everywhere") {
  std::string failure;
  ncclUniqueId id{};
  try {
    id = llep::unique_id_via_mpi(MPI_COMM_WORLD);
  } catch (const llep::Error& e) {
    failure = e.what();
  }
  // ncclGetUniqueId needs a usable network interface, not a GPU; where it fails, every
  // process must have failed (the root aborted the exchange).
  int failed = failure.empty() ? 0 : 1, all_failed = 0;
  MPI_Allreduce(&failed, &all_failed, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  CHECK(failed == all_failed);
  if (failed != 0) {
    MESSAGE("ncclGetUniqueId cannot run here (", failure, "); the cases above cover the exchange");
    return;
  }
  for (const auto& h : hex_everywhere(id)) CHECK(h == llep::unique_id_to_hex(id));
}
