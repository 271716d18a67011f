#pragma once
// Bootstrap for the Nccl transport over MPI: rank `root` creates the ncclUniqueId and every
// rank of the MPI communicator receives it, through the Mpi transport (so the exchange has
// its deadline, and a root that fails releases the others with llep::Error). Needs <nccl.h>
// and <mpi.h>; docs/multiprocess.md.
//
//   MPI_Init(&argc, &argv);
//   int rank, size;  MPI_Comm_rank(comm, &rank);  MPI_Comm_size(comm, &size);
//   cudaSetDevice(local_rank);
//   auto t = llep::Nccl::init(size, rank, llep::unique_id_via_mpi(comm), stream);
#include <nccl.h>

#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "llep/core/error.hpp"
#include "llep/transport/mpi.hpp"
#include "llep/transport/nccl_bootstrap.hpp"

namespace llep {

/// Every rank of `mpi` gets the id `make_id()` returns on rank `root` (collective). A
/// make_id that throws on the root aborts `mpi`: every rank throws llep::Error.
template <class MakeId>
[[nodiscard]] ncclUniqueId unique_id_via_mpi(Mpi& mpi, int root, MakeId&& make_id) {
  LLEP_EXPECTS(root >= 0 && root < mpi.size(), "unique_id_via_mpi: root ", root, " is outside [0, ", mpi.size(), ")");
  ncclUniqueId mine{};
  if (mpi.rank() == root) {
    try {
      mine = make_id();
    } catch (const std::exception& e) {
      mpi.abort(detail::concat("creating the ncclUniqueId failed: ", e.what()));
      throw;
    }
  }
  auto all = std::make_unique<std::vector<ncclUniqueId>>(static_cast<std::size_t>(mpi.size()));
  try {
    mpi.all_gather(&mine, sizeof(ncclUniqueId), all->data());
  } catch (...) {
    (void)all.release();  // an abandoned gather may still write into it (mpi.hpp): never freed
    throw;
  }
  return (*all)[static_cast<std::size_t>(root)];
}

/// unique_id_via_mpi with llep::new_unique_id() on the root.
[[nodiscard]] inline ncclUniqueId unique_id_via_mpi(Mpi& mpi, int root = 0) {
  return unique_id_via_mpi(mpi, root, [] { return new_unique_id(); });
}

/// The same over `comm` (duplicated for the exchange, then freed; collective over comm).
[[nodiscard]] inline ncclUniqueId unique_id_via_mpi(MPI_Comm comm, int root = 0, MpiOptions options = {}) {
  Mpi mpi(comm, options);
  return unique_id_via_mpi(mpi, root);
}

}  // namespace llep
