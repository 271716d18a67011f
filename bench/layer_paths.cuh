#pragma once
// What llep-sync-free-bench and `llep-gpu-bench table --device-step` share: a forward step of
// `layers` MoE layers back to back on P logical ranks of one GPU (PeerCopy, CudaExec,
// GroupedSwiGlu, bf16), timed through three paths in one setup, with the same weights,
// inputs and routing:
//   moe-layer  MoeLayer: the counts go to the host, the host plans, then the rest (the host
//              waits inside every layer)
//   sync-free  SyncFreeLayer eager: every stage enqueued, sizes read on the device
//   graph      SyncFreeLayer, the step captured once per rank in a CUDA graph and replayed
// Per path: warm-up steps, then `rounds` batches of `steps` steps back to back that every
// rank starts together (its stream waits for one start event); per batch, rank 0's host
// wall time to its stream sync and the device time from the start event to the last rank's
// end event (CUDA events), each divided by `steps`; the medians over the batches.
// The P ranks share one GPU: a step's time is all ranks' work, not the busiest rank's.
// With `train`, a step is the forward of every layer, then every layer's backward in reverse
// (fp32 weight gradients, overwritten; the upstream gradient of the last layer fixed):
// MoeLayer's through llep::backward with a ForwardHandle that keeps the experts' inputs and
// outputs (as SyncFreeLayer's workspace does), SyncFreeLayer::backward, and one CUDA graph
// holding forward and backward.
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

#include "llep/device/symmetric_peer.cuh"
#include "llep/exec/cuda.cuh"
#include "llep/experts/grouped_swiglu.cuh"
#include "llep/layer/backward.hpp"
#include "llep/layer/moe_layer.hpp"
#include "llep/layer/sync_free.hpp"
#include "llep/sim/routing.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/peer_copy.cuh"
#include "device_timing.cuh"

namespace llep::bench {

using PathT = __nv_bfloat16;
using PathExperts = GroupedSwiGlu<PathT>;

/// One MoE layer's configuration on P logical ranks of one GPU.
struct LogicalLayer {
  int ranks = 0, experts = 0, top_k = 0, hidden = 0, intermediate = 0;
  count_t tokens = 0;  ///< per rank and step
  int layers = 1;      ///< layers back to back in one step, each with its own weights
  bool train = false;  ///< forward and backward in one step
};

/// Medians per step, in microseconds.
struct PathTime {
  double host_us = 0, device_us = 0;
};
struct PathTimes {
  PathTime moe_layer, sync_free, graph;
};

/// Logical ranks spin on each other from separate streams: each needs its own hardware
/// queue (docs/device-step.md). Sets CUDA_DEVICE_MAX_CONNECTIONS to 32 unless the
/// environment sets it; call before the first CUDA call. Returns the value in force.
inline int logical_rank_connections() {
  setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
  return std::atoi(std::getenv("CUDA_DEVICE_MAX_CONNECTIONS"));
}

/// Deterministic values in [-scale, scale) from an index, on the device.
struct Fill {
  PathT* out;
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

/// Device memory that frees itself.
struct DeviceBuffer {
  explicit DeviceBuffer(std::size_t bytes) { LLEP_CUDA_CHECK(cudaMalloc(&p, std::max<std::size_t>(bytes, 1))); }
  ~DeviceBuffer() { (void)cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <class U>
  U* as() const {
    return static_cast<U*>(p);
  }
  void* p = nullptr;
};

template <class Plnr>
using PathMoeLayer = MoeLayer<ExactCounts, Plnr, PeerCopy, PathExperts, CudaExec>;
template <class Plnr>
using PathSyncFree = SyncFreeLayer<Plnr, PathExperts, CudaExec>;

/// Device bytes one rank of one layer holds for the sync-free path: its symmetric region
/// and its workspace, both sized for the worst step of the limits (B_max = L.tokens).
/// Forward only (backward's workspace is the layer's to say, once built).
template <class Plnr>
[[nodiscard]] std::size_t sync_free_rank_bytes(const LogicalLayer& L, const Plnr& planner) {
  const Topology topo(L.ranks, L.experts);
  const PathExperts experts({L.hidden, L.intermediate, false});
  const auto limits = PathSyncFree<Plnr>::make_limits(topo, L.top_k, planner, experts, L.tokens);
  return PathSyncFree<Plnr>::symmetric_layout(topo, limits).bytes() + PathSyncFree<Plnr>::workspace_bytes(topo, limits);
}

/// Device bytes the three paths need together on the GPU, an estimate: every rank's
/// sync-free memory and activations of every layer, plus one MoeLayer workspace for the
/// worst step (the busiest rank's; the others grow to what their steps take).
template <class Plnr>
[[nodiscard]] std::size_t layer_paths_bytes(const LogicalLayer& L, const Plnr& planner) {
  const Topology topo(L.ranks, L.experts);
  const PathExperts experts({L.hidden, L.intermediate, false});
  const auto moe = PathMoeLayer<Plnr>::make_limits(topo, L.top_k, planner, experts, L.tokens);
  const auto B = static_cast<std::size_t>(L.tokens), D = static_cast<std::size_t>(L.hidden);
  const std::size_t act = (L.layers + 1) * B * D * sizeof(PathT) + B * static_cast<std::size_t>(L.top_k) * 8;
  return static_cast<std::size_t>(L.ranks) * (L.layers * sync_free_rank_bytes(L, planner) + act) +
         PathMoeLayer<Plnr>::workspace_bytes(moe) + PathMoeLayer<Plnr>::prepare_bytes(moe);
}

/// Times the three paths (see the top of this file) for this layer, planner and routing
/// (llep::sim::random_routing, seed 11 + rank). Throws llep::Error on a failed step.
template <class Plnr>
PathTimes time_layer_paths(const LogicalLayer& L, const Plnr& planner, const sim::Skew& skew, int warmup, int steps,
                           int rounds) {
  using Moe = PathMoeLayer<Plnr>;
  using Free = PathSyncFree<Plnr>;
  const int P = L.ranks;
  const Topology topo(P, L.experts);
  const PathExperts experts({L.hidden, L.intermediate, false});
  const auto B = static_cast<std::size_t>(L.tokens), D = static_cast<std::size_t>(L.hidden),
             K = static_cast<std::size_t>(L.top_k);
  // The ranks' streams and the timing events, destroyed however the run ends.
  struct Handles {
    std::vector<cudaStream_t> streams;
    std::vector<cudaEvent_t> ends;  // each rank's end of a batch
    cudaEvent_t go = nullptr;       // the start of a batch, on rank 0's stream
    explicit Handles(int P) : streams(static_cast<std::size_t>(P)), ends(streams.size()) {
      for (auto& s : streams) LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
      for (auto& e : ends) LLEP_CUDA_CHECK(cudaEventCreate(&e));
      LLEP_CUDA_CHECK(cudaEventCreate(&go));
    }
    Handles(const Handles&) = delete;
    Handles& operator=(const Handles&) = delete;
    ~Handles() {
      if (go != nullptr) (void)cudaEventDestroy(go);
      for (auto e : ends)
        if (e != nullptr) (void)cudaEventDestroy(e);
      for (auto s : streams)
        if (s != nullptr) (void)cudaStreamDestroy(s);
    }
  } h(P);
  std::vector<PeerCopyRank> where;
  for (auto s : h.streams) where.push_back({0, s});
  std::vector<double> host_us[3], device_us[3];  // rank 0's batches, per path
  {
    PeerCopyGroup group(where);
    run_ranks(group, [&](PeerCopy& t) {
      const int p = t.rank();
      CudaExec exec(t.stream());
      HostThreads host(group.host(), p);
      const auto limits = Free::make_limits(topo, L.top_k, planner, experts, L.tokens);
      const std::size_t ws_bytes = Free::workspace_bytes(topo, limits);
      const std::size_t grad_bytes = L.train ? Free::template grad_bytes<float>(experts) : 0;
      std::vector<std::unique_ptr<PeerSymmetricMemory>> sym;
      std::vector<std::unique_ptr<DeviceBuffer>> ws;
      std::vector<std::unique_ptr<Free>> sf;
      std::vector<std::unique_ptr<Moe>> moe;
      for (int l = 0; l < L.layers; ++l) {
        sym.push_back(std::make_unique<PeerSymmetricMemory>(t, Free::symmetric_layout(topo, limits, grad_bytes)));
        ws.push_back(std::make_unique<DeviceBuffer>(ws_bytes));
        sf.push_back(std::make_unique<Free>(topo, L.top_k, planner, experts, CudaExec(t.stream()), sym.back()->view(),
                                            limits, std::span<std::byte>(ws.back()->as<std::byte>(), ws_bytes),
                                            SignalOptions{}, grad_bytes));
        // The weights live where peers read them; MoeLayer reads the same ones.
        const auto w = sf.back()->native_weights();
        exec.for_each_n(w.size(), Fill{w.data(), 0.03f, static_cast<unsigned>(97 * l + p)});
        moe.push_back(std::make_unique<Moe>(topo, L.top_k, planner, experts, t, CudaExec(t.stream())));
        moe.back()->set_native_weights(std::span<const PathT>(w.data(), w.size()));
      }
      // act[l] -> act[l + 1]: layer l's input and output.
      std::vector<std::unique_ptr<DeviceBuffer>> act;
      for (int l = 0; l <= L.layers; ++l) act.push_back(std::make_unique<DeviceBuffer>(B * D * sizeof(PathT)));
      exec.for_each_n(B * D, Fill{act[0]->as<PathT>(), 1.0f, static_cast<unsigned>(p)});
      std::vector<std::int32_t> ids(B * K);
      std::vector<float> gates(ids.size());
      sim::random_routing(static_cast<std::uint64_t>(11 + p), L.experts, L.top_k, skew, std::span<std::int32_t>(ids),
                          std::span<float>(gates));
      DeviceBuffer d_ids(ids.size() * sizeof(std::int32_t)), d_gates(gates.size() * sizeof(float));
      exec.from_host(d_ids.p, ids.data(), ids.size() * sizeof(std::int32_t));
      exec.from_host(d_gates.p, gates.data(), gates.size() * sizeof(float));
      exec.synchronize();
      const auto sid = std::span<const std::int32_t>(d_ids.as<std::int32_t>(), ids.size());
      const auto sg = std::span<const float>(d_gates.as<float>(), gates.size());
      auto in = [&](int l) { return std::span<const PathT>(act[static_cast<std::size_t>(l)]->as<PathT>(), B * D); };
      auto out = [&](int l) { return std::span<PathT>(act[static_cast<std::size_t>(l) + 1]->as<PathT>(), B * D); };
      // Training: grad[l + 1] -> grad[l] through layer l (grad[layers]: the fixed upstream),
      // each layer's gate and fp32 weight gradients, backward workspaces and handles.
      std::vector<std::unique_ptr<DeviceBuffer>> grad, grad_gates, grad_weights, back_ws, handle_mem;
      std::vector<ForwardHandle<PathT>> handles;
      const std::size_t W = static_cast<std::size_t>(topo.slots_per_rank()) * experts.weight_elems();
      const HandleKeeps keeps{true, true, true};  // inputs, foreign weights, outputs
      const std::size_t handle_bytes = L.train ? Moe::handle_bytes(moe[0]->limits(L.tokens), keeps) : 0;
      if (L.train) {
        for (int l = 0; l <= L.layers; ++l) grad.push_back(std::make_unique<DeviceBuffer>(B * D * sizeof(PathT)));
        exec.for_each_n(B * D, Fill{grad.back()->as<PathT>(), 0.5f, static_cast<unsigned>(1000 + p)});
        for (int l = 0; l < L.layers; ++l) {
          const auto& layer = *sf[static_cast<std::size_t>(l)];
          grad_gates.push_back(std::make_unique<DeviceBuffer>(B * K * sizeof(float)));
          grad_weights.push_back(std::make_unique<DeviceBuffer>(W * sizeof(float)));
          back_ws.push_back(std::make_unique<DeviceBuffer>(layer.template backward_workspace_bytes<float, float>()));
          handle_mem.push_back(std::make_unique<DeviceBuffer>(handle_bytes));
          handles.emplace_back(std::span<std::byte>(handle_mem.back()->as<std::byte>(), handle_bytes), true);
          handles.back().save_outputs = true;
        }
        exec.synchronize();
      }
      auto at = [](auto& v, int l) -> auto& { return *v[static_cast<std::size_t>(l)]; };
      auto grads = [&](int l) { return std::span<PathT>(at(grad, l).template as<PathT>(), B * D); };
      auto gate_grads = [&](int l) { return std::span<float>(at(grad_gates, l).template as<float>(), B * K); };
      auto weight_grads = [&](int l) { return std::span<float>(at(grad_weights, l).template as<float>(), W); };

      const std::function<void()> moe_step = [&] {
        for (int l = 0; l < L.layers; ++l)
          L.train ? (void)at(moe, l).forward(in(l), sid, sg, out(l), handles[static_cast<std::size_t>(l)])
                  : (void)at(moe, l).forward(in(l), sid, sg, out(l));
        for (int l = L.train ? L.layers - 1 : -1; l >= 0; --l)
          (void)llep::backward(at(moe, l), handles[static_cast<std::size_t>(l)],
                               BackwardArgs<PathT, float, float>{in(l), sg, grads(l + 1), grads(l), gate_grads(l),
                                                                 weight_grads(l), GradMode::overwrite});
      };
      const std::function<void()> free_step = [&] {
        for (int l = 0; l < L.layers; ++l) at(sf, l).forward(in(l), sid, sg, out(l));
        for (int l = L.train ? L.layers - 1 : -1; l >= 0; --l)
          at(sf, l).backward(std::span<const PathT>(grads(l + 1)), sg, grads(l), gate_grads(l), weight_grads(l),
                             GradMode::overwrite,
                             std::span<std::byte>(at(back_ws, l).template as<std::byte>(),
                                                  at(sf, l).template backward_workspace_bytes<float, float>()));
      };
      auto time_path = [&](int path, const std::function<void()>& step) {
        for (int w = 0; w < warmup; ++w) step();
        LLEP_CUDA_CHECK(cudaStreamSynchronize(t.stream()));
        for (int r = 0; r < rounds; ++r) {
          host.barrier();  // every rank idle: the previous batch and rank 0's reading of its events done
          if (p == 0) LLEP_CUDA_CHECK(cudaEventRecord(h.go, t.stream()));
          host.barrier();
          LLEP_CUDA_CHECK(cudaStreamWaitEvent(t.stream(), h.go, 0));
          const auto t0 = std::chrono::steady_clock::now();
          for (int i = 0; i < steps; ++i) step();
          LLEP_CUDA_CHECK(cudaEventRecord(h.ends[static_cast<std::size_t>(p)], t.stream()));
          LLEP_CUDA_CHECK(cudaStreamSynchronize(t.stream()));
          const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
          host.barrier();  // every rank's end event recorded and reached
          if (p != 0) continue;
          float last = 0;
          for (cudaEvent_t e : h.ends) {
            float ms = 0;
            LLEP_CUDA_CHECK(cudaEventElapsedTime(&ms, h.go, e));
            last = std::max(last, ms);
          }
          host_us[path].push_back(us / steps);
          device_us[path].push_back(1000.0 * last / steps);
        }
      };
      time_path(0, moe_step);
      time_path(1, free_step);
      {
        const CudaGraph replay(t.stream(), free_step);
        time_path(2, [&] { replay.launch(t.stream()); });
      }
      // Also: no rank frees its region while a peer still reads it.
      for (auto& layer : sf) layer->check(t);
      host.barrier();
    });
  }
  auto at = [&](int i) { return PathTime{median(host_us[i]), median(device_us[i])}; };
  return PathTimes{at(0), at(1), at(2)};
}

}  // namespace llep::bench
