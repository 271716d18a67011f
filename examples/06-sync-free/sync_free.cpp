// 06: the sync-free step. SyncFreeLayer runs one rank's forward with nothing on the host
// between its stages: the counts are gathered through symmetric memory (regions every
// rank can read) ordered by signals in memory, the plan and the layout are made in the
// step, and every copy and GEMM reads its size from memory. On a GPU that means the step
// can be captured in a CUDA graph and replayed (05-gpu-layer's setting, see
// docs/device-step.md); here the same code runs on host threads with HostExec and host
// symmetric memory. Errors found inside the step (a bad expert id) wait in a status word
// for check(), which throws the same llep::Error on every rank.
//
// The program runs the same batches through MoeLayer and SyncFreeLayer and checks that
// the outputs are the same bits.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include "llep/device/symmetric.hpp"
#include "llep/layer/host_layer.hpp"
#include "llep/layer/sync_free.hpp"
#include "llep/plan/least_loaded.hpp"

namespace {

constexpr int P = 4, N = 16, K = 2, Steps = 3;
constexpr llep::count_t B_max = 64;
using Experts = llep::HostSwiGlu<float>;
using SyncFree = llep::SyncFreeLayer<llep::LeastLoaded, Experts, llep::HostExec>;

}  // namespace

int main() {
  const llep::Topology topo(P, N);
  const llep::LeastLoaded planner{.alpha = 1.0, .min_tokens_per_gemm = 8};
  const Experts experts(llep::ExpertShape{.hidden = 32, .intermediate = 64});
  std::mt19937 rng(6);
  std::normal_distribution<float> normal(0.0F, 0.3F);
  std::vector<float> weights(static_cast<std::size_t>(N) * experts.weight_elems());
  for (float& w : weights) w = normal(rng);

  // Phase 1, before any batch: the limits size everything. The symmetric layout is the
  // same on every rank; each rank also has its own workspace.
  const llep::LayerLimits limits = SyncFree::make_limits(topo, K, planner, experts, B_max);
  const llep::SymmetricLayout layout = SyncFree::symmetric_layout(topo, limits);
  const std::size_t workspace = SyncFree::workspace_bytes(topo, limits);
  std::printf("sync-free layer, P = %d, N = %d, B_max = %lld: symmetric region %zu bytes, workspace %zu bytes per rank\n",
              P, N, static_cast<long long>(B_max), layout.bytes(), workspace);
  llep::HostSymmetricMemory sym(layout);  // on GPUs: PeerSymmetricMemory or NcclSymmetricMemory

  std::vector<int> same(P, 1);
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    const std::size_t per_rank = static_cast<std::size_t>(N / P) * experts.weight_elems();
    const std::span<const float> mine = std::span<const float>(weights).subspan(static_cast<std::size_t>(p) * per_rank, per_rank);
    std::vector<std::byte> memory(workspace + 256);  // 256-byte aligned inside
    const auto skip = (256 - reinterpret_cast<std::uintptr_t>(memory.data()) % 256) % 256;
    SyncFree layer(topo, K, planner, experts, llep::HostExec{}, sym.view(p), limits,
                   std::span<std::byte>(memory).subspan(skip, workspace));
    layer.set_native_weights(mine);
    llep::HostMoeLayer<llep::LeastLoaded> reference(topo, K, planner, experts, t);
    reference.set_native_weights(mine);

    std::mt19937 local(static_cast<unsigned>(100 + p));
    for (int s = 0; s < Steps; ++s) {
      const llep::count_t B = B_max - 8 * ((p + s) % 4);  // batch sizes differ per rank and step
      std::vector<float> x(static_cast<std::size_t>(B) * 32), gates(static_cast<std::size_t>(B) * K, 0.5F);
      for (float& v : x) v = normal(local);
      std::vector<std::int32_t> ids;
      for (llep::count_t b = 0; b < B; ++b) {  // expert s is hot in step s
        const int first = b % 2 == 0 ? s : static_cast<int>(local() % N);
        ids.insert(ids.end(), {first, (first + 1 + static_cast<int>(b % (N - 1))) % N});
      }
      std::vector<float> out(x.size()), want(x.size());
      layer.forward(std::span<const float>(x), std::span<const std::int32_t>(ids), std::span<const float>(gates),
                    std::span<float>(out));   // enqueues the whole step
      layer.check(t);                          // the collective status check (a host sync on a GPU)
      reference.forward(std::span<const float>(x), std::span<const std::int32_t>(ids),
                        std::span<const float>(gates), std::span<float>(want));
      same[static_cast<std::size_t>(p)] &= out.empty() || std::memcmp(out.data(), want.data(), out.size() * sizeof(float)) == 0;
    }

    // A bad id is found inside the step; check() reports it on every rank.
    std::vector<float> x(32), gates(K, 0.5F), out(32);
    std::vector<std::int32_t> ids{0, p == 2 ? N + 5 : 1};
    layer.forward(std::span<const float>(x), std::span<const std::int32_t>(ids), std::span<const float>(gates),
                  std::span<float>(out));
    try {
      layer.check(t);
    } catch (const llep::Error& e) {
      if (p == 0) std::printf("a bad id on rank 2, every rank's check(): llep::Error: %s\n", e.what());
    }
    if (p == 0) std::printf("exchanges through: %s\n", layer.exchange());
  });
  int all = 1;
  for (const int s : same) all &= s;
  std::printf("%d steps on %d ranks: SyncFreeLayer %s MoeLayer bit for bit\n", Steps, P, all ? "equals" : "DIFFERS FROM");
  return all ? 0 : 1;
}
