// Replicas kept encoded (MoeLayer::set_encoded_replicas): with Identity the layer gives the
// bits of plain replicas; with Int8Rows / Fp8Blocks it stays within the codec layer test's
// tolerances (1%, 5% of the largest output) of the exact layer, differs where replicas
// computed, and saves the bytes the codec's format says.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <span>
#include <string>
#include <vector>

#include "../common/dense_moe.hpp"
#include "../common/layer_helpers.hpp"
#include "llep/codec/block_scaled.hpp"
#include "llep/codec/identity.hpp"
#include "llep/exec/host.hpp"
#include "llep/experts/host_swiglu.hpp"
#include "llep/layer/backward.hpp"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/replicated.hpp"
#include "llep/sim/routing.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/host_threads.hpp"

namespace {

constexpr int P = 4, N = 8, K = 2, D = 16, H = 12;

struct Run {
  std::vector<std::vector<float>> out;
  std::vector<std::vector<float>> grad_hidden, grad_weights;  // with `backward`
  std::vector<llep::StepReport> reports;
  llep::Plan plan;  // rank 0's
};

std::vector<layertest::RankInput> inputs() {
  return layertest::make_inputs(P, N, K, D, llep::sim::Skew{1, 0.8}, 41, layertest::TokenRange{40, 40});
}

// Expert 0 is hot; every rank holds one or two replicas.
llep::Topology topology() {
  std::vector<double> history(N, 1.0);
  history[0] = 60;
  history[1] = 20;
  return llep::Replicated::place(history, P, N / P + 2);
}

template <class Codec, class Plnr = llep::Replicated>
Run run(const dense::Moe& moe, const llep::Topology& topo, const std::vector<layertest::RankInput>& in, Codec codec,
        bool encoded, int grads = -1, Plnr planner = {}) {  // grads: -1 none, 0 weights in the handle, 1 refetched
  llep::HostGroup group(P);
  Run r;
  r.out.resize(P);
  r.reports.resize(P);
  r.grad_hidden.resize(P);
  r.grad_weights.resize(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    using Layer =
        llep::MoeLayer<llep::ExactCounts, Plnr, llep::HostThreads, llep::HostSwiGlu<float>, llep::HostExec, Codec>;
    Layer layer(topo, K, planner, llep::HostSwiGlu<float>({D, H, false}), t);
    layer.set_codec(codec);
    const auto held = layertest::held_weights(moe, topo, t.rank());
    std::vector<float> natives, decode;
    std::vector<std::byte> replicas;
    if (encoded) {
      std::vector<int> mine;
      topo.native_experts(t.rank(), std::back_inserter(mine));
      for (const int e : mine) {
        const auto w = moe.packed<float>(e);
        natives.insert(natives.end(), w.begin(), w.end());
      }
      const std::size_t eb = layer.encoded_replica_bytes();
      for (const int e : topo.replica_experts(t.rank())) {
        const auto w = moe.packed<float>(e);
        replicas.resize(replicas.size() + eb);
        layer.encode_replica(w, std::span<std::byte>(replicas).last(eb));
      }
      decode.resize(topo.replica_experts(t.rank()).size() * layer.experts().weight_elems());
      layer.set_encoded_replicas(natives, replicas, decode);
    } else {
      layer.set_native_weights(held);
    }
    auto& out = r.out[p];
    out.assign(in[p].x.size(), -7.0f);
    llep::ForwardHandle<float> handle;
    handle.refetch_weights = grads == 1;
    std::vector<std::byte> memory(Layer::handle_bytes(layer.limits(64), handle.keeps()));
    handle.memory = memory;
    r.reports[p] = layer.forward(std::span<const float>(in[p].x), std::span<const std::int32_t>(in[p].ids),
                                 std::span<const float>(in[p].gates), std::span<float>(out), handle);
    if (p == 0) r.plan = layer.plan();
    if (grads >= 0) {  // gradients: one per held expert, laid out as set_native_weights' weights
      std::vector<float> grad_out(out.size()), grad_gates(in[p].gates.size());
      for (std::size_t i = 0; i < grad_out.size(); ++i) grad_out[i] = static_cast<float>(i % 5) / 4.0f - 0.5f;
      r.grad_hidden[p].assign(out.size(), 0.0f);
      r.grad_weights[p].assign(held.size(), 0.0f);
      const llep::BackwardArgs<float, float, float> args{in[p].x, in[p].gates, grad_out, r.grad_hidden[p], grad_gates,
                                                         r.grad_weights[p], llep::GradMode::overwrite};
      (void)llep::backward(layer, handle, args);
    }
  });
  return r;
}

double max_abs_diff(const Run& a, const Run& b, double& scale) {
  double err = 0;
  scale = 0;
  for (int p = 0; p < P; ++p)
    for (std::size_t i = 0; i < a.out[p].size(); ++i) {
      scale = std::max(scale, std::fabs(static_cast<double>(b.out[p][i])));
      err = std::max(err, std::fabs(static_cast<double>(a.out[p][i]) - b.out[p][i]));
    }
  return err;
}

}  // namespace

TEST_CASE("encoded replicas: Identity gives the bits of plain replicas, and saves nothing") {
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 12);
  const auto topo = topology();
  REQUIRE(topo.has_replicas());
  const auto in = inputs();
  const auto plain = run(moe, topo, in, llep::Identity<float>{}, false);
  const auto enc = run(moe, topo, in, llep::Identity<float>{}, true);
  for (int p = 0; p < P; ++p) {
    CHECK(std::memcmp(plain.out[p].data(), enc.out[p].data(), plain.out[p].size() * sizeof(float)) == 0);
    CHECK(enc.reports[p].replica_bytes_saved == 0);
    CHECK(layertest::relative_error(moe, in[p], enc.out[p], K) <= 1e-4);
  }
  // Replica holders really computed rows of the hot expert (else the test proves nothing).
  llep::count_t replica_rows = 0;
  for (const auto& seg : enc.plan.segments(0)) replica_rows += topo.holds_replica(0, seg.rank) ? seg.size() : 0;
  CHECK(replica_rows > 0);
}

TEST_CASE("encoded replicas, then backward (weights kept or refetched): the gradients of plain replicas") {
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 12);
  const auto topo = topology();
  auto in = inputs();  // hot on expert 5, which has no replica: LeastLoaded spills it
  for (auto& r : in)
    for (auto& id : r.ids) id = (id + 5) % N;
  for (const int refetch : {0, 1}) {
    INFO("refetch_weights = ", refetch);
    // LeastLoaded on the replicated placement spills from the natives: refetching sends them.
    const llep::LeastLoaded planner{1.0, 2};
    const auto plain = run(moe, topo, in, llep::Identity<float>{}, false, refetch, planner);
    const auto enc = run(moe, topo, in, llep::Identity<float>{}, true, refetch, planner);
    REQUIRE(enc.plan.weight_transfers().size() > 0);
    for (int p = 0; p < P; ++p) {
      CHECK(plain.grad_hidden[p] == enc.grad_hidden[p]);
      CHECK(plain.grad_weights[p] == enc.grad_weights[p]);
    }
  }
}

TEST_CASE("encoded replicas: Int8Rows and Fp8Blocks stay within the codec's layer tolerance and save bytes") {
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 12);
  const auto topo = topology();
  const auto in = inputs();
  const auto exact = run(moe, topo, in, llep::Identity<float>{}, false);
  const std::size_t welems = 3 * static_cast<std::size_t>(D) * H;  // gate, up, down
  auto check = [&](auto codec, double tolerance, std::size_t group, const char* what) {
    INFO(what);
    const auto plain = run(moe, topo, in, codec, false);
    const auto enc = run(moe, topo, in, codec, true);
    // No weight moves under Replicated: without encoded replicas a lossy codec is exact.
    double scale = 0;
    CHECK(max_abs_diff(plain, exact, scale) == 0);
    const double err = max_abs_diff(enc, exact, scale);
    CHECK(err > 0);  // replicas really were decoded from the lossy format
    CHECK(err <= tolerance * scale);
    for (int p = 0; p < P; ++p) {
      // 4-byte scale per group plus one byte per element, against 4 bytes per element.
      const std::size_t R = topo.replica_experts(p).size();
      const std::size_t encoded = 4 * ((welems + group - 1) / group) + welems;
      CHECK(enc.reports[p].replica_bytes_saved == R * (welems * 4 - encoded));
      CHECK(enc.reports[p].replica_bytes_saved > 0);
    }
  };
  const auto int8 = llep::Int8Rows<float>::for_expert({D, H, false});
  check(int8, 0.01, int8.group(), "int8 rows");
  check(llep::Fp8Blocks<float>(32), 0.05, 32, "fp8 blocks");
}

TEST_CASE("encoded replicas: wrong sizes and a codec change after encoding are refused") {
  llep::HostGroup group(1);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const llep::Topology one(1, 4);
    using Layer = llep::MoeLayer<llep::ExactCounts, llep::Replicated, llep::HostThreads, llep::HostSwiGlu<float>,
                                 llep::HostExec, llep::Int8Rows<float>>;
    Layer layer(one, K, llep::Replicated{}, llep::HostSwiGlu<float>({D, H, false}), t);
    std::vector<float> natives(4 * layer.experts().weight_elems()), decode;
    std::vector<std::byte> none;
    layer.set_encoded_replicas(natives, none, decode);  // P = 1: no replicas, fine
    CHECK(layer.replica_bytes_saved() == 0);
    std::vector<float> short_natives(natives.size() - 1);
    CHECK_THROWS_WITH_AS(layer.set_encoded_replicas(short_natives, none, decode), doctest::Contains("native experts"),
                         llep::Error);
    CHECK_THROWS_WITH_AS(layer.set_codec(llep::Int8Rows<float>(8)), doctest::Contains("before set_encoded_replicas"),
                         llep::Error);
    layer.set_native_weights(natives);  // plain weights again: the codec may change
    layer.set_codec(llep::Int8Rows<float>(8));
  });
}
