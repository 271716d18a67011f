// doctest's main for the multi-process suites, run under mpirun: every process runs every
// test case (they are collective). Counting: a test case is counted once, by rank 0's
// summary; the other ranks print failures only (doctest --minimal, which adds their own
// summary line when they fail). The exit code is the worst over all processes, so a case
// that failed on any rank fails the run (mpirun exits non-zero; scripts/summarize_tests.py
// counts that as a failure even if rank 0's summary shows none).
//
// With LLEP_MPI_NEED_GPUS (the NCCL suites): unless every process has a CUDA device of its
// own (devices >= processes), every process prints SKIP and exits 77 (meson: skipped).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <mpi.h>
#ifdef LLEP_MPI_NEED_GPUS
#include <cuda_runtime_api.h>

#include <cstdio>
#endif

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
#ifdef LLEP_MPI_NEED_GPUS
  int devices = 0, size = 1;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Allreduce(MPI_IN_PLACE, &devices, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (devices < size) {
    if (rank == 0) std::printf("SKIP: %d processes need as many CUDA devices; %d found\n", size, devices);
    MPI_Finalize();
    return 77;
  }
#endif
  doctest::Context ctx(argc, argv);
  // mpirun hands the processes a terminal: no colour codes, so the summary line parses.
  ctx.setOption("no-colors", true);
  if (rank != 0) ctx.setOption("minimal", true);
  int rc = ctx.run();
  if (ctx.shouldExit()) {
    MPI_Finalize();
    return rc;
  }
  MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return rc != 0 ? 1 : 0;
}
