// AuxFreeBias and route_topk: the bias rules against hand-computed steps, the same bits on
// every rank, a skewed router that balances itself, and gates that no bias can change.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../common/dense_moe.hpp"
#include "llep/exec/host.hpp"
#include "llep/experts/host_swiglu.hpp"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/stats/aux_free_bias.hpp"
#include "llep/stats/route_topk.hpp"
#include "llep/transport/host_threads.hpp"

static_assert(llep::check_routing_stats<llep::AuxFreeBias, llep::HostExec, llep::HostThreads>());
static_assert(!llep::HistoryStats<llep::AuxFreeBias, llep::HostExec, llep::HostThreads>);

namespace {

using Ids = std::vector<std::int32_t>;

// Logits of a skewed router: expert e gets skew * (1 - e / (N - 1)) plus N(0, 1) noise,
// so low ids are hot.
std::vector<float> skewed_logits(std::mt19937& rng, int tokens, int N, float skew) {
  std::normal_distribution<float> noise(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(tokens) * static_cast<std::size_t>(N));
  for (std::size_t i = 0; i < x.size(); ++i) {
    const auto e = static_cast<float>(i % static_cast<std::size_t>(N));
    x[i] = skew * (1.0f - e / static_cast<float>(N - 1)) + noise(rng);
  }
  return x;
}

// Independent reference of the score of every expert, in double.
std::vector<double> reference_scores(const float* x, int N, llep::GateNorm norm) {
  std::vector<double> s(static_cast<std::size_t>(N));
  if (norm == llep::GateNorm::sigmoid) {
    for (int e = 0; e < N; ++e) s[static_cast<std::size_t>(e)] = 1.0 / (1.0 + std::exp(-static_cast<double>(x[e])));
  } else {
    const double m = *std::max_element(x, x + N);
    double z = 0;
    for (int e = 0; e < N; ++e) z += std::exp(x[e] - m);
    for (int e = 0; e < N; ++e) s[static_cast<std::size_t>(e)] = std::exp(x[e] - m) / z;
  }
  return s;
}

double max_over_mean(const std::vector<llep::count_t>& l) {
  const double mean = static_cast<double>(std::accumulate(l.begin(), l.end(), llep::count_t{0})) /
                      static_cast<double>(l.size());
  return static_cast<double>(*std::max_element(l.begin(), l.end())) / mean;
}

}  // namespace

TEST_CASE("AuxFreeBias rejects a rate that is not finite and positive") {
  for (double u : {0.0, -1e-3, std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()})
    CHECK_THROWS_WITH_AS(llep::AuxFreeBias(llep::AuxFreeBiasConfig{u}), doctest::Contains("must be finite and > 0"),
                         llep::Error);
  CHECK(llep::AuxFreeBias{}.config() == llep::AuxFreeBiasConfig{1e-3, llep::BiasRule::sign});
}

TEST_CASE("adjust_biases: the sign rule and the proportional rule, step by step") {
  const float u = 0.25f;  // a power of two: every sum below is exact
  std::vector<float> b(4, 0.0f);
  // mean 3: expert 0 above, 1 and 2 below, 3 at the mean.
  llep::adjust_biases(b, std::vector<llep::count_t>{6, 2, 1, 3}, {u, llep::BiasRule::sign});
  CHECK(b == std::vector<float>{-u, u, u, 0.0f});
  // mean 13 / 4 = 3.25: 3 is now below it.
  llep::adjust_biases(b, std::vector<llep::count_t>{3, 3, 3, 4}, {u, llep::BiasRule::sign});
  CHECK(b == std::vector<float>{0.0f, 2 * u, 2 * u, -u});
  // Nothing routed: no step.
  llep::adjust_biases(b, std::vector<llep::count_t>{0, 0, 0, 0}, {u, llep::BiasRule::sign});
  CHECK(b == std::vector<float>{0.0f, 2 * u, 2 * u, -u});

  // Proportional: b_e += u (mean - l_e) / mean with mean = 4.
  std::vector<float> p(4, 1.0f);
  llep::adjust_biases(p, std::vector<llep::count_t>{8, 4, 2, 2}, {0.5, llep::BiasRule::proportional});
  CHECK(p == std::vector<float>{0.5f, 1.0f, 1.25f, 1.25f});

  CHECK_THROWS_WITH_AS(llep::adjust_biases(p, std::vector<llep::count_t>{1, 2}, {}),
                       "llep: adjust_biases: 4 biases for 2 expert loads", llep::Error);
}

TEST_CASE("AuxFreeBias holds the same bias bits on every rank, equal to a reference over the exact loads") {
  const int P = 4, N = 12, K = 3, steps = 30;
  for (const auto rule : {llep::BiasRule::sign, llep::BiasRule::proportional}) {
    CAPTURE(rule);
    const llep::AuxFreeBiasConfig config{0.01, rule};
    llep::HostGroup group(P);
    std::vector<llep::AuxFreeBias> stats(P, llep::AuxFreeBias{config});
    std::vector<std::vector<std::vector<float>>> seen(P);       // [rank][step] biases after the step
    std::vector<std::vector<std::vector<llep::count_t>>> loads(P);  // [rank][step]
    llep::run_ranks(group, [&](llep::HostThreads& t) {
      const auto p = static_cast<std::size_t>(t.rank());
      std::mt19937 rng(100 + static_cast<unsigned>(p));  // every rank routes different tokens
      llep::HostExec exec;
      for (int s = 0; s < steps; ++s) {
        const int B = static_cast<int>(rng() % 50);
        const auto x = skewed_logits(rng, B, N, 2.0f);
        Ids ids(static_cast<std::size_t>(B * K));
        std::vector<float> gates(ids.size());
        llep::route_topk(x, stats[p].biases(), N, K, llep::GateNorm::sigmoid, ids, gates);
        stats[p].update(exec, t, ids.data(), ids.size(), {N, K, B});
        seen[p].emplace_back(stats[p].biases().begin(), stats[p].biases().end());
        loads[p].emplace_back(stats[p].loads().begin(), stats[p].loads().end());
      }
    });
    for (std::size_t p = 1; p < P; ++p)
      for (int s = 0; s < steps; ++s) {
        REQUIRE(seen[p][s].size() == N);
        CHECK(std::memcmp(seen[p][s].data(), seen[0][s].data(), N * sizeof(float)) == 0);
      }
    // Reference: the rule in double over the loads every rank saw.
    std::vector<double> ref(N, 0.0);
    for (int s = 0; s < steps; ++s) {
      const auto& l = loads[0][static_cast<std::size_t>(s)];
      const double mean = static_cast<double>(std::accumulate(l.begin(), l.end(), llep::count_t{0})) / N;
      if (mean == 0) continue;
      for (std::size_t e = 0; e < N; ++e) {
        const double d = mean - static_cast<double>(l[e]);
        ref[e] += rule == llep::BiasRule::sign ? 0.01 * ((d > 0) - (d < 0)) : 0.01 * d / mean;
      }
    }
    for (std::size_t e = 0; e < N; ++e) CHECK(seen[0].back()[e] == doctest::Approx(ref[e]).epsilon(1e-5));
    CHECK(stats[0].steps() == steps);
  }
}

TEST_CASE("AuxFreeBias: a failing step leaves the biases unchanged; another N needs reset_biases") {
  llep::HostGroup group(2);
  std::vector<llep::AuxFreeBias> stats(2, llep::AuxFreeBias{{0.5, llep::BiasRule::sign}});
  std::vector<std::vector<float>> before(2), after(2), fresh(2);
  std::vector<std::string> bad_id(2), other_n(2);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    llep::HostExec exec;
    const Ids ids = {0, 0, 1};
    stats[p].update(exec, t, ids.data(), ids.size(), {4, 1, 3});
    before[p].assign(stats[p].biases().begin(), stats[p].biases().end());
    const Ids bad = {p == 1 ? 7 : 0};
    try {
      stats[p].update(exec, t, bad.data(), 1, {4, 1, 1});
    } catch (const llep::Error& e) {
      bad_id[p] = e.what();
    }
    after[p].assign(stats[p].biases().begin(), stats[p].biases().end());
    try {
      stats[p].update(exec, t, ids.data(), ids.size(), {8, 1, 3});
    } catch (const llep::Error& e) {
      other_n[p] = e.what();
    }
    stats[p].reset_biases();
    stats[p].update(exec, t, ids.data(), ids.size(), {8, 1, 3});
    fresh[p].assign(stats[p].biases().begin(), stats[p].biases().end());
  });
  for (std::size_t p = 0; p < 2; ++p) {
    // l = {4, 2, 0, 0}, mean 1.5.
    CHECK(before[p] == std::vector<float>{-0.5f, -0.5f, 0.5f, 0.5f});
    CHECK(bad_id[p] == "llep: rank 1 routed expert id 7 outside [0, 4) (1 of 1 ids are out of range)");
    CHECK(after[p] == before[p]);
    CHECK(other_n[p] ==
          "llep: AuxFreeBias holds biases of N = 4 experts but this step has N = 8; call reset_biases() first");
    // l = {4, 2, 0, ..., 0}, mean 0.75.
    CHECK(fresh[p] == std::vector<float>{-0.5f, -0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f});
  }
}

TEST_CASE("AuxFreeBias balances a skewed router: max/mean expert load falls window after window") {
  // Fixed seed, 4 ranks, the same router on every rank; each rank routes fresh tokens every
  // step with the biases of the previous step.
  const int P = 4, N = 16, K = 2, B = 512, steps = 200, window = 20;
  for (const auto& row : {std::pair{llep::BiasRule::sign, 0.002}, std::pair{llep::BiasRule::proportional, 0.002}}) {
    const auto rule = row.first;  // copies, not structured bindings: CHECK_MESSAGE and CAPTURE capture them (clang 14)
    const auto rate = row.second;
    CAPTURE(rule);
    llep::HostGroup group(P);
    std::vector<llep::AuxFreeBias> stats(P, llep::AuxFreeBias{{rate, rule}});
    std::vector<double> imbalance(steps);  // max/mean over experts of the step's global loads
    std::vector<std::vector<float>> first_gates(P);
    llep::run_ranks(group, [&](llep::HostThreads& t) {
      const auto p = static_cast<std::size_t>(t.rank());
      std::mt19937 rng(2024 + static_cast<unsigned>(p));
      llep::HostExec exec;
      Ids ids(B * K);
      std::vector<float> gates(ids.size());
      for (int s = 0; s < steps; ++s) {
        const auto x = skewed_logits(rng, B, N, 3.0f);
        llep::route_topk(x, stats[p].biases(), N, K, llep::GateNorm::sigmoid, ids, gates);
        stats[p].update(exec, t, ids.data(), ids.size(), {N, K, B});
        if (p == 0)
          imbalance[static_cast<std::size_t>(s)] =
              max_over_mean({stats[p].loads().begin(), stats[p].loads().end()});
      }
    });
    std::vector<double> means;
    for (int w = 0; w < steps / window; ++w)
      means.push_back(std::accumulate(imbalance.begin() + w * window, imbalance.begin() + (w + 1) * window, 0.0) /
                      window);
    std::string trend;
    for (double m : means) trend += std::to_string(m) + " ";
    CAPTURE(trend);
    // The unbiased router is badly skewed, and the bias brings it near balance.
    CHECK(imbalance[0] > 2.0);
    CHECK(means.back() < 1.25);
    // Falls window after window until it reaches the noise floor of a balanced router.
    for (std::size_t w = 1; w < means.size() && means[w - 1] > 1.3; ++w) CHECK(means[w] < means[w - 1]);
  }
}

TEST_CASE("route_topk: the gates come from the unbiased scores, whatever the bias") {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> big(-3.0f, 3.0f);
  for (const auto norm : {llep::GateNorm::sigmoid, llep::GateNorm::softmax})
    for (const auto& row : {std::pair{8, 1}, std::pair{8, 2}, std::pair{16, 4}, std::pair{5, 5}}) {
      const int N = row.first;  // copies, not structured bindings: CHECK_MESSAGE and CAPTURE capture them (clang 14)
      const int K = row.second;
      CAPTURE(norm);
      CAPTURE(N);
      CAPTURE(K);
      const int B = 64;
      const auto x = skewed_logits(rng, B, N, 1.0f);
      std::vector<float> bias(static_cast<std::size_t>(N));
      for (float& b : bias) b = big(rng);
      Ids plain_ids(B * K), biased_ids(B * K);
      std::vector<float> plain_gates(plain_ids.size()), biased_gates(plain_ids.size());
      llep::route_topk(x, {}, N, K, norm, plain_ids, plain_gates);
      llep::route_topk(x, bias, N, K, norm, biased_ids, biased_gates);
      int changed = 0;
      for (int t = 0; t < B; ++t) {
        const float* xt = x.data() + t * N;
        const auto s = reference_scores(xt, N, norm);
        const std::size_t o = static_cast<std::size_t>(t * K);
        for (const auto* run : {&plain_ids, &biased_ids}) {
          const Ids sel(run->begin() + static_cast<std::ptrdiff_t>(o), run->begin() + static_cast<std::ptrdiff_t>(o + K));
          // Selection: the K largest of s + b (b = 0 for the plain run), distinct.
          std::vector<double> v(static_cast<std::size_t>(N));
          for (std::size_t e = 0; e < v.size(); ++e) v[e] = s[e] + (run == &biased_ids ? bias[e] : 0.0);
          std::vector<double> sorted = v;
          std::sort(sorted.rbegin(), sorted.rend());
          Ids unique = sel;
          std::sort(unique.begin(), unique.end());
          CHECK(std::unique(unique.begin(), unique.end()) == unique.end());
          for (int k = 0; k < K; ++k) CHECK(v[static_cast<std::size_t>(sel[k])] == doctest::Approx(sorted[k]).epsilon(1e-6));
        }
        // Gates: the unbiased scores of the selected experts, normalised over them.
        double sum = 0;
        for (int k = 0; k < K; ++k) sum += s[static_cast<std::size_t>(biased_ids[o + k])];
        for (int k = 0; k < K; ++k)
          CHECK(biased_gates[o + k] ==
                doctest::Approx(s[static_cast<std::size_t>(biased_ids[o + k])] / sum).epsilon(1e-5));
        // Same experts chosen with and without the bias: the very same gate bits.
        bool same = true;
        for (int k = 0; k < K; ++k) same = same && plain_ids[o + k] == biased_ids[o + k];
        if (same)
          CHECK(std::memcmp(plain_gates.data() + o, biased_gates.data() + o, K * sizeof(float)) == 0);
        else
          ++changed;
      }
      if (K < N) CHECK(changed > 0);  // the bias did move some selections
    }
}

TEST_CASE("route_topk: a bias that forces the selection leaves the forced experts' gates unbiased") {
  const int N = 6, K = 2;
  const std::vector<float> x = {2.0f, 1.0f, 0.0f, -1.0f, -2.0f, 0.5f};
  std::vector<float> bias(N, 0.0f);
  bias[3] = 10.0f;
  bias[4] = 9.0f;
  Ids ids(K);
  std::vector<float> gates(K);
  for (const auto norm : {llep::GateNorm::sigmoid, llep::GateNorm::softmax}) {
    llep::route_topk(x, bias, N, K, norm, ids, gates);
    CHECK(ids == Ids{3, 4});
    const auto s = reference_scores(x.data(), N, norm);
    CHECK(gates[0] == doctest::Approx(s[3] / (s[3] + s[4])).epsilon(1e-6));
    CHECK(gates[1] == doctest::Approx(s[4] / (s[3] + s[4])).epsilon(1e-6));
  }
}

TEST_CASE("route_topk refuses bad shapes and non-finite inputs") {
  const std::vector<float> x(8, 0.0f);
  Ids ids(4);
  std::vector<float> g(4);
  CHECK_THROWS_WITH_AS(llep::route_topk(x, {}, 4, 5, llep::GateNorm::sigmoid, ids, g),
                       "llep: route_topk: K = 5 must be in [1, N = 4]", llep::Error);
  CHECK_THROWS_WITH_AS(llep::route_topk(x, {}, 3, 1, llep::GateNorm::sigmoid, ids, g),
                       "llep: route_topk: 8 logits are not a whole number of tokens of N = 3", llep::Error);
  CHECK_THROWS_WITH_AS(llep::route_topk(x, std::vector<float>(3), 4, 2, llep::GateNorm::sigmoid, ids, g),
                       "llep: route_topk: the bias has 3 entries; it must have N = 4 (or none)", llep::Error);
  CHECK_THROWS_WITH_AS(llep::route_topk(x, {}, 4, 1, llep::GateNorm::sigmoid, ids, g),
                       "llep: route_topk: ids has 4 and gates 4 entries; B x K = 2", llep::Error);
  std::vector<float> nan = x;
  nan[5] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH_AS(llep::route_topk(nan, {}, 4, 2, llep::GateNorm::softmax, ids, g),
                       "llep: route_topk: logit 5 (token 1, expert 1) = nan is not finite", llep::Error);
  std::vector<float> inf_bias(4, 0.0f);
  inf_bias[2] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH_AS(llep::route_topk(x, inf_bias, 4, 2, llep::GateNorm::softmax, ids, g),
                       "llep: route_topk: bias[2] = inf is not finite", llep::Error);
}

TEST_CASE("AuxFreeBias as the layer's Stats: the engine routes with layer.stats().biases(), the layer stays exact") {
  const int P = 2, N = 4, K = 2, D = 12, H = 8, B = 40, steps = 12;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 4);
  const llep::ExpertShape shape{D, H, false};
  llep::HostGroup group(P);
  std::vector<std::vector<float>> biases(P);
  std::vector<double> err(P, 0.0), scale(P, 0.0);
  std::vector<int> moved(P, 0);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    const auto weights = moe.packed_rank<float>(t.rank(), P);
    llep::MoeLayer<llep::AuxFreeBias, llep::LeastLoaded, llep::HostThreads, llep::HostSwiGlu<float>, llep::HostExec>
        layer(llep::Topology(P, N), K, llep::LeastLoaded{1.0, 1}, llep::HostSwiGlu<float>(shape), t, llep::HostExec{},
              llep::AuxFreeBias({0.05, llep::BiasRule::sign}));
    layer.set_native_weights(weights);
    std::mt19937 rng(50 + static_cast<unsigned>(p));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(B * D), out(B * D), gates(B * K);
    Ids ids(B * K);
    for (int s = 0; s < steps; ++s) {
      for (float& v : x) v = normal(rng);
      const auto logits = skewed_logits(rng, B, N, 2.0f);
      llep::route_topk(logits, layer.stats().biases(), N, K, llep::GateNorm::sigmoid, ids, gates);
      layer.forward(std::span<const float>(x), std::span<const std::int32_t>(ids), std::span<const float>(gates),
                    std::span<float>(out));
      const auto ref = moe.forward(std::vector<double>(x.begin(), x.end()), ids,
                                   std::vector<double>(gates.begin(), gates.end()), K);
      for (std::size_t i = 0; i < ref.size(); ++i) {
        scale[p] = std::max(scale[p], std::fabs(ref[i]));
        err[p] = std::max(err[p], std::fabs(static_cast<double>(out[i]) - ref[i]));
      }
      moved[p] += static_cast<int>(layer.plan().weight_transfers().size());
    }
    biases[p].assign(layer.stats().biases().begin(), layer.stats().biases().end());
  });
  REQUIRE(biases[0].size() == N);
  CHECK(std::memcmp(biases[0].data(), biases[1].data(), N * sizeof(float)) == 0);
  CHECK(biases[0][0] < 0.0f);  // the hottest expert was pushed down
  CHECK(biases[0][N - 1] > 0.0f);  // the coldest up
  CHECK(moved[0] > 0);             // LLEP did spill on the skewed early steps
  for (std::size_t p = 0; p < P; ++p) CHECK(err[p] <= 1e-4 * std::max(scale[p], 1e-3));
}
