// Nccl::adopt on one GPU: the engine's communicator (made here with ncclCommInitRank, and a
// split of it for the weights) and stream carry the layer's step, which equals the dense
// MoE; Nccl creates no communicator and, once gone, leaves the engine's usable and for the
// engine to destroy. One rank: NCCL refuses two ranks on one GPU (tests/mpi has P > 1).
// NcclSymmetricMemory (NCCL 2.28 symmetric window and LSA pointers) carries the symmetric
// exchanges of tests/device/symmetric_cases.hpp, eager and replayed from a CUDA graph.
#include <doctest/doctest.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "../common/dense_moe.hpp"
#include "../common/errors.hpp"
#include "device_array.hpp"
#include "symmetric_steps.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/device/symmetric_exchange.hpp"
#include "llep/device/symmetric_nccl.cuh"
#include "llep/exec/cuda.cuh"
#include "llep/experts/cublas_swiglu.cuh"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/sim/routing.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/nccl.hpp"
#include "llep/transport/nccl_bootstrap.hpp"

namespace {

using gputest::DeviceArray;

// The engine's side: a communicator of one rank on device 0, and a stream.
struct Engine {
  cudaStream_t stream = nullptr;
  ncclComm_t comm = nullptr, weights = nullptr;
  explicit Engine(bool split) {
    LLEP_CUDA_CHECK(cudaSetDevice(0));
    LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    LLEP_NCCL_CHECK(ncclCommInitRank(&comm, 1, llep::new_unique_id(), 0));
    if (split) LLEP_NCCL_CHECK(ncclCommSplit(comm, 0, 0, &weights, nullptr));
  }
  // The engine's communicators still work after Nccl is gone: a one-int all-reduce each.
  bool usable() const {
    DeviceArray<int> one(std::vector<int>{1});
    for (ncclComm_t c : {comm, weights}) {
      if (c == nullptr) continue;
      if (ncclAllReduce(one.get(), one.get(), 1, ncclInt32, ncclSum, c, stream) != ncclSuccess) return false;
    }
    return cudaStreamSynchronize(stream) == cudaSuccess && one.download()[0] == 1;
  }
  ~Engine() {
    if (weights != nullptr) CHECK(ncclCommDestroy(weights) == ncclSuccess);
    CHECK(ncclCommDestroy(comm) == ncclSuccess);  // destroyed once, here: Nccl did not
    (void)cudaStreamDestroy(stream);
  }
};

}  // namespace

TEST_CASE("Nccl::adopt runs the layer on the engine's communicator and stream, and leaves them to the engine") {
  const int N = 8, K = 4, D = 64, H = 32, B = 48;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 31);
  std::vector<float> x(static_cast<std::size_t>(B * D)), gates(static_cast<std::size_t>(B * K));
  std::vector<std::int32_t> ids(gates.size());
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i)));
  llep::sim::random_routing(32, N, K, llep::sim::Skew{1, 0.9}, std::span<std::int32_t>(ids), std::span<float>(gates));
  std::vector<double> xd(x.begin(), x.end()), gd(gates.begin(), gates.end());
  const auto ref = moe.forward(xd, ids, gd, K);

  for (const bool split : {false, true}) {
    INFO("weights communicator from the engine: ", split);
    Engine engine(split);
    {
      auto t = llep::Nccl::adopt(engine.comm, engine.stream, {}, engine.weights);
      CHECK(!t.owns_comms());
      CHECK(t.comm() == engine.comm);
      CHECK(t.stream() == engine.stream);
      CHECK(t.rank() == 0);
      CHECK(t.size() == 1);
      CHECK(t.options().overlap_weights == split);
      CHECK((t.weights_stream() != engine.stream) == split);
      using Experts = llep::CublasSwiGlu<float>;
      DeviceArray<float> w(moe.packed_rank<float>(0, 1)), dx(x), dg(gates), out(x.size());
      DeviceArray<std::int32_t> di(ids);
      llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::Nccl, Experts, llep::CudaExec> layer(
          llep::Topology(1, N), K, llep::LeastLoaded{1.0, 8}, Experts(llep::ExpertShape{D, H, false}), t,
          llep::CudaExec(engine.stream));
      layer.set_native_weights(std::span<const float>(w.get(), w.size()));
      for (int s = 0; s < 2; ++s)
        layer.forward(std::span<const float>(dx.get(), dx.size()), std::span<const std::int32_t>(di.get(), di.size()),
                      std::span<const float>(dg.get(), dg.size()), std::span<float>(out.get(), out.size()));
      t.synchronize();
      const auto got = out.download();
      double err = 0, scale = 1e-3;
      for (std::size_t i = 0; i < ref.size(); ++i) {
        scale = std::max(scale, std::abs(ref[i]));
        err = std::max(err, std::abs(static_cast<double>(got[i]) - ref[i]));
      }
      CHECK(err <= 1e-4 * scale);  // fp32 cuBLAS, as tests/gpu/test_gpu_layer.cu
    }
    CHECK(engine.usable());
  }
}

TEST_CASE("symmetric exchanges over an NCCL symmetric window (one rank), eager and from a CUDA graph") {
  Engine engine(false);
  auto t = llep::Nccl::adopt(engine.comm, engine.stream);
  const symtest::Rig rig(1, 4, 6, 48, 96);
  std::mt19937_64 rng(28);
  std::vector<symtest::StepCase> cases;
  for (int s = 0; s < 5; ++s) cases.push_back(symtest::make_step(rng, 1, rig.N, s, rig.max_rows));
  for (const bool graph : {false, true}) {
    CAPTURE(graph);
    llep::CudaExec exec(engine.stream);
    gputest::SymmetricBuffers mem(rig);
    llep::StatusWords status(exec, mem.words.get(), 1);
    const llep::NcclSymmetricMemory sym(t, rig.layout);
    const auto got = gputest::rank_steps(exec, sym.view(), rig, cases, graph, mem.view(), status);
    CHECK(testutil::error_of([&] { status.check_mine(exec, 0, rig.N); }) == testutil::kNoError);
    for (const symtest::StepCase& c : cases) CHECK(got[static_cast<std::size_t>(c.step)] == symtest::expected_step(rig, c, 0));
  }
}
