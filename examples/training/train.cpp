// training: a toy MoE layer trained by SGD on host threads, under standard EP and under
// LLEP, from the same initial weights on the same batches. The routing is fixed and skewed
// (60% of first choices on expert 0), as when balancing losses are off or weak. The student
// layer learns a fixed random teacher MoE: loss = mean over tokens of |out - target|^2 / 2.
//
// Each step, on every rank: forward (filling a ForwardHandle), the loss gradient, backward (input, gate and
// weight gradients; a helper's gradient of a spilled expert returns to its native rank),
// then w -= lr * grad on the experts the rank holds. Both runs print their loss: it must
// agree at every step (the two plans sum the same gradients in different orders, so only
// float rounding differs), while LLEP's busiest rank computes fewer rows.
//
//   llep-train [--steps S] [--lr L] [--check]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "llep/layer/backward.hpp"
#include "llep/layer/host_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/routing.hpp"

namespace {

constexpr int P = 4, N = 16, K = 2, B = 96, D = 32, H = 48;
float kLearningRate = 8.0F;

struct Batch {
  std::vector<std::vector<float>> x, gates;
  std::vector<std::vector<std::int32_t>> ids;
};

// The batch of step `s`, the same for both runs: tokens ~ U(-1, 1), skewed routing.
Batch batch_of(int step) {
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

// Random experts in llep's layout (experts/weight_layout.hpp), N of them back to back.
std::vector<float> random_experts(std::uint64_t seed, float scale) {
  const llep::ExpertShape shape{D, H, false};
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0F, 1.0F);
  std::vector<float> w(static_cast<std::size_t>(N) * shape.elems());
  for (std::size_t i = 0; i < w.size(); ++i) {
    const bool gate_up = i % shape.elems() < shape.down_offset();
    w[i] = scale * u(rng) / std::sqrt(static_cast<float>(gate_up ? D : H));
  }
  return w;
}

struct Curve {
  std::vector<double> loss;
  llep::count_t busiest_rows = 0;           // the most rows any rank computed, max over steps
  std::size_t backward_workspace = 0;       // the most backward step memory of any rank
  std::size_t grad_bytes = 0;               // weight-gradient bytes returned, all ranks and steps
  double seconds_per_step = 0;
};

template <class Plnr>
Curve train(Plnr planner, int steps) {
  using Layer = llep::HostMoeLayer<Plnr>;
  const llep::Topology topo(P, N);
  const llep::ExpertShape shape{D, H, false};
  const std::size_t per_rank = static_cast<std::size_t>(N / P) * shape.elems();
  std::vector<float> student = random_experts(1, 1.0F);
  const std::vector<float> teacher = random_experts(2, 1.5F);
  Curve c;
  c.loss.assign(static_cast<std::size_t>(steps), 0.0);
  std::vector<double> rank_loss(P);
  std::vector<std::size_t> rank_workspace(P, 0);
  llep::HostGroup group(P);
  const auto start = std::chrono::steady_clock::now();
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    Layer layer(topo, K, planner, llep::HostSwiGlu<float>(shape), t);
    llep::HostMoeLayer<llep::StandardEp> teacher_layer(topo, K, llep::StandardEp{}, llep::HostSwiGlu<float>(shape), t);
    float* w = student.data() + static_cast<std::size_t>(p) * per_rank;  // this rank's experts
    layer.set_native_weights(std::span<const float>(w, per_rank));
    teacher_layer.set_native_weights(std::span<const float>(teacher.data() + static_cast<std::size_t>(p) * per_rank,
                                                            per_rank));
    // What backward needs from forward, in memory this rank owns; with the experts' inputs
    // kept, backward does not dispatch the tokens again.
    std::vector<std::byte> memory(Layer::handle_bytes(layer.limits(B), true));
    llep::ForwardHandle<float> handle(memory, true);
    std::vector<float> out(B * D), target(B * D), grad_out(B * D), grad_x(B * D), grad_gates(B * K), grad_w(per_rank);
    for (int s = 0; s < steps; ++s) {
      const Batch b = batch_of(s);
      const std::span<const float> x(b.x[static_cast<std::size_t>(p)]), gates(b.gates[static_cast<std::size_t>(p)]);
      const std::span<const std::int32_t> ids(b.ids[static_cast<std::size_t>(p)]);
      teacher_layer.forward(x, ids, gates, std::span<float>(target));
      const llep::StepReport& r = layer.forward(x, ids, gates, std::span<float>(out), handle);
      // d loss / d out for loss = sum |out - target|^2 / (2 P B).
      double loss = 0;
      for (std::size_t i = 0; i < out.size(); ++i) {
        const float e = out[i] - target[i];
        loss += 0.5 * double(e) * e / (P * B);
        grad_out[i] = e / static_cast<float>(P * B);
      }
      rank_loss[static_cast<std::size_t>(p)] = loss;
      const auto br = llep::backward(layer, handle,
                                     llep::BackwardArgs<float, float, float>{{}, gates, grad_out, grad_x, grad_gates,
                                                                             grad_w, llep::GradMode::overwrite});
      for (std::size_t i = 0; i < grad_w.size(); ++i) w[i] -= kLearningRate * grad_w[i];
      t.barrier();  // every rank's loss of step s is written
      if (p == 0) {
        double total = 0;
        for (double l : rank_loss) total += l;
        c.loss[static_cast<std::size_t>(s)] = total;
        for (int q = 0; q < P; ++q) c.busiest_rows = std::max(c.busiest_rows, r.rows(q));
      }
      auto& ws = rank_workspace[static_cast<std::size_t>(p)];
      ws = std::max(ws, br.workspace_bytes);
      t.barrier();  // rank_loss is read before the next step writes it
    }
  });
  c.backward_workspace = *std::max_element(rank_workspace.begin(), rank_workspace.end());
  c.seconds_per_step = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / steps;
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 300;
  bool check = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc) steps = std::atoi(argv[++i]);
    else if (a == "--check") check = true;
    else if (a == "--lr" && i + 1 < argc) kLearningRate = static_cast<float>(std::atof(argv[++i]));
    else {
      std::fprintf(stderr, "usage: llep-train [--steps S] [--lr L] [--check]\n");
      return 2;
    }
  }
  if (steps < 1) steps = 1;
  const Curve ep = train(llep::StandardEp{}, steps);
  const Curve ll = train(llep::LeastLoaded{1.0, 8}, steps);

  std::printf("toy MoE: P = %d ranks (host threads), N = %d experts, K = %d, D = %d, H = %d, B = %d tokens/rank,\n"
              "skewed routing (60%% of first choices on expert 0), SGD lr = %.2f\n\n",
              P, N, K, D, H, B, static_cast<double>(kLearningRate));
  std::printf("%6s  %14s  %14s  %10s\n", "step", "loss EP", "loss LLEP", "rel. diff");
  double worst = 0;
  for (int s = 0; s < steps; ++s) {
    const double a = ep.loss[static_cast<std::size_t>(s)], b = ll.loss[static_cast<std::size_t>(s)];
    const double rel = std::abs(a - b) / std::max(a, 1e-30);
    worst = std::max(worst, rel);
    if (s < 5 || s % std::max(1, steps / 10) == 0 || s == steps - 1)
      std::printf("%6d  %14.8f  %14.8f  %10.2e\n", s, a, b, rel);
  }
  std::printf("\n%-28s  %12s  %12s\n", "", "standard EP", "LLEP");
  std::printf("%-28s  %12lld  %12lld\n", "busiest rank's rows (max)", static_cast<long long>(ep.busiest_rows),
              static_cast<long long>(ll.busiest_rows));
  std::printf("%-28s  %12zu  %12zu\n", "backward memory, bytes", ep.backward_workspace, ll.backward_workspace);
  std::printf("%-28s  %12.3f  %12.3f\n", "ms per step (fwd + bwd)", 1e3 * ep.seconds_per_step,
              1e3 * ll.seconds_per_step);
  std::printf("\nlargest relative loss difference over %d steps: %.2e; loss %.6f -> %.6f\n", steps, worst,
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
  if (check && !(agree && learned && balanced)) {
    std::printf("CHECK FAILED: agree %d, learned %d, LLEP's busiest rank lighter %d\n", agree, learned, balanced);
    return 1;
  }
  return 0;
}
