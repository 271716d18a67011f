// llep-gpu-demo: the host demo's scenario on GPUs. P logical ranks share one GPU through
// the peer-copy transport (or spread over P GPUs when there are P), bf16 cuBLAS experts.
//
//   llep-gpu-demo --ranks 8 --tokens 4096 --hidden 1024 --intermediate 512
#include <cstdio>
#include <iostream>
#include <string>

#include "common/cli.hpp"
#include "../common/demo_flags.hpp"
#include "gpu_demo.hpp"

int main(int argc, char** argv) {
  llep::examples::DemoOptions o;
  o.tokens = 4096;
  o.hidden = 1024;
  o.intermediate = 512;
  o.min_gemm = 256;
  o.check_tokens = 32;
  bool grouped = false;
  CLI::App app{"llep-gpu-demo: an MoE layer on P logical GPU ranks under skewed routing, standard EP vs LLEP.\n"
               "Rank p runs on device p % (visible devices), through the peer-copy transport; bf16 cuBLAS experts.\n"
               "A bad flag prints one 'error: ...' line and exits 2; no CUDA device: exit 77."};
  llep::examples::add_demo_flags(app, o);
  app.add_option("--check-tokens", o.check_tokens, "Tokens per rank compared with the dense host reference")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--grouped", grouped, "Experts on cublasGemmGroupedBatchedEx instead of one GEMM pair per expert");
  if (const auto rc = llep::examples::parse(app, argc, argv)) return *rc;
  std::string devices;
  try {
    devices = llep::examples::describe_devices();
  } catch (const llep::Error& e) {
    std::cerr << "SKIP: " << e.what() << '\n';
    return 77;
  }
  try {
    o.validate();
    const llep::examples::DemoScenario sc(o);
    const auto ep = llep::examples::run_gpu_demo(o, sc, false, grouped);
    const auto ll = llep::examples::run_gpu_demo(o, sc, true, grouped);
    std::printf("llep-gpu-demo: %s; P = %d logical ranks, N = %d experts, K = %d, %d tokens per rank, D = %d, "
                "H = %d, bf16, %s GEMMs\n",
                devices.c_str(), o.ranks, o.experts, o.top_k, o.tokens, o.hidden, o.intermediate,
                grouped ? "grouped" : "per-expert");
    // bf16 tokens, weights, activation and output (8 significant bits each), fp32 accumulation.
    const bool ok = llep::examples::print_comparison(o, sc, ep, ll, 3e-2);
    std::printf("(ranks sharing one GPU share its SMs: step time there shows overheads, not the multi-GPU gain; "
                "max rows is what one GPU per rank would see)\n");
    return ok ? 0 : 1;
  } catch (const llep::Error& e) {
    return llep::examples::fail(e.what());
  }
}
