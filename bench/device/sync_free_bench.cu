// llep-sync-free-bench: the time of two MoE layers' forward steps back to back, on P
// logical ranks of one GPU, with and without the host in the step (issue 14 item 7):
//   moe-layer   MoeLayer (PeerCopy, CudaExec): the counts go to the host, the host plans,
//               then the rest; the host waits inside every layer
//   sync-free   SyncFreeLayer eager: every stage enqueued, sizes read on the device
//   graph       SyncFreeLayer, both layers captured once per rank and replayed
// Same experts (GroupedSwiGlu, bf16), same planner (LeastLoaded), same inputs. Host wall
// time of `--reps` two-layer steps per rank (then a stream sync), divided by reps; the
// median of `--rounds` such batches, for rank 0, and the ratios to moe-layer measured in
// the same run. Needs a CUDA device (exits 77 without one).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "../device_timing.cuh"
#include "llep/device/symmetric_peer.cuh"
#include "llep/exec/cuda.cuh"
#include "llep/experts/grouped_swiglu.cuh"
#include "llep/layer/moe_layer.hpp"
#include "llep/layer/sync_free.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/sim/routing.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/peer_copy.cuh"

// A named namespace: the kernels instantiated with Fill need it to have external linkage.
namespace sync_free_bench {

using T = __nv_bfloat16;
using Experts = llep::GroupedSwiGlu<T>;
constexpr int P = 4, N = 32, K = 4, D = 2048, H = 1024, B = 512, Layers = 2;

// Deterministic values in [-scale, scale) from an index, on the device.
struct Fill {
  T* out;
  float scale;
  unsigned seed;
  __host__ __device__ void operator()(std::size_t i) const {
    unsigned x = static_cast<unsigned>(i) * 2654435761u ^ seed;
    x ^= x >> 15;
    x *= 2246822519u;
    x ^= x >> 13;
    out[i] = __float2bfloat16(scale * (static_cast<float>(x & 0xFFFF) / 32768.0f - 1.0f));
  }
};

struct Buffer {
  explicit Buffer(std::size_t bytes) { LLEP_CUDA_CHECK(cudaMalloc(&p, std::max<std::size_t>(bytes, 1))); }
  ~Buffer() { (void)cudaFree(p); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  template <class U>
  U* as() const {
    return static_cast<U*>(p);
  }
  void* p = nullptr;
};

void usage(std::FILE* to) {
  llep::bench::print_device_bench_usage(
      to, "llep-sync-free-bench",
      "  Median host time of two MoE layers' forward steps back to back on 4 logical ranks of\n"
      "  one GPU (N = 32, K = 4, D = 2048, H = 1024, 512 tokens a rank, bf16, LeastLoaded):\n"
      "  MoeLayer (host round trip per layer), SyncFreeLayer eager, SyncFreeLayer replayed\n"
      "  from one CUDA graph per rank; balanced and skewed routing. --reps: steps per timed\n"
      "  batch; --rounds: batches (median).\n");
}

enum class Mode { moe_layer, sync_free, graph };

// Median us per two-layer step on rank 0.
double time_mode(Mode mode, const llep::sim::Skew& skew, int reps, int rounds) {
  const llep::Topology topo(P, N);
  const llep::LeastLoaded planner{1.0, 4};
  const Experts experts({D, H, false});
  std::vector<cudaStream_t> streams(P);
  for (auto& s : streams) LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  std::vector<llep::PeerCopyRank> where;
  for (auto s : streams) where.push_back({0, s});
  llep::PeerCopyGroup group(where);
  std::vector<double> rank0;
  llep::run_ranks(group, [&](llep::PeerCopy& t) {
    const int p = t.rank();
    llep::CudaExec exec(t.stream());
    const std::size_t welems = static_cast<std::size_t>(topo.slots_per_rank()) * experts.weight_elems();
    std::vector<std::unique_ptr<Buffer>> weights;
    for (int l = 0; l < Layers; ++l) {
      weights.push_back(std::make_unique<Buffer>(welems * sizeof(T)));
      exec.for_each_n(welems, Fill{weights.back()->as<T>(), 0.03f, static_cast<unsigned>(97 * l + p)});
    }
    Buffer x(static_cast<std::size_t>(B) * D * sizeof(T)), y(static_cast<std::size_t>(B) * D * sizeof(T)),
        z(static_cast<std::size_t>(B) * D * sizeof(T));
    exec.for_each_n(static_cast<std::size_t>(B) * D, Fill{x.as<T>(), 1.0f, static_cast<unsigned>(p)});
    std::vector<std::int32_t> ids(static_cast<std::size_t>(B) * K);
    std::vector<float> gates(ids.size());
    llep::sim::random_routing(static_cast<std::uint64_t>(11 + p), N, K, skew, std::span<std::int32_t>(ids),
                              std::span<float>(gates));
    Buffer d_ids(ids.size() * sizeof(std::int32_t)), d_gates(gates.size() * sizeof(float));
    exec.from_host(d_ids.p, ids.data(), ids.size() * sizeof(std::int32_t));
    exec.from_host(d_gates.p, gates.data(), gates.size() * sizeof(float));
    exec.synchronize();
    const auto hx = std::span<const T>(x.as<T>(), static_cast<std::size_t>(B) * D);
    const auto hy = std::span<const T>(y.as<T>(), static_cast<std::size_t>(B) * D);
    const auto oy = std::span<T>(y.as<T>(), static_cast<std::size_t>(B) * D);
    const auto oz = std::span<T>(z.as<T>(), static_cast<std::size_t>(B) * D);
    const auto sid = std::span<const std::int32_t>(d_ids.as<std::int32_t>(), ids.size());
    const auto sg = std::span<const float>(d_gates.as<float>(), gates.size());

    std::function<void()> step;  // layer 1: x -> y, layer 2: y -> z
    using Moe = llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::PeerCopy, Experts, llep::CudaExec>;
    using Free = llep::SyncFreeLayer<llep::LeastLoaded, Experts, llep::CudaExec>;
    std::vector<std::unique_ptr<Moe>> moe;
    std::vector<std::unique_ptr<llep::PeerSymmetricMemory>> sym;
    std::vector<std::unique_ptr<Buffer>> ws;
    std::vector<std::unique_ptr<Free>> sf;
    if (mode == Mode::moe_layer) {
      for (int l = 0; l < Layers; ++l) {
        moe.push_back(std::make_unique<Moe>(topo, K, planner, experts, t, llep::CudaExec(t.stream())));
        moe.back()->set_native_weights(std::span<const T>(weights[static_cast<std::size_t>(l)]->as<T>(), welems));
        moe.back()->reserve(moe.back()->limits(B));
      }
      step = [&] {
        moe[0]->forward(hx, sid, sg, oy);
        moe[1]->forward(hy, sid, sg, oz);
      };
    } else {
      const auto limits = Free::make_limits(topo, K, planner, experts, B);
      for (int l = 0; l < Layers; ++l) {
        sym.push_back(std::make_unique<llep::PeerSymmetricMemory>(t, Free::symmetric_layout(topo, limits)));
        ws.push_back(std::make_unique<Buffer>(Free::workspace_bytes(topo, limits)));
        sf.push_back(std::make_unique<Free>(
            topo, K, planner, experts, llep::CudaExec(t.stream()), sym.back()->view(), limits,
            std::span<std::byte>(ws.back()->as<std::byte>(), Free::workspace_bytes(topo, limits))));
        sf.back()->set_native_weights(std::span<const T>(weights[static_cast<std::size_t>(l)]->as<T>(), welems));
      }
      step = [&] {
        sf[0]->forward(hx, sid, sg, oy);
        sf[1]->forward(hy, sid, sg, oz);
      };
    }
    std::optional<llep::CudaGraph> replay;
    if (mode == Mode::graph) {
      replay.emplace(t.stream(), step);
      step = [&] { replay->launch(t.stream()); };
    }
    llep::HostThreads host(group.host(), p);
    for (int w = 0; w < 3; ++w) step();  // warm-up
    LLEP_CUDA_CHECK(cudaStreamSynchronize(t.stream()));
    for (int r = 0; r < rounds; ++r) {
      host.barrier();
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < reps; ++i) step();
      LLEP_CUDA_CHECK(cudaStreamSynchronize(t.stream()));
      const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      if (p == 0) rank0.push_back(us / reps);
    }
    if (mode != Mode::moe_layer)  // also: no rank frees its region while a peer reads it
      for (auto& layer : sf) layer->check(t);
    host.barrier();
  });
  for (auto s : streams) (void)cudaStreamDestroy(s);
  std::sort(rank0.begin(), rank0.end());
  return rank0[rank0.size() / 2];
}

void run(int reps, int rounds, const llep::bench::PaperScene&) {
  std::printf("# llep-sync-free-bench: median us per two-layer forward step on rank 0 (%d rounds of %d steps), "
              "P=%d logical ranks, N=%d, K=%d, D=%d, H=%d, %d tokens/rank, bf16, LeastLoaded\n",
              rounds, reps, P, N, K, D, H, B);
  std::printf("%-12s %12s %12s %12s %10s %10s\n", "scenario", "moe-layer", "sync-free", "graph", "free/moe", "graph/moe");
  for (const llep::sim::Skew skew : {llep::sim::Skew{}, llep::sim::Skew{1, 0.5}, llep::sim::Skew{2, 0.9}}) {
    const double moe = time_mode(Mode::moe_layer, skew, reps, rounds);
    const double eager = time_mode(Mode::sync_free, skew, reps, rounds);
    const double graph = time_mode(Mode::graph, skew, reps, rounds);
    std::printf("%-12s %12.1f %12.1f %12.1f %10.3f %10.3f\n", skew.name().c_str(), moe, eager, graph, eager / moe,
                graph / moe);
    std::fflush(stdout);
  }
}

}  // namespace sync_free_bench

int main(int argc, char** argv) {
  // Logical ranks spin on each other from separate streams: one hardware queue each.
  setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
  return llep::bench::device_bench_main(argc, argv, sync_free_bench::usage, sync_free_bench::run);
}
