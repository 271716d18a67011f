#pragma once
// Helpers of the layer tests: one rank's tokens, the weights a rank holds under a
// topology, and the error of a layer's output against the dense reference MoE.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <vector>

#include "dense_moe.hpp"
#include "llep/core/topology.hpp"

namespace layertest {

/// One rank's tokens: hidden [B x D], top-k ids and gates [B x K].
struct RankInput {
  std::vector<float> x, gates;
  std::vector<std::int32_t> ids;
};

/// Every expert `rank` holds under `topo` (natives and replicas), packed back to back in
/// ascending expert id: what MoeLayer::set_native_weights takes.
inline std::vector<float> held_weights(const dense::Moe& moe, const llep::Topology& topo, int rank) {
  std::vector<int> held;
  topo.held_experts(rank, std::back_inserter(held));
  std::vector<float> out;
  for (const int e : held) {
    const auto one = moe.packed<float>(e);
    out.insert(out.end(), one.begin(), one.end());
  }
  return out;
}

/// Max |out - reference| relative to the largest |reference| (at least 1e-3). Float
/// layers stay below 1e-4 (see tests/layer/test_moe_layer.cpp).
inline double relative_error(const dense::Moe& moe, const RankInput& in, const std::vector<float>& out, int K) {
  const auto ref = moe.forward(std::vector<double>(in.x.begin(), in.x.end()), in.ids,
                               std::vector<double>(in.gates.begin(), in.gates.end()), K);
  double scale = 1e-3, err = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    scale = std::max(scale, std::abs(ref[i]));
    err = std::max(err, std::abs(static_cast<double>(out[i]) - ref[i]));
  }
  return err / scale;
}

}  // namespace layertest
