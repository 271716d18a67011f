#pragma once
// The toy training run of llep-train (host threads) and llep-train-gpu (logical ranks of one
// GPU): the same batches, teacher, student, loss, SGD step and report for both. Only where
// the vectors live differs, and that is the `Mem` policy each front end passes:
//
//   Mem::Buf<U>                  a buffer of U in the layer's memory
//   mem.alloc<U>(n)              n elements
//   mem.put(buf, host_vector)    host -> buffer, complete on return
//   mem.get(buf) -> vector<U>    buffer -> host, after every step's work queued before it
//   Mem::span(buf) -> span<U>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "llep/layer/backward.hpp"
#include "llep/sim/routing.hpp"

namespace toy {

constexpr int P = 4, N = 16, K = 2, B = 96, D = 32, H = 48;
inline const llep::ExpertShape kShape{D, H, false};

struct Options {
  int steps = 300;
  float lr = 8.0F;
  bool check = false;
};

/// Parses [--steps S] [--lr L] [--check]; returns 0 when the run should go on, else the exit code.
inline int parse(int argc, char** argv, const char* name, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) o.steps = std::atoi(argv[++i]);
    else if (a == "--check") o.check = true;
    else if (a == "--lr" && i + 1 < argc) o.lr = static_cast<float>(std::atof(argv[++i]));
    else {
      std::fprintf(stderr, "usage: %s [--steps S] [--lr L] [--check]\n", name);
      return 2;
    }
  }
  o.steps = std::max(o.steps, 1);
  return 0;
}

struct Batch {
  std::vector<std::vector<float>> x, gates;
  std::vector<std::vector<std::int32_t>> ids;
};

/// The batch of step `step`, the same for both runs: tokens ~ U(-1, 1), skewed routing.
inline Batch batch_of(int step) {
  Batch b;
  std::mt19937_64 rng(1000 + static_cast<std::uint64_t>(step));
  std::uniform_real_distribution<float> u(-1.0F, 1.0F);
  for (int p = 0; p < P; ++p) {
    std::vector<float> x(static_cast<std::size_t>(B * D)), gates(static_cast<std::size_t>(B * K));
    std::vector<std::int32_t> ids(gates.size());
    for (float& v : x) v = u(rng);
    llep::sim::random_routing(rng(), N, K, llep::sim::Skew{1, 0.6}, std::span<std::int32_t>(ids),
                              std::span<float>(gates));
    b.x.push_back(std::move(x));
    b.gates.push_back(std::move(gates));
    b.ids.push_back(std::move(ids));
  }
  return b;
}

/// Random experts in llep's layout (experts/weight_layout.hpp), N of them back to back.
inline std::vector<float> random_experts(std::uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0F, 1.0F);
  std::vector<float> w(static_cast<std::size_t>(N) * kShape.elems());
  for (std::size_t i = 0; i < w.size(); ++i) {
    const bool gate_up = i % kShape.elems() < kShape.down_offset();
    w[i] = scale * u(rng) / std::sqrt(static_cast<float>(gate_up ? D : H));
  }
  return w;
}

struct Curve {
  std::vector<double> loss;
  llep::count_t busiest_rows = 0;      // the most rows any rank computed, max over steps
  std::size_t backward_workspace = 0;  // the most backward step memory of any rank
  double seconds_per_step = 0;
};

/// What the ranks of one run share: the loss of each rank, filled before a barrier.
struct Run {
  explicit Run(int steps) : rank_loss(P), rank_workspace(P, 0) { curve.loss.assign(static_cast<std::size_t>(steps), 0); }
  Curve curve;
  std::vector<double> rank_loss;
  std::vector<std::size_t> rank_workspace;
};

/// One rank's run: `layer` (the student, under the planner being tried) learns `teacher`
/// (a standard EP layer of fixed weights) by SGD. Each step: forward (filling a
/// ForwardHandle that keeps the experts' inputs), the loss gradient, backward (input, gate
/// and weight gradients; a helper's gradient of a spilled expert returns to its native
/// rank), then w -= lr * grad on the experts this rank holds.
template <class Mem, class Layer, class Teacher, class Tr>
void train_rank(Mem& mem, Layer& layer, Teacher& teacher, Tr& t, Run& run, const Options& o) {
  using Buf = typename Mem::template Buf<float>;
  const int p = t.rank();
  const std::size_t per_rank = static_cast<std::size_t>(N / P) * kShape.elems();
  const auto slice = [&](const std::vector<float>& all) {
    return std::vector<float>(all.begin() + static_cast<std::ptrdiff_t>(p * per_rank),
                              all.begin() + static_cast<std::ptrdiff_t>((p + 1) * per_rank));
  };
  std::vector<float> w_host = slice(random_experts(1, 1.0F));
  Buf w = mem.template alloc<float>(per_rank), teacher_w = mem.template alloc<float>(per_rank);
  mem.put(w, w_host);
  mem.put(teacher_w, slice(random_experts(2, 1.5F)));
  layer.set_native_weights(std::span<const float>(Mem::span(w)));
  teacher.set_native_weights(std::span<const float>(Mem::span(teacher_w)));

  // What backward needs from forward, in memory this rank owns; with the experts' inputs
  // kept, backward does not dispatch the tokens again.
  auto memory = mem.template alloc<std::byte>(Layer::handle_bytes(layer.limits(B), true));
  llep::ForwardHandle<float> handle(Mem::span(memory), true);
  const std::size_t rows = static_cast<std::size_t>(B) * D, pairs = static_cast<std::size_t>(B) * K;
  Buf x = mem.template alloc<float>(rows), gates = mem.template alloc<float>(pairs);
  auto ids = mem.template alloc<std::int32_t>(pairs);
  Buf out = mem.template alloc<float>(rows), target = mem.template alloc<float>(rows);
  Buf grad_out = mem.template alloc<float>(rows), grad_x = mem.template alloc<float>(rows);
  Buf grad_gates = mem.template alloc<float>(pairs), grad_w = mem.template alloc<float>(per_rank);
  std::vector<float> g_host(rows);
  for (int s = 0; s < o.steps; ++s) {
    const Batch b = batch_of(s);
    mem.put(x, b.x[static_cast<std::size_t>(p)]);
    mem.put(gates, b.gates[static_cast<std::size_t>(p)]);
    mem.put(ids, b.ids[static_cast<std::size_t>(p)]);
    const std::span<const float> xs = Mem::span(x), gs = Mem::span(gates);
    const std::span<const std::int32_t> is = Mem::span(ids);
    teacher.forward(xs, is, gs, Mem::span(target));
    const llep::StepReport& r = layer.forward(xs, is, gs, Mem::span(out), handle);
    // d loss / d out for loss = sum |out - target|^2 / (2 P B).
    const std::vector<float> o_host = mem.get(out), t_host = mem.get(target);
    double loss = 0;
    for (std::size_t i = 0; i < rows; ++i) {
      const float e = o_host[i] - t_host[i];
      loss += 0.5 * double(e) * e / (P * B);
      g_host[i] = e / static_cast<float>(P * B);
    }
    mem.put(grad_out, g_host);
    run.rank_loss[static_cast<std::size_t>(p)] = loss;
    const auto br = llep::backward(layer, handle,
                                   llep::BackwardArgs<float, float, float>{{}, gs, Mem::span(grad_out), Mem::span(grad_x),
                                                                           Mem::span(grad_gates), Mem::span(grad_w),
                                                                           llep::GradMode::overwrite});
    const std::vector<float> gw = mem.get(grad_w);
    for (std::size_t i = 0; i < per_rank; ++i) w_host[i] -= o.lr * gw[i];
    mem.put(w, w_host);
    t.barrier();  // every rank's loss of step s is written
    if (p == 0) {
      double total = 0;
      for (double l : run.rank_loss) total += l;
      run.curve.loss[static_cast<std::size_t>(s)] = total;
      for (int q = 0; q < P; ++q) run.curve.busiest_rows = std::max(run.curve.busiest_rows, r.rows(q));
    }
    auto& ws = run.rank_workspace[static_cast<std::size_t>(p)];
    ws = std::max(ws, br.workspace_bytes);
    t.barrier();  // rank_loss is read before the next step writes it
  }
}

/// Times `body` (which runs every rank's train_rank on `run`) and fills the curve's totals.
template <class F>
Curve timed(Run& run, const Options& o, F&& body) {
  const auto start = std::chrono::steady_clock::now();
  body();
  run.curve.backward_workspace = *std::max_element(run.rank_workspace.begin(), run.rank_workspace.end());
  run.curve.seconds_per_step =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / o.steps;
  return run.curve;
}

/// Prints both loss curves and the busiest rank; returns the exit code (1 when --check fails).
inline int report(const Curve& ep, const Curve& ll, const Options& o, const char* where) {
  std::printf("toy MoE: P = %d ranks (%s), N = %d experts, K = %d, D = %d, H = %d, B = %d tokens/rank,\n"
              "skewed routing (60%% of first choices on expert 0), SGD lr = %.2f\n\n",
              P, where, N, K, D, H, B, static_cast<double>(o.lr));
  std::printf("%6s  %14s  %14s  %10s\n", "step", "loss EP", "loss LLEP", "rel. diff");
  double worst = 0;
  for (int s = 0; s < o.steps; ++s) {
    const double a = ep.loss[static_cast<std::size_t>(s)], b = ll.loss[static_cast<std::size_t>(s)];
    const double rel = std::abs(a - b) / std::max(a, 1e-30);
    worst = std::max(worst, rel);
    if (s < 5 || s % std::max(1, o.steps / 10) == 0 || s == o.steps - 1)
      std::printf("%6d  %14.8f  %14.8f  %10.2e\n", s, a, b, rel);
  }
  std::printf("\n%-28s  %12s  %12s\n", "", "standard EP", "LLEP");
  std::printf("%-28s  %12lld  %12lld\n", "busiest rank's rows (max)", static_cast<long long>(ep.busiest_rows),
              static_cast<long long>(ll.busiest_rows));
  std::printf("%-28s  %12zu  %12zu\n", "backward memory, bytes", ep.backward_workspace, ll.backward_workspace);
  std::printf("%-28s  %12.3f  %12.3f\n", "ms per step (fwd + bwd)", 1e3 * ep.seconds_per_step,
              1e3 * ll.seconds_per_step);
  std::printf("\nlargest relative loss difference over %d steps: %.2e; loss %.6f -> %.6f\n", o.steps, worst,
              ll.loss.front(), ll.loss.back());
  // The two runs differ only in float summation order: 1e-4 relative is far above that
  // (~1e-6 here), far below a lost gradient (which changes the loss at the first steps).
  const bool agree = worst <= 1e-4;
  // Batches differ, so compare the means of the first and last five steps.
  auto mean5 = [&](std::size_t from) {
    double m = 0;
    for (std::size_t i = from; i < from + 5 && i < ll.loss.size(); ++i) m += ll.loss[i];
    return m / static_cast<double>(std::min<std::size_t>(5, ll.loss.size() - from));
  };
  const bool learned = mean5(ll.loss.size() > 5 ? ll.loss.size() - 5 : 0) < 0.9 * mean5(0);
  const bool balanced = ll.busiest_rows < ep.busiest_rows;
  if (o.check && !(agree && learned && balanced)) {
    std::printf("CHECK FAILED: agree %d, learned %d, LLEP's busiest rank lighter %d\n", agree, learned, balanced);
    return 1;
  }
  return 0;
}

}  // namespace toy
