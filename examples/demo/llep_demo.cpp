// llep-demo: one MoE layer on P host threads under skewed routing, standard EP vs LLEP.
//
//   llep-demo --ranks 8 --hot-experts 1 --hot-share 0.95
//
// Prints per-rank rows, imbalance, planned peak memory per rank, wall time per step for both
// planners, and whether both outputs agree with a dense single-process MoE.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "llep/layer/host_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/routing.hpp"

namespace {

using llep::count_t;

struct Options {
  int ranks = 8, experts = 64, top_k = 4, tokens = 256, hidden = 128, intermediate = 256, steps = 5;
  int hot_experts = 1;
  double hot_share = 0.95;
  double alpha = 1.0;
  count_t min_gemm = 64;
  std::uint64_t seed = 1;
  bool check = true;
};

// Independent of the library's expert code: the same SwiGLU FFN in double, token by token.
struct Dense {
  int N, D, H;
  std::vector<std::vector<float>> packed;  // per expert, llep's serialised layout

  std::vector<double> forward(const std::vector<float>& x, const std::vector<std::int32_t>& ids,
                              const std::vector<float>& gates, int K) const {
    const std::size_t B = x.size() / static_cast<std::size_t>(D);
    std::vector<double> out(x.size(), 0.0), gu(2 * static_cast<std::size_t>(H));
    for (std::size_t t = 0; t < B; ++t)
      for (int k = 0; k < K; ++k) {
        const std::size_t p = t * static_cast<std::size_t>(K) + static_cast<std::size_t>(k);
        const auto& w = packed[static_cast<std::size_t>(ids[p])];
        std::fill(gu.begin(), gu.end(), 0.0);
        for (int d = 0; d < D; ++d)
          for (int c = 0; c < 2 * H; ++c)
            gu[static_cast<std::size_t>(c)] += double(x[t * D + d]) * w[static_cast<std::size_t>(d) * 2 * H + c];
        const std::size_t down = static_cast<std::size_t>(D) * 2 * H;
        for (int h = 0; h < H; ++h) {
          const double g = gu[static_cast<std::size_t>(h)], u = gu[static_cast<std::size_t>(H + h)];
          const double a = g / (1 + std::exp(-g)) * u;
          for (int d = 0; d < D; ++d)
            out[t * D + d] += double(gates[p]) * a * w[down + static_cast<std::size_t>(h) * D + d];
        }
      }
    return out;
  }
};

struct Result {
  std::vector<llep::StepReport> reports;  // per rank, last step
  std::vector<double> step_ms;            // per timed step (rank 0's view: all ranks done)
  std::vector<std::vector<float>> out;    // per rank
};

template <class Plnr>
Result run(const Options& o, const Plnr& planner, const Dense& dense, const std::vector<std::vector<float>>& x,
           const std::vector<std::vector<std::int32_t>>& ids, const std::vector<std::vector<float>>& gates) {
  const llep::Topology topo(o.ranks, o.experts);
  const llep::ExpertShape shape{o.hidden, o.intermediate, false};
  llep::HostGroup group(o.ranks);
  Result r;
  r.reports.resize(static_cast<std::size_t>(o.ranks));
  r.out.resize(static_cast<std::size_t>(o.ranks));
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    std::vector<float> weights;
    for (int e = 0; e < o.experts; ++e)
      if (topo.native_rank(e) == t.rank())
        weights.insert(weights.end(), dense.packed[static_cast<std::size_t>(e)].begin(),
                       dense.packed[static_cast<std::size_t>(e)].end());
    llep::HostMoeLayer<Plnr> layer(topo, o.top_k, planner, llep::HostSwiGlu<float>(shape), t);
    layer.set_native_weights(weights.data());
    std::vector<float> out(x[p].size());
    auto step = [&] {
      r.reports[p] = layer.forward(std::span<const float>(x[p]), std::span<const std::int32_t>(ids[p]),
                                   std::span<const float>(gates[p]), std::span<float>(out));
    };
    step();  // warm-up: buffers grow once
    for (int s = 0; s < o.steps; ++s) {
      t.barrier();
      const auto start = std::chrono::steady_clock::now();
      step();
      t.barrier();  // the step ends when the slowest rank is done
      if (p == 0)
        r.step_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    r.out[p] = out;
  });
  return r;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n == 0 ? 0.0 : (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2);
}

// Largest |out - ref| over the largest |ref|.
double relative_error(const Result& r, const std::vector<std::vector<double>>& ref) {
  double err = 0, scale = 0;
  for (std::size_t p = 0; p < ref.size(); ++p)
    for (std::size_t i = 0; i < ref[p].size(); ++i) {
      err = std::max(err, std::abs(double(r.out[p][i]) - ref[p][i]));
      scale = std::max(scale, std::abs(ref[p][i]));
    }
  return std::isnan(err) ? err : err / std::max(scale, 1e-30);
}

void print_rows(const char* name, const Result& r, int P) {
  std::printf("%-5s rows  ", name);
  for (int q = 0; q < P; ++q) std::printf(" %7lld", static_cast<long long>(r.reports[0].rows(q)));
  std::printf("\n      foreign");
  for (int q = 0; q < P; ++q)
    std::printf(" %7lld", static_cast<long long>(r.reports[0].foreign_rows[static_cast<std::size_t>(q)]));
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"llep-demo: an MoE layer on P host threads under skewed routing, standard EP vs LLEP.\n"
               "Each rank holds N/P experts and its own tokens; the hot experts are 0..h-1, all on rank 0.\n"
               "A bad flag prints one 'error: ...' line and exits 2."};
  app.add_option("--ranks", o.ranks, "EP ranks P (host threads)")->capture_default_str()->check(CLI::Range(1, 256));
  app.add_option("--experts", o.experts, "Experts N (a multiple of P)")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--top-k", o.top_k, "Experts per token K (<= N)")->capture_default_str()->check(CLI::Range(1, 64));
  app.add_option("--tokens", o.tokens, "Tokens per rank B_p")->capture_default_str()->check(CLI::Range(0, 1 << 20));
  app.add_option("--hidden", o.hidden, "Hidden size D")->capture_default_str()->check(CLI::Range(1, 1 << 14));
  app.add_option("--intermediate", o.intermediate, "Expert intermediate size H")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 14));
  app.add_option("--hot-experts", o.hot_experts, "Hot experts h (0: balanced routing)")->capture_default_str();
  app.add_option("--hot-share", o.hot_share, "Share of all routed pairs that go to the hot experts")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--alpha", o.alpha, "LLEP capacity factor alpha (> 0)")->capture_default_str();
  app.add_option("--min-gemm", o.min_gemm,
                 "LLEP min_tokens_per_gemm; the paper's 1024 is for 32K tokens per rank, this small layer uses 64")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--steps", o.steps, "Timed steps per planner (after one warm-up step)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_option("--seed", o.seed, "Seed of weights, tokens and routing")->capture_default_str();
  app.add_flag("!--no-check", o.check, "Skip the comparison with the dense reference");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::cerr << "error: " << e.what() << '\n';
    return 2;
  }

  try {
    const llep::sim::Skew skew{o.hot_experts, o.hot_share};
    LLEP_EXPECTS(o.experts % o.ranks == 0, "--experts N = ", o.experts, " must be a multiple of --ranks P = ", o.ranks);
    LLEP_EXPECTS(o.top_k <= o.experts, "--top-k K = ", o.top_k, " must be <= N = ", o.experts);
    skew.check(o.experts);
    const llep::LeastLoaded llep_planner{o.alpha, o.min_gemm};
    llep_planner.check();

    // Weights, tokens, routing.
    const llep::ExpertShape shape{o.hidden, o.intermediate, false};
    Dense dense{o.experts, o.hidden, o.intermediate, {}};
    std::mt19937_64 rng(o.seed);
    std::uniform_real_distribution<float> uw(-1.0f, 1.0f);
    for (int e = 0; e < o.experts; ++e) {
      std::vector<float> gu(shape.d() * 2 * shape.h()), down(shape.h() * shape.d()), packed(shape.elems());
      const float sg = 1.0f / std::sqrt(float(o.hidden)), sd = 1.0f / std::sqrt(float(o.intermediate));
      for (float& v : gu) v = uw(rng) * sg;
      for (float& v : down) v = uw(rng) * sd;
      llep::pack_expert<float>(shape, gu, down, {}, {}, packed);
      dense.packed.push_back(std::move(packed));
    }
    const auto P = static_cast<std::size_t>(o.ranks);
    std::vector<std::vector<float>> x(P), gates(P);
    std::vector<std::vector<std::int32_t>> ids(P);
    for (std::size_t p = 0; p < P; ++p) {
      x[p].resize(static_cast<std::size_t>(o.tokens) * shape.d());
      for (float& v : x[p]) v = uw(rng);
      ids[p].resize(static_cast<std::size_t>(o.tokens) * static_cast<std::size_t>(o.top_k));
      gates[p].resize(ids[p].size());
      llep::sim::random_routing(rng(), o.experts, o.top_k, skew, std::span<std::int32_t>(ids[p]),
                                std::span<float>(gates[p]));
    }

    const Result ep = run(o, llep::StandardEp{}, dense, x, ids, gates);
    const Result ll = run(o, llep_planner, dense, x, ids, gates);

    const auto& re = ep.reports[0];
    const auto& rl = ll.reports[0];
    std::printf("llep-demo: P = %d ranks as host threads (%u hardware threads here), N = %d experts, K = %d, "
                "%d tokens per rank, D = %d, H = %d, float\n",
                o.ranks, std::thread::hardware_concurrency(), o.experts, o.top_k, o.tokens, o.hidden, o.intermediate);
    std::printf("routing: %s (hot experts live on rank 0); LLEP: alpha = %g, min_tokens_per_gemm = %lld\n\n",
                skew.name().c_str(), o.alpha, static_cast<long long>(o.min_gemm));
    std::printf("rank        ");
    for (int q = 0; q < o.ranks; ++q) std::printf(" %7d", q);
    std::printf("\n");
    print_rows("EP", ep, o.ranks);
    print_rows("LLEP", ll, o.ranks);

    auto max_rows = [&](const llep::StepReport& r) {
      count_t m = 0;
      for (int q = 0; q < o.ranks; ++q) m = std::max(m, r.rows(q));
      return m;
    };
    auto peak = [](const llep::StepReport& r) { return *std::max_element(r.peak_bytes.begin(), r.peak_bytes.end()); };
    const double ms_ep = median(ep.step_ms), ms_ll = median(ll.step_ms);
    std::printf("\n%-5s %10s %9s %10s %22s %16s\n", "", "imbalance", "max rows", "transfers", "peak MiB/rank (max)",
                "step ms (median)");
    std::printf("%-5s %10.2f %9lld %10zu %22.2f %16.2f\n", "EP", re.imbalance_after, static_cast<long long>(max_rows(re)),
                re.weight_transfers, double(peak(re)) / (1 << 20), ms_ep);
    std::printf("%-5s %10.2f %9lld %10zu %22.2f %16.2f\n", "LLEP", rl.imbalance_after,
                static_cast<long long>(max_rows(rl)), rl.weight_transfers, double(peak(rl)) / (1 << 20), ms_ll);
    std::printf("\nLLEP vs EP: %.2fx step time (median of %d steps), %.2fx max rows, %.2fx peak memory of the "
                "busiest rank\n",
                ms_ep / ms_ll, o.steps, double(max_rows(re)) / double(std::max<count_t>(1, max_rows(rl))),
                double(peak(re)) / double(std::max<std::size_t>(1, peak(rl))));
    std::printf("(the rank threads share this machine's cores, so wall time gains are capped by the core count; "
                "max rows is what a GPU per rank would see)\n");

    if (o.check) {
      std::vector<std::vector<double>> ref(P);
      for (std::size_t p = 0; p < P; ++p) ref[p] = dense.forward(x[p], ids[p], gates[p], o.top_k);
      const double tol = 1e-4;  // float activations and weights, float accumulation over D and H terms
      const double e_ep = relative_error(ep, ref), e_ll = relative_error(ll, ref);
      const bool ok = e_ep <= tol && e_ll <= tol;
      std::printf("\ndense reference (double): max relative error EP %.2e, LLEP %.2e, tolerance %.0e: %s\n", e_ep,
                  e_ll, tol, ok ? "both agree" : "MISMATCH");
      if (!ok) return 1;
    }
    return 0;
  } catch (const llep::Error& e) {
    std::string m = e.what();
    if (m.rfind("llep: ", 0) == 0) m.erase(0, 6);
    std::cerr << "error: " << m << '\n';
    return 2;
  }
}
