#pragma once
// An independent, single-process dense MoE in double: the reference the library's expert
// functors and layers are tested against. It shares no math with the library (its own
// activations, its own matrix products, its own weight shapes); only packed() uses
// llep::pack_expert, to hand the same weights to the library in its serialised layout.
// backward() gives the analytic gradients of forward(), derived by hand and written out
// per row and per weight in the same textbook order.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "llep/experts/weight_layout.hpp"

namespace dense {

enum class Act { silu, gpt_oss };

struct Expert {
  std::vector<double> w_gate, w_up;  // [D x H] row-major each
  std::vector<double> w_down;        // [H x D]
  std::vector<double> b_gate, b_up;  // [H]; empty for silu
  std::vector<double> b_down;        // [D]; empty for silu
};

/// Gradients of a dense MoE: of the tokens, of the gates, and of every expert's weights
/// (an Expert of the same shapes; biases empty for silu).
struct Grads {
  std::vector<double> hidden;  // [B x D]
  std::vector<double> gates;   // [B x K]
  std::vector<Expert> experts;
};

struct Moe {
  int experts = 0, hidden = 0, intermediate = 0;
  Act act = Act::silu;
  double limit = 7.0, alpha = 1.702;
  std::vector<Expert> w;

  /// Weights ~ U(-1, 1) / sqrt(fan_in); biases ~ U(-0.1, 0.1) for gpt_oss, none for silu.
  static Moe random(int experts, int hidden, int intermediate, Act act, std::uint64_t seed) {
    if (experts <= 0 || hidden <= 0 || intermediate <= 0)
      throw std::invalid_argument("dense::Moe::random: experts, hidden and intermediate must be > 0");
    Moe m;
    m.experts = experts;
    m.hidden = hidden;
    m.intermediate = intermediate;
    m.act = act;
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> u(-1.0, 1.0);
    const auto D = static_cast<std::size_t>(hidden), H = static_cast<std::size_t>(intermediate);
    auto fill = [&](std::size_t n, double scale) {
      std::vector<double> v(n);
      for (double& a : v) a = u(rng) * scale;
      return v;
    };
    for (int e = 0; e < experts; ++e) {
      Expert x;
      x.w_gate = fill(D * H, 1.0 / std::sqrt(static_cast<double>(D)));
      x.w_up = fill(D * H, 1.0 / std::sqrt(static_cast<double>(D)));
      x.w_down = fill(H * D, 1.0 / std::sqrt(static_cast<double>(H)));
      if (act == Act::gpt_oss) {
        x.b_gate = fill(H, 0.1);
        x.b_up = fill(H, 0.1);
        x.b_down = fill(D, 0.1);
      }
      m.w.push_back(std::move(x));
    }
    return m;
  }

  /// The gated activation, written out directly. Comparisons are arranged so that a NaN
  /// passes through (a NaN compares false and keeps its value).
  [[nodiscard]] double activate(double gate, double up) const {
    if (act == Act::silu) return gate / (1.0 + std::exp(-gate)) * up;
    if (gate > limit) gate = limit;
    if (up > limit) up = limit;
    if (up < -limit) up = -limit;
    const double sigmoid = 1.0 / (1.0 + std::exp(-alpha * gate));
    return (up + 1.0) * gate * sigmoid;
  }

  /// d activate / d gate and d activate / d up. A clamp that is active passes nothing; at
  /// the limit itself the value is not clamped (forward's `>`), so it passes.
  void activate_derivatives(double gate, double up, double& d_gate, double& d_up) const {
    if (act == Act::silu) {
      const double sig = 1.0 / (1.0 + std::exp(-gate));
      d_gate = up * (sig + gate * sig * (1.0 - sig));  // product rule on gate * sig(gate)
      d_up = gate * sig;
      return;
    }
    const bool gate_clamped = gate > limit, up_clamped = up > limit || up < -limit;
    const double g = gate_clamped ? limit : gate, u = up_clamped ? (up > 0 ? limit : -limit) : up;
    const double sig = 1.0 / (1.0 + std::exp(-alpha * g));
    d_gate = gate_clamped ? 0.0 : (u + 1.0) * (sig + g * alpha * sig * (1.0 - sig));
    d_up = up_clamped ? 0.0 : g * sig;
  }

  /// An expert of the same shape with every weight zero (a gradient accumulator).
  [[nodiscard]] Expert zero_expert() const {
    const auto D = static_cast<std::size_t>(hidden), H = static_cast<std::size_t>(intermediate);
    const bool bias = act == Act::gpt_oss;
    Expert z;
    z.w_gate.assign(D * H, 0.0);
    z.w_up.assign(D * H, 0.0);
    z.w_down.assign(H * D, 0.0);
    if (bias) {
      z.b_gate.assign(H, 0.0);
      z.b_up.assign(H, 0.0);
      z.b_down.assign(D, 0.0);
    }
    return z;
  }

  /// Backward of expert_forward on one row: returns d x for upstream gradient dy (D values)
  /// and adds the row's weight gradients into `grad`.
  std::vector<double> expert_backward(int e, std::span<const double> x, std::span<const double> dy,
                                      Expert& grad) const {
    check_expert(e);
    const auto D = static_cast<std::size_t>(hidden), H = static_cast<std::size_t>(intermediate);
    if (x.size() != D || dy.size() != D) throw std::invalid_argument("dense::Moe::expert_backward: need D values");
    const Expert& ex = w[static_cast<std::size_t>(e)];
    const bool bias = act == Act::gpt_oss;
    std::vector<double> dx(D, 0.0);
    for (std::size_t j = 0; j < H; ++j) {
      double g = bias ? ex.b_gate[j] : 0.0, u = bias ? ex.b_up[j] : 0.0;
      for (std::size_t k = 0; k < D; ++k) {
        g += x[k] * ex.w_gate[k * H + j];
        u += x[k] * ex.w_up[k * H + j];
      }
      const double h = activate(g, u);
      double dh = 0.0;  // d loss / d h_j = sum_d dy_d W_down[j][d]
      for (std::size_t d = 0; d < D; ++d) {
        dh += dy[d] * ex.w_down[j * D + d];
        grad.w_down[j * D + d] += h * dy[d];
      }
      double d_gate = 0.0, d_up = 0.0;
      activate_derivatives(g, u, d_gate, d_up);
      const double dg = dh * d_gate, du = dh * d_up;
      for (std::size_t k = 0; k < D; ++k) {
        grad.w_gate[k * H + j] += x[k] * dg;
        grad.w_up[k * H + j] += x[k] * du;
        dx[k] += dg * ex.w_gate[k * H + j] + du * ex.w_up[k * H + j];
      }
      if (bias) {
        grad.b_gate[j] += dg;
        grad.b_up[j] += du;
      }
    }
    if (bias)
      for (std::size_t d = 0; d < D; ++d) grad.b_down[d] += dy[d];
    return dx;
  }

  /// Gradients of forward(x, ids, gates, K) for upstream gradient grad_out [B x D]:
  /// d x[t] = sum_k gate * expert_backward(..., grad_out[t]); d gate(t, k) =
  /// <grad_out[t], expert(id, x[t])> (the expert's output includes its down bias); expert
  /// weight gradients summed over every (t, k) routed to them.
  [[nodiscard]] Grads backward(std::span<const double> x, std::span<const std::int32_t> ids,
                               std::span<const double> gates, int K, std::span<const double> grad_out) const {
    const auto D = static_cast<std::size_t>(hidden);
    if (K <= 0 || x.size() % D != 0 || grad_out.size() != x.size())
      throw std::invalid_argument("dense::Moe::backward: bad K, x or grad_out size");
    const std::size_t B = x.size() / D, Kz = static_cast<std::size_t>(K);
    if (ids.size() != B * Kz || gates.size() != B * Kz)
      throw std::invalid_argument("dense::Moe::backward: ids and gates must have B x K elements");
    Grads out;
    out.hidden.assign(B * D, 0.0);
    out.gates.assign(B * Kz, 0.0);
    for (int e = 0; e < experts; ++e) out.experts.push_back(zero_expert());
    std::vector<double> dy(D);
    for (std::size_t t = 0; t < B; ++t)
      for (std::size_t k = 0; k < Kz; ++k) {
        const int e = ids[t * Kz + k];
        const auto xt = x.subspan(t * D, D);
        const auto gt = grad_out.subspan(t * D, D);
        const auto y = expert_forward(e, xt);
        double dgate = 0.0;
        for (std::size_t d = 0; d < D; ++d) {
          dgate += gt[d] * y[d];
          dy[d] = gates[t * Kz + k] * gt[d];
        }
        out.gates[t * Kz + k] = dgate;
        const auto dx = expert_backward(e, xt, dy, out.experts[static_cast<std::size_t>(e)]);
        for (std::size_t d = 0; d < D; ++d) out.hidden[t * D + d] += dx[d];
      }
    return out;
  }

  /// One expert on one token row (D values) -> D values.
  [[nodiscard]] std::vector<double> expert_forward(int e, std::span<const double> x) const {
    check_expert(e);
    const auto D = static_cast<std::size_t>(hidden), H = static_cast<std::size_t>(intermediate);
    if (x.size() != D) throw std::invalid_argument("dense::Moe::expert_forward: x must have D elements");
    const Expert& ex = w[static_cast<std::size_t>(e)];
    const bool bias = act == Act::gpt_oss;
    std::vector<double> h(H), out(D);
    for (std::size_t j = 0; j < H; ++j) {  // textbook j-k order: independent of the library's
      double g = bias ? ex.b_gate[j] : 0.0, u = bias ? ex.b_up[j] : 0.0;
      for (std::size_t k = 0; k < D; ++k) {
        g += x[k] * ex.w_gate[k * H + j];
        u += x[k] * ex.w_up[k * H + j];
      }
      h[j] = activate(g, u);
    }
    for (std::size_t d = 0; d < D; ++d) {
      double o = bias ? ex.b_down[d] : 0.0;
      for (std::size_t j = 0; j < H; ++j) o += h[j] * ex.w_down[j * D + d];
      out[d] = o;
    }
    return out;
  }

  /// tokens [B x D], ids [B x K], gates [B x K] -> out [B x D] = sum_k gate * expert(id, x).
  [[nodiscard]] std::vector<double> forward(std::span<const double> x, std::span<const std::int32_t> ids,
                                            std::span<const double> gates, int K) const {
    const auto D = static_cast<std::size_t>(hidden);
    if (K <= 0 || x.size() % D != 0) throw std::invalid_argument("dense::Moe::forward: bad K or x size");
    const std::size_t B = x.size() / D, Kz = static_cast<std::size_t>(K);
    if (ids.size() != B * Kz || gates.size() != B * Kz)
      throw std::invalid_argument("dense::Moe::forward: ids and gates must have B x K elements");
    std::vector<double> out(B * D, 0.0);
    for (std::size_t t = 0; t < B; ++t)
      for (std::size_t k = 0; k < Kz; ++k) {
        const auto y = expert_forward(ids[t * Kz + k], x.subspan(t * D, D));
        for (std::size_t d = 0; d < D; ++d) out[t * D + d] += gates[t * Kz + k] * y[d];
      }
    return out;
  }

  /// Expert e serialised for the library (llep::pack_expert, non-interleaved), cast to T.
  template <class T>
  [[nodiscard]] std::vector<T> packed(int e) const {
    check_expert(e);
    return packed_of<T>(w[static_cast<std::size_t>(e)]);
  }

  /// Any weights of this MoE's expert shape (a gradient too) in the library's layout.
  template <class T>
  [[nodiscard]] std::vector<T> packed_of(const Expert& ex) const {
    const auto D = static_cast<std::size_t>(hidden), H = static_cast<std::size_t>(intermediate);
    const bool bias = act == Act::gpt_oss;
    std::vector<T> gu(D * 2 * H), down(H * D), bgu(bias ? 2 * H : 0), bdown(bias ? D : 0);
    for (std::size_t k = 0; k < D; ++k)
      for (std::size_t j = 0; j < H; ++j) {
        gu[k * 2 * H + j] = static_cast<T>(ex.w_gate[k * H + j]);
        gu[k * 2 * H + H + j] = static_cast<T>(ex.w_up[k * H + j]);
      }
    for (std::size_t i = 0; i < H * D; ++i) down[i] = static_cast<T>(ex.w_down[i]);
    if (bias) {
      for (std::size_t j = 0; j < H; ++j) {
        bgu[j] = static_cast<T>(ex.b_gate[j]);
        bgu[H + j] = static_cast<T>(ex.b_up[j]);
      }
      for (std::size_t d = 0; d < D; ++d) bdown[d] = static_cast<T>(ex.b_down[d]);
    }
    const llep::ExpertShape shape{hidden, intermediate, bias};
    std::vector<T> out(shape.elems());
    llep::pack_expert<T>(shape, gu, down, bgu, bdown, out);
    return out;
  }

  /// The native experts of rank r (experts r*N/P .. (r+1)*N/P - 1), packed back to back.
  template <class T>
  [[nodiscard]] std::vector<T> packed_rank(int rank, int ranks) const {
    if (ranks <= 0 || experts % ranks != 0 || rank < 0 || rank >= ranks)
      throw std::invalid_argument("dense::Moe::packed_rank: need 0 <= rank < ranks and ranks dividing experts");
    const int M = experts / ranks;
    std::vector<T> out;
    for (int e = rank * M; e < (rank + 1) * M; ++e) {
      const auto one = packed<T>(e);
      out.insert(out.end(), one.begin(), one.end());
    }
    return out;
  }

 private:
  void check_expert(int e) const {
    if (e < 0 || e >= experts)
      throw std::out_of_range("dense::Moe: expert " + std::to_string(e) + " outside [0, " + std::to_string(experts) +
                              ")");
  }
};

}  // namespace dense
