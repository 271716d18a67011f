// llep-balancers-model: the numbers of docs/balancers.md, predicted by the cost model
// (include/llep/sim/cost_model.hpp, default H100 roofline and NVLink profile): every figure
// is a prediction, not a measurement. DeepSeek-V3's MoE layer (N 256, D 7168, H 2048,
// K 8, bf16) on P = 8 ranks of one node.
//  1. Spilling's break-even batch: standard EP against LLEP (Least-Loaded Assignment,
//     alpha 1, m 1) with its weights on the wire as bf16 (Identity), as FP8 E4M3 with
//     128-element block scales (CostModel::weight_wire_ratio from Fp8Blocks'
//     encoded_bytes), and prepared ahead (CostModel::weights_prefetched: the weight round
//     hidden behind the previous step, as plan-ahead would).
//  2. A skewed router balanced by AuxFreeBias (sign rule), standard EP and LLEP on its
//     loads before and after.
//   llep-balancers-model
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <span>
#include <vector>

#include "common/scenarios.hpp"
#include "llep/codec/block_scaled.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/cost_model.hpp"
#include "llep/sim/routing.hpp"
#include "llep/stats/aux_free_bias.hpp"
#include "llep/stats/route_topk.hpp"

namespace {

using llep::count_t;
namespace sim = llep::sim;

constexpr int P = 8;
constexpr auto kShape = llep::bench::kDeepSeekV3;

double step_ms(const sim::CostModel& model, const llep::Plan& plan, std::span<const count_t> loads,
               const llep::Topology& topo, const sim::FfnShape& ffn) {
  return model.step(plan, loads, topo, ffn).step_s * 1e3;
}

llep::Plan plan_of(const auto& planner, std::span<const count_t> loads, const llep::Topology& topo) {
  llep::Plan plan;
  planner.plan(loads, topo, plan);
  return plan;
}

void skewed_logits(std::mt19937& rng, std::vector<float>& x, int N) {
  std::normal_distribution<float> noise(0.0f, 1.0f);
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = 2.5f * (1.0f - static_cast<float>(i % static_cast<std::size_t>(N)) / static_cast<float>(N - 1)) + noise(rng);
}

std::vector<count_t> route_loads(std::mt19937& rng, int tokens, std::span<const float> bias) {
  const int N = kShape.experts, K = kShape.top_k;
  std::vector<float> x(static_cast<std::size_t>(tokens) * static_cast<std::size_t>(N));
  std::vector<float> gates(static_cast<std::size_t>(tokens) * static_cast<std::size_t>(K));
  std::vector<std::int32_t> ids(gates.size());
  skewed_logits(rng, x, N);
  llep::route_topk(x, bias, N, K, llep::GateNorm::sigmoid, ids, gates);
  std::vector<count_t> l(static_cast<std::size_t>(N), 0);
  for (std::int32_t e : ids) ++l[static_cast<std::size_t>(e)];
  return l;
}

double max_over_mean(std::span<const count_t> l) {
  count_t total = 0;
  for (count_t v : l) total += v;
  return static_cast<double>(*std::max_element(l.begin(), l.end())) * static_cast<double>(l.size()) /
         static_cast<double>(total);
}

}  // namespace

int main() {
  const sim::CostModel model;
  const llep::Topology topo(P, kShape.experts);
  const sim::FfnShape ffn{std::string(kShape.name), kShape.hidden, kShape.intermediate};
  const llep::StandardEp ep;
  const llep::LeastLoaded lla{.alpha = 1.0, .min_tokens_per_gemm = 1};
  const auto elems = static_cast<std::size_t>(ffn.weight_elems());
  const double fp8_wire = static_cast<double>(llep::Fp8Blocks<float>(128).encoded_bytes(elems)) /
                          model.expert_bytes(ffn);
  sim::CostModel fp8 = model, prepared = model;  // weights as FP8 on the wire; weight round hidden
  fp8.weight_wire_ratio = fp8_wire;
  prepared.weights_prefetched = true;
  std::printf("cost model (predictions): %s, P = %d on one node, %s\n", model.gemm.describe().c_str(), P,
              std::string(kShape.name).c_str());
  std::printf("one expert: %.1f MB as bf16, %.1f MB as fp8-e4m3-blocks (wire ratio %.3f)\n\n",
              model.expert_bytes(ffn) / 1e6, model.expert_bytes(ffn) * fp8_wire / 1e6, fp8_wire);

  std::printf("1. step time (ms) vs tokens per rank B\n");
  for (const sim::Skew skew : {sim::Skew{1, 0.3}, sim::Skew{4, 0.5}, sim::Skew{1, 0.8}}) {
    std::printf("routing %s\n%7s %9s %10s %10s %14s %10s\n", skew.name().c_str(), "B", "EP", "LLEP bf16", "LLEP fp8",
                "LLEP prepared", "transfers");
    count_t even[3] = {0, 0, 0};  // first B where each LLEP variant beats EP
    for (count_t B = 64; B <= 32768; B *= 2) {
      const auto loads = sim::skewed_loads(kShape.experts, B * kShape.top_k * P, skew);
      const auto ep_plan = plan_of(ep, loads, topo), ll_plan = plan_of(lla, loads, topo);
      const double t_ep = step_ms(model, ep_plan, loads, topo, ffn);
      const double t[3] = {step_ms(model, ll_plan, loads, topo, ffn), step_ms(fp8, ll_plan, loads, topo, ffn),
                           step_ms(prepared, ll_plan, loads, topo, ffn)};
      for (int v = 0; v < 3; ++v)
        if (even[v] == 0 && t[v] < t_ep) even[v] = B;
      std::printf("%7lld %9.3f %10.3f %10.3f %14.3f %10zu\n", static_cast<long long>(B), t_ep, t[0], t[1], t[2],
                  ll_plan.weight_transfers().size());
    }
    std::printf("LLEP beats EP from B = %lld (bf16), %lld (fp8), %lld (prepared)\n\n", static_cast<long long>(even[0]),
                static_cast<long long>(even[1]), static_cast<long long>(even[2]));
  }

  // 2. AuxFreeBias learns on small steps (P x 256 tokens, 300 steps, u = 1e-3), then one
  // full step (P x 4096 tokens) is routed without and with the learned biases.
  std::printf("2. a skewed router (sigmoid scores, hot experts on rank 0) and AuxFreeBias\n");
  std::mt19937 rng(7);
  std::vector<float> bias(static_cast<std::size_t>(kShape.experts), 0.0f);
  for (int s = 0; s < 300; ++s) llep::adjust_biases(bias, route_loads(rng, P * 256, bias), {1e-3, llep::BiasRule::sign});
  const count_t B = 4096;
  const auto plain = route_loads(rng, P * static_cast<int>(B), {});
  const auto biased = route_loads(rng, P * static_cast<int>(B), bias);
  std::printf("%-22s %16s %9s %10s %10s\n", "B = 4096 per rank", "expert max/mean", "EP ms", "LLEP ms", "transfers");
  for (const auto& [name, loads] : {std::pair{"unbiased", plain}, std::pair{"aux-free bias", biased}}) {
    const auto ll_plan = plan_of(lla, loads, topo);
    std::printf("%-22s %16.2f %9.3f %10.3f %10zu\n", name, max_over_mean(loads),
                step_ms(model, plan_of(ep, loads, topo), loads, topo, ffn), step_ms(model, ll_plan, loads, topo, ffn),
                ll_plan.weight_transfers().size());
  }
  std::printf("ideal (balanced, no communication): %.3f ms\n", model.ideal_step(plain, topo, ffn).step_s * 1e3);
  return 0;
}
