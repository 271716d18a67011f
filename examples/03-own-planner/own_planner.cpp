// 03: your own planner. SplitHot cuts every expert with more than `threshold` pairs into
// P near-equal slices, one per rank, and leaves the others native. The program checks its
// plans with validate() and its bounds() on many random batches, composes it with
// Adaptive, and runs it in a host layer, whose output must equal standard EP's (a plan
// moves work, not math).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <span>
#include <string_view>
#include <vector>

#include "llep/layer/host_layer.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/planner.hpp"
#include "llep/plan/standard_ep.hpp"

struct SplitHot {
  static constexpr std::string_view name = "split-hot";
  llep::count_t threshold = 256;

  // Deterministic: every rank computes the same plan from the same loads.
  void plan(std::span<const llep::count_t> loads, const llep::Topology& topo, llep::Plan& out) const {
    llep::check_loads(loads, topo);  // N entries, none negative: throws llep::Error
    out.reset(topo, name);           // keeps the buffers of the last plan: no allocation when warm
    const int P = topo.ranks();
    for (int e = 0; e < topo.experts(); ++e) {
      const llep::count_t l = loads[static_cast<std::size_t>(e)];
      if (l == 0) continue;
      if (l <= threshold) {
        out.add_segment(e, topo.native_rank(e), 0, l);  // pairs [0, l) stay native
        continue;
      }
      for (int i = 0; i < P; ++i) {  // slice i goes to rank native + i (mod P)
        const llep::count_t begin = l * i / P, end = l * (i + 1) / P;
        if (end > begin) out.add_segment(e, (topo.native_rank(e) + i) % P, begin, end);
      }
    }
    llep::count_t most = 1;
    for (const llep::count_t r : out.rank_loads()) most = std::max(most, r);
    out.set_capacity(most);
    out.finish(topo);  // sorts the segments, derives the weight transfers
  }

  // Optional: upper bounds over every batch in which no rank routes more than `pairs`
  // token-expert pairs. A layer sizes its workspace by them before any batch (example
  // 04); without bounds() it assumes the worst any plan can do (every pair on one rank).
  [[nodiscard]] llep::PlanBounds bounds(const llep::Topology& topo, std::int64_t pairs) const {
    const std::int64_t P = topo.ranks(), N = topo.experts(), total = P * pairs;
    // A rank's unsplit natives hold at most `threshold` pairs each; a split expert gives
    // it at most one slice of ceil(load / P) <= load / P + 1 pairs.
    const std::int64_t rows = std::min(total, topo.experts_per_rank() * threshold + total / P + N);
    return llep::PlanBounds{.rows_per_rank = rows,
                            .foreign_experts_per_rank = static_cast<int>(N - topo.experts_per_rank()),
                            .segments = static_cast<int>(N * P),
                            .transfers = static_cast<int>(N * (P - 1))};
  }
};
// Next to the definition: a type that does not fit fails here with an llep: message.
static_assert(llep::check_planner<SplitHot>());

namespace {

void show(const llep::Plan& plan) {
  std::printf("  %-9s capacity %4lld, %2zu weight transfers, rank loads", std::string(plan.policy()).c_str(),
              static_cast<long long>(plan.capacity()), plan.weight_transfers().size());
  for (const llep::count_t l : plan.rank_loads()) std::printf(" %lld", static_cast<long long>(l));
  std::printf("\n");
}

// One forward step of a host layer with planner `planner` on every rank; the outputs.
template <llep::Planner Plnr>
std::vector<std::vector<float>> run_layer(const Plnr& planner, const llep::Topology& topo, int K,
                                          const llep::HostSwiGlu<float>& experts, const std::vector<float>& weights,
                                          const std::vector<std::vector<float>>& x,
                                          const std::vector<std::vector<std::int32_t>>& ids,
                                          const std::vector<std::vector<float>>& gates) {
  std::vector<std::vector<float>> out(x.size());
  llep::HostGroup group(topo.ranks());
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    llep::HostMoeLayer<Plnr> layer(topo, K, planner, experts, t);
    const std::size_t per_rank = static_cast<std::size_t>(topo.experts_per_rank()) * experts.weight_elems();
    layer.set_native_weights(std::span<const float>(weights).subspan(p * per_rank, per_rank));
    out[p].resize(x[p].size());
    layer.forward(std::span<const float>(x[p]), std::span<const std::int32_t>(ids[p]),
                  std::span<const float>(gates[p]), std::span<float>(out[p]));
  });
  return out;
}

}  // namespace

int main() {
  constexpr int P = 4, N = 16, K = 2, B = 128;
  const llep::Topology topo(P, N);
  const SplitHot split{.threshold = 256};
  llep::Plan plan;

  // 1. One skewed batch: experts 0 and 1 (rank 0) are hot.
  std::vector<llep::count_t> loads(N, 40);
  loads[0] = 900;
  loads[1] = 500;
  std::printf("skewed batch:\n");
  llep::StandardEp{}.plan(loads, topo, plan);
  show(plan);
  split.plan(loads, topo, plan);
  show(plan);
  bool ok = static_cast<bool>(llep::validate(plan, loads, topo));

  // 2. Composed: Adaptive keeps standard EP below the imbalance threshold lambda.
  const llep::Adaptive<SplitHot> adaptive{.lambda = 1.3, .inner = split};
  std::printf("Adaptive<SplitHot>, skewed then balanced:\n");
  adaptive.plan(loads, topo, plan);
  show(plan);
  ok = ok && plan.policy() == "split-hot";
  std::vector<llep::count_t> balanced(N, 300);
  adaptive.plan(balanced, topo, plan);
  show(plan);
  ok = ok && plan.policy() == "ep";

  // 3. validate() on many random batches, as a planner's test should.
  std::mt19937 rng(3);
  int invalid = 0, over_bound = 0;
  for (int i = 0; i < 2000; ++i) {
    std::uniform_int_distribution<llep::count_t> load(0, i % 2 == 0 ? 600 : 50);
    for (llep::count_t& l : loads) l = load(rng);
    split.plan(loads, topo, plan);
    invalid += llep::validate(plan, loads, topo) ? 0 : 1;
    // The bounds for the busiest possible rank of this batch must hold too.
    llep::count_t total = 0, most = 0;
    for (const llep::count_t l : loads) total += l;
    for (const llep::count_t l : plan.rank_loads()) most = std::max(most, l);
    const llep::PlanBounds b = split.bounds(topo, (total + P - 1) / P);
    over_bound += most > b.rows_per_rank || plan.weight_transfers().size() > static_cast<std::size_t>(b.transfers);
  }
  std::printf("2000 random batches: %d invalid plans, %d beyond bounds()\n", invalid, over_bound);
  ok = ok && invalid == 0 && over_bound == 0;

  // 4. In a layer: the same output as standard EP.
  const llep::HostSwiGlu<float> experts(llep::ExpertShape{.hidden = 32, .intermediate = 64});
  std::normal_distribution<float> normal(0.0F, 0.2F);
  std::vector<float> weights(static_cast<std::size_t>(N) * experts.weight_elems());
  for (float& w : weights) w = normal(rng);
  std::vector<std::vector<float>> x(P), gates(P);
  std::vector<std::vector<std::int32_t>> ids(P);
  for (int p = 0; p < P; ++p)
    for (int b = 0; b < B; ++b) {
      for (int d = 0; d < experts.hidden(); ++d) x[p].push_back(normal(rng));
      const int first = b % 4 == 3 ? b % N : b % 2;  // mostly experts 0 and 1
      ids[p].insert(ids[p].end(), {first, (first + 1 + b % (N - 1)) % N});
      gates[p].insert(gates[p].end(), {0.6F, 0.4F});
    }
  std::vector<llep::count_t> routed(N, 0);  // what the layer's counts will be
  for (const auto& r : ids)
    for (const std::int32_t e : r) ++routed[static_cast<std::size_t>(e)];
  split.plan(routed, topo, plan);
  ok = ok && !plan.weight_transfers().empty();  // the layer's plan does move work
  const auto ep = run_layer(llep::StandardEp{}, topo, K, experts, weights, x, ids, gates);
  const auto mine = run_layer(split, topo, K, experts, weights, x, ids, gates);
  double worst = 0;
  for (int p = 0; p < P; ++p)
    for (std::size_t i = 0; i < ep[p].size(); ++i) worst = std::max(worst, double(std::abs(ep[p][i] - mine[p][i])));
  std::printf("layer with SplitHot (%zu weight transfers) vs standard EP: max difference %.2e\n",
              plan.weight_transfers().size(), worst);
  ok = ok && worst <= 1e-5;
  return ok ? 0 : 1;
}
