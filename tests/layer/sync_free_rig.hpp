#pragma once
// The rig of the SyncFreeLayer host tests (test_sync_free.cpp, test_sync_free_guards.cpp):
// one configuration's topology, functor, limits and exchange memory (host symmetric memory,
// or each rank's CollectiveExchange<HostThreads> memory); each rank's layer over a
// poisoned, aligned workspace; its MoeLayer reference.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "../common/dense_moe.hpp"
#include "../common/layer_helpers.hpp"
#include "llep/device/collective_exchange.hpp"
#include "llep/layer/host_layer.hpp"
#include "llep/layer/sync_free.hpp"

namespace syncfree {

inline constexpr int K = 2, D = 12, H = 6;

struct Aligned {
  // 0xFF: any index read before the step wrote it is -1 (out of range under ASan).
  explicit Aligned(std::size_t n) : bytes(n + 256, std::byte{0xFF}) {}
  std::span<std::byte> span(std::size_t n) {
    auto p = reinterpret_cast<std::uintptr_t>(bytes.data());
    return {bytes.data() + (256 - p % 256) % 256, n};
  }
  /// Whether every byte after span(n) (at least one) still holds its poison: nothing was
  /// written past the span.
  [[nodiscard]] bool tail_intact(std::size_t n) {
    const std::byte* end = span(n).data() + n;
    for (const std::byte* b = end; b != bytes.data() + bytes.size(); ++b)
      if (*b != std::byte{0xFF}) return false;
    return true;
  }
  std::vector<std::byte> bytes;
};

// Bit-for-bit equality (an empty batch has no data pointer to compare).
inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// One configuration: its topology, functor, limits and host symmetric memory, and each
// rank's layer over a poisoned workspace.
template <class Plnr>
struct Rig {
  using Layer = llep::SyncFreeLayer<Plnr, llep::HostSwiGlu<float>, llep::HostExec>;
  // grad_bytes > 0: symmetric memory for backward too.
  Rig(int P, int N, Plnr p, int b_max, std::size_t grad_bytes = 0)
      : topo(P, N), planner(p), limits(Layer::make_limits(topo, K, planner, experts, b_max)), grad_bytes(grad_bytes),
        sym(Layer::symmetric_layout(topo, limits, grad_bytes)) {}
  [[nodiscard]] std::size_t bytes() const { return Layer::workspace_bytes(topo, limits); }
  [[nodiscard]] Layer layer(int rank, Aligned& ws) const {
    return Layer(topo, K, planner, experts, llep::HostExec{}, sym.view(rank), limits, ws.span(bytes()), {}, grad_bytes);
  }
  /// The same with the rank's native weights of `moe` set.
  [[nodiscard]] Layer layer(int rank, Aligned& ws, const dense::Moe& moe) const {
    Layer l = layer(rank, ws);
    l.set_native_weights(layertest::held_weights(moe, topo, rank));
    return l;
  }
  /// Rank t's layer, as every rig makes it (RankPair).
  [[nodiscard]] Layer layer(llep::HostThreads& t, Aligned& ws) const { return layer(t.rank(), ws); }
  llep::Topology topo;
  Plnr planner;
  llep::HostSwiGlu<float> experts{{D, H, false}};
  llep::LayerLimits limits;
  std::size_t grad_bytes;
  llep::HostSymmetricMemory sym;
};

// The same configuration over CollectiveExchange<HostThreads> (fixed-capacity collectives
// instead of symmetric memory): each rank's exchange memory, poisoned, held here as `sym`
// is by Rig.
template <class Plnr>
struct CollectiveRig {
  using X = llep::CollectiveExchange<llep::HostThreads>;
  using Layer = llep::SyncFreeLayer<Plnr, llep::HostSwiGlu<float>, llep::HostExec, X>;
  // grad_bytes > 0: an exchange for backward too.
  CollectiveRig(int P, int N, Plnr p, int b_max, std::size_t grad_bytes = 0, llep::CollectiveCapacity capacity = {})
      : topo(P, N), planner(p), limits(Layer::make_limits(topo, K, planner, experts, b_max)),
        sizes(Layer::exchange_sizes(topo, limits, grad_bytes)), capacity(capacity),
        memory(static_cast<std::size_t>(P), Aligned(exchange_bytes())) {}
  [[nodiscard]] std::size_t bytes() const { return Layer::workspace_bytes(topo, limits); }
  [[nodiscard]] std::size_t exchange_bytes() const { return X::bytes(sizes, capacity); }
  [[nodiscard]] Layer layer(llep::HostThreads& t, Aligned& ws) const {
    Aligned& xm = memory[static_cast<std::size_t>(t.rank())];
    return Layer(topo, K, planner, experts, llep::HostExec{}, X(t, sizes, xm.span(exchange_bytes()), capacity), limits,
                 ws.span(bytes()));
  }
  llep::Topology topo;
  Plnr planner;
  llep::HostSwiGlu<float> experts{{D, H, false}};
  llep::LayerLimits limits;
  llep::StepExchangeSizes sizes;
  llep::CollectiveCapacity capacity;
  mutable std::vector<Aligned> memory;  // rank p's exchange memory (its own rank thread's)
};

// Rank t's SyncFreeLayer over a poisoned workspace and its MoeLayer reference, both with
// the rank's native weights of `moe`; R: Rig<Plnr> or CollectiveRig<Plnr>.
template <class Plnr, class R = Rig<Plnr>>
struct RankPair {
  RankPair(const R& rig, llep::HostThreads& t, const dense::Moe& moe)
      : weights(layertest::held_weights(moe, rig.topo, t.rank())),
        ws(rig.bytes()),
        layer(rig.layer(t, ws)),
        ref(rig.topo, K, rig.planner, rig.experts, t) {
    layer.set_native_weights(weights);
    ref.set_native_weights(weights);
  }
  std::vector<float> weights;
  Aligned ws;
  typename R::Layer layer;
  llep::MoeLayer<llep::ExactCounts, Plnr, llep::HostThreads, llep::HostSwiGlu<float>, llep::HostExec> ref;
};

}  // namespace syncfree
