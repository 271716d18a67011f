#pragma once
// The multi-process MoE layer checks, one body for every transport that runs one process
// per rank: each process runs its own rank (MPI_COMM_WORLD's rank and size give P) and
// checks its own rows against the dense reference (tests/common/dense_moe.hpp). A Backend
// supplies the transport, the execution space and the expert functor:
//
//   struct Backend {
//     explicit Backend(std::chrono::milliseconds timeout);           // collective
//     template <class Plnr> std::vector<float> forward(const llep::Topology&, int K, Plnr,
//         std::span<const float> weights, const RankInput&, llep::StepReport&);  // one step
//     static constexpr double tolerance;                              // vs the dense MoE
//   };
//
// forward() keeps the layer between the calls of one run (Backend::Run) so repeated steps
// exercise the same layer, its workspace and its transport.
#include <doctest/doctest.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "../common/dense_moe.hpp"
#include "../common/layer_helpers.hpp"
#include "llep/core/topology.hpp"
#include "llep/layer/report.hpp"
#include "llep/plan/adaptive.hpp"
#include "llep/plan/cost_aware.hpp"
#include "llep/plan/least_loaded.hpp"
#include "llep/plan/memory_cap.hpp"
#include "llep/plan/node_aware.hpp"
#include "llep/plan/quota_search.hpp"
#include "llep/plan/replicated.hpp"
#include "llep/plan/standard_ep.hpp"
#include "llep/sim/routing.hpp"

namespace mpitest {

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline int world_size() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

using layertest::RankInput;
using layertest::held_weights;
using layertest::relative_error;

/// Every rank's input from one seed (layertest::make_inputs): 1 to 24 tokens per rank,
/// none on odd ranks with `empty_ranks`.
inline std::vector<RankInput> make_inputs(int P, int N, int K, int D, llep::sim::Skew skew, bool empty_ranks,
                                          std::uint64_t seed) {
  return layertest::make_inputs(P, N, K, D, skew, seed, layertest::TokenRange{1, 24, empty_ranks});
}

/// The same value on every process (a plan-wide figure every rank computes itself).
inline bool same_everywhere(std::int64_t v) {
  std::int64_t lo = v, hi = v;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_INT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
  return lo == hi;
}

enum class Routing { uniform, hot_one_expert, one_rank_experts, empty_ranks };

inline std::string routing_name(Routing r) {
  switch (r) {
    case Routing::uniform: return "uniform";
    case Routing::hot_one_expert: return "95% on expert 0";
    case Routing::one_rank_experts: return "all on rank 0's experts";
    case Routing::empty_ranks: return "uniform, odd ranks empty";
  }
  return "?";
}

/// Three steps of this rank through `planner`: each equals the dense MoE on this rank's
/// rows, the steps are bit-identical, and the plan-wide figures agree across processes.
/// Returns the plan's weight transfers.
template <class Backend, class Plnr>
std::size_t check_layer(const llep::Topology& topo, int K, Routing routing, Plnr planner, std::uint64_t seed) {
  const int P = topo.ranks(), N = topo.experts(), D = 12, H = 8, me = world_rank();
  REQUIRE(P == world_size());
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, seed);
  llep::sim::Skew skew;
  if (routing == Routing::hot_one_expert) skew = {1, 0.95};
  if (routing == Routing::one_rank_experts) skew = {N / P, 1.0};
  const auto in = make_inputs(P, N, K, D, skew, routing == Routing::empty_ranks, seed * 31 + 7);
  const auto& mine = in[static_cast<std::size_t>(me)];
  const auto weights = held_weights(moe, topo, me);

  Backend backend(std::chrono::milliseconds(30'000));
  typename Backend::template Run<Plnr> run(backend, topo, K, planner, moe, weights);
  llep::StepReport report;
  std::vector<float> first;
  for (int s = 0; s < 3; ++s) {
    const auto out = run.forward(mine, report);
    if (s == 0) {
      first = out;
      INFO("P = ", P, ", N = ", N, ", K = ", K, ", routing: ", routing_name(routing), ", plan ", report.policy,
           ", rank ", me);
      CHECK(relative_error(moe, mine, out, K) <= Backend::tolerance);
    } else {
      INFO("step ", s, " of rank ", me);
      CHECK(out == first);  // bit-identical
    }
  }
  std::int64_t rows = 0;
  for (int q = 0; q < P; ++q) rows += report.rows(q);
  std::int64_t pairs = 0;
  for (const auto& r : in) pairs += static_cast<std::int64_t>(r.ids.size());
  CHECK(rows == pairs);
  CHECK(same_everywhere(static_cast<std::int64_t>(report.weight_transfers)));
  for (int q = 0; q < P; ++q) CHECK(same_everywhere(report.rows(q)));
  return report.weight_transfers;
}

inline const llep::LeastLoaded kSmallGemm{1.0, 2};  // slices as small as the test's tokens

/// Every planner of the library, over routings that spill and routings that do not.
template <class Backend>
void check_every_planner() {
  const int P = world_size();
  const auto model = std::make_shared<llep::sim::CostModel>();
  std::uint64_t seed = 100;
  std::size_t transfers = 0;
  for (const int K : {1, 4})
    for (const Routing routing :
         {Routing::uniform, Routing::hot_one_expert, Routing::one_rank_experts, Routing::empty_ranks}) {
      const int N = 4 * P;
      const llep::Topology topo(P, N);
      ++seed;
      check_layer<Backend>(topo, K, routing, llep::StandardEp{}, seed);
      transfers += check_layer<Backend>(topo, K, routing, kSmallGemm, seed);
      check_layer<Backend>(topo, K, routing, llep::Adaptive<llep::LeastLoaded>{1.3, kSmallGemm}, seed);
      check_layer<Backend>(topo, K, routing, llep::Capped<llep::LeastLoaded>{kSmallGemm, llep::MemoryCap::rows(24 * K)},
                           seed);
      check_layer<Backend>(topo, K, routing, llep::NodeAware{1.0, 2}, seed);
      check_layer<Backend>(topo, K, routing, llep::QuotaSearch{2}, seed);
      check_layer<Backend>(topo, K, routing, llep::CostAware{1.0, 2, model, {"test", 12, 8}}, seed);
      // Replicated: a placement from this routing's history, one or two extra slots (P > 1:
      // one rank already holds every expert).
      if (P == 1) continue;
      std::vector<double> history(static_cast<std::size_t>(N), 0.0);
      llep::sim::Skew skew;
      if (routing == Routing::hot_one_expert) skew = {1, 0.95};
      for (const auto& r : make_inputs(P, N, K, 12, skew, false, seed)) {
        for (const auto id : r.ids) history[static_cast<std::size_t>(id)] += 1;
      }
      check_layer<Backend>(llep::Replicated::place(history, P, 4 + 1 + K % 2), K, routing, llep::Replicated{}, seed);
    }
  if (P > 1) CHECK(transfers > 0);  // the weights path (exchange_weights, join_weights) ran
}

/// A bad expert id on the last process: llep::Error on every process, promptly (the
/// others are released by the abort notice, not by their deadline).
template <class Backend>
void check_bad_expert_id() {
  const int P = world_size(), N = 2 * P, K = 2, D = 12, H = 8, me = world_rank();
  const auto moe = dense::Moe::random(N, D, H, dense::Act::silu, 9);
  auto in = make_inputs(P, N, K, D, {}, false, 10);
  auto& mine = in[static_cast<std::size_t>(me)];
  if (me == P - 1) mine.ids[0] = N;
  const llep::Topology topo(P, N);
  const auto weights = held_weights(moe, topo, me);
  std::string error;
  const auto start = std::chrono::steady_clock::now();
  {
    Backend backend(std::chrono::milliseconds(30'000));
    typename Backend::template Run<llep::LeastLoaded> run(backend, topo, K, kSmallGemm, moe, weights);
    llep::StepReport report;
    try {
      (void)run.forward(mine, report);
    } catch (const llep::Error& e) {
      error = e.what();
    }
  }
  const auto took = std::chrono::steady_clock::now() - start;
  INFO("rank ", me, ": '", error, "'");
  // Every rank sees the gathered counts and names the id, or was released by the abort.
  CHECK((error.find("outside [0, " + std::to_string(N) + ")") != std::string::npos ||
         error.find("rank " + std::to_string(P - 1) + " aborted") != std::string::npos));
  CHECK(took < std::chrono::seconds(10));  // released, far below the 30 s deadline
  // A fresh transport on the same communicator works again.
  Backend again(std::chrono::milliseconds(30'000));
  auto clean = make_inputs(P, N, K, D, {}, false, 10);
  typename Backend::template Run<llep::LeastLoaded> run(again, topo, K, kSmallGemm, moe, weights);
  llep::StepReport report;
  const auto out = run.forward(clean[static_cast<std::size_t>(me)], report);
  CHECK(relative_error(moe, clean[static_cast<std::size_t>(me)], out, K) <= Backend::tolerance);
}

}  // namespace mpitest
