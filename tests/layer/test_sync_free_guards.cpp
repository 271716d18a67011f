// SyncFreeLayer's two safety paths (layer/sync_free.hpp) on P rank threads with HostExec over
// host symmetric memory, as test_sync_free.cpp runs it:
// - a closed step (here: Capped refuses the loads, so the device plan fails) lets no helper
//   gradient of an earlier step into the natives' weight gradients: grad_weights is zero
//   under overwrite and unchanged under accumulate, and the step writes no output; the
//   step after it is MoeLayer's bit for bit again;
// - a plan that gives a rank more foreign experts than its planner's declared bound is not
//   followed past the foreign rooms (forward's tasks, the weights pull, backward's tasks,
//   the gradients pull): each is refused with a past-bound error naming the count, the same
//   llep::Error on every rank, nothing written past a buffer, every rank released.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../common/dense_moe.hpp"
#include "../common/errors.hpp"
#include "../common/layer_helpers.hpp"
#include "llep/layer/backward.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/plan_step.hpp"
#include "llep/sim/routing.hpp"
#include "sync_free_rig.hpp"

using namespace syncfree;

namespace {

constexpr float kPoison = -7.0f;

// A caller's buffer of n floats (filled with `fill`) and a poisoned tail that nothing may write.
struct Fenced {
  static constexpr std::size_t kTail = 16;
  explicit Fenced(std::size_t n, float fill = kPoison) : n(n), v(n + kTail, kPoison) {
    std::fill(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n), fill);
  }
  [[nodiscard]] std::span<float> span() { return {v.data(), n}; }
  [[nodiscard]] std::vector<float> body() const { return {v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n)}; }
  [[nodiscard]] bool tail_intact() const {
    return std::all_of(v.begin() + static_cast<std::ptrdiff_t>(n), v.end(), [](float x) { return x == kPoison; });
  }
  [[nodiscard]] bool untouched() const {
    return std::all_of(v.begin(), v.end(), [](float x) { return x == kPoison; });
  }
  std::size_t n;
  std::vector<float> v;
};

// Rank `rank`'s upstream gradient for `in` in step `s`.
std::vector<float> grad_out_of(const layertest::RankInput& in, int rank, int s) {
  std::vector<float> g(in.x.size());
  const auto shift = static_cast<std::size_t>(rank) * 3 + static_cast<std::size_t>(s);
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = static_cast<float>((i * 7 + shift) % 11) / 11.0f - 0.5f;
  return g;
}

// Every token of every rank to experts a and b (both of one native rank): LeastLoaded
// (alpha 1) ships one of them, whole for P <= 3.
std::vector<layertest::RankInput> to_pair(int P, int N, int B, std::int32_t a, std::int32_t b, std::uint64_t seed) {
  auto in = layertest::make_inputs(P, N, K, D, llep::sim::Skew{}, seed, {B, B});
  for (auto& r : in)
    for (std::size_t i = 0; i < r.ids.size(); ++i) r.ids[i] = i % 2 == 0 ? a : b;
  return in;
}

// One rank of a training rig (R: Rig or CollectiveRig): its SyncFreeLayer and MoeLayer
// reference (RankPair), the layer's backward workspace and the reference's forward handle.
template <class Plnr, class R = Rig<Plnr>>
struct Trainee : RankPair<Plnr, R> {
  Trainee(const R& rig, llep::HostThreads& t, const dense::Moe& moe, int b_max)
      : RankPair<Plnr, R>(rig, t, moe),
        back_bytes(this->layer.template backward_workspace_bytes<float, float>()),
        back(back_bytes),
        memory(decltype(this->ref)::handle_bytes(this->ref.limits(b_max), handle.keeps())) {
    handle.memory = memory;
  }
  // Forward, backward, check() on the layer; returns check()'s error.
  std::string step(llep::HostThreads& t, const layertest::RankInput& in, const std::vector<float>& grad_out,
                   Fenced& out, Fenced& g_hidden, Fenced& g_gates, Fenced& gw, llep::GradMode mode) {
    this->layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids),
                        std::span<const float>(in.gates), out.span());
    this->layer.backward(std::span<const float>(grad_out), std::span<const float>(in.gates), g_hidden.span(),
                         g_gates.span(), gw.span(), mode, back.span(back_bytes));
    return testutil::error_of([&] { this->layer.check(t); });
  }
  // The same step on the reference: the layer's results must be its bits (want_gw: the
  // reference's weight gradients, kept across steps), and the dense MoE's within rounding.
  void same_as_reference(const dense::Moe& moe, const layertest::RankInput& in, const std::vector<float>& grad_out,
                         const Fenced& out, const Fenced& g_hidden, const Fenced& g_gates, const Fenced& gw,
                         std::vector<float>& want_gw, llep::GradMode mode) {
    std::vector<float> want(in.x.size()), w_hidden(in.x.size()), w_gates(in.gates.size());
    this->ref.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids),
                      std::span<const float>(in.gates), std::span<float>(want), handle);
    llep::backward(this->ref, handle,
                   llep::BackwardArgs<float, float, float>{in.x, in.gates, grad_out, w_hidden, w_gates, want_gw, mode});
    CHECK(same_bits(out.body(), want));
    CHECK(same_bits(g_hidden.body(), w_hidden));
    CHECK(same_bits(g_gates.body(), w_gates));
    CHECK(same_bits(gw.body(), want_gw));
    CHECK(layertest::relative_error(moe, in, out.body(), K) < 1e-4);
  }
  // Nothing written past the caller's buffers, the workspace, the backward workspace or
  // (CollectiveRig) the rank's exchange memory.
  void fences_intact(const R& rig, const Fenced& out, const Fenced& g_hidden, const Fenced& g_gates,
                     const Fenced& gw) {
    if constexpr (requires { rig.memory; })
      CHECK(rig.memory[static_cast<std::size_t>(this->layer.rank())].tail_intact(rig.exchange_bytes()));
    CHECK(out.tail_intact());
    CHECK(g_hidden.tail_intact());
    CHECK(g_gates.tail_intact());
    CHECK(gw.tail_intact());
    CHECK(this->ws.tail_intact(rig.bytes()));
    CHECK(back.tail_intact(back_bytes));
  }
  std::size_t back_bytes;
  Aligned back;
  llep::ForwardHandle<float> handle;
  std::vector<std::byte> memory;
};

// A good step, a closed one, a good one: P ranks, N = 2P experts, every rank B_max = 8.
void closed_step(int P, llep::GradMode mode) {
  constexpr int Bmax = 8;
  const int N = 2 * P;
  using Plnr = llep::Capped<>;
  // At most 10 rows a rank: 4 tokens a rank (8P pairs) fit, 8 (16P pairs) cannot be placed.
  const Plnr planner{llep::LeastLoaded{1.0, 1}, llep::MemoryCap::rows(10)};
  using Layer = Rig<Plnr>::Layer;
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 31);
  const Rig<Plnr> rig(P, N, planner, Bmax, Layer::grad_bytes<float>(llep::HostSwiGlu<float>{{D, H, false}}));
  // Step 0 ships an expert of rank 0 whole to helpers; step 1 is closed; step 2 skewed.
  const std::vector<std::vector<layertest::RankInput>> steps{
      to_pair(P, N, 4, 0, 1, 51), layertest::make_inputs(P, N, K, D, llep::sim::Skew{}, 52, {Bmax, Bmax}),
      layertest::make_inputs(P, N, K, D, llep::sim::Skew{1, 0.8}, 53, {1, 4})};
  std::vector<std::string> closed(static_cast<std::size_t>(P));
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    const auto up = static_cast<std::size_t>(p);
    Trainee<Plnr> me(rig, t, moe, Bmax);
    const auto& weights = me.weights;
    const auto& layer = me.layer;
    Fenced gw(weights.size(), 0.25f);
    std::vector<float> want_gw(weights.size(), 0.25f);
    const std::size_t W = rig.experts.weight_elems();
    for (int s = 0; s < 3; ++s) {
      CAPTURE(s);
      const auto& in = steps[static_cast<std::size_t>(s)][up];
      const auto grad_out = grad_out_of(in, p, s);
      const std::vector<float> gw_before = gw.body();
      Fenced out(in.x.size()), g_hidden(in.x.size()), g_gates(in.gates.size());
      const std::string error = me.step(t, in, grad_out, out, g_hidden, g_gates, gw, mode);
      me.fences_intact(rig, out, g_hidden, g_gates, gw);
      const llep::PlanView& plan = *layer.plan_view();
      if (s == 1) {  // closed: the plan failed on every rank
        closed[up] = error;
        CHECK(layer.plan_status()->code == llep::StepStatus::cap_too_small);
        // The failed plan left step 0's in the plan view: helpers still get its transfers,
        // and write zeros for them (GradTasksFromLayout), or step 0's gradients would leak.
        CHECK(plan.num_transfers > 0);
        CHECK(out.untouched());
        CHECK(g_hidden.untouched());
        CHECK(g_gates.untouched());
        const std::vector<float> now = gw.body();
        if (mode == llep::GradMode::overwrite)
          CHECK(std::all_of(now.begin(), now.end(), [](float x) { return x == 0.0f; }));
        else
          CHECK(same_bits(now, gw_before));
        continue;
      }
      CHECK(error == testutil::kNoError);
      me.same_as_reference(moe, in, grad_out, out, g_hidden, g_gates, gw, want_gw, mode);
      if (s == 0) {
        // An expert of rank 0 that ran only on helpers: rank 0's gradient of it is theirs
        // alone and not zero, so a helper that kept it would leak it into the closed step.
        std::int32_t whole = -1;
        for (std::int32_t e = 1; e >= 0; --e) {
          bool off = plan.expert_offsets[e + 1] > plan.expert_offsets[e];
          for (std::int32_t i = plan.expert_offsets[e]; i < plan.expert_offsets[e + 1]; ++i)
            off = off && plan.segments[i].rank != 0;
          if (off) whole = e;
        }
        REQUIRE(whole >= 0);
        if (p == 0) {
          const float base = mode == llep::GradMode::overwrite ? 0.0f : 0.25f;
          const auto slot = gw.v.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(whole) * W);
          CHECK(std::any_of(slot, slot + static_cast<std::ptrdiff_t>(W), [&](float x) { return x != base; }));
        }
      }
    }
  });
  for (int p = 0; p < P; ++p) CHECK(closed[static_cast<std::size_t>(p)] == closed[0]);
  CHECK(closed[0].find("rank 0: the device plan failed (StepStatus code " +
                       std::to_string(static_cast<int>(llep::StepStatus::cap_too_small))) != std::string::npos);
}

}  // namespace

TEST_CASE("SyncFreeLayer: a closed step leaks no earlier helper gradient into the natives', and the next step is "
          "MoeLayer's again") {
  for (const int P : {2, 3}) {
    CAPTURE(P);
    closed_step(P, llep::GradMode::overwrite);
    closed_step(P, llep::GradMode::accumulate);
  }
}

namespace {

// LeastLoaded's plans under bounds that declare at most one foreign expert a rank: a
// planner that breaks its own bound (no shipped planner does within its limits).
struct PastItsBound : llep::LeastLoaded {
  static constexpr std::string_view name = "past-its-bound";
  [[nodiscard]] llep::PlanBounds bounds(const llep::Topology& topo, std::int64_t max_pairs_per_rank) const {
    llep::PlanBounds b = LeastLoaded::bounds(topo, max_pairs_per_rank);
    b.foreign_experts_per_rank = 1;
    return b;
  }
};

}  // namespace

namespace llep {
template <>
struct DeviceStep<PastItsBound> {
  static constexpr bool available = true;
  LLEP_HOST_DEVICE static std::size_t scratch_bytes(int P, int N) noexcept {
    return DeviceStep<LeastLoaded>::scratch_bytes(P, N);
  }
  LLEP_HOST_DEVICE static StepStatus run(const PastItsBound& p, const count_t* loads, alg::TopoView t,
                                         std::byte* scratch, PlanView& out) noexcept {
    return DeviceStep<LeastLoaded>::run(p, loads, t, scratch, out);
  }
};
}  // namespace llep

namespace {

struct OverBound {
  std::vector<std::string> forward, backward;  // check()'s error after each, per rank
  std::vector<int> foreign;                    // transfers to each rank in the refused step
};

// P ranks, N experts, B_max tokens: forward and backward of the step `over` (each checked),
// whose plan gives a rank more foreign experts than PastItsBound declares, then a step
// `within` the bound that ships `within_transfers` experts. R: the exchange's rig (Rig:
// SymmetricExchange, CollectiveRig: CollectiveExchange<HostThreads>).
template <class R>
OverBound refused_then_within(int P, int N, int Bmax, const std::vector<layertest::RankInput>& over,
                              const std::vector<layertest::RankInput>& within, int within_transfers) {
  using Layer = typename R::Layer;
  const PastItsBound planner{{1.0, 1}};
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 61);
  const R rig(P, N, planner, Bmax, Layer::template grad_bytes<float>(llep::HostSwiGlu<float>{{D, H, false}}));
  REQUIRE(rig.limits.plan.foreign_experts_per_rank == 1);
  const auto uP = static_cast<std::size_t>(P);
  OverBound got{std::vector<std::string>(uP), std::vector<std::string>(uP), std::vector<int>(uP)};
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    const auto up = static_cast<std::size_t>(p);
    Trainee<PastItsBound, R> me(rig, t, moe, Bmax);
    auto& layer = me.layer;
    Fenced gw(me.weights.size(), 0.25f);
    {
      const auto& in = over[up];
      const auto grad_out = grad_out_of(in, p, 0);
      Fenced out(in.x.size()), g_hidden(in.x.size()), g_gates(in.gates.size());
      layer.forward(std::span<const float>(in.x), std::span<const std::int32_t>(in.ids),
                    std::span<const float>(in.gates), out.span());
      got.forward[up] = testutil::error_of([&] { layer.check(t); });
      const llep::PlanView& plan = *layer.plan_view();
      for (std::int32_t i = 0; i < plan.num_transfers; ++i) got.foreign[up] += plan.transfers[i].dst == p ? 1 : 0;
      layer.backward(std::span<const float>(grad_out), std::span<const float>(in.gates), g_hidden.span(),
                      g_gates.span(), gw.span(), llep::GradMode::overwrite, me.back.span(me.back_bytes));
      got.backward[up] = testutil::error_of([&] { layer.check(t); });
      me.fences_intact(rig, out, g_hidden, g_gates, gw);
    }
    // Every rank is released and the next step, within the bound, is MoeLayer's bit for bit.
    const auto& in = within[up];
    const auto grad_out = grad_out_of(in, p, 1);
    Fenced out(in.x.size()), g_hidden(in.x.size()), g_gates(in.gates.size());
    CHECK(me.step(t, in, grad_out, out, g_hidden, g_gates, gw, llep::GradMode::overwrite) == testutil::kNoError);
    CHECK(layer.plan_view()->num_transfers == within_transfers);
    std::vector<float> want_gw(me.weights.size());
    me.same_as_reference(moe, in, grad_out, out, g_hidden, g_gates, gw, want_gw, llep::GradMode::overwrite);
  });
  for (std::size_t p = 1; p < uP; ++p) {
    CHECK(got.forward[p] == got.forward[0]);
    CHECK(got.backward[p] == got.backward[0]);
  }
  return got;
}

// P = 2, N = 6: every token to the three natives of rank `native`, evenly, so LeastLoaded
// ships two of them to the other rank, whose planner declared room for one; then a step
// that ships one.
template <class R = Rig<PastItsBound>>
OverBound past_the_bound(int native) {
  constexpr int P = 2, N = 6, Bmax = 6;
  auto over = layertest::make_inputs(P, N, K, D, llep::sim::Skew{}, 62, {Bmax, Bmax});
  const std::int32_t a = 3 * native;
  for (auto& r : over)
    for (std::size_t i = 0; i < r.ids.size(); ++i)  // tokens (a, a+1), (a+1, a+2), (a+2, a)
      r.ids[i] = a + static_cast<std::int32_t>((i / 2 + i % 2) % 3);
  // Within the bound: one expert shipped.
  return refused_then_within<R>(P, N, Bmax, over, to_pair(P, N, 3, a, a + 1, 63), 1);
}

// P = 3, N = 6: every token to experts 0 (rank 0) and 2 (rank 1), so each spills a slice to
// rank 2, which gets one expert from each peer: past its bound of one, yet within a
// CollectiveExchange's room per peer (one), so only the past-bound guards stand between
// the plan and the rooms. Then a step within the bound: expert 0 takes half the pairs (every
// token's first id), ranks 1 and 2 a quarter each, so expert 0's excess is split between
// them, one expert each.
template <class R>
OverBound one_from_each_peer() {
  constexpr int P = 3, N = 6, Bmax = 6;
  auto within = layertest::make_inputs(P, N, K, D, llep::sim::Skew{}, 65, {Bmax, Bmax});
  constexpr std::int32_t second[] = {2, 4, 3, 5};
  for (auto& r : within)
    for (std::size_t i = 0; i < r.ids.size(); ++i)  // tokens (0, 2), (0, 4), (0, 3), (0, 5), (0, 2), (0, 4)
      r.ids[i] = i % 2 == 0 ? 0 : second[(i / 2) % 4];
  return refused_then_within<R>(P, N, Bmax, to_pair(P, N, Bmax, 0, 2, 64), within, 2);
}

// The refusal's message: rank `rank` noted room for `count` foreign items needed, past the
// rooms its planner's bounds sized, naming `peer` (itself: its own task list).
std::string overflow(int rank, int count, int peer) {
  return "llep: rank " + std::to_string(rank) + ": the step's plan needs room for " + std::to_string(count) +
         " foreign experts' weights or gradients (" +
         (peer == rank ? std::string("its own task list") : "transfers with peer " + std::to_string(peer)) +
         "), past the rooms sized from its planner's bounds (Planner::bounds().foreign_experts_per_rank)";
}

}  // namespace

TEST_CASE("SyncFreeLayer: a plan past its planner's foreign-expert bound is refused at every room, on every rank") {
  // Each guard notes room needed for bound + 1 = 2 experts; the smallest word of the lowest
  // rank is the one named, so the two orientations name each guard once.
  {  // Natives on rank 1, rank 0 their helper.
    const OverBound got = past_the_bound(1);
    CHECK(got.foreign == std::vector<int>{2, 0});
    // Forward's tasks (rank 0 names itself; the weights pull's word names peer 1 and is larger).
    CHECK(got.forward[0].rfind(overflow(0, 2, 0), 0) == 0);
    // Backward's tasks on rank 0 (rank 1's gradients pull noted too, a higher rank).
    CHECK(got.backward[0].rfind(overflow(0, 2, 0), 0) == 0);
  }
  {  // Natives on rank 0, rank 1 their helper.
    const OverBound got = past_the_bound(0);
    CHECK(got.foreign == std::vector<int>{0, 2});
    // The weights pull on rank 1 (from peer 0; its tasks' word names rank 1 and is larger).
    CHECK(got.forward[0].rfind(overflow(1, 2, 0), 0) == 0);
    // The gradients pull on rank 0: helper 1's second gradient is past its room.
    CHECK(got.backward[0].rfind(overflow(0, 2, 1), 0) == 0);
  }
}

TEST_CASE("SyncFreeLayer over CollectiveExchange<HostThreads>: a plan past its planner's foreign-expert bound is "
          "refused, on every rank") {
  // The default capacity per peer is the planner's bound (one expert), so the second
  // transfer between the pair is also past the slot: the native side's pack (forward) and
  // unpack (backward) note it past the bound too, naming the helper.
  using Coll = CollectiveRig<PastItsBound>;
  {  // Natives on rank 1, rank 0 their helper: rank 0's past_bound words are named.
    const OverBound got = past_the_bound<Coll>(1);
    CHECK(got.foreign == std::vector<int>{2, 0});
    // Forward: rank 0's task list (its weights unpack names peer 1, larger).
    CHECK(got.forward[0].rfind(overflow(0, 2, 0), 0) == 0);
    // Backward: rank 0's task list (its gradients pack names peer 1, larger).
    CHECK(got.backward[0].rfind(overflow(0, 2, 0), 0) == 0);
  }
  {  // Natives on rank 0, rank 1 their helper: rank 0's words are named.
    const OverBound got = past_the_bound<Coll>(0);
    CHECK(got.foreign == std::vector<int>{0, 2});
    // Forward: rank 0 packs its second expert for peer 1 past the slot.
    CHECK(got.forward[0].rfind(overflow(0, 2, 1), 0) == 0);
    // Backward: rank 0 unpacks helper 1's second gradient past the slot.
    CHECK(got.backward[0].rfind(overflow(0, 2, 1), 0) == 0);
  }
}

TEST_CASE("SyncFreeLayer: one foreign expert from each of two peers, past the bound, is refused by both exchanges") {
  // Rank 2 is the only rank with words set, so it is named. Forward: the weights' arrival
  // (peer 1's expert, the second) is a smaller word than rank 2's own task list.
  const std::vector<int> foreign{0, 0, 2};
  const OverBound sym = one_from_each_peer<Rig<PastItsBound>>();
  CHECK(sym.foreign == foreign);
  CHECK(sym.forward[0].rfind(overflow(2, 2, 1), 0) == 0);
  // Backward: native rank 1 pulls its gradient from helper 2's second room, past it (a
  // lower rank than the helper's own task list).
  CHECK(sym.backward[0].rfind(overflow(1, 2, 2), 0) == 0);
  const OverBound coll = one_from_each_peer<CollectiveRig<PastItsBound>>();
  CHECK(coll.foreign == foreign);
  CHECK(coll.forward[0] == sym.forward[0]);
  // Backward: helper 2 packs no gradient past its room (peer 1's, the second); rank 1
  // unpacks a slot that fits the capacity and notes nothing, so rank 2 is named.
  CHECK(coll.backward[0].rfind(overflow(2, 2, 1), 0) == 0);
}
