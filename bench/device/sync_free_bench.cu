// llep-sync-free-bench: the time of two MoE layers' steps back to back, forward and then
// forward + backward (training), on P logical ranks of one GPU, with and without the host
// in the step (issue 14 item 7):
//   moe-layer   MoeLayer (PeerCopy, CudaExec): the counts go to the host, the host plans,
//               then the rest; the host waits inside every layer
//   sync-free   SyncFreeLayer eager: every stage enqueued, sizes read on the device
//   graph       SyncFreeLayer, both layers captured once per rank and replayed (in training,
//               both layers' forward and backward in one graph)
// Same experts (GroupedSwiGlu, bf16), same planner (LeastLoaded), same inputs: one setup
// for the three (bench/layer_paths.cuh, shared with `llep-gpu-bench table --device-step`).
// Training: MoeLayer's backward is llep::backward with a handle keeping the experts' inputs
// and outputs; SyncFreeLayer::backward; fp32 weight gradients. Host wall time of `--reps`
// two-layer steps per rank (then a stream sync), divided by reps; the median of `--rounds`
// such batches, for rank 0, and the ratios to moe-layer measured in the same run. Needs a
// CUDA device (exits 77 without one).
#include <cstdio>
#include <cstdlib>

#include "../device_timing.cuh"
#include "../layer_paths.cuh"
#include "llep/plan/least_loaded.hpp"

namespace sync_free_bench {

constexpr llep::bench::LogicalLayer kLayers{4, 32, 4, 2048, 1024, 512, 2};  // P, N, K, D, H, B, layers

void usage(std::FILE* to) {
  llep::bench::print_device_bench_usage(
      to, "llep-sync-free-bench",
      "  Median host time of two MoE layers' steps back to back, forward and then forward +\n"
      "  backward, on 4 logical ranks of one GPU (N = 32, K = 4, D = 2048, H = 1024, 512 tokens\n"
      "  a rank, bf16, LeastLoaded, fp32 weight gradients): MoeLayer (host round trip per layer),\n"
      "  SyncFreeLayer eager, SyncFreeLayer replayed from one CUDA graph per rank; balanced and\n"
      "  skewed routing. --reps: steps per timed batch; --rounds: batches (median).\n");
}

void run(int reps, int rounds, const llep::bench::PaperScene&) {
  std::printf("# llep-sync-free-bench: median us per two-layer step on rank 0 (%d rounds of %d steps), "
              "P=%d logical ranks, N=%d, K=%d, D=%d, H=%d, %d tokens/rank, bf16, LeastLoaded\n",
              rounds, reps, kLayers.ranks, kLayers.experts, kLayers.top_k, kLayers.hidden, kLayers.intermediate,
              static_cast<int>(kLayers.tokens));
  std::printf("%-12s %-8s %12s %12s %12s %10s %10s\n", "scenario", "step", "moe-layer", "sync-free", "graph",
              "free/moe", "graph/moe");
  for (const bool train : {false, true}) {
    llep::bench::LogicalLayer layers = kLayers;
    layers.train = train;
    for (const llep::sim::Skew skew : {llep::sim::Skew{}, llep::sim::Skew{1, 0.5}, llep::sim::Skew{2, 0.9}}) {
      const auto t = llep::bench::time_layer_paths(layers, llep::LeastLoaded{1.0, 4}, skew, 3, reps, rounds);
      const double moe = t.moe_layer.host_us, eager = t.sync_free.host_us, graph = t.graph.host_us;
      std::printf("%-12s %-8s %12.1f %12.1f %12.1f %10.3f %10.3f\n", skew.name().c_str(), train ? "fwd+bwd" : "fwd",
                  moe, eager, graph, eager / moe, graph / moe);
      std::fflush(stdout);
    }
  }
}

}  // namespace sync_free_bench

int main(int argc, char** argv) {
  llep::bench::logical_rank_connections();
  return llep::bench::device_bench_main(argc, argv, sync_free_bench::usage, sync_free_bench::run);
}
