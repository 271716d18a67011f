// Plan-ahead with routing replay: when the next step's routing is known (RL training
// replays the routing of every micro-batch), MoeLayer::prepare makes the next step's plan
// and moves its spilled weights before that step, and forward then skips the counts
// exchange, the planning and the weight round. The program runs the same steps twice,
// with and without prepare, prints what moved ahead, and checks that the outputs agree bit
// for bit. The last step's routing differs from the one announced: every rank re-plans.
#include <cstdio>
#include <cstring>
#include <random>
#include <span>
#include <vector>

#include "llep/layer/host_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/sim/routing.hpp"

int main() {
  constexpr int P = 4, N = 16, K = 2, B = 96, D = 32, H = 48, S = 6;
  const llep::ExpertShape shape{D, H, false};
  const llep::HostSwiGlu<float> expert(shape);

  // The replayed routing: S steps per rank, the hot expert moving from step to step.
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0F, 0.2F);
  std::vector<float> weights(static_cast<std::size_t>(N) * expert.weight_elems());
  for (float& w : weights) w = normal(rng);
  std::vector<float> x(static_cast<std::size_t>(B) * D);
  for (float& v : x) v = normal(rng);
  std::vector<std::vector<std::vector<std::int32_t>>> ids(S, std::vector<std::vector<std::int32_t>>(P));
  std::vector<std::vector<std::vector<float>>> gates = std::vector(S, std::vector<std::vector<float>>(P));
  for (int s = 0; s < S; ++s)
    for (int p = 0; p < P; ++p) {
      ids[s][p].resize(B * K);
      gates[s][p].resize(B * K);
      llep::sim::random_routing(100 * s + p, N, K, llep::sim::Skew{1, 0.8}, std::span<std::int32_t>(ids[s][p]),
                                std::span<float>(gates[s][p]));
      for (auto& id : ids[s][p]) id = (id + 3 * s) % N;
    }
  // What the engine announces for the last step differs on rank 2 by one pair.
  auto announced_last = ids[S - 1];
  announced_last[2][0] = (announced_last[2][0] + 1) % N;
  if (announced_last[2][0] == announced_last[2][1]) announced_last[2][0] = (announced_last[2][0] + 1) % N;

  using Layer = llep::HostMoeLayer<llep::LeastLoaded>;
  // out[with_prepare][step][rank]
  std::vector out(2, std::vector(S, std::vector<std::vector<float>>(P)));
  std::vector<std::vector<llep::StepReport>> reports(S, std::vector<llep::StepReport>(P));
  for (const bool with_prepare : {false, true}) {
    llep::HostGroup group(P);
    llep::run_ranks(group, [&](llep::HostThreads& t) {
      const int p = t.rank();
      Layer layer(llep::Topology(P, N), K, llep::LeastLoaded{1.0, 8}, expert, t);
      const std::size_t per_rank = static_cast<std::size_t>(N / P) * expert.weight_elems();
      layer.set_native_weights(std::span<const float>(weights).subspan(p * per_rank, per_rank));
      const auto limits = layer.limits(B);
      layer.reserve(limits);
      std::vector<std::byte> ahead(Layer::prepare_bytes(limits));  // the next step's foreign weights
      for (int s = 0; s < S; ++s) {
        auto& o = out[with_prepare][s][p];
        o.resize(x.size());
        const auto& r = layer.forward(std::span<const float>(x), std::span<const std::int32_t>(ids[s][p]),
                                      std::span<const float>(gates[s][p]), std::span<float>(o));
        if (with_prepare) reports[s][p] = r;
        // The current step is done; announce the next one (an engine would do other work
        // now, while the weights travel on a weights path).
        if (with_prepare && s + 1 < S)
          layer.prepare(std::span<const std::int32_t>(s + 2 == S ? announced_last[p] : ids[s + 1][p]), ahead);
      }
    });
  }

  int bad = 0;
  std::printf("step  prepared  re-planned  weight transfers  prefetched KB (all ranks)  same bits\n");
  for (int s = 0; s < S; ++s) {
    std::size_t prefetched = 0;
    bool same = true;
    for (int p = 0; p < P; ++p) {
      prefetched += reports[s][p].weight_bytes_prefetched;
      same = same && std::memcmp(out[0][s][p].data(), out[1][s][p].data(), x.size() * sizeof(float)) == 0;
    }
    const auto& r = reports[s][0];
    std::printf("%4d  %8s  %10s  %16zu  %25.1f  %9s\n", s, r.prepared ? "yes" : "no",
                r.prepare_mismatch ? "yes" : "no", r.weight_transfers, prefetched / 1e3, same ? "yes" : "NO");
    bad += same ? 0 : 1;
    bad += (s > 0 && s + 1 < S) != r.prepared ? 1 : 0;  // every step but the first and the mismatched last
    bad += (s + 1 == S) != r.prepare_mismatch ? 1 : 0;
  }
  std::printf(bad == 0 ? "ok: prepared steps give the same bits as plain ones\n" : "FAILED\n");
  return bad == 0 ? 0 : 1;
}
