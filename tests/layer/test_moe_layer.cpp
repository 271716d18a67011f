// The host MoE layer end to end: P rank threads, each with its own tokens, against a dense
// single-process MoE computed independently (tests/common/dense_moe.hpp), for every planner.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "../common/dense_moe.hpp"
#include "llep/layer/host_layer.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/cost_aware.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/node_aware.hpp"
#include "llep/plan/quota_search.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/routing.hpp"

namespace {

using llep::count_t;

enum class Routing { uniform, hot_one_expert, one_rank_experts, empty_ranks };

std::string routing_name(Routing r) {
  switch (r) {
    case Routing::uniform: return "uniform";
    case Routing::hot_one_expert: return "95% on expert 0";
    case Routing::one_rank_experts: return "all on rank 0's experts";
    case Routing::empty_ranks: return "uniform, some ranks empty";
  }
  return "?";
}

// One rank's input, in the element type under test and as doubles for the reference.
template <class T>
struct RankInput {
  std::vector<T> x, gates;
  std::vector<std::int32_t> ids;
};

template <class T>
std::vector<RankInput<T>> make_inputs(int P, int N, int K, int D, Routing routing, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::uniform_int_distribution<int> tokens(1, 24);
  llep::sim::Skew skew;
  if (routing == Routing::hot_one_expert && N > 1) skew = {1, 0.95};
  if (routing == Routing::one_rank_experts) skew = {N / P, 1.0};
  std::vector<RankInput<T>> in(static_cast<std::size_t>(P));
  for (int p = 0; p < P; ++p) {
    auto& r = in[static_cast<std::size_t>(p)];
    int B = tokens(rng);
    if (routing == Routing::empty_ranks && (p % 2 == 1 || P == 1)) B = 0;
    r.x.resize(static_cast<std::size_t>(B) * static_cast<std::size_t>(D));
    for (T& v : r.x) v = static_cast<T>(u(rng));
    r.ids.resize(static_cast<std::size_t>(B) * static_cast<std::size_t>(K));
    r.gates.resize(r.ids.size());
    llep::sim::random_routing(rng(), N, K, skew, std::span<std::int32_t>(r.ids), std::span<T>(r.gates));
  }
  return in;
}

template <class T>
std::vector<double> as_double(const std::vector<T>& v) {
  return {v.begin(), v.end()};
}

// Relative to the largest |reference| output: float keeps ~7 digits per rounding and the
// layer rounds inputs, weights and the D- and H-term sums to float (a few dozen roundings
// of O(1) terms), so 1e-4 is far above float error yet far below any misplaced row, which
// is O(1). Double: the same arithmetic with 16 digits.
template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, double> ? 1e-11 : 1e-4;
}

template <class T, class Plnr>
struct Outcome {
  std::vector<std::vector<T>> out;
  std::vector<llep::StepReport> reports;
};

// Runs `steps` forward steps on P threads; every step must give the same output.
template <class T, class Act, class Plnr>
Outcome<T, Plnr> run_layer(const dense::Moe& moe, int P, int K, const std::vector<RankInput<T>>& in, Plnr planner,
                           Act act, int steps = 2) {
  const int N = moe.experts;
  const llep::Topology topo(P, N);
  const llep::ExpertShape shape{moe.hidden, moe.intermediate, Act::has_bias};
  llep::HostGroup group(P, llep::HostGroupOptions{std::chrono::milliseconds(20'000)});
  Outcome<T, Plnr> res;
  res.out.resize(static_cast<std::size_t>(P));
  res.reports.resize(static_cast<std::size_t>(P));
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    const auto weights = moe.packed_rank<T>(t.rank(), P);
    llep::MoeLayer<llep::ExactCounts, Plnr, llep::HostThreads, llep::HostSwiGlu<T, Act>, llep::HostExec> layer(
        topo, K, planner, llep::HostSwiGlu<T, Act>(shape, act), t);
    layer.set_native_weights(weights);
    std::vector<T> out(in[p].x.size()), first;
    for (int s = 0; s < steps; ++s) {
      std::fill(out.begin(), out.end(), T(-7));
      res.reports[p] = layer.forward(std::span<const T>(in[p].x), std::span<const std::int32_t>(in[p].ids),
                                     std::span<const T>(in[p].gates), std::span<T>(out));
      if (s == 0) first = out;
      else if (first != out) throw std::runtime_error("a repeated step gave different bits");
    }
    res.out[p] = std::move(out);
  });
  return res;
}

template <class T, class Act, class Plnr>
void check_against_dense(int P, int N, int K, Routing routing, Plnr planner, dense::Act dact, Act act,
                         std::uint64_t seed) {
  const int D = 12, H = 8;
  const auto moe = dense::Moe::random(N, D, H, dact, seed);
  const auto in = make_inputs<T>(P, N, K, D, routing, seed * 31 + 7);
  const auto got = run_layer<T>(moe, P, K, in, planner, act);

  double scale = 0, err = 0;
  for (int p = 0; p < P; ++p) {
    const auto& r = in[static_cast<std::size_t>(p)];
    const auto ref = moe.forward(as_double(r.x), r.ids, as_double(r.gates), K);
    const auto& out = got.out[static_cast<std::size_t>(p)];
    REQUIRE(out.size() == ref.size());
    for (std::size_t i = 0; i < ref.size(); ++i) {
      scale = std::max(scale, std::abs(ref[i]));
      err = std::max(err, std::abs(static_cast<double>(out[i]) - ref[i]));
    }
  }
  INFO("P = ", P, ", N = ", N, ", K = ", K, ", routing: ", routing_name(routing), ", plan ", got.reports[0].policy);
  CHECK(err <= tolerance<T>() * std::max(scale, 1e-3));

  // Every rank reports the same plan-wide figures, and they add up to every pair.
  count_t pairs = 0;
  for (const auto& r : in) pairs += static_cast<count_t>(r.ids.size());
  count_t rows = 0;
  for (int q = 0; q < P; ++q) rows += got.reports[0].rows(q);
  CHECK(rows == pairs);
  for (const auto& rep : got.reports) {
    CHECK(rep.native_rows == got.reports[0].native_rows);
    CHECK(rep.foreign_rows == got.reports[0].foreign_rows);
    CHECK(rep.weight_transfers == got.reports[0].weight_transfers);
  }
}

const llep::LeastLoaded kSmallGemm{1.0, 2};  // slices as small as the test's tokens

}  // namespace

TEST_CASE("MoeLayer equals the dense MoE for every planner, P, N, K and routing (float)") {
  std::uint64_t seed = 1;
  for (int P : {1, 2, 3, 4, 8})
    for (int NP : {1, 4, 16})
      for (int K : {1, 2, 4, 8})
        for (Routing routing : {Routing::uniform, Routing::hot_one_expert, Routing::one_rank_experts, Routing::empty_ranks}) {
          const int N = NP * P;
          if (K > N) continue;  // top-k picks K of N experts
          ++seed;
          check_against_dense<float>(P, N, K, routing, llep::StandardEp{}, dense::Act::silu, llep::SiluGlu{}, seed);
          check_against_dense<float>(P, N, K, routing, kSmallGemm, dense::Act::silu, llep::SiluGlu{}, seed);
          check_against_dense<float>(P, N, K, routing, llep::Adaptive<llep::LeastLoaded>{1.3, kSmallGemm},
                                     dense::Act::silu, llep::SiluGlu{}, seed);
        }
}

TEST_CASE("MoeLayer equals the dense MoE in double, with gpt-oss's activation and the paper's defaults") {
  std::uint64_t seed = 1000;
  for (int P : {1, 2, 3, 4, 8})
    for (int NP : {1, 4, 16})
      for (int K : {1, 4, 8})
        for (Routing routing : {Routing::hot_one_expert, Routing::one_rank_experts, Routing::empty_ranks}) {
          const int N = NP * P;
          if (K > N) continue;
          ++seed;
          check_against_dense<double>(P, N, K, routing, kSmallGemm, dense::Act::gpt_oss, llep::GptOssGlu{}, seed);
          check_against_dense<double>(P, N, K, routing, llep::LeastLoaded{}, dense::Act::gpt_oss, llep::GptOssGlu{},
                                      seed);
        }
}

TEST_CASE("MoeLayer stays exact under every other planner of the library") {
  // Replicated needs a replicated topology: tests/replicated covers it with the layer.
  const auto model = std::make_shared<llep::sim::CostModel>();
  std::uint64_t seed = 3000;
  for (int P : {2, 3, 4, 8})
    for (int K : {1, 4})
      for (Routing routing : {Routing::hot_one_expert, Routing::one_rank_experts, Routing::empty_ranks}) {
        const int N = 4 * P;
        ++seed;
        check_against_dense<float>(P, N, K, routing, llep::NodeAware{1.0, 2}, dense::Act::silu, llep::SiluGlu{}, seed);
        check_against_dense<float>(P, N, K, routing, llep::QuotaSearch{2}, dense::Act::silu, llep::SiluGlu{}, seed);
        // A cap every batch can meet: at most 24 tokens x K pairs per rank arrive.
        check_against_dense<float>(P, N, K, routing,
                                   llep::Capped<llep::LeastLoaded>{kSmallGemm, llep::MemoryCap::rows(24 * K)},
                                   dense::Act::silu, llep::SiluGlu{}, seed);
        // Roofline model: whether it spills these tiny experts or not, the output is exact.
        check_against_dense<float>(P, N, K, routing, llep::CostAware{1.0, 2, model, {"test", 12, 8}},
                                   dense::Act::silu, llep::SiluGlu{}, seed);
      }
}

TEST_CASE("under skew LLEP really moves work: spills, transfers, and a lower max rank load") {
  for (int P : {2, 4, 8}) {
    const int N = 4 * P, K = 2, D = 12, H = 8;
    const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 77);
    const auto in = make_inputs<float>(P, N, K, D, Routing::hot_one_expert, 78);
    const auto ep = run_layer<float>(moe, P, K, in, llep::StandardEp{}, llep::SiluGlu{}, 1);
    const auto ll = run_layer<float>(moe, P, K, in, kSmallGemm, llep::SiluGlu{}, 1);
    INFO("P = ", P);
    CHECK(ep.reports[0].weight_transfers == 0);
    CHECK(ll.reports[0].weight_transfers > 0);
    count_t ep_max = 0, ll_max = 0, foreign = 0;
    for (int q = 0; q < P; ++q) {
      ep_max = std::max(ep_max, ep.reports[0].rows(q));
      ll_max = std::max(ll_max, ll.reports[0].rows(q));
      foreign += ll.reports[0].foreign_rows[static_cast<std::size_t>(q)];
    }
    CHECK(foreign > 0);
    CHECK(ll_max < ep_max);
    CHECK(ll.reports[0].imbalance_after < ep.reports[0].imbalance_after);
    // A helper rank holds the foreign weights it received; its planned peak says so.
    std::size_t recv_weights = 0;
    for (const auto& r : ll.reports) recv_weights += r.weight_bytes_received;
    CHECK(recv_weights == ll.reports[0].weight_transfers * llep::ExpertShape{D, H, false}.elems() * sizeof(float));
  }
}

TEST_CASE("a NaN top-k weight or token gives NaN only in that token's output") {
  const int P = 4, N = 8, K = 2, D = 12, H = 8;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 5);
  auto in = make_inputs<float>(P, N, K, D, Routing::hot_one_expert, 6);
  REQUIRE(in[1].ids.size() >= 2 * K);
  REQUIRE(in[2].x.size() >= 2 * D);
  in[1].gates[1] = std::numeric_limits<float>::quiet_NaN();  // token 0 of rank 1
  in[2].x[D + 3] = std::numeric_limits<float>::quiet_NaN();  // token 1 of rank 2
  const auto got = run_layer<float>(moe, P, K, in, kSmallGemm, llep::SiluGlu{}, 1);
  for (int p = 0; p < P; ++p)
    for (std::size_t t = 0; t < got.out[static_cast<std::size_t>(p)].size() / D; ++t) {
      const bool poisoned = (p == 1 && t == 0) || (p == 2 && t == 1);
      for (std::size_t d = 0; d < D; ++d) {
        INFO("rank ", p, " token ", t, " column ", d);
        CHECK(std::isnan(got.out[static_cast<std::size_t>(p)][t * D + d]) == poisoned);
      }
    }
}

namespace {

// Runs one step where `corrupt(rank, input)` damages some rank's input; returns every
// rank's error message ("" if it did not throw).
template <class Corrupt>
std::vector<std::string> errors_of_bad_step(int P, int N_rank0_override, Corrupt corrupt) {
  const int N = 2 * P, K = 2, D = 12, H = 8;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 9);
  auto in = make_inputs<float>(P, N, K, D, Routing::uniform, 10);
  llep::HostGroup group(P, llep::HostGroupOptions{std::chrono::milliseconds(5'000)});
  std::vector<std::string> errors(static_cast<std::size_t>(P));
  const llep::ExpertShape shape{D, H, false};
  auto body = [&](llep::HostThreads& t) {
    const int p = t.rank();
    const int n = (p == 0 && N_rank0_override > 0) ? N_rank0_override : N;
    auto weights = moe.packed_rank<float>(p, P);
    weights.resize(static_cast<std::size_t>(n / P) * shape.elems());  // a wrong N holds more experts
    llep::HostMoeLayer<llep::LeastLoaded> layer(llep::Topology(P, n), K, kSmallGemm,
                                                llep::HostSwiGlu<float>(shape), t);
    layer.set_native_weights(weights);
    auto x = in[static_cast<std::size_t>(p)].x;
    auto ids = in[static_cast<std::size_t>(p)].ids;
    auto gates = in[static_cast<std::size_t>(p)].gates;
    std::vector<float> out(x.size());
    corrupt(p, x, ids, gates, out);
    try {
      layer.forward(std::span<const float>(x), std::span<const std::int32_t>(ids), std::span<const float>(gates),
                    std::span<float>(out));
    } catch (const llep::Error& e) {
      errors[static_cast<std::size_t>(p)] = e.what();
    }
  };
  const auto start = std::chrono::steady_clock::now();
  llep::run_ranks(group, body);
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(4));  // released, not timed out
  // The group is usable again after the error: a clean step on the same group succeeds.
  std::vector<int> ok(static_cast<std::size_t>(P), 0);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    const auto weights = moe.packed_rank<float>(p, P);
    llep::HostMoeLayer<llep::LeastLoaded> layer(llep::Topology(P, N), K, kSmallGemm, llep::HostSwiGlu<float>(shape),
                                                t);
    layer.set_native_weights(weights);
    const auto& r = in[static_cast<std::size_t>(p)];
    std::vector<float> out(r.x.size());
    layer.forward(std::span<const float>(r.x), std::span<const std::int32_t>(r.ids), std::span<const float>(r.gates),
                  std::span<float>(out));
    ok[static_cast<std::size_t>(p)] = 1;
  });
  CHECK(std::count(ok.begin(), ok.end(), 1) == P);
  return errors;
}

void check_all_ranks_failed(const std::vector<std::string>& errors, const std::string& needle) {
  for (std::size_t p = 0; p < errors.size(); ++p) {
    INFO("rank ", p, ": '", errors[p], "'");
    CHECK(!errors[p].empty());
  }
  // The rank that saw the problem names it; the others may report the abort that released them.
  bool named = false;
  for (const auto& e : errors) named = named || e.find(needle) != std::string::npos;
  INFO("wanted '", needle, "' in some rank's error");
  CHECK(named);
}

}  // namespace

TEST_CASE("bad input on one rank: llep::Error on every rank, no hang, group reusable") {
  using V = std::vector<float>;
  using I = std::vector<std::int32_t>;
  // Each kind of damage, done by the last rank; P = 1 checks the single-rank path.
  auto each_p = [](auto&& corrupt, auto&& needle) {
    for (int P : {1, 2, 4}) {
      INFO("P = ", P);
      check_all_ranks_failed(errors_of_bad_step(P, 0, [&](int p, V& x, I& ids, V& g, V& out) {
                               if (p == P - 1) corrupt(P, x, ids, g, out);
                             }),
                             needle(P));
    }
  };
  SUBCASE("expert id past N") {
    each_p([](int P, V&, I& ids, V&, V&) { ids[0] = 2 * P; },
           [](int P) { return "outside [0, " + std::to_string(2 * P) + ")"; });
  }
  SUBCASE("negative expert id") {
    each_p([](int, V&, I& ids, V&, V&) { ids.back() = -3; }, [](int) { return std::string("expert id -3"); });
  }
  SUBCASE("hidden not a multiple of D") {
    each_p([](int, V& x, I&, V&, V&) { x.push_back(1.0f); }, [](int) { return std::string("not a multiple of D"); });
  }
  SUBCASE("ids not B x K") {
    each_p([](int, V&, I& ids, V&, V&) { ids.push_back(0); }, [](int) { return std::string("topk_ids has"); });
  }
  SUBCASE("weights not B x K") {
    each_p([](int, V&, I&, V& g, V&) { g.pop_back(); }, [](int) { return std::string("topk_weights has"); });
  }
  SUBCASE("out too small") {
    each_p([](int, V&, I&, V&, V& out) { out.pop_back(); }, [](int) { return std::string("out has"); });
  }
  SUBCASE("mismatched N across ranks") {
    check_all_ranks_failed(errors_of_bad_step(4, 16, [](int, V&, I&, V&, V&) {}), "but rank 0 has N = 16");
  }
}
