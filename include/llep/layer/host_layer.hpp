#pragma once
// The host composition of MoeLayer: exact counts, P ranks as threads of one process, the
// host SwiGLU functor. What the tests, the demo and a CPU-only engine use.
#include "llep/exec/host.hpp"
#include "llep/experts/activation.hpp"
#include "llep/experts/host_swiglu.hpp"
#include "llep/layer/moe_layer.hpp"
#include "llep/stats/exact_counts.hpp"
#include "llep/transport/host_threads.hpp"

namespace llep {

template <Planner Plnr, class T = float, class Act = SiluGlu>
using HostMoeLayer = MoeLayer<ExactCounts, Plnr, HostThreads, HostSwiGlu<T, Act>, HostExec>;

}  // namespace llep
