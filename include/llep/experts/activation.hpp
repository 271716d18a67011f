#pragma once
// The gated activations of SwiGLU experts, as __host__ __device__ functors so the host
// functor and the CUDA kernel share one definition. Comparisons are written so that a NaN
// input gives a NaN output instead of being clamped away. grad() gives the value and both
// partial derivatives, shared by the host and device backward passes.
#include <cmath>
#include <ostream>

#include "llep/core/config.hpp"

namespace llep {

/// An activation's value at (gate, up) and its partial derivatives there.
template <class A>
struct GluGrad {
  A value, d_gate, d_up;
};

/// DeepSeek, Qwen, Mixtral: silu(gate) * up, no biases.
struct SiluGlu {
  static constexpr bool has_bias = false;
  static constexpr const char* name = "silu";
  template <class A>
  LLEP_HOST_DEVICE A operator()(A gate, A up) const {
    using std::exp;
    return gate / (A(1) + exp(-gate)) * up;
  }
  /// d/dgate silu(g) = s(g) (1 + g (1 - s(g))); d/dup = silu(g).
  template <class A>
  LLEP_HOST_DEVICE GluGrad<A> grad(A gate, A up) const {
    using std::exp;
    const A s = A(1) / (A(1) + exp(-gate));
    const A silu = gate * s;
    return {silu * up, up * s * (A(1) + gate * (A(1) - s)), silu};
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
  /// A clamp that is active passes no gradient: d_gate = 0 where gate > limit, d_up = 0
  /// where |up| > limit (at the limit itself the input passes, as in forward).
  template <class A>
  LLEP_HOST_DEVICE GluGrad<A> grad(A gate, A up) const {
    using std::exp;
    const A lim = A(limit), a = A(alpha);
    const bool gate_clamped = gate > lim, up_clamped = up > lim || up < -lim;
    const A g = gate_clamped ? lim : gate;
    const A u = up > lim ? lim : (up < -lim ? -lim : up);
    const A s = A(1) / (A(1) + exp(-a * g));
    const A glu = g * s;
    return {(u + A(1)) * glu, gate_clamped ? A(0) : (u + A(1)) * s * (A(1) + a * g * (A(1) - s)),
            up_clamped ? A(0) : glu};
  }
  friend constexpr bool operator==(const GptOssGlu&, const GptOssGlu&) = default;
  friend std::ostream& operator<<(std::ostream& os, const GptOssGlu& a) {
    return os << "GptOssGlu{limit=" << a.limit << ", alpha=" << a.alpha << "}";
  }
};

}  // namespace llep
