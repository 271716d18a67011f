// Memory known before the step: LayerLimits, workspace_bytes, a caller-owned workspace,
// the forward handle, and steps that allocate nothing once reserved, even the first step
// with a routing never seen. Outputs are checked against the dense reference MoE.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "../common/dense_moe.hpp"
#include "../common/errors.hpp"
#include "../common/layer_helpers.hpp"
#include "llep/layer/host_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/routing.hpp"

#include "../common/count_new.hpp"

namespace {

using layertest::relative_error;
using layertest::RankInput;
using llep::count_t;
constexpr int D = 16, H = 8;

// B tokens per rank (B_max on some), routed uniformly, to one hot expert, or all to the
// experts of one rank: the adversarial cases that load one rank most.
enum class Routing { uniform, hot, one_rank };

std::vector<RankInput> make_inputs(int P, int N, int K, int B_max, Routing routing, std::uint64_t seed) {
  llep::sim::Skew skew;
  if (routing == Routing::hot) skew = {1, 1.0};
  if (routing == Routing::one_rank) skew = {std::max(N / P, K), 1.0};
  return layertest::make_inputs(P, N, K, D, skew, seed, layertest::TokenRange{0, B_max, false, true});
}

template <class Layer>
void forward(Layer& layer, const RankInput& in, std::vector<float>& out) {
  out.assign(in.x.size(), -7.0f);
  layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids), std::span<const float>(in.gates),
                std::span<float>(out));
}

// Every step of `inputs` on P ranks under `planner`, each rank's layer reserved for B_max
// and running in a workspace the test owns, exactly workspace_bytes(limits) long.
template <class Plnr>
void check_bound(const dense::Moe& moe, int P, int K, int B_max, const Plnr& planner,
                 const std::vector<std::vector<RankInput>>& inputs) {
  const int N = moe.experts;
  const llep::Topology topo(P, N);
  llep::HostGroup group(P, llep::HostGroupOptions{std::chrono::milliseconds(20'000)});
  std::vector<std::string> failures(static_cast<std::size_t>(P));
  std::vector<count_t> most_rows(static_cast<std::size_t>(P), 0), bound(static_cast<std::size_t>(P), 0);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    const auto weights = moe.packed_rank<float>(p, P);
    const llep::HostSwiGlu<float> experts(llep::ExpertShape{D, H, false});
    const auto limits = llep::HostMoeLayer<Plnr>::make_limits(topo, K, planner, experts, B_max);
    std::vector<std::byte> memory(llep::HostMoeLayer<Plnr>::workspace_bytes(limits));
    llep::HostMoeLayer<Plnr> layer(topo, K, planner, experts, t, llep::HostExec(memory));
    layer.reserve(limits);
    layer.set_native_weights(weights);
    auto& fail = failures[static_cast<std::size_t>(p)];
    std::vector<float> out;
    for (const auto& step : inputs) {
      const auto& in = step[static_cast<std::size_t>(p)];
      forward(layer, in, out);
      const auto& r = layer.report();
      if (r.workspace_bytes > memory.size()) fail += "workspace over the bound; ";
      if (relative_error(moe, in, out, K) > 1e-4) fail += "output differs from the dense MoE; ";
      for (int q = 0; q < P; ++q)
        most_rows[static_cast<std::size_t>(p)] = std::max(most_rows[static_cast<std::size_t>(p)], r.rows(q));
    }
    bound[static_cast<std::size_t>(p)] = limits.plan.rows_per_rank;
  });
  for (int p = 0; p < P; ++p) {
    INFO("rank ", p, " of P = ", P, ", K = ", K, ", planner ", Plnr::name);
    CHECK(failures[static_cast<std::size_t>(p)] == "");
    CHECK(most_rows[static_cast<std::size_t>(p)] <= bound[static_cast<std::size_t>(p)]);
  }
}

}  // namespace

TEST_CASE("workspace_bytes(limits) bounds every step within the limits, in a workspace the engine owns") {
  g_counting = false;
  std::uint64_t seed = 1;
  for (int P : {1, 2, 4})
    for (int K : {1, 2}) {
      const int N = 4 * P, B_max = 12;
      const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, seed);
      std::vector<std::vector<RankInput>> inputs;
      for (int i = 0; i < 6; ++i)
        for (Routing r : {Routing::uniform, Routing::hot, Routing::one_rank})
          inputs.push_back(make_inputs(P, N, K, B_max, r, ++seed));
      check_bound(moe, P, K, B_max, llep::StandardEp{}, inputs);
      check_bound(moe, P, K, B_max, llep::LeastLoaded{1.0, 1}, inputs);
      check_bound(moe, P, K, B_max, llep::Capped<llep::LeastLoaded>{{1.0, 1}, llep::MemoryCap::rows(B_max * K)},
                  inputs);
    }
}

TEST_CASE("the fallback bound on a rank's rows is reached: every pair of every rank on one expert") {
  g_counting = false;
  const int P = 4, N = 8, K = 1, B_max = 10;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 7);
  auto in = make_inputs(P, N, K, B_max, Routing::uniform, 8);
  for (auto& r : in) {
    r.x.resize(static_cast<std::size_t>(B_max * D), 0.25f);
    r.ids.assign(static_cast<std::size_t>(B_max), 0);
    r.gates.assign(static_cast<std::size_t>(B_max), 1.0f);
  }
  const llep::Topology topo(P, N);
  llep::HostGroup group(P);
  std::vector<count_t> rows0(P, -1), bound(P, -2);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    const auto weights = moe.packed_rank<float>(p, P);
    llep::HostMoeLayer<llep::StandardEp> layer(topo, K, llep::StandardEp{},
                                               llep::HostSwiGlu<float>(llep::ExpertShape{D, H, false}), t);
    layer.reserve(layer.limits(B_max));
    layer.set_native_weights(weights);
    std::vector<float> out;
    forward(layer, in[static_cast<std::size_t>(p)], out);
    rows0[static_cast<std::size_t>(p)] = layer.report().rows(0);
    bound[static_cast<std::size_t>(p)] = layer.reserved_limits()->plan.rows_per_rank;
  });
  for (int p = 0; p < P; ++p) CHECK(rows0[static_cast<std::size_t>(p)] == bound[static_cast<std::size_t>(p)]);
}

TEST_CASE("a step outside the limits fails on every rank with llep::Error, and the next step works") {
  g_counting = false;
  const int P = 3, N = 6, K = 2, B_max = 8;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 17);
  const auto good = make_inputs(P, N, K, B_max, Routing::hot, 18);
  auto big = good;
  big[1] = make_inputs(P, N, K, B_max + 1, Routing::uniform, 19)[0];  // rank 1: B_max + 1 tokens
  const llep::Topology topo(P, N);
  llep::HostGroup group(P, llep::HostGroupOptions{std::chrono::milliseconds(5'000)});
  std::vector<std::string> errors(P);
  std::vector<double> err(P, 1.0);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    const auto weights = moe.packed_rank<float>(p, P);
    llep::HostMoeLayer<llep::LeastLoaded> layer(topo, K, llep::LeastLoaded{1.0, 1},
                                                llep::HostSwiGlu<float>(llep::ExpertShape{D, H, false}), t);
    layer.reserve(layer.limits(B_max));
    layer.set_native_weights(weights);
    std::vector<float> out;
    errors[static_cast<std::size_t>(p)] =
        testutil::error_of([&] { forward(layer, big[static_cast<std::size_t>(p)], out); });
    forward(layer, good[static_cast<std::size_t>(p)], out);
    err[static_cast<std::size_t>(p)] = relative_error(moe, good[static_cast<std::size_t>(p)], out, K);
  });
  for (int p = 0; p < P; ++p) {
    CHECK(errors[static_cast<std::size_t>(p)] != testutil::kNoError);
    CHECK(err[static_cast<std::size_t>(p)] < 1e-4);
  }
  CHECK(errors[1].find("rank 1 has B = 9 tokens but the layer was reserved for at most B_max = 8") !=
        std::string::npos);
}

TEST_CASE("reserve refuses limits of another layer and a fixed workspace that is too small") {
  g_counting = false;
  llep::HostGroup group(1);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const llep::Topology topo(1, 4);
    const llep::HostSwiGlu<float> experts(llep::ExpertShape{D, H, false});
    using Layer = llep::HostMoeLayer<llep::StandardEp>;
    const auto limits = Layer::make_limits(topo, 2, llep::StandardEp{}, experts, 16);
    std::vector<std::byte> small(Layer::workspace_bytes(limits) - 1);
    Layer layer(topo, 2, llep::StandardEp{}, experts, t, llep::HostExec(small));
    CHECK(testutil::error_of([&] { layer.reserve(limits); }).find("engine-supplied buffer holds") !=
          std::string::npos);
    auto other = limits;
    other.top_k = 3;
    CHECK(testutil::error_of([&] { layer.reserve(other); }).find("does not describe this layer") != std::string::npos);
  });
}

TEST_CASE("reserved, the first step with a routing never seen allocates nothing") {
  const int P = 4, N = 16, K = 4, B = 64;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 3);
  llep::HostGroup group(P);
  std::vector<long> during(P, -1);
  std::vector<std::size_t> grew(P, 1);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    g_counting = false;
    const auto weights = moe.packed_rank<float>(p, P);
    llep::HostMoeLayer<llep::LeastLoaded> layer(llep::Topology(P, N), K, llep::LeastLoaded{1.0, 4},
                                                llep::HostSwiGlu<float>(llep::ExpertShape{D, H, false}), t);
    layer.reserve(layer.limits(B));
    layer.set_native_weights(weights);
    std::vector<float> x(B * D, 0.5f), out(B * D), gates(B * K);
    std::vector<std::int32_t> ids(B * K);
    auto route = [&](int hot, double share, std::uint64_t seed) {
      llep::sim::random_routing(seed, N, K, llep::sim::Skew{1, share}, std::span<std::int32_t>(ids),
                                std::span<float>(gates));
      for (auto& id : ids) id = (id + hot) % N;
    };
    std::vector<std::vector<std::int32_t>> all_ids;
    std::vector<std::vector<float>> all_gates;
    for (int s = 0; s < 8; ++s) {
      route((s * 5 + p) % N, s % 2 ? 0.95 : 1.0, 100 + static_cast<std::uint64_t>(s * P + p));
      all_ids.push_back(ids);
      all_gates.push_back(gates);
    }
    // One balanced step sizes the count tables; every later routing is new to the layer.
    route(0, 0.0, 7 + static_cast<std::uint64_t>(p));
    layer.forward(std::span<const float>(x), std::span<const std::int32_t>(ids), std::span<const float>(gates),
                  std::span<float>(out));
    const std::size_t capacity = layer.exec().workspace_capacity();
    t.barrier();
    const long before = g_news.load();
    t.barrier();
    g_counting = true;
    for (int s = 0; s < 8; ++s) {
      std::copy(all_ids[s].begin(), all_ids[s].end(), ids.begin());
      std::copy(all_gates[s].begin(), all_gates[s].end(), gates.begin());
      layer.forward(std::span<const float>(x), std::span<const std::int32_t>(ids), std::span<const float>(gates),
                    std::span<float>(out));
    }
    g_counting = false;
    t.barrier();
    during[static_cast<std::size_t>(p)] = g_news.load() - before;
    grew[static_cast<std::size_t>(p)] = layer.exec().workspace_capacity() - capacity;
  });
  for (int p = 0; p < P; ++p) {
    INFO("rank ", p);
    CHECK(during[static_cast<std::size_t>(p)] == 0);
    CHECK(grew[static_cast<std::size_t>(p)] == 0);
  }
}

TEST_CASE("the forward handle maps every pair to its expert's input row and outlives the workspace") {
  g_counting = false;
  const int N = 6, K = 2, B = 20;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 27);
  const auto in = make_inputs(1, N, K, B, Routing::hot, 28)[0];
  const auto other = make_inputs(1, N, K, B, Routing::uniform, 29)[0];
  llep::HostGroup group(1);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const llep::Topology topo(1, N);
    const auto weights = moe.packed_rank<float>(0, 1);
    llep::HostMoeLayer<llep::StandardEp> layer(topo, K, llep::StandardEp{},
                                               llep::HostSwiGlu<float>(llep::ExpertShape{D, H, false}), t);
    layer.set_native_weights(weights);
    const auto limits = layer.limits(B);
    std::vector<std::byte> memory(decltype(layer)::handle_bytes(limits, true));
    llep::ForwardHandle<float> h(memory, true);
    std::vector<float> out(in.x.size());
    layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids),
                  std::span<const float>(in.gates), std::span<float>(out), h);
    CHECK(relative_error(moe, in, out, K) < 1e-4);
    // Another step without the handle reuses the workspace, not the handle's memory.
    std::vector<float> out2(other.x.size());
    layer.forward(std::span<const float>(other.x), std::span<const std::int32_t>(other.ids),
                  std::span<const float>(other.gates), std::span<float>(out2));
    REQUIRE(h.filled);
    REQUIRE(h.pairs == static_cast<count_t>(in.ids.size()));
    CHECK(h.rows == h.pairs);
    CHECK(h.plan.segments().size() == h.tasks.size());
    count_t rows = 0;
    for (const auto& task : h.tasks) {
      CHECK(task.row == rows);
      CHECK(task.native);
      CHECK(task.weights == weights.data() + static_cast<std::size_t>(task.expert) * llep::ExpertShape{D, H, false}.elems());
      rows += task.rows;
    }
    CHECK(rows == h.rows);
    // P = 1: a send row is its receive row. Pair f (token f / K) -> its compute row, which
    // must hold the token's hidden row and lie in a task of the pair's expert.
    for (std::size_t f = 0; f < in.ids.size(); ++f) {
      const std::int32_t send = h.pair_row[f];
      CHECK(h.row_pair[send] == static_cast<std::int32_t>(f));
      const std::int32_t row = h.compute_row[send];
      const std::size_t token = f / K;
      CHECK(std::equal(in.x.begin() + static_cast<std::ptrdiff_t>(token * D),
                       in.x.begin() + static_cast<std::ptrdiff_t>((token + 1) * D),
                       h.expert_inputs + static_cast<std::size_t>(row) * D));
      const auto task = std::find_if(h.tasks.begin(), h.tasks.end(),
                                     [&](const auto& tk) { return tk.row <= row && row < tk.row + tk.rows; });
      REQUIRE(task != h.tasks.end());
      CHECK(task->expert == in.ids[f]);
    }
    // Too little handle memory: refused before the step moves anything.
    std::vector<std::byte> little(memory.size() / 4);
    llep::ForwardHandle<float> small(little, true);
    CHECK(testutil::error_of([&] {
            layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids),
                          std::span<const float>(in.gates), std::span<float>(out), small);
          }).find("forward handle's memory holds") != std::string::npos);
    CHECK_FALSE(small.filled);
  });
}
