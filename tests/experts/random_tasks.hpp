#pragma once
// What the expert-functor tests share: the dense reference's view of an activation, and
// random MoEs with random tasks (shapes and row counts around HostSwiGlu's row block).
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "../common/dense_moe.hpp"
#include "llep/core/config.hpp"

namespace testexperts {

template <class Act>
constexpr dense::Act dense_act() {
  return Act::has_bias ? dense::Act::gpt_oss : dense::Act::silu;
}

/// The reference uses the activation's own limit and alpha, so double results compare
/// at 1e-12.
template <class Act>
void match_parameters(dense::Moe& moe, const Act& act) {
  if constexpr (requires { act.alpha; }) {
    moe.limit = static_cast<double>(act.limit);
    moe.alpha = static_cast<double>(act.alpha);
  }
}

/// A random MoE (1-6 experts, D and H in 1..40) and 1-6 tasks of (expert, rows); one in
/// five trials adds an explicit empty task.
struct RandomTasks {
  dense::Moe moe;
  std::vector<std::pair<int, llep::count_t>> spec;
};

template <class Act>
RandomTasks random_tasks(const Act& act, int trial, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> dim(1, 40), n_experts(1, 6), n_tasks(1, 6), pick_rows(0, 6);
  const llep::count_t row_choices[] = {0, 1, 2, 7, 16, 17, 40};
  const int D = dim(rng), H = dim(rng), N = n_experts(rng);
  RandomTasks r{dense::Moe::random(N, D, H, dense_act<Act>(), rng()), {}};
  match_parameters(r.moe, act);
  std::uniform_int_distribution<int> pick_e(0, N - 1);
  const int tasks = n_tasks(rng);
  for (int t = 0; t < tasks; ++t) r.spec.emplace_back(pick_e(rng), row_choices[pick_rows(rng)]);
  if (trial % 5 == 0) r.spec.emplace_back(pick_e(rng), 0);
  return r;
}

}  // namespace testexperts
