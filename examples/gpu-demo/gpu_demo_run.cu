// llep-gpu-demo's device work: the same MoeLayer as the host demo, with CudaExec,
// CublasSwiGlu<bf16> and the PeerCopy transport.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "gpu_demo.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/experts/cublas_swiglu.cuh"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/peer_copy.cuh"

namespace llep::examples {
namespace {

using T = __nv_bfloat16;

template <class V>
struct Device {
  V* ptr = nullptr;
  std::size_t n = 0;
  explicit Device(const std::vector<V>& host) : n(host.size()) {
    if (n == 0) return;
    LLEP_CUDA_CHECK(cudaMalloc(&ptr, n * sizeof(V)));
    LLEP_CUDA_CHECK(cudaMemcpy(ptr, host.data(), n * sizeof(V), cudaMemcpyHostToDevice));
  }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  ~Device() { if (ptr) (void)cudaFree(ptr); }
};

std::vector<T> to_bf16(const std::vector<float>& v) {
  std::vector<T> o(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) o[i] = __float2bfloat16(v[i]);
  return o;
}

template <class Plnr, GemmMode Mode>
DemoRun run(const DemoOptions& o, const DemoScenario& sc, const Plnr& planner) {
  using Experts = CublasSwiGlu<T, SiluGlu, Mode>;
  int devices = 0;
  LLEP_CUDA_CHECK(cudaGetDeviceCount(&devices));
  std::vector<PeerCopyRank> where;
  std::vector<cudaStream_t> streams;
  for (int p = 0; p < o.ranks; ++p) {
    LLEP_CUDA_CHECK(cudaSetDevice(p % devices));
    cudaStream_t s = nullptr;
    LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    streams.push_back(s);
    where.push_back({p % devices, s});
  }
  DemoRun r;
  r.reports.resize(static_cast<std::size_t>(o.ranks));
  r.out.resize(static_cast<std::size_t>(o.ranks));
  {
    PeerCopyGroup group(where);
    const Topology topo(o.ranks, o.experts);
    run_ranks(group, [&](PeerCopy& t) {
      const auto p = static_cast<std::size_t>(t.rank());
      const Device<T> w(to_bf16(sc.native_weights(t.rank(), o.ranks))), x(to_bf16(sc.x[p]));
      const Device<float> gates(sc.gates[p]);
      const Device<std::int32_t> ids(sc.ids[p]);
      Device<T> out(std::vector<T>(sc.x[p].size()));
      // A pageable upload may still be in flight when cudaMemcpy returns, and the rank's
      // non-blocking stream does not wait for the legacy stream: finish the uploads first.
      LLEP_CUDA_CHECK(cudaDeviceSynchronize());
      MoeLayer<ExactCounts, Plnr, PeerCopy, Experts, CudaExec> layer(topo, o.top_k, planner, Experts(o.shape()), t,
                                                                     CudaExec(streams[p]));
      layer.set_native_weights(std::span<const T>(w.ptr, w.n));
      auto step = [&] {
        r.reports[p] = layer.forward(std::span<const T>(x.ptr, x.n), std::span<const std::int32_t>(ids.ptr, ids.n),
                                     std::span<const float>(gates.ptr, gates.n), std::span<T>(out.ptr, out.n));
        LLEP_CUDA_CHECK(cudaStreamSynchronize(streams[p]));
      };
      step();  // warm-up: workspace, cuBLAS handles
      for (int s = 0; s < o.steps; ++s) {
        t.barrier();
        const auto start = std::chrono::steady_clock::now();
        step();
        t.barrier();  // the step ends when the slowest rank's stream is done
        if (p == 0)
          r.step_ms.push_back(
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
      }
      const std::size_t rows = std::min(static_cast<std::size_t>(o.check_tokens), static_cast<std::size_t>(o.tokens));
      std::vector<T> host(rows * static_cast<std::size_t>(o.hidden));
      if (!host.empty())
        LLEP_CUDA_CHECK(cudaMemcpy(host.data(), out.ptr, host.size() * sizeof(T), cudaMemcpyDeviceToHost));
      r.out[p].resize(host.size());
      for (std::size_t i = 0; i < host.size(); ++i) r.out[p][i] = __bfloat162float(host[i]);
    });
  }
  for (cudaStream_t s : streams) (void)cudaStreamDestroy(s);
  return r;
}

}  // namespace

DemoRun run_gpu_demo(const DemoOptions& o, const DemoScenario& sc, bool llep, bool grouped) {
  if (grouped)
    return llep ? run<LeastLoaded, GemmMode::grouped>(o, sc, o.planner())
                : run<StandardEp, GemmMode::grouped>(o, sc, StandardEp{});
  return llep ? run<LeastLoaded, GemmMode::per_expert>(o, sc, o.planner())
              : run<StandardEp, GemmMode::per_expert>(o, sc, StandardEp{});
}

std::string describe_devices() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  LLEP_EXPECTS(e == cudaSuccess && n > 0, "no CUDA device (cudaGetDeviceCount: ", cudaGetErrorString(e),
               ", count ", n, ")");
  cudaDeviceProp prop{};
  LLEP_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  return std::string(prop.name) + " x " + std::to_string(n);
}

}  // namespace llep::examples
