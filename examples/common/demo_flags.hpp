#pragma once
// The demos' shared flags (CLI11), kept apart from demo_scenario.hpp so that CUDA sources
// can use the scenario without compiling CLI11.
#include <CLI/CLI.hpp>

#include "common/cli.hpp"
#include "demo_scenario.hpp"

namespace llep::examples {

inline void add_demo_flags(CLI::App& app, DemoOptions& o) {
  app.add_option("--ranks", o.ranks, "EP ranks P")->capture_default_str()->check(CLI::Range(1, 256));
  app.add_option("--experts", o.experts, "Experts N (a multiple of P)")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--top-k", o.top_k, "Experts per token K (<= N)")->capture_default_str()->check(CLI::Range(1, 64));
  app.add_option("--tokens", o.tokens, "Tokens per rank B_p")->capture_default_str()->check(CLI::Range(0, 1 << 20));
  app.add_option("--hidden", o.hidden, "Hidden size D")->capture_default_str()->check(CLI::Range(1, 1 << 14));
  app.add_option("--intermediate", o.intermediate, "Expert intermediate size H")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 14));
  app.add_option("--hot-experts", o.hot_experts, "Hot experts h (0: balanced routing); experts 0..h-1")
      ->capture_default_str();
  app.add_option("--hot-share", o.hot_share, "Share of all routed pairs that go to the hot experts")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--alpha", o.alpha, "LLEP capacity factor alpha (> 0)")->capture_default_str();
  app.add_option("--min-gemm", o.min_gemm,
                 "LLEP min_tokens_per_gemm; the paper's 1024 is for 32K tokens per rank, this small layer uses 64")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--steps", o.steps, "Timed steps per planner (after one warm-up step)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_option("--seed", o.seed, "Seed of weights, tokens and routing")->capture_default_str();
  app.add_flag("!--no-check", o.check, "Skip the comparison with the dense reference");
  add_memory_flag(app, o.max_memory_gb);
}

}  // namespace llep::examples
