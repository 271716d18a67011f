// CudaExec::sort_by_expert in the caller's scratch (issue 10's leftover, issue 14): the same
// stable order as HostExec's, with nothing allocated by the exec (internal_capacity stays
// 0); a scratch smaller than sort_scratch_bytes throws before any work; the size never
// decreases with n (what sizing the layer's scratch by the most pairs relies on); and a
// GPU layer run in an engine-supplied workspace of exactly workspace_bytes(limits) leaves
// the exec's internal buffer empty: the step allocated nothing.
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <random>
#include <span>
#include <string>
#include <vector>

#include "device_array.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/exec/host.hpp"
#include "llep/experts/cublas_swiglu.cuh"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/peer_copy.cuh"

using gputest::DeviceArray;

TEST_CASE("sort_by_expert in caller scratch: HostExec's order, and the exec allocates nothing") {
  std::mt19937_64 rng(8);
  llep::HostExec host;
  llep::CudaExec dev;
  for (const int bins : {1, 2, 7, 64, 384, 1000})
    for (const std::size_t n : {std::size_t{1}, std::size_t{5}, std::size_t{1000}, std::size_t{100000}}) {
      CAPTURE(bins);
      CAPTURE(n);
      std::vector<std::int32_t> ids(n);
      for (auto& id : ids) id = static_cast<std::int32_t>(rng() % static_cast<unsigned>(bins));
      std::vector<std::int32_t> want(n);
      host.sort_by_expert(ids.data(), n, bins, want.data());
      DeviceArray<std::int32_t> d_ids(ids), d_order(n);
      DeviceArray<std::byte> scratch(llep::CudaExec::sort_scratch_bytes(n, bins));
      dev.sort_by_expert(d_ids.get(), n, bins, d_order.get(), std::span<std::byte>(scratch.get(), scratch.size()));
      dev.synchronize();
      CHECK(d_order.download() == want);
      CHECK(dev.internal_capacity() == 0);
    }
}

TEST_CASE("sort_by_expert refuses scratch smaller than sort_scratch_bytes, naming both sizes") {
  llep::CudaExec dev;
  const std::size_t n = 4096;
  DeviceArray<std::int32_t> d_ids(std::vector<std::int32_t>(n, 1)), d_order(n);
  const std::size_t need = llep::CudaExec::sort_scratch_bytes(n, 8);
  DeviceArray<std::byte> scratch(need);
  const std::string names = std::to_string(need) + " bytes of scratch but was given " + std::to_string(need - 1);
  CHECK_THROWS_WITH_AS(
      dev.sort_by_expert(d_ids.get(), n, 8, d_order.get(), std::span<std::byte>(scratch.get(), need - 1)),
      doctest::Contains(names.c_str()), llep::Error);
}

TEST_CASE("sort_scratch_bytes never decreases with n") {
  std::mt19937_64 rng(4);
  for (const int bins : {1, 2, 64, 384, 4096}) {
    CAPTURE(bins);
    std::size_t last = 0;
    std::vector<std::size_t> ns;
    for (std::size_t n = 1; n <= 20000; ++n) ns.push_back(n);
    for (std::size_t n = 20000; n < (std::size_t{1} << 26); n += 1 + rng() % (n / 8)) ns.push_back(n);
    for (const std::size_t n : ns) {
      const std::size_t b = llep::CudaExec::sort_scratch_bytes(n, bins);
      if (b < last) {
        CAPTURE(n);
        FAIL("sort_scratch_bytes(", n, ") = ", b, " < ", last);
      }
      last = b;
    }
  }
}

TEST_CASE("a GPU layer step in a workspace of exactly workspace_bytes(limits) leaves the exec's own buffer empty") {
  using T = float;
  using Experts = llep::CublasSwiGlu<T, llep::SiluGlu, llep::GemmMode::per_expert>;
  using Layer = llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::PeerCopy, Experts, llep::CudaExec>;
  const int P = 1, N = 8, K = 2, D = 32, H = 64;
  const llep::count_t B = 300;
  const llep::Topology topo(P, N);
  const llep::ExpertShape shape{D, H, false};
  cudaStream_t stream = nullptr;
  LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  llep::PeerCopyGroup group({llep::PeerCopyRank{0, stream}});
  const llep::LayerLimits limits = Layer::make_limits(topo, K, llep::LeastLoaded{}, Experts(shape), B);
  const std::size_t bytes = Layer::workspace_bytes(limits);
  DeviceArray<std::byte> ws(bytes);
  std::mt19937_64 rng(12);
  std::size_t internal = 1;
  llep::run_ranks(group, [&](llep::PeerCopy& t) {
    Layer layer(topo, K, llep::LeastLoaded{}, Experts(shape), t,
                llep::CudaExec(stream, llep::CudaWorkspace::fixed(ws.get(), bytes)));
    std::vector<float> w(static_cast<std::size_t>(N) * Experts(shape).weight_elems());
    for (auto& v : w) v = static_cast<float>(static_cast<int>(rng() % 200) - 100) * 1e-3f;
    DeviceArray<float> d_w(w);
    layer.set_native_weights(std::span<const T>(d_w.get(), d_w.size()));
    layer.reserve(limits);
    for (const llep::count_t tokens : {B, llep::count_t{1}, B / 2, B}) {
      std::vector<float> x(static_cast<std::size_t>(tokens) * D, 0.5f), gates(static_cast<std::size_t>(tokens) * K, 0.5f);
      std::vector<std::int32_t> ids(static_cast<std::size_t>(tokens) * K);
      for (auto& id : ids) id = rng() % 4 == 0 ? 0 : static_cast<std::int32_t>(rng() % N);
      DeviceArray<float> d_x(x), d_g(gates), d_out(x.size());
      DeviceArray<std::int32_t> d_ids(ids);
      layer.forward(std::span<const T>(d_x.get(), d_x.size()), std::span<const std::int32_t>(d_ids.get(), d_ids.size()),
                    std::span<const float>(d_g.get(), d_g.size()), std::span<T>(d_out.get(), d_out.size()));
      LLEP_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    internal = layer.exec().internal_capacity();
  });
  CHECK(internal == 0);
  LLEP_CUDA_CHECK(cudaStreamDestroy(stream));
}
