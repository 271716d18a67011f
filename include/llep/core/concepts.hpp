#pragma once
// Every policy concept, for code written before each family declared its own (DESIGN.md,
// "Five policies, one layer"). Prefer the family headers:
//   Planner        plan/planner.hpp
//   RoutingStats   stats/routing_stats.hpp
//   Transport      transport/transport.hpp  (WeightsPathTransport, RecoverableTransport)
//   ExpertCompute  experts/expert_compute.hpp
//   ExecutionSpace exec/execution_space.hpp
// This umbrella is the one header under core/ that includes families; library headers
// include the family headers they need instead.
#include "llep/core/memory_space.hpp"
#include "llep/exec/execution_space.hpp"
#include "llep/experts/expert_compute.hpp"
#include "llep/plan/planner.hpp"
#include "llep/stats/routing_stats.hpp"
#include "llep/transport/transport.hpp"
