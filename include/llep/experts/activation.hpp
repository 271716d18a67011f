#pragma once
// The gated activations of SwiGLU experts, as __host__ __device__ functors so the host
// functor and the CUDA kernel share one definition. Comparisons are written so that a NaN
// input gives a NaN output instead of being clamped away.
#include <cmath>
#include <ostream>

#include "llep/core/config.hpp"

namespace llep {

/// DeepSeek, Qwen, Mixtral: silu(gate) * up, no biases.
struct SiluGlu {
  static constexpr bool has_bias = false;
  static constexpr const char* name = "silu";
  template <class A>
  LLEP_HOST_DEVICE A operator()(A gate, A up) const {
    using std::exp;
    return gate / (A(1) + exp(-gate)) * up;
  }
  friend constexpr bool operator==(const SiluGlu&, const SiluGlu&) = default;
  friend std::ostream& operator<<(std::ostream& os, const SiluGlu&) { return os << "SiluGlu{}"; }
};

/// gpt-oss: gate clamped above at `limit`, up clamped to [-limit, limit],
/// (up + 1) * gate * sigmoid(alpha * gate), with biases on both projections.
struct GptOssGlu {
  static constexpr bool has_bias = true;
  static constexpr const char* name = "gpt-oss";
  double limit = 7.0;
  double alpha = 1.702;
  template <class A>
  LLEP_HOST_DEVICE A operator()(A gate, A up) const {
    using std::exp;
    const A lim = A(limit);
    gate = gate > lim ? lim : gate;
    up = up > lim ? lim : (up < -lim ? -lim : up);
    const A glu = gate / (A(1) + exp(-A(alpha) * gate));
    return (up + A(1)) * glu;
  }
  friend constexpr bool operator==(const GptOssGlu&, const GptOssGlu&) = default;
  friend std::ostream& operator<<(std::ostream& os, const GptOssGlu& a) {
    return os << "GptOssGlu{limit=" << a.limit << ", alpha=" << a.alpha << "}";
  }
};

}  // namespace llep
