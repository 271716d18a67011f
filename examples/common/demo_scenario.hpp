#pragma once
// What the host and GPU demos share (flags: demo_flags.hpp): the layer's weights, tokens and skewed routing,
// a dense reference, and the side-by-side report of standard EP against LLEP.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "llep/experts/weight_layout.hpp"
#include "llep/layer/report.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/sim/routing.hpp"

namespace llep::examples {

struct DemoOptions {
  int ranks = 8, experts = 64, top_k = 4, tokens = 256, hidden = 128, intermediate = 256, steps = 5;
  int hot_experts = 1;
  double hot_share = 0.95;
  double alpha = 1.0;
  count_t min_gemm = 64;
  std::uint64_t seed = 1;
  bool check = true;
  int check_tokens = 1 << 30;  // tokens per rank compared with the dense reference
  double max_memory_gb = 4;     // refuse a run estimated to need more (GB, 1e9 bytes)

  [[nodiscard]] sim::Skew skew() const { return {hot_experts, hot_share}; }
  [[nodiscard]] ExpertShape shape() const { return {hidden, intermediate, false}; }
  [[nodiscard]] LeastLoaded planner() const { return {alpha, min_gemm}; }

  /// Checks what CLI11 cannot: relations between flags. Throws llep::Error.
  void validate() const {
    LLEP_EXPECTS(experts % ranks == 0, "--experts N = ", experts, " must be a multiple of --ranks P = ", ranks);
    LLEP_EXPECTS(top_k <= experts, "--top-k K = ", top_k, " must be <= N = ", experts);
    skew().check(experts);
    planner().check();
    LLEP_EXPECTS(std::isfinite(max_memory_gb) && max_memory_gb > 0, "--max-memory-gb = ", max_memory_gb,
                 " must be > 0");
    LLEP_EXPECTS(memory_bytes() <= max_memory_gb * 1e9, "this run needs about ", memory_bytes() / 1e9,
                 " GB (N = ", experts, " experts of 3 x D x H = 3 x ", hidden, " x ", intermediate,
                 " floats, held about 3 times, and P x B tokens), more than --max-memory-gb ", max_memory_gb,
                 "; shrink it or raise the limit");
  }
  /// Estimated bytes of a run, in floating point (no overflow): every expert's weights held
  /// by the scenario, the ranks' native copies and the foreign copies LLEP moves; each rank's
  /// tokens, ids, gates, outputs and the layer's rows.
  [[nodiscard]] double memory_bytes() const {
    const double weights = 3.0 * experts * 3.0 * hidden * intermediate * sizeof(float);
    const double rows = double(ranks) * tokens * (6.0 * hidden * sizeof(float) + top_k * 8.0 * (1.0 + hidden));
    return weights + rows;
  }
};

/// The layer's data: every expert's weights (llep's serialised layout, float) and each
/// rank's tokens, top-k ids and weights.
struct DemoScenario {
  std::vector<std::vector<float>> experts;
  std::vector<std::vector<float>> x, gates;
  std::vector<std::vector<std::int32_t>> ids;

  explicit DemoScenario(const DemoOptions& o) {
    const ExpertShape shape = o.shape();
    std::mt19937_64 rng(o.seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    const float sg = 1.0f / std::sqrt(float(o.hidden)), sd = 1.0f / std::sqrt(float(o.intermediate));
    for (int e = 0; e < o.experts; ++e) {
      std::vector<float> gu(shape.d() * 2 * shape.h()), down(shape.h() * shape.d()), packed(shape.elems());
      for (float& v : gu) v = u(rng) * sg;
      for (float& v : down) v = u(rng) * sd;
      pack_expert<float>(shape, gu, down, {}, {}, packed);
      experts.push_back(std::move(packed));
    }
    const auto P = static_cast<std::size_t>(o.ranks);
    x.resize(P);
    gates.resize(P);
    ids.resize(P);
    for (std::size_t p = 0; p < P; ++p) {
      x[p].resize(static_cast<std::size_t>(o.tokens) * shape.d());
      for (float& v : x[p]) v = u(rng);
      ids[p].resize(static_cast<std::size_t>(o.tokens) * static_cast<std::size_t>(o.top_k));
      gates[p].resize(ids[p].size());
      sim::random_routing(rng(), o.experts, o.top_k, o.skew(), std::span<std::int32_t>(ids[p]),
                          std::span<float>(gates[p]));
    }
  }

  /// Rank r's native experts back to back, as the layer expects them.
  [[nodiscard]] std::vector<float> native_weights(int rank, int ranks) const {
    const std::size_t per = experts.size() / static_cast<std::size_t>(ranks);
    std::vector<float> w;
    for (std::size_t e = per * static_cast<std::size_t>(rank); e < per * static_cast<std::size_t>(rank + 1); ++e)
      w.insert(w.end(), experts[e].begin(), experts[e].end());
    return w;
  }

  /// The dense MoE in double, token by token, for the first `tokens` tokens of rank p;
  /// independent of the library's expert code (it only reads the serialised layout).
  [[nodiscard]] std::vector<double> dense(const DemoOptions& o, std::size_t p, std::size_t tokens) const {
    const auto D = static_cast<std::size_t>(o.hidden), H = static_cast<std::size_t>(o.intermediate);
    const auto K = static_cast<std::size_t>(o.top_k);
    const std::size_t B = std::min(tokens, x[p].size() / D);
    std::vector<double> out(B * D, 0.0), gu(2 * H);
    for (std::size_t t = 0; t < B; ++t)
      for (std::size_t k = 0; k < K; ++k) {
        const auto& w = experts[static_cast<std::size_t>(ids[p][t * K + k])];
        std::fill(gu.begin(), gu.end(), 0.0);
        for (std::size_t d = 0; d < D; ++d)
          for (std::size_t c = 0; c < 2 * H; ++c) gu[c] += double(x[p][t * D + d]) * w[d * 2 * H + c];
        for (std::size_t h = 0; h < H; ++h) {
          const double a = gu[h] / (1 + std::exp(-gu[h])) * gu[H + h];
          for (std::size_t d = 0; d < D; ++d) out[t * D + d] += double(gates[p][t * K + k]) * a * w[D * 2 * H + h * D + d];
        }
      }
    return out;
  }
};

/// One planner's run: the last step's reports (per rank), each timed step's wall time,
/// and every rank's output as float.
struct DemoRun {
  std::vector<StepReport> reports;
  std::vector<double> step_ms;
  std::vector<std::vector<float>> out;
};

/// One warm-up step (buffers grow once), then `steps` steps, each timed between two
/// barriers of `transport` (a step ends when the slowest rank is done): their ms. Collective.
template <class Transport, class Step>
std::vector<double> timed_steps(Transport& transport, int steps, Step&& step) {
  step();
  std::vector<double> ms;
  for (int s = 0; s < steps; ++s) {
    transport.barrier();
    const auto start = std::chrono::steady_clock::now();
    step();
    transport.barrier();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  return ms;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2);
}

/// Prints the comparison; returns false when a checked output disagrees with the dense
/// reference by more than `tolerance` (max |error| over max |reference|).
inline bool print_comparison(const DemoOptions& o, const DemoScenario& sc, const DemoRun& ep, const DemoRun& ll,
                             double tolerance) {
  const int P = o.ranks;
  std::printf("routing: %s (hot experts live on rank 0); LLEP: alpha = %g, min_tokens_per_gemm = %lld\n\n",
              o.skew().name().c_str(), o.alpha, static_cast<long long>(o.min_gemm));
  std::printf("rank        ");
  for (int q = 0; q < P; ++q) std::printf(" %7d", q);
  for (const auto* run : {&ep, &ll}) {
    std::printf("\n%-5s rows  ", run == &ep ? "EP" : "LLEP");
    for (int q = 0; q < P; ++q) std::printf(" %7lld", static_cast<long long>(run->reports[0].rows(q)));
    std::printf("\n      foreign");
    for (int q = 0; q < P; ++q)
      std::printf(" %7lld", static_cast<long long>(run->reports[0].foreign_rows[static_cast<std::size_t>(q)]));
  }
  auto max_rows = [&](const StepReport& r) {
    count_t m = 0;
    for (int q = 0; q < P; ++q) m = std::max(m, r.rows(q));
    return m;
  };
  auto peak = [](const StepReport& r) { return *std::max_element(r.peak_bytes.begin(), r.peak_bytes.end()); };
  std::printf("\n\n%-5s %10s %9s %10s %22s %16s\n", "", "imbalance", "max rows", "transfers", "peak MiB/rank (max)",
              "step ms (median)");
  for (const auto* run : {&ep, &ll}) {
    const StepReport& r = run->reports[0];
    std::printf("%-5s %10.2f %9lld %10zu %22.2f %16.3f\n", run == &ep ? "EP" : "LLEP", r.imbalance_after,
                static_cast<long long>(max_rows(r)), r.weight_transfers, double(peak(r)) / (1 << 20),
                median(run->step_ms));
  }
  std::printf("\nLLEP vs EP: %.2fx step time (median of %d steps), %.2fx max rows, %.2fx peak memory of the busiest "
              "rank\n",
              median(ep.step_ms) / median(ll.step_ms), o.steps,
              double(max_rows(ep.reports[0])) / double(std::max<count_t>(1, max_rows(ll.reports[0]))),
              double(peak(ep.reports[0])) / double(std::max<std::size_t>(1, peak(ll.reports[0]))));
  if (!o.check) return true;
  double err[2] = {0, 0}, scale = 0;
  std::size_t checked = 0;
  for (std::size_t p = 0; p < static_cast<std::size_t>(P); ++p) {
    const auto ref = sc.dense(o, p, static_cast<std::size_t>(o.check_tokens));
    checked += ref.size() / static_cast<std::size_t>(o.hidden);
    for (std::size_t i = 0; i < ref.size(); ++i) {
      scale = std::max(scale, std::abs(ref[i]));
      err[0] = std::max(err[0], std::abs(double(ep.out[p][i]) - ref[i]));
      err[1] = std::max(err[1], std::abs(double(ll.out[p][i]) - ref[i]));
    }
  }
  scale = std::max(scale, 1e-30);
  const bool ok = err[0] / scale <= tolerance && err[1] / scale <= tolerance;  // false on NaN too
  std::printf("\ndense reference (double, %zu tokens): max relative error EP %.2e, LLEP %.2e, tolerance %.0e: %s\n",
              checked, err[0] / scale, err[1] / scale, tolerance, ok ? "both agree" : "MISMATCH");
  return ok;
}

}  // namespace llep::examples
