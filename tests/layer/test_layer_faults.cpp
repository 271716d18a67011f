// The layer under faults a hostile or careless caller can cause: a planner that breaks the
// plan rules, ranks configured differently, weights of the wrong size, and the step after
// a failed one in the same group. Outputs are checked against the dense reference MoE.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "../common/dense_moe.hpp"
#include "../common/errors.hpp"
#include "../common/layer_helpers.hpp"
#include "llep/layer/host_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/routing.hpp"

namespace {

using layertest::held_weights;
using layertest::RankInput;
using llep::count_t;
constexpr int D = 12, H = 8, K = 2;

std::vector<RankInput> make_inputs(int P, int N, std::uint64_t seed, double hot = 0.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::vector<RankInput> in(static_cast<std::size_t>(P));
  for (int p = 0; p < P; ++p) {
    auto& r = in[static_cast<std::size_t>(p)];
    const int B = 5 + p * 3;
    r.x.resize(static_cast<std::size_t>(B * D));
    for (float& v : r.x) v = static_cast<float>(u(rng));
    r.ids.resize(static_cast<std::size_t>(B * K));
    r.gates.resize(r.ids.size());
    llep::sim::random_routing(rng(), N, K, hot > 0 ? llep::sim::Skew{1, hot} : llep::sim::Skew{},
                              std::span<std::int32_t>(r.ids), std::span<float>(r.gates));
  }
  return in;
}

template <class Layer>
std::string step_error(Layer& layer, const RankInput& in, std::vector<float>& out) {
  out.assign(in.x.size(), -7.0f);
  return testutil::error_of([&] {
    layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids),
                  std::span<const float>(in.gates), std::span<float>(out));
  });
}

// A user planner: standard EP, then `damage` edits the plan's parts, retaken through
// Plan::assign (which checks expert ids only), while `armed` is set.
struct DamagingPlanner {
  static constexpr std::string_view name = "user-damaging";
  std::function<void(std::vector<llep::Segment>&, std::vector<llep::WeightTransfer>&)> damage;
  const bool* armed = nullptr;
  void plan(std::span<const count_t> loads, const llep::Topology& topo, llep::Plan& out) const {
    llep::StandardEp{}.plan(loads, topo, out);
    if (!*armed) return;
    std::vector<llep::Segment> segs(out.segments().begin(), out.segments().end());
    std::vector<llep::WeightTransfer> tr(out.weight_transfers().begin(), out.weight_transfers().end());
    std::vector<count_t> rl(out.rank_loads().begin(), out.rank_loads().end());
    damage(segs, tr);
    out.assign(topo, name, out.capacity(), segs, tr, rl);
  }
};

}  // namespace

TEST_CASE("a user planner's bad plan fails on every rank before anything is indexed; the next step works") {
  const int P = 4, N = 8;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 21);
  const auto in = make_inputs(P, N, 22);
  auto each_damage = [&](auto damage, const std::string& needle) {
    llep::HostGroup group(P, llep::HostGroupOptions{std::chrono::milliseconds(5'000)});
    std::vector<std::string> first(P), second(P);
    std::vector<double> err(P, 1.0);
    llep::run_ranks(group, [&](llep::HostThreads& t) {
      const int p = t.rank();
      bool armed = true;
      const llep::Topology topo(P, N);
      const auto weights = held_weights(moe, topo, p);
      llep::HostMoeLayer<DamagingPlanner> layer(topo, K, DamagingPlanner{damage, &armed},
                                                llep::HostSwiGlu<float>(llep::ExpertShape{D, H, false}), t);
      layer.set_native_weights(weights);
      std::vector<float> out;
      first[static_cast<std::size_t>(p)] = step_error(layer, in[static_cast<std::size_t>(p)], out);
      armed = false;  // the same layer, group and threads: a clean step must now work
      second[static_cast<std::size_t>(p)] = step_error(layer, in[static_cast<std::size_t>(p)], out);
      err[static_cast<std::size_t>(p)] = layertest::relative_error(moe, in[static_cast<std::size_t>(p)], out, K);
    });
    for (int p = 0; p < P; ++p) {
      INFO("rank ", p, ": '", first[static_cast<std::size_t>(p)], "'");
      CHECK(first[static_cast<std::size_t>(p)].find("planner 'user-damaging'") != std::string::npos);
      CHECK(first[static_cast<std::size_t>(p)].find(needle) != std::string::npos);
      CHECK(second[static_cast<std::size_t>(p)] == testutil::kNoError);
      CHECK(err[static_cast<std::size_t>(p)] < 1e-4);
    }
  };
  // The audit's case: a rank past P, which Layout would use as an index.
  each_damage([](auto& s, auto&) { s[0].rank = 9; }, "on rank 9 outside [0, 4)");
  each_damage([](auto& s, auto&) { s[0].rank = -2; }, "on rank -2 outside [0, 4)");
  each_damage([](auto& s, auto&) { s[0].end -= 1; }, "segments cover");
  each_damage([](auto& s, auto&) { s.back().rank = (s.back().rank + 1) % 4; }, "no weight transfer");
  each_damage([](auto&, auto& t) { t.push_back(llep::WeightTransfer{7, 3, 0}); }, "weight transfer(s) but only");
}

TEST_CASE("ranks whose configuration differs fail on every rank instead of computing a wrong step") {
  const int P = 2, N = 4;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 31);
  const auto in = make_inputs(P, N, 32);
  auto run = [&](auto topo_of, auto planner_of) {
    llep::HostGroup group(P, llep::HostGroupOptions{std::chrono::milliseconds(5'000)});
    std::vector<std::string> errors(P);
    llep::run_ranks(group, [&](llep::HostThreads& t) {
      const int p = t.rank();
      const llep::Topology topo = topo_of(p);
      const auto weights = held_weights(moe, topo, p);
      llep::HostMoeLayer<llep::LeastLoaded> layer(topo, K, planner_of(p),
                                                  llep::HostSwiGlu<float>(llep::ExpertShape{D, H, false}), t);
      layer.set_native_weights(weights);
      std::vector<float> out;
      errors[static_cast<std::size_t>(p)] = step_error(layer, in[static_cast<std::size_t>(p)], out);
    });
    return errors;
  };
  const auto same = [](int) { return llep::LeastLoaded{1.0, 2}; };
  const auto plain = [](int) { return llep::Topology(P, N); };
  SUBCASE("the same configuration runs") {
    for (const auto& e : run(plain, same)) CHECK(e == testutil::kNoError);
  }
  SUBCASE("another native placement on one rank") {
    const auto errors = run([](int p) { return p == 1 ? llep::Topology(P, std::vector<int>{1, 1, 0, 0}) : llep::Topology(P, N); },
                            same);
    for (const auto& e : errors) CHECK(e.find("rank 1's configuration fingerprint") != std::string::npos);
  }
  SUBCASE("another replica set on one rank") {
    const auto errors = run(
        [](int p) {
          return llep::Topology(P, N, {}, p == 1 ? std::vector<std::vector<int>>{{3}, {1}}
                                                 : std::vector<std::vector<int>>{{2}, {0}});
        },
        same);
    for (const auto& e : errors) CHECK(e.find("rank 1's configuration fingerprint") != std::string::npos);
  }
  SUBCASE("another planner setting on one rank") {
    const auto errors = run(plain, [](int p) { return llep::LeastLoaded{p == 0 ? 1.0 : 1.25, 2}; });
    for (const auto& e : errors) CHECK(e.find("rank 1's configuration fingerprint") != std::string::npos);
  }
}

TEST_CASE("set_native_weights and set_placement check the size of the weights") {
  const int N = 4;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 41);
  llep::HostGroup group(1);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const llep::Topology topo(1, N);
    llep::HostMoeLayer<llep::StandardEp> layer(topo, K, llep::StandardEp{},
                                               llep::HostSwiGlu<float>(llep::ExpertShape{D, H, false}), t);
    auto weights = held_weights(moe, topo, 0);
    const std::size_t per = llep::ExpertShape{D, H, false}.elems();
    CHECK(weights.size() == N * per);
    const std::span<const float> all(weights);
    const auto e = testutil::error_of([&] { layer.set_native_weights(all.first(all.size() - per)); });
    CHECK(e.find("weights hold " + std::to_string((N - 1) * per) + " elements but it holds 4 experts") !=
          std::string::npos);
    CHECK(testutil::error_of([&] { layer.set_native_weights(all.first(all.size() - 1)); }) != testutil::kNoError);
    CHECK(testutil::error_of([&] { layer.set_native_weights(std::span<const float>{}); }) != testutil::kNoError);
    CHECK(testutil::error_of([&] { layer.set_native_weights(all); }) == testutil::kNoError);
    CHECK(testutil::error_of([&] { layer.set_placement(topo, all.first(per)); }) != testutil::kNoError);
  });
}

TEST_CASE("after a step fails on one rank, the next clean step works in the same group") {
  for (int P : {1, 2, 4}) {
    const int N = 2 * P;
    const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 51);
    const auto in = make_inputs(P, N, 52, 0.9);
    llep::HostGroup group(P, llep::HostGroupOptions{std::chrono::milliseconds(5'000)});
    std::vector<std::string> bad(static_cast<std::size_t>(P)), good(static_cast<std::size_t>(P));
    std::vector<double> err(static_cast<std::size_t>(P), 1.0);
    const auto start = std::chrono::steady_clock::now();
    llep::run_ranks(group, [&](llep::HostThreads& t) {
      const int p = t.rank();
      const llep::Topology topo(P, N);
      const auto weights = held_weights(moe, topo, p);
      llep::HostMoeLayer<llep::LeastLoaded> layer(topo, K, llep::LeastLoaded{1.0, 2},
                                                  llep::HostSwiGlu<float>(llep::ExpertShape{D, H, false}), t);
      layer.set_native_weights(weights);
      std::vector<float> out;
      for (int round = 0; round < 2; ++round) {
        RankInput broken = in[static_cast<std::size_t>(p)];
        if (p == P - 1) broken.ids[0] = N + round;  // one rank's bad id
        bad[static_cast<std::size_t>(p)] = step_error(layer, broken, out);
        good[static_cast<std::size_t>(p)] = step_error(layer, in[static_cast<std::size_t>(p)], out);
      }
      err[static_cast<std::size_t>(p)] = layertest::relative_error(moe, in[static_cast<std::size_t>(p)], out, K);
    });
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(4));  // no timeout waited out
    for (int p = 0; p < P; ++p) {
      INFO("P = ", P, ", rank ", p, ": '", bad[static_cast<std::size_t>(p)], "'");
      CHECK(bad[static_cast<std::size_t>(p)] != testutil::kNoError);
      CHECK(good[static_cast<std::size_t>(p)] == testutil::kNoError);
      CHECK(err[static_cast<std::size_t>(p)] < 1e-4);
    }
    CHECK(bad[static_cast<std::size_t>(P - 1)].find("outside [0, " + std::to_string(N) + ")") != std::string::npos);
  }
}
