// 05: the same MoE layer on GPUs. P logical ranks, each a host thread with its own CUDA
// stream, spread over the visible devices (all on one when there is one); PeerCopy moves
// tokens and weights with cudaMemcpyPeerAsync, CudaExec runs the layer's kernels on the
// rank's stream and CublasSwiGlu the experts. The output is checked against the host layer
// (HostMoeLayer) on the same inputs. Without a device it says so and exits 77 (skipped).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <span>
#include <vector>

#include "llep/core/cuda_check.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/experts/cublas_swiglu.cuh"
#include "llep/layer/host_layer.hpp"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/peer_copy.cuh"

namespace {

// A device copy of a host vector, freed on scope exit.
template <class V>
struct DeviceVector {
  V* ptr = nullptr;
  std::size_t n = 0;
  explicit DeviceVector(const std::vector<V>& host) : n(host.size()) {
    LLEP_CUDA_CHECK(cudaMalloc(&ptr, std::max<std::size_t>(n, 1) * sizeof(V)));
    LLEP_CUDA_CHECK(cudaMemcpy(ptr, host.data(), n * sizeof(V), cudaMemcpyHostToDevice));
  }
  DeviceVector(const DeviceVector&) = delete;
  DeviceVector& operator=(const DeviceVector&) = delete;
  ~DeviceVector() { (void)cudaFree(ptr); }
  std::span<V> span() const { return {ptr, n}; }
};

}  // namespace

int run() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("gpu-layer: no CUDA device here: nothing to run (skipped)\n");
    return 77;
  }
  constexpr int P = 4, N = 16, K = 2, B = 256;
  const llep::ExpertShape shape{.hidden = 64, .intermediate = 128};
  const llep::Topology topo(P, N);
  const llep::LeastLoaded planner{.alpha = 1.0, .min_tokens_per_gemm = 32};

  // Inputs on the host: weights of every expert, tokens routed mostly to experts 0 and 1.
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0F, 0.2F);
  const std::size_t welems = shape.elems(), per_rank = static_cast<std::size_t>(N / P) * welems;
  std::vector<float> weights(static_cast<std::size_t>(N) * welems);
  for (float& w : weights) w = normal(rng);
  std::vector<std::vector<float>> x(P), gates(P), host_out(P), gpu_out(P);
  std::vector<std::vector<std::int32_t>> ids(P);
  for (int p = 0; p < P; ++p) {
    for (int i = 0; i < B * shape.hidden; ++i) x[p].push_back(normal(rng));
    for (int b = 0; b < B; ++b) {
      const int first = b % 4 == 3 ? b % N : b % 2;
      ids[p].insert(ids[p].end(), {first, (first + 1 + b % (N - 1)) % N});
      gates[p].insert(gates[p].end(), {0.6F, 0.4F});
    }
    host_out[p].resize(x[p].size());
    gpu_out[p].resize(x[p].size());
  }

  // The GPU layer: one stream per rank (the caller's; CudaExec refuses the legacy stream 0).
  std::vector<llep::PeerCopyRank> where;
  for (int p = 0; p < P; ++p) {
    LLEP_CUDA_CHECK(cudaSetDevice(p % devices));
    cudaStream_t s = nullptr;
    LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    where.push_back({p % devices, s});
  }
  using Experts = llep::CublasSwiGlu<float>;
  using GpuLayer = llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::PeerCopy, Experts, llep::CudaExec>;
  std::size_t transfers = 0;
  {
    llep::PeerCopyGroup group(where);
    llep::run_ranks(group, [&](llep::PeerCopy& t) {  // the rank's device is current here
      const int p = t.rank();
      const DeviceVector<float> w(std::vector<float>(weights.begin() + p * per_rank,
                                                     weights.begin() + (p + 1) * per_rank));
      const DeviceVector<float> dx(x[p]), dgates(gates[p]);
      const DeviceVector<std::int32_t> dids(ids[p]);
      DeviceVector<float> dout(gpu_out[p]);
      // A pageable upload may still be in flight when cudaMemcpy returns, and the rank's
      // non-blocking stream does not wait for it: finish the uploads first.
      LLEP_CUDA_CHECK(cudaDeviceSynchronize());
      GpuLayer layer(topo, K, planner, Experts(shape), t, llep::CudaExec(where[p].stream));
      layer.set_native_weights(std::span<const float>(w.ptr, w.n));
      const llep::StepReport& r = layer.forward(std::span<const float>(dx.span()), std::span<const std::int32_t>(dids.span()),
                                                std::span<const float>(dgates.span()), dout.span());
      // forward returns before the work is done: wait for the rank's stream, then read.
      LLEP_CUDA_CHECK(cudaStreamSynchronize(where[p].stream));
      LLEP_CUDA_CHECK(cudaMemcpy(gpu_out[p].data(), dout.ptr, dout.n * sizeof(float), cudaMemcpyDeviceToHost));
      if (p == 0) transfers = r.weight_transfers;
    });
  }
  for (const llep::PeerCopyRank& r : where) (void)cudaStreamDestroy(r.stream);

  // The host layer on the same inputs.
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    llep::HostMoeLayer<llep::LeastLoaded> layer(topo, K, planner, llep::HostSwiGlu<float>(shape), t);
    layer.set_native_weights(std::span<const float>(weights).subspan(p * per_rank, per_rank));
    layer.forward(std::span<const float>(x[p]), std::span<const std::int32_t>(ids[p]),
                  std::span<const float>(gates[p]), std::span<float>(host_out[p]));
  });

  double worst = 0, scale = 0;
  for (int p = 0; p < P; ++p)
    for (std::size_t i = 0; i < host_out[p].size(); ++i) {
      worst = std::max(worst, double(std::abs(host_out[p][i] - gpu_out[p][i])));
      scale = std::max(scale, double(std::abs(host_out[p][i])));
    }
  // cuBLAS may sum in another order (or in TF32): a loose bound relative to the output scale.
  const bool ok = worst <= 2e-3 * scale;
  std::printf("gpu-layer: P = %d ranks on %d device(s), %zu weight transfers; max |GPU - host| = %.2e "
              "(output scale %.2f): %s\n",
              P, devices, transfers, worst, scale, ok ? "agree" : "DIFFER");
  return ok ? 0 : 1;
}

int main() {
  try {
    return run();
  } catch (const llep::Error& e) {  // CUDA, cuBLAS and layer errors, from any rank
    std::printf("gpu-layer: error: %s\n", e.what());
    return 1;
  }
}
