// 04: several layers and the memory of a step, owned by the caller. Before any batch an
// engine knows its limits (at most B_max tokens per rank, K, the shapes, the planner);
// from them each layer states a workspace size that no step within the limits exceeds.
// The engine allocates one buffer of the largest size and gives it to every layer of the
// model (they run one after another), so no step allocates. A step beyond the limits fails
// with llep::Error before any byte moves. The program checks that the model's output is
// the same as with llep's default, auto-growing workspaces.
#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <random>
#include <span>
#include <vector>

#include "llep/layer/host_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"

namespace {

constexpr int P = 4, N = 16, K = 2, L = 3;  // L layers, each with N experts
constexpr llep::count_t B_max = 128;       // the engine's limit on tokens per rank and step
using Layer = llep::HostMoeLayer<llep::LeastLoaded>;

struct Model {
  llep::Topology topo{P, N};
  llep::LeastLoaded planner{.alpha = 1.0, .min_tokens_per_gemm = 16};
  llep::HostSwiGlu<float> experts{llep::ExpertShape{.hidden = 32, .intermediate = 64}};
  std::vector<std::vector<float>> weights;                 // per layer, every expert
  std::vector<std::vector<std::vector<float>>> gates;      // per layer, per rank
  std::vector<std::vector<std::vector<std::int32_t>>> ids;  // per layer, per rank
  std::vector<std::vector<float>> x;                       // per rank: the step's input
};

// One step of the whole model on every rank: x -> layer 0 -> ... -> layer L-1. With
// `own_memory`, the layers share one engine buffer sized before the step; without, each
// uses HostExec's default workspace, which grows to the largest step it has seen.
std::vector<std::vector<float>> run_model(const Model& m, bool own_memory) {
  std::vector<std::vector<float>> y(P);
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    // Phase 1, before any batch: the limits and the bytes they need.
    const llep::LayerLimits limits = Layer::make_limits(m.topo, K, m.planner, m.experts, B_max);
    const std::size_t bytes = Layer::workspace_bytes(limits);  // the same for every layer here
    std::vector<std::byte> buffer(own_memory ? bytes : 0);     // the engine's memory
    std::vector<Layer> layers;
    layers.reserve(L);
    const std::size_t per_rank = static_cast<std::size_t>(N / P) * m.experts.weight_elems();
    for (int l = 0; l < L; ++l) {
      layers.emplace_back(m.topo, K, m.planner, m.experts, t,
                          own_memory ? llep::HostExec(std::span<std::byte>(buffer)) : llep::HostExec());
      layers.back().set_native_weights(std::span<const float>(m.weights[l]).subspan(p * per_rank, per_rank));
      if (own_memory) layers.back().reserve(limits);  // checks the buffer; B_max is enforced from now on
    }
    if (own_memory && p == 0)
      std::printf("limits: B_max = %lld tokens per rank, K = %d: workspace %zu bytes per rank, shared by %d layers\n",
                  static_cast<long long>(B_max), K, bytes, L);

    // A batch larger than B_max is refused on every rank before anything moves, and the
    // layer stays usable.
    if (own_memory) {
      const std::vector<float> big(static_cast<std::size_t>(B_max + 1) * static_cast<std::size_t>(m.experts.hidden()));
      const std::vector<std::int32_t> big_ids(static_cast<std::size_t>(B_max + 1) * K);
      const std::vector<float> big_gates(big_ids.size());
      std::vector<float> big_out(big.size());
      try {
        layers[0].forward(std::span<const float>(big), std::span<const std::int32_t>(big_ids),
                          std::span<const float>(big_gates), std::span<float>(big_out));
      } catch (const llep::Error& e) {
        if (p == 0) std::printf("a step of B_max + 1 tokens: llep::Error: %s\n", e.what());
      }
    }

    // Phase 2, the step: the layers one after another, each reusing the same memory.
    std::vector<float> h = m.x[p], out(h.size());
    std::size_t used = 0;
    for (int l = 0; l < L; ++l) {
      const llep::StepReport& r = layers[l].forward(std::span<const float>(h), std::span<const std::int32_t>(m.ids[l][p]),
                                                    std::span<const float>(m.gates[l][p]), std::span<float>(out));
      used = std::max(used, r.workspace_bytes);
      std::swap(h, out);
    }
    if (own_memory && p == 0) std::printf("rank 0: the largest of its %d steps used %zu of %zu bytes\n", L, used, bytes);
    y[p] = h;
  });
  return y;
}

}  // namespace

int main() {
  Model m;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0F, 0.3F);
  const auto D = static_cast<std::size_t>(m.experts.hidden());
  for (int l = 0; l < L; ++l) {
    m.weights.emplace_back(static_cast<std::size_t>(N) * m.experts.weight_elems());
    for (float& w : m.weights.back()) w = normal(rng);
    m.ids.emplace_back(P);
    m.gates.emplace_back(P);
  }
  for (int p = 0; p < P; ++p) {
    const llep::count_t B = B_max - 16 * p;  // ranks have different batch sizes, all <= B_max
    m.x.emplace_back();
    for (std::size_t i = 0; i < static_cast<std::size_t>(B) * D; ++i) m.x.back().push_back(normal(rng));
    for (int l = 0; l < L; ++l)
      for (llep::count_t b = 0; b < B; ++b) {
        const int first = b % 3 == 0 ? static_cast<int>(b) % N : l;  // layer l's hot expert is l
        m.ids[l][p].insert(m.ids[l][p].end(), {first, (first + 1 + static_cast<int>(b) % (N - 1)) % N});
        m.gates[l][p].insert(m.gates[l][p].end(), {0.5F, 0.5F});
      }
  }

  // What the limits cost under each planner: its bounds on any rank's rows and received
  // experts size the memory (here LLEP's received weights outweigh the rows it saves).
  for (const bool ep : {true, false}) {
    const llep::LayerLimits lim =
        ep ? llep::HostMoeLayer<llep::StandardEp>::make_limits(m.topo, K, llep::StandardEp{}, m.experts, B_max)
           : Layer::make_limits(m.topo, K, m.planner, m.experts, B_max);
    std::printf("%-12s at most %5lld rows and %2d foreign experts per rank: workspace %7zu bytes\n",
                ep ? "standard EP:" : "LeastLoaded:", static_cast<long long>(lim.plan.rows_per_rank),
                lim.plan.foreign_experts_per_rank, llep::workspace_bytes(lim));
  }

  const auto mine = run_model(m, true);
  const auto grown = run_model(m, false);
  const bool same = mine == grown;
  std::printf("output with the engine's buffer %s the output with growing workspaces\n", same ? "equals" : "DIFFERS FROM");
  return same ? 0 : 1;
}
