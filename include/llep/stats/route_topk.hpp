#pragma once
// route_topk: a minimal router for engines that use a load-balancing bias (AuxFreeBias).
// Per token, from N logits x_e:
//   scores  s_e = sigmoid(x_e)                      (GateNorm::sigmoid, DeepSeek-V3)
//           s_e = exp(x_e - max x) / sum exp(. - max x)   (GateNorm::softmax)
//   select  the K experts with the largest s_e + b_e (ties: the lower expert id first)
//   gates   g_k = s_{i_k} / sum_j s_{i_j}           (normalised over the K selected)
// The bias only chooses the experts; the gates are computed from the unbiased scores, so a
// bias never changes the gate of an expert that is selected. This is DeepSeek-V3's routing
// without its group-limited selection; its routed scaling factor is the engine's to apply.
// route_token is the per-token routine shared by the host loop below and the CUDA kernel
// in route_topk.cuh.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <span>

#include "llep/core/config.hpp"
#include "llep/core/error.hpp"

namespace llep {

enum class GateNorm { sigmoid, softmax };

inline std::ostream& operator<<(std::ostream& os, GateNorm n) {
  return os << (n == GateNorm::sigmoid ? "sigmoid" : "softmax");
}

namespace detail {

// Score of expert e; `shift` and `inv_sum` are the softmax's (unused by sigmoid).
LLEP_HOST_DEVICE inline float route_score(float x, GateNorm norm, float shift, float inv_sum) {
  return norm == GateNorm::sigmoid ? 1.0f / (1.0f + expf(-x)) : expf(x - shift) * inv_sum;
}

}  // namespace detail

/// One token: `logits` and `bias` (nullptr = no bias) hold N entries; writes K ids and K
/// gates. Recomputes scores instead of keeping N of them, so it needs no scratch memory.
LLEP_HOST_DEVICE inline void route_token(const float* logits, const float* bias, int experts, int top_k,
                                         GateNorm norm, std::int32_t* ids, float* gates) {
  float shift = 0.0f, inv_sum = 0.0f;
  if (norm == GateNorm::softmax) {
    shift = logits[0];
    for (int e = 1; e < experts; ++e) shift = logits[e] > shift ? logits[e] : shift;
    float sum = 0.0f;
    for (int e = 0; e < experts; ++e) sum += expf(logits[e] - shift);
    inv_sum = 1.0f / sum;
  }
  float total = 0.0f;
  for (int k = 0; k < top_k; ++k) {
    int best = -1;
    float best_value = 0.0f;
    for (int e = 0; e < experts; ++e) {
      bool taken = false;
      for (int j = 0; j < k; ++j) taken = taken || ids[j] == e;
      if (taken) continue;
      const float v = detail::route_score(logits[e], norm, shift, inv_sum) + (bias != nullptr ? bias[e] : 0.0f);
      if (best < 0 || v > best_value) {
        best = e;
        best_value = v;
      }
    }
    ids[k] = best;
    gates[k] = detail::route_score(logits[best], norm, shift, inv_sum);
    total += gates[k];
  }
  for (int k = 0; k < top_k; ++k) gates[k] /= total;
}

namespace detail {
inline void check_route_shape(std::size_t logits, std::size_t bias, int experts, int top_k, std::size_t ids,
                              std::size_t gates) {
  LLEP_EXPECTS(experts > 0, "route_topk: N = ", experts, " experts; must be > 0");
  LLEP_EXPECTS(top_k > 0 && top_k <= experts, "route_topk: K = ", top_k, " must be in [1, N = ", experts, "]");
  LLEP_EXPECTS(logits % static_cast<std::size_t>(experts) == 0, "route_topk: ", logits,
               " logits are not a whole number of tokens of N = ", experts);
  LLEP_EXPECTS(bias == 0 || bias == static_cast<std::size_t>(experts), "route_topk: the bias has ", bias,
               " entries; it must have N = ", experts, " (or none)");
  const std::size_t pairs = logits / static_cast<std::size_t>(experts) * static_cast<std::size_t>(top_k);
  LLEP_EXPECTS(ids == pairs && gates == pairs, "route_topk: ids has ", ids, " and gates ", gates,
               " entries; B x K = ", pairs);
}
}  // namespace detail

/// Routes B = logits.size() / N tokens on the host. `bias` is empty or N entries (e.g.
/// AuxFreeBias::biases()); `ids` and `gates` receive B x K entries. Non-finite logits or
/// biases throw llep::Error naming the first one.
inline void route_topk(std::span<const float> logits, std::span<const float> bias, int experts, int top_k,
                       GateNorm norm, std::span<std::int32_t> ids, std::span<float> gates) {
  detail::check_route_shape(logits.size(), bias.size(), experts, top_k, ids.size(), gates.size());
  for (std::size_t i = 0; i < bias.size(); ++i)
    LLEP_EXPECTS(std::isfinite(bias[i]), "route_topk: bias[", i, "] = ", bias[i], " is not finite");
  for (std::size_t i = 0; i < logits.size(); ++i)
    LLEP_EXPECTS(std::isfinite(logits[i]), "route_topk: logit ", i, " (token ", i / static_cast<std::size_t>(experts),
                 ", expert ", i % static_cast<std::size_t>(experts), ") = ", logits[i], " is not finite");
  const std::size_t B = logits.size() / static_cast<std::size_t>(experts);
  const auto uN = static_cast<std::size_t>(experts), uK = static_cast<std::size_t>(top_k);
  for (std::size_t t = 0; t < B; ++t)
    route_token(logits.data() + t * uN, bias.empty() ? nullptr : bias.data(), experts, top_k, norm,
                ids.data() + t * uK, gates.data() + t * uK);
}

}  // namespace llep
