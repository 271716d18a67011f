// Plan-ahead (MoeLayer::prepare): a forward after prepare gives the same bits and the same
// plan as a forward without it, for every planner, P in {1, 2, 3, 4}, on HostThreads
// (weights move inside prepare) and on a test transport with a deferred weights path
// (weights land only when the forward joins them). A routing that differs on one rank
// re-plans on every rank, with the bits of a plain forward.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "../common/dense_moe.hpp"
#include "../common/layer_helpers.hpp"
#include "llep/codec/block_scaled.hpp"
#include "llep/layer/backward.hpp"
#include "llep/layer/host_layer.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/cost_aware.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/node_aware.hpp"
#include "llep/plan/quota_search.hpp"
#include "llep/plan/replicated.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/routing.hpp"

namespace {

using llep::count_t;
using layertest::RankInput;

// HostThreads with a weights path that moves nothing until join_weights: a forward that
// read the prefetched weights before joining them would read zeros.
class DeferredWeights {
 public:
  static constexpr llep::MemorySpace memory = llep::MemorySpace::host;
  explicit DeferredWeights(llep::HostThreads& t) : t_(&t) {}
  [[nodiscard]] int rank() const { return t_->rank(); }
  [[nodiscard]] int size() const { return t_->size(); }
  void all_gather(const void* src, std::size_t bytes, void* dst) { t_->all_gather(src, bytes, dst); }
  void all_to_all_v(const void* src, std::span<const std::size_t> ss, std::span<const std::size_t> so, void* dst,
                    std::span<const std::size_t> rs, std::span<const std::size_t> ro) {
    t_->all_to_all_v(src, ss, so, dst, rs, ro);
  }
  void exchange(std::span<const llep::P2pOp> ops) { t_->exchange(ops); }
  void barrier() { t_->barrier(); }
  void abort(std::string_view why) { t_->abort(why); }
  bool recover() { return t_->recover(); }
  void exchange_weights(std::span<const llep::P2pOp> ops) {
    pending_.insert(pending_.end(), ops.begin(), ops.end());
    ++started;
  }
  void join_weights() {
    t_->exchange(pending_);  // collective: every rank joins in the same order
    pending_.clear();
    ++joined;
  }
  int started = 0, joined = 0;

 private:
  llep::HostThreads* t_;
  std::vector<llep::P2pOp> pending_;
};
static_assert(llep::WeightsPathTransport<DeferredWeights> && llep::RecoverableTransport<DeferredWeights>);

constexpr int K = 2, D = 12, H = 8;

// One step's inputs (layertest::make_inputs, 10-29 tokens per rank, odd ranks empty at
// P = 4), skewed toward expert `hot` so LLEP spills.
std::vector<RankInput> make_step(int P, int N, std::uint64_t seed, int hot, double share) {
  auto in = layertest::make_inputs(P, N, K, D, share > 0 ? llep::sim::Skew{1, share} : llep::sim::Skew{}, seed,
                                   layertest::TokenRange{10, 29, P == 4});
  for (auto& r : in)
    for (auto& id : r.ids) id = (id + hot) % N;
  return in;
}

struct Result {
  std::vector<std::vector<float>> out;
  std::vector<llep::StepReport> reports;
  std::vector<llep::Plan> plans;
  std::vector<int> started, joined;
};

enum class Mode { plain, prepare_ids, prepare_counts };

std::vector<count_t> histogram(const std::vector<std::int32_t>& ids, int N) {
  std::vector<count_t> h(static_cast<std::size_t>(N), 0);
  for (const auto id : ids) ++h[static_cast<std::size_t>(id)];
  return h;
}

// Step 1 with `first`, then step 2 with `second`; in a prepare mode, prepare(`announced`)
// runs between them. Returns the second step.
template <class Tr, class Plnr>
Result run(const dense::Moe& moe, const llep::Topology& topo, Plnr planner, const std::vector<RankInput>& first,
           const std::vector<RankInput>& second, Mode mode, const std::vector<RankInput>* announced = nullptr,
           bool touch_weights = false) {
  const int P = topo.ranks(), N = topo.experts();
  if (announced == nullptr) announced = &second;
  llep::HostGroup group(P);
  Result res;
  res.out.resize(static_cast<std::size_t>(P));
  res.reports.resize(static_cast<std::size_t>(P));
  res.plans.resize(static_cast<std::size_t>(P));
  res.started.resize(static_cast<std::size_t>(P));
  res.joined.resize(static_cast<std::size_t>(P));
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    auto tr = [&] {
      if constexpr (std::is_same_v<Tr, llep::HostThreads>) return &t;
      else return std::make_unique<Tr>(t);
    }();
    using Layer = llep::MoeLayer<llep::ExactCounts, Plnr, Tr, llep::HostSwiGlu<float>, llep::HostExec>;
    const auto weights = layertest::held_weights(moe, topo, t.rank());
    Layer layer(topo, K, planner, llep::HostSwiGlu<float>(llep::ExpertShape{D, H, false}), *tr);
    layer.set_native_weights(weights);
    auto forward = [&](const RankInput& in) {
      std::vector<float> out(in.x.size(), -7.0f);
      res.reports[p] = layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids),
                                     std::span<const float>(in.gates), std::span<float>(out));
      return out;
    };
    (void)forward(first[p]);
    std::vector<std::byte> memory(Layer::prepare_bytes(layer.limits(64)));
    if (mode == Mode::prepare_ids)
      layer.prepare(std::span<const std::int32_t>((*announced)[p].ids), memory);
    if (mode == Mode::prepare_counts) {
      const auto h = histogram((*announced)[p].ids, N);
      layer.prepare_counts(std::span<const count_t>(h), memory);
    }
    if (mode != Mode::plain) CHECK(layer.prepared());
    if (touch_weights && t.rank() == 0) layer.set_native_weights(weights);
    res.out[p] = forward(second[p]);
    CHECK_FALSE(layer.prepared());
    res.plans[p] = layer.plan();
    if constexpr (!std::is_same_v<Tr, llep::HostThreads>) {
      res.started[p] = tr->started;
      res.joined[p] = tr->joined;
    }
  });
  return res;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

void check_same_plan(const llep::Plan& a, const llep::Plan& b) {
  CHECK(a.policy() == b.policy());
  CHECK(a.capacity() == b.capacity());
  CHECK(std::ranges::equal(a.segments(), b.segments()));
  CHECK(std::ranges::equal(a.weight_transfers(), b.weight_transfers()));
  CHECK(std::ranges::equal(a.rank_loads(), b.rank_loads()));
}

template <class Tr, class Plnr>
void check_prepare(const char* what, int P, Plnr planner, bool replicated = false) {
  const int N = 4 * P;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 11 + static_cast<std::uint64_t>(P));
  const auto first = make_step(P, N, 100 + static_cast<std::uint64_t>(P), 0, 0.0);
  const auto second = make_step(P, N, 200 + static_cast<std::uint64_t>(P), 1, 0.9);
  llep::Topology topo(P, N);
  if (replicated && P > 1) {
    std::vector<double> history(static_cast<std::size_t>(N), 1.0);
    history[1] = 50;  // the second step's hot expert
    topo = llep::Replicated::place(history, P, N / P + 1);
  }
  const auto plain = run<Tr>(moe, topo, planner, first, second, Mode::plain);
  for (const Mode mode : {Mode::prepare_ids, Mode::prepare_counts}) {
    INFO(what, ", P = ", P, mode == Mode::prepare_ids ? ", prepare(ids)" : ", prepare_counts");
    const auto got = run<Tr>(moe, topo, planner, first, second, mode);
    for (int p = 0; p < P; ++p) {
      INFO("rank ", p);
      const auto up = static_cast<std::size_t>(p);
      CHECK(same_bits(got.out[up], plain.out[up]));
      check_same_plan(got.plans[up], plain.plans[up]);
      const auto& r = got.reports[up];
      CHECK(r.prepared);
      CHECK_FALSE(r.prepare_mismatch);
      CHECK_FALSE(plain.reports[up].prepared);
      CHECK(r.weight_bytes_received == plain.reports[up].weight_bytes_received);
      CHECK(r.weight_bytes_sent == plain.reports[up].weight_bytes_sent);
      CHECK(r.weight_bytes_prefetched == r.weight_bytes_received);
      CHECK(plain.reports[up].weight_bytes_prefetched == 0);
      CHECK(r.workspace_bytes <= plain.reports[up].workspace_bytes);  // no foreign-weights region
      if constexpr (!std::is_same_v<Tr, llep::HostThreads>) {
        // Step 1 and the prepare each start one exchange; the second forward starts none.
        CHECK(got.started[up] == 2);
        CHECK(got.joined[up] == 2);
      }
    }
    CHECK(layertest::relative_error(moe, second[0], got.out[0], K) <= 1e-4);
  }
}

template <class Tr>
void check_all_planners(int P) {
  const auto model = std::make_shared<llep::sim::CostModel>();
  const llep::LeastLoaded small{1.0, 2};
  check_prepare<Tr>("ep", P, llep::StandardEp{});
  check_prepare<Tr>("llep", P, small);
  check_prepare<Tr>("adaptive", P, llep::Adaptive<llep::LeastLoaded>{1.3, small});
  check_prepare<Tr>("node-aware", P, llep::NodeAware{1.0, 2});
  check_prepare<Tr>("quota-search", P, llep::QuotaSearch{2});
  check_prepare<Tr>("capped", P, llep::Capped<llep::LeastLoaded>{small, llep::MemoryCap::rows(64 * K)});
  check_prepare<Tr>("cost-aware", P, llep::CostAware{1.0, 2, model, {"test", D, H}});
  check_prepare<Tr>("replicated", P, llep::Replicated{}, true);
}

}  // namespace

TEST_CASE("prepare then forward: the same bits and plan as forward alone, every planner, HostThreads") {
  for (const int P : {1, 2, 3, 4}) check_all_planners<llep::HostThreads>(P);
}

TEST_CASE("prepare then forward on a deferred weights path: the forward joins the prefetch before using it") {
  for (const int P : {1, 2, 3, 4}) check_all_planners<DeferredWeights>(P);
}

TEST_CASE("the prefetch really moves the weights: LLEP under skew prefetches bytes") {
  const int P = 4, N = 16;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 5);
  const auto first = make_step(P, N, 1, 0, 0.0), second = make_step(P, N, 2, 3, 0.95);
  const auto got = run<llep::HostThreads>(moe, llep::Topology(P, N), llep::LeastLoaded{1.0, 2}, first, second,
                                          Mode::prepare_ids);
  std::size_t prefetched = 0;
  for (const auto& r : got.reports) prefetched += r.weight_bytes_prefetched;
  CHECK(got.plans[0].weight_transfers().size() > 0);
  CHECK(prefetched == got.plans[0].weight_transfers().size() * moe.packed<float>(0).size() * sizeof(float));
}

template <class Tr>
void check_mismatch() {
  // Rank P - 2 announces one routing and forwards another: every rank re-plans, and the
  // result is a plain forward's, bit for bit.
  for (const int P : {2, 3, 4}) {
    const int N = 4 * P;
    INFO("P = ", P);
    const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 31);
    const auto first = make_step(P, N, 7, 0, 0.0), second = make_step(P, N, 8, 2, 0.9);
    auto announced = second;
    auto& ids = announced[static_cast<std::size_t>(P - 2)].ids;  // a rank with tokens
    REQUIRE(ids.size() >= 2);
    ids[0] = (ids[0] + 1) % N;  // one pair moved to another expert: the counts differ on rank 1
    if (ids[0] == ids[1]) ids[0] = (ids[0] + 1) % N;
    const llep::LeastLoaded planner{1.0, 2};
    const auto plain = run<Tr>(moe, llep::Topology(P, N), planner, first, second, Mode::plain);
    const auto got = run<Tr>(moe, llep::Topology(P, N), planner, first, second, Mode::prepare_ids, &announced);
    for (int p = 0; p < P; ++p) {
      const auto up = static_cast<std::size_t>(p);
      CHECK(got.reports[up].prepare_mismatch);
      CHECK_FALSE(got.reports[up].prepared);
      CHECK(got.reports[up].weight_bytes_prefetched == 0);
      CHECK(same_bits(got.out[up], plain.out[up]));
      check_same_plan(got.plans[up], plain.plans[up]);
    }
    // Only a reordering of a rank's ids: the same counts, so the prepared plan holds.
    auto shuffled = second;
    std::reverse(shuffled[0].ids.begin(), shuffled[0].ids.end());
    std::reverse(shuffled[0].gates.begin(), shuffled[0].gates.end());
    const auto reordered = run<Tr>(moe, llep::Topology(P, N), planner, first, second, Mode::prepare_ids, &shuffled);
    for (int p = 0; p < P; ++p) {
      CHECK(reordered.reports[static_cast<std::size_t>(p)].prepared);
      CHECK(same_bits(reordered.out[static_cast<std::size_t>(p)], plain.out[static_cast<std::size_t>(p)]));
    }
    // New weights on one rank after prepare: every rank re-plans.
    const auto touched = run<Tr>(moe, llep::Topology(P, N), planner, first, second, Mode::prepare_ids, nullptr, true);
    for (int p = 0; p < P; ++p) {
      CHECK(touched.reports[static_cast<std::size_t>(p)].prepare_mismatch);
      CHECK(same_bits(touched.out[static_cast<std::size_t>(p)], plain.out[static_cast<std::size_t>(p)]));
    }
  }
}

TEST_CASE("a routing that differs from the prepared one on any rank: every rank re-plans, same bits") {
  check_mismatch<llep::HostThreads>();
  check_mismatch<DeferredWeights>();
}

// A LeastLoaded{1, 2} host layer of P ranks and N experts (D, H, K of this file).
llep::HostMoeLayer<llep::LeastLoaded> lla_layer(llep::HostThreads& t, int P, int N) {
  return {llep::Topology(P, N), K, llep::LeastLoaded{1.0, 2}, llep::HostSwiGlu<float>(llep::ExpertShape{D, H, false}),
          t};
}

TEST_CASE("prepare errors: too little memory and bad ids fail on every rank, and nothing stays prepared") {
  const int P = 3, N = 12;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 3);
  const auto first = make_step(P, N, 1, 0, 0.0), second = make_step(P, N, 2, 0, 0.95);
  llep::HostGroup group(P);
  std::vector<std::string> errors(P);
  std::vector<int> prepared_after(P, -1), clean(P, 0);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    const auto weights = moe.packed_rank<float>(t.rank(), P);
    auto layer = lla_layer(t, P, N);
    layer.set_native_weights(weights);
    std::vector<std::byte> none;  // holds no foreign expert: the spill receivers fail
    try {
      layer.prepare(std::span<const std::int32_t>(second[p].ids), none);
    } catch (const llep::Error& e) {
      errors[p] = e.what();
    }
    prepared_after[p] = layer.prepared() ? 1 : 0;
    // Bad ids on rank 0 only: the counts exchange fails on every rank.
    auto bad = second[p].ids;
    if (p == 0 && !bad.empty()) bad[0] = N + 5;
    std::vector<std::byte> memory(decltype(layer)::prepare_bytes(layer.limits(64)));
    try {
      layer.prepare(std::span<const std::int32_t>(bad), memory);
    } catch (const llep::Error& e) {
      errors[p] += std::string(" | ") + e.what();
    }
    prepared_after[p] += layer.prepared() ? 10 : 0;
    // The group works on afterwards, with a plain forward.
    std::vector<float> out(second[p].x.size());
    const auto& rep = layer.forward(std::span<const float>(second[p].x), std::span<const std::int32_t>(second[p].ids),
                                    std::span<const float>(second[p].gates), std::span<float>(out));
    clean[p] = !rep.prepared && !rep.prepare_mismatch ? 1 : 0;
    (void)first;
  });
  for (int p = 0; p < P; ++p) {
    INFO("rank ", p, ": ", errors[static_cast<std::size_t>(p)]);
    CHECK(errors[static_cast<std::size_t>(p)].find(" | ") != std::string::npos);
    CHECK(errors[static_cast<std::size_t>(p)].find("outside [0, 12)") != std::string::npos);
    CHECK(prepared_after[static_cast<std::size_t>(p)] == 0);
    CHECK(clean[static_cast<std::size_t>(p)] == 1);
  }
  // The first failure names the memory on a rank that receives weights.
  CHECK(std::any_of(errors.begin(), errors.end(),
                    [](const std::string& e) { return e.find("prepare_bytes") != std::string::npos; }));
}

TEST_CASE("one rank prepares while the others forward: llep::Error on every rank, then clean steps") {
  const int P = 3, N = 6;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 5);
  const auto in = make_step(P, N, 6, 0, 0.9);
  llep::HostGroup group(P);
  std::vector<std::string> errors(P);
  std::vector<int> clean(P, 0);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    const auto weights = moe.packed_rank<float>(t.rank(), P);
    auto layer = lla_layer(t, P, N);
    layer.set_native_weights(weights);
    std::vector<std::byte> memory(decltype(layer)::prepare_bytes(layer.limits(64)));
    std::vector<float> out(in[p].x.size());
    const auto forward = [&] {
      return layer.forward(std::span<const float>(in[p].x), std::span<const std::int32_t>(in[p].ids),
                           std::span<const float>(in[p].gates), std::span<float>(out));
    };
    try {
      if (p == 1) layer.prepare(std::span<const std::int32_t>(in[p].ids), memory);
      else (void)forward();
    } catch (const llep::Error& e) {
      errors[p] = e.what();
    }
    // Nothing stays prepared: every rank runs plain steps afterwards.
    const auto& rep = forward();
    clean[p] = !layer.prepared() && !rep.prepared ? 1 : 0;
  });
  for (int p = 0; p < P; ++p) {
    INFO("rank ", p, ": ", errors[static_cast<std::size_t>(p)]);
    CHECK(errors[static_cast<std::size_t>(p)].find("configuration fingerprint") != std::string::npos);
    CHECK(errors[static_cast<std::size_t>(p)].find("prepare()") != std::string::npos);
    CHECK(clean[static_cast<std::size_t>(p)] == 1);
  }
}

TEST_CASE("ranks with different codecs fail the step on every rank (configuration fingerprint)") {
  const int P = 3, N = 6;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 9);
  const auto in = make_step(P, N, 4, 0, 0.9);
  llep::HostGroup group(P);
  std::vector<std::string> errors(P);
  std::vector<std::uint64_t> prints(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const auto p = static_cast<std::size_t>(t.rank());
    const auto weights = moe.packed_rank<float>(t.rank(), P);
    using Layer = llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::HostThreads, llep::HostSwiGlu<float>,
                                 llep::HostExec, llep::Fp8Blocks<float>>;
    Layer layer(llep::Topology(P, N), K, llep::LeastLoaded{1.0, 2}, llep::HostSwiGlu<float>({D, H, false}), t);
    layer.set_native_weights(weights);
    const auto before = layer.config_fingerprint();
    layer.set_codec(llep::Fp8Blocks<float>(p == 2 ? 8 : 16));  // rank 2: another group size
    prints[p] = layer.config_fingerprint();
    CHECK(prints[p] != before);
    std::vector<float> out(in[p].x.size());
    try {
      layer.forward(std::span<const float>(in[p].x), std::span<const std::int32_t>(in[p].ids),
                    std::span<const float>(in[p].gates), std::span<float>(out));
    } catch (const llep::Error& e) {
      errors[p] = e.what();
    }
  });
  CHECK(prints[0] == prints[1]);
  CHECK(prints[0] != prints[2]);
  for (int p = 0; p < P; ++p) {
    INFO("rank ", p, ": ", errors[static_cast<std::size_t>(p)]);
    CHECK(errors[static_cast<std::size_t>(p)].find("rank 2's configuration fingerprint") != std::string::npos);
    CHECK(errors[static_cast<std::size_t>(p)].find("weight codec") != std::string::npos);
  }
}

TEST_CASE("a prepared forward with a handle, then backward: the gradients of a plain forward, bit for bit") {
  const int P = 4, N = 16;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 21);
  const auto first = make_step(P, N, 3, 0, 0.0), second = make_step(P, N, 4, 5, 0.9);
  struct Grads {
    std::vector<float> out, hidden, gates, weights;
    bool prepared = false;
    std::size_t foreign_tasks = 0;
  };
  auto run_grads = [&](bool prepare, bool save_inputs) {
    llep::HostGroup group(P);
    std::vector<Grads> res(P);
    llep::run_ranks(group, [&](llep::HostThreads& t) {
      const auto p = static_cast<std::size_t>(t.rank());
      using Layer = llep::HostMoeLayer<llep::LeastLoaded>;
      const auto weights = moe.packed_rank<float>(t.rank(), P);
      Layer layer(llep::Topology(P, N), K, llep::LeastLoaded{1.0, 2}, llep::HostSwiGlu<float>({D, H, false}), t);
      layer.set_native_weights(weights);
      const auto limits = layer.limits(64);
      std::vector<std::byte> memory(Layer::handle_bytes(limits, save_inputs)), ahead(Layer::prepare_bytes(limits));
      llep::ForwardHandle<float> handle(memory, save_inputs);
      auto& g = res[p];
      std::vector<float> out(first[p].x.size());
      layer.forward(std::span<const float>(first[p].x), std::span<const std::int32_t>(first[p].ids),
                    std::span<const float>(first[p].gates), std::span<float>(out));
      const auto& in = second[p];
      if (prepare) layer.prepare(std::span<const std::int32_t>(in.ids), ahead);
      g.out.assign(in.x.size(), 0.0f);
      g.prepared = layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids),
                                 std::span<const float>(in.gates), std::span<float>(g.out), handle)
                       .prepared;
      for (const auto& task : handle.tasks) g.foreign_tasks += task.native ? 0 : 1;
      std::vector<float> grad_out(in.x.size());
      for (std::size_t i = 0; i < grad_out.size(); ++i) grad_out[i] = static_cast<float>((i % 7) - 3) / 8.0f;
      g.hidden.assign(in.x.size(), -7.0f);
      g.gates.assign(in.gates.size(), -7.0f);
      g.weights.assign(weights.size(), 0.0f);
      const std::span<const float> hidden = save_inputs ? std::span<const float>() : std::span<const float>(in.x);
      const llep::BackwardArgs<float, float, float> args{hidden, in.gates, grad_out, g.hidden, g.gates, g.weights,
                                                         llep::GradMode::overwrite};
      (void)llep::backward(layer, handle, args);
    });
    return res;
  };
  for (const bool save_inputs : {false, true}) {
    INFO("save_inputs = ", save_inputs);
    const auto plain = run_grads(false, save_inputs), ahead = run_grads(true, save_inputs);
    std::size_t foreign = 0;
    for (int p = 0; p < P; ++p) {
      const auto& a = ahead[static_cast<std::size_t>(p)];
      const auto& b = plain[static_cast<std::size_t>(p)];
      CHECK(a.prepared);
      CHECK_FALSE(b.prepared);
      CHECK(same_bits(a.out, b.out));
      CHECK(same_bits(a.hidden, b.hidden));
      CHECK(same_bits(a.gates, b.gates));
      CHECK(same_bits(a.weights, b.weights));
      foreign += a.foreign_tasks;
    }
    CHECK(foreign > 0);  // helpers computed with the prefetched weights, kept for backward
  }
}
