#pragma once
// Helpers of the layer tests: one rank's tokens (and every rank's, drawn from one seed),
// the weights a rank holds under a topology, and the error of a layer's output against the
// dense reference MoE.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <random>
#include <span>
#include <vector>

#include "dense_moe.hpp"
#include "llep/core/topology.hpp"
#include "llep/sim/routing.hpp"

namespace layertest {

/// One rank's tokens: hidden [B x D], top-k ids and gates [B x K].
struct RankInput {
  std::vector<float> x, gates;
  std::vector<std::int32_t> ids;
};

/// How many tokens make_inputs draws per rank, uniformly in [min, max]; with
/// `empty_odd_ranks`, odd ranks get none; with `max_on_even_ranks`, even ranks get max.
struct TokenRange {
  int min = 1, max = 24;
  bool empty_odd_ranks = false;
  bool max_on_even_ranks = false;
};

/// Every rank's input from one seed: hidden values in [-1, 1), ids and gates from
/// sim::random_routing under `skew`. A process that draws all P and keeps its own gets
/// the same inputs whatever the process count or order.
inline std::vector<RankInput> make_inputs(int P, int N, int K, int D, llep::sim::Skew skew, std::uint64_t seed,
                                          const TokenRange& tokens = {}) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  std::uniform_int_distribution<int> count(tokens.min, tokens.max);
  std::vector<RankInput> in(static_cast<std::size_t>(P));
  for (int p = 0; p < P; ++p) {
    auto& r = in[static_cast<std::size_t>(p)];
    int B = count(rng);
    if (tokens.empty_odd_ranks && p % 2 == 1) B = 0;
    if (tokens.max_on_even_ranks && p % 2 == 0) B = tokens.max;
    r.x.resize(static_cast<std::size_t>(B * D));
    for (float& v : r.x) v = static_cast<float>(u(rng));
    r.ids.resize(static_cast<std::size_t>(B * K));
    r.gates.resize(r.ids.size());
    llep::sim::random_routing(rng(), N, K, skew, std::span<std::int32_t>(r.ids), std::span<float>(r.gates));
  }
  return in;
}

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
  REQUIRE(out.size() == ref.size());
  double scale = 1e-3, err = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    scale = std::max(scale, std::abs(ref[i]));
    err = std::max(err, std::abs(static_cast<double>(out[i]) - ref[i]));
  }
  return err / scale;
}

/// The same over every rank's rows, relative to the largest |reference| of all ranks.
inline double relative_error(const dense::Moe& moe, const std::vector<RankInput>& in,
                             const std::vector<std::vector<float>>& out, int K) {
  REQUIRE(out.size() == in.size());
  double scale = 1e-3, err = 0;
  for (std::size_t p = 0; p < in.size(); ++p) {
    const auto ref = moe.forward(std::vector<double>(in[p].x.begin(), in[p].x.end()), in[p].ids,
                                 std::vector<double>(in[p].gates.begin(), in[p].gates.end()), K);
    REQUIRE(out[p].size() == ref.size());
    for (std::size_t i = 0; i < ref.size(); ++i) {
      scale = std::max(scale, std::abs(ref[i]));
      err = std::max(err, std::abs(static_cast<double>(out[p][i]) - ref[i]));
    }
  }
  return err / scale;
}

}  // namespace layertest
