#pragma once
// The CUDA half of llep-gpu-demo, behind a plain interface so that main (CLI11) is host C++.
#include <string>

#include "../common/demo_scenario.hpp"

namespace llep::examples {

/// Runs the scenario's layer on P logical ranks spread over the visible GPUs (rank p on
/// device p % devices) through PeerCopy, bf16 cuBLAS experts; `llep` picks the planner.
/// Returns the last step's reports, the wall time of every timed step and every rank's
/// first `o.check_tokens` output rows as float.
DemoRun run_gpu_demo(const DemoOptions& o, const DemoScenario& sc, bool llep, bool grouped);

/// "NVIDIA H100 80GB HBM3 x 1", or throws llep::Error when there is no CUDA device.
std::string describe_devices();

}  // namespace llep::examples
