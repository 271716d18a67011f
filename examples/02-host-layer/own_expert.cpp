// 02: a whole MoE layer on the host, with your own expert functor. P ranks run as threads
// of this process (HostThreads); each holds N / P experts and routes its own tokens. The
// expert is a two-layer ReLU MLP, not llep's SwiGLU: MoeLayer only needs the members
// below. The program checks the layer's output against a direct computation.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <span>
#include <vector>

#include "llep/exec/host.hpp"
#include "llep/layer/moe_layer.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/host_threads.hpp"

// One expert: y = relu(x W1) W2, W1 [D x H], W2 [H x D], row-major.
class ReluMlp {
 public:
  using value_type = float;

  ReluMlp(int d, int h) : d_(d), h_(h) {}
  [[nodiscard]] int hidden() const { return d_; }
  [[nodiscard]] int intermediate() const { return h_; }

  // One expert's weights, serialised as W1 then W2. A weight transfer moves exactly these
  // elements (weight_bytes() bytes) from the expert's rank to a helper rank.
  [[nodiscard]] std::size_t weight_elems() const { return 2 * D() * H(); }
  [[nodiscard]] std::size_t weight_bytes() const { return weight_elems() * sizeof(float); }
  [[nodiscard]] std::size_t row_bytes() const { return D() * sizeof(float); }

  // Scratch the layer must hand to compute: here one row of hidden activations.
  [[nodiscard]] std::size_t scratch_bytes(llep::count_t max_task_rows, llep::count_t /*total_rows*/) const {
    return max_task_rows > 0 ? H() * sizeof(float) : 0;
  }

  // Runs every task: t.rows rows of t.in (rows x D) through the expert whose weights start
  // at t.weights, into t.out. The layer calls this twice a step: first the experts this
  // rank holds, then the foreign ones, whose weights arrived meanwhile.
  void compute(llep::HostExec& /*exec*/, std::span<const llep::ExpertTask<float>> tasks, void* scratch) const {
    auto* h = static_cast<float*>(scratch);
    for (const llep::ExpertTask<float>& t : tasks)
      for (llep::count_t r = 0; r < t.rows; ++r) {
        const float* x = t.in + static_cast<std::size_t>(r) * D();
        float* y = t.out + static_cast<std::size_t>(r) * D();
        mlp(t.weights, x, h, y);
      }
  }

  // The math of one row, shared by compute and the check in main.
  template <class A>
  void mlp(const float* w, const float* x, A* h, A* y) const {
    const float* w2 = w + D() * H();
    for (std::size_t j = 0; j < H(); ++j) {
      A s = 0;
      for (std::size_t k = 0; k < D(); ++k) s += A(x[k]) * A(w[k * H() + j]);
      h[j] = std::max(s, A(0));
    }
    for (std::size_t d = 0; d < D(); ++d) {
      A s = 0;
      for (std::size_t j = 0; j < H(); ++j) s += h[j] * A(w2[j * D() + d]);
      y[d] = s;
    }
  }

 private:
  [[nodiscard]] std::size_t D() const { return static_cast<std::size_t>(d_); }
  [[nodiscard]] std::size_t H() const { return static_cast<std::size_t>(h_); }
  int d_, h_;
};
// MoeLayer requires this concept; asserting it here gives the clearest error.
static_assert(llep::ExpertCompute<ReluMlp, llep::HostExec>);

int main() {
  constexpr int P = 4, N = 16, K = 2, B = 64, D = 32, H = 64;
  const llep::Topology topo(P, N);  // expert e lives on rank e / (N / P)
  const ReluMlp expert(D, H);

  // Every expert's weights, and each rank's tokens, routed with a skew: every other token
  // picks expert 0 or 1 (both on rank 0) first.
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0F, 0.2F);
  std::vector<float> weights(static_cast<std::size_t>(N) * expert.weight_elems());
  for (float& w : weights) w = normal(rng);
  std::vector<std::vector<float>> x(P), gates(P), out(P);
  std::vector<std::vector<std::int32_t>> ids(P);
  std::uniform_int_distribution<int> any(2, N - 1);
  for (int p = 0; p < P; ++p) {
    for (int i = 0; i < B * D; ++i) x[p].push_back(normal(rng));
    for (int b = 0; b < B; ++b) {
      const int first = b % 2 == 0 ? b % 4 / 2 : any(rng);
      ids[p].insert(ids[p].end(), {first, (first + 1 + b % (N - 1)) % N});  // two distinct experts
      gates[p].insert(gates[p].end(), {0.7F, 0.3F});
    }
    out[p].resize(x[p].size());
  }

  // The layer: one per rank, each on its own thread, all in one HostGroup.
  using Layer = llep::MoeLayer<llep::ExactCounts, llep::LeastLoaded, llep::HostThreads, ReluMlp, llep::HostExec>;
  const llep::LeastLoaded planner{.alpha = 1.0, .min_tokens_per_gemm = 8};
  std::vector<llep::StepReport> reports(P);
  llep::HostGroup group(P);
  llep::run_ranks(group, [&](llep::HostThreads& t) {
    const int p = t.rank();
    Layer layer(topo, K, planner, expert, t);
    // This rank's experts, back to back in ascending id (not copied: keep them alive).
    const std::size_t per_rank = static_cast<std::size_t>(N / P) * expert.weight_elems();
    layer.set_native_weights(std::span<const float>(weights).subspan(static_cast<std::size_t>(p) * per_rank, per_rank));
    reports[p] = layer.forward(std::span<const float>(x[p]), std::span<const std::int32_t>(ids[p]),
                               std::span<const float>(gates[p]), std::span<float>(out[p]));
  });

  const llep::StepReport& r = reports[0];
  std::printf("%s: imbalance %.2f -> %.2f, %zu weight transfers; rows per rank:", r.policy.c_str(),
              r.imbalance_before, r.imbalance_after, r.weight_transfers);
  for (int p = 0; p < P; ++p) std::printf(" %lld", static_cast<long long>(r.rows(p)));

  // The same MoE computed directly: out = sum over k of gate_k * expert_{id_k}(x).
  double worst = 0, scale = 0;
  std::vector<double> h(H), y(D);
  for (int p = 0; p < P; ++p)
    for (int b = 0; b < B; ++b)
      for (int d = 0; d < D; ++d) {
        double want = 0;
        for (int k = 0; k < K; ++k) {
          const auto e = static_cast<std::size_t>(ids[p][b * K + k]);
          expert.mlp(weights.data() + e * expert.weight_elems(), &x[p][b * D], h.data(), y.data());
          want += gates[p][b * K + k] * y[d];
        }
        worst = std::max(worst, std::abs(want - out[p][b * D + d]));
        scale = std::max(scale, std::abs(want));
      }
  const bool ok = worst <= 1e-4 * scale;  // float sums over D and H terms
  std::printf("\nmax |layer - direct| = %.2e (output scale %.2f): %s\n", worst, scale, ok ? "agree" : "DIFFER");
  return ok ? 0 : 1;
}
