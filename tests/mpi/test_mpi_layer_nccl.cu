// The multi-process layer checks of test_mpi_layer.cpp (layer_body.hpp, the same body) over
// the Nccl transport: one process per GPU, the ncclUniqueId over MPI (unique_id_via_mpi),
// CudaExec and cuBLAS experts in fp32. Needs as many GPUs as processes (else SKIP, exit 77):
// compiled wherever CUDA, NCCL and MPI are found, run on a machine with 2+ GPUs.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <chrono>
#include <span>
#include <vector>

#include "../gpu/device_array.hpp"
#include "layer_body.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/experts/cublas_swiglu.cuh"
#include "llep/layer/moe_layer.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/nccl.hpp"
#include "llep/transport/nccl_bootstrap_mpi.hpp"

namespace {

using gputest::DeviceArray;

// Device memory: Nccl on this process's GPU, CudaExec, CublasSwiGlu<float> (full fp32).
struct DeviceNccl {
  static constexpr double tolerance = 1e-4;  // fp32, as tests/gpu/test_gpu_layer.cu
  struct Stream {
    cudaStream_t s = nullptr;
    Stream() {
      int devices = 0;
      LLEP_CUDA_CHECK(cudaGetDeviceCount(&devices));
      LLEP_CUDA_CHECK(cudaSetDevice(mpitest::world_rank() % devices));
      LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    }
    ~Stream() { (void)cudaStreamDestroy(s); }
  } stream;
  llep::Nccl transport;

  explicit DeviceNccl(std::chrono::milliseconds timeout)
      : transport(llep::Nccl::init(mpitest::world_size(), mpitest::world_rank(),
                                   llep::unique_id_via_mpi(MPI_COMM_WORLD), stream.s,
                                   llep::NcclOptions{.timeout = timeout})) {}

  template <class Plnr>
  struct Run {
    using Experts = llep::CublasSwiGlu<float>;
    using Layer = llep::MoeLayer<llep::ExactCounts, Plnr, llep::Nccl, Experts, llep::CudaExec>;
    DeviceNccl& b;
    DeviceArray<float> w;
    Layer layer;
    Run(DeviceNccl& backend, const llep::Topology& topo, int K, Plnr planner, const dense::Moe& moe,
        const std::vector<float>& weights)
        : b(backend),
          w(weights),
          layer(topo, K, planner, Experts(llep::ExpertShape{moe.hidden, moe.intermediate, false}), backend.transport,
                llep::CudaExec(backend.stream.s)) {
      layer.set_native_weights(std::span<const float>(w.get(), w.size()));
    }
    std::vector<float> forward(const mpitest::RankInput& in, llep::StepReport& report) {
      DeviceArray<float> x(in.x), gates(in.gates), out(in.x.size());
      DeviceArray<std::int32_t> ids(in.ids);
      report = layer.forward(std::span<const float>(x.get(), x.size()), std::span<const std::int32_t>(ids.get(), ids.size()),
                             std::span<const float>(gates.get(), gates.size()), std::span<float>(out.get(), out.size()));
      b.transport.synchronize();
      return out.download();
    }
  };
};

}  // namespace

TEST_CASE("Nccl MoeLayer across processes equals the dense MoE, for every planner, bit-identical across steps") {
  mpitest::check_every_planner<DeviceNccl>();
}

TEST_CASE("Nccl MoeLayer across processes: a bad expert id on one process is llep::Error on every process") {
  mpitest::check_bad_expert_id<DeviceNccl>();
}
