// 06: the sync-free step. SyncFreeLayer runs one rank's forward (and backward) with
// nothing on the host between its stages: the counts are gathered through symmetric
// memory (regions every rank can read) ordered by signals in memory, the plan and the
// layout are made in the step, and every copy and GEMM reads its size from memory. On a
// GPU that means the step can be captured in a CUDA graph and replayed (05-gpu-layer's
// setting, see docs/device-step.md); here the same code runs on host threads with
// HostExec and host symmetric memory. Errors found inside the step (a bad expert id) wait
// in a status word for check(), which throws the same llep::Error on every rank.
//
// The program trains: each step runs forward and backward through MoeLayer and through
// SyncFreeLayer, and checks that the outputs and all gradients are the same bits.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include "llep/device/symmetric.hpp"
#include "llep/layer/backward.hpp"
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
  // same on every rank (with room for weight gradients, since this program trains); each
  // rank also has its own workspace, and one for backward.
  const llep::LayerLimits limits = SyncFree::make_limits(topo, K, planner, experts, B_max);
  const std::size_t grad_bytes = SyncFree::grad_bytes<float>(experts);
  const llep::SymmetricLayout layout = SyncFree::symmetric_layout(topo, limits, grad_bytes);
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
    auto aligned = [](std::vector<std::byte>& v, std::size_t n) {  // n bytes, 256-byte aligned inside v
      v.resize(n + 256);
      return std::span<std::byte>(v).subspan((256 - reinterpret_cast<std::uintptr_t>(v.data()) % 256) % 256, n);
    };
    std::vector<std::byte> memory, back_memory;
    SyncFree layer(topo, K, planner, experts, llep::HostExec{}, sym.view(p), limits, aligned(memory, workspace), {},
                   grad_bytes);
    layer.set_native_weights(mine);
    const std::span<std::byte> back = aligned(back_memory, layer.backward_workspace_bytes<float, float>());
    llep::HostMoeLayer<llep::LeastLoaded> reference(topo, K, planner, experts, t);
    reference.set_native_weights(mine);
    llep::ForwardHandle<float> handle;  // what MoeLayer keeps from forward for backward
    std::vector<std::byte> handle_memory(decltype(reference)::handle_bytes(reference.limits(B_max), handle.keeps()));
    handle.memory = handle_memory;
    auto bits = [](const std::vector<float>& a, const std::vector<float>& b) {
      return a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    };

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
      std::vector<float> out(x.size()), want(x.size()), grad_out(x.size());
      for (float& v : grad_out) v = normal(local);
      // Gradients: of the tokens, of the gates, of this rank's native experts.
      std::vector<float> gx(x.size()), gg(gates.size()), gw(mine.size()), wx(x.size()), wg(gates.size()), ww(mine.size());
      layer.forward(std::span<const float>(x), std::span<const std::int32_t>(ids), std::span<const float>(gates),
                    std::span<float>(out));   // enqueues the whole step
      layer.backward(std::span<const float>(grad_out), std::span<const float>(gates), std::span<float>(gx),
                     std::span<float>(gg), std::span<float>(gw), llep::GradMode::overwrite, back);  // and its backward
      layer.check(t);                          // the collective status check (a host sync on a GPU)
      reference.forward(std::span<const float>(x), std::span<const std::int32_t>(ids),
                        std::span<const float>(gates), std::span<float>(want), handle);
      llep::backward(reference, handle,
                     llep::BackwardArgs<float, float, float>{x, gates, grad_out, wx, wg, ww, llep::GradMode::overwrite});
      same[static_cast<std::size_t>(p)] &= bits(out, want) && bits(gx, wx) && bits(gg, wg) && bits(gw, ww);
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
  std::printf("%d training steps on %d ranks: SyncFreeLayer's outputs and gradients %s MoeLayer's bit for bit\n", Steps,
              P, all ? "equal" : "DIFFER FROM");
  return all ? 0 : 1;
}
