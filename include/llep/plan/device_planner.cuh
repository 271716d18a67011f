#pragma once
// Planning on the device (issue 14 item 2): plan_step (plan_step.hpp), the routine the host
// planners are checked against bit for bit, run by one thread of one small kernel, writing
// the plan into worst-case-sized device buffers. No host round trip: loads (or the counts
// matrix they are summed from) stay on the device, and so does the plan.
//
// Include from .cu files only. StandardEp, LeastLoaded, Adaptive and Capped over them have
// a device form; asking for any other planner fails at compile time with an `llep:` message.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "llep/core/cuda_check.hpp"
#include "llep/core/error.hpp"
#include "llep/core/plan.hpp"
#include "llep/core/topology.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/plan/plan_step.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

namespace detail {
template <class P>
__global__ void plan_kernel(P planner, const count_t* loads, alg::TopoView topo, std::byte* scratch, PlanView* out,
                            StepStatus* status) {
  if (blockIdx.x == 0 && threadIdx.x == 0) *status = plan_step(planner, loads, topo, scratch, *out);
}

}  // namespace detail

/// Device memory for one plan of a topology, sized for the worst case once: the plan's
/// buffers (max_plan_segments), its view, a status, the natives, the loads and the
/// planner's scratch. Topologies with replicas have no device form.
template <class P>
class DevicePlanner {
 public:
  DevicePlanner(const P& planner, const Topology& topo) : planner_(planner), topo_(topo) {
    static_assert(has_device_form<P>,
                  "llep: this planner has no device form (DeviceStep<P>): only StandardEp, LeastLoaded, and "
                  "Adaptive and Capped over them plan on the device; plan on the host with planner.plan()");
    if constexpr (requires { planner.check(); }) planner.check();
    if constexpr (requires { planner.cap.check(); }) planner.cap.check();
    LLEP_EXPECTS(!topo.has_replicas(), "the device planner takes topologies without replicas (S = ",
                 topo.replicas_per_rank(), ")");
    const int N = topo.experts(), R = topo.ranks();
    bytes_ = plan_tables_bytes<P>(R, N);
    LLEP_CUDA_CHECK(cudaMalloc(&base_, bytes_));
    t_ = PlanTables::carve<P>(static_cast<std::byte*>(base_), R, N);
    std::vector<std::int32_t> native(static_cast<std::size_t>(N));
    native_ranks(topo, native.data());
    LLEP_CUDA_CHECK(cudaMemcpy(t_.view, &t_.fields, sizeof t_.fields, cudaMemcpyHostToDevice));
    LLEP_CUDA_CHECK(cudaMemcpy(t_.native, native.data(), native.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));
  }
  DevicePlanner(const DevicePlanner&) = delete;
  DevicePlanner& operator=(const DevicePlanner&) = delete;
  ~DevicePlanner() { (void)cudaFree(base_); }

  /// Device memory this planner holds, in bytes.
  [[nodiscard]] std::size_t bytes() const noexcept { return bytes_; }
  /// Where plan() reads the loads (N entries) unless given others.
  [[nodiscard]] count_t* loads() const noexcept { return t_.loads; }
  /// The plan's view (device memory; its pointers are device pointers).
  [[nodiscard]] PlanView* view() const noexcept { return t_.view; }
  [[nodiscard]] StepStatus* status() const noexcept { return t_.status; }

  /// Plans from device loads (N entries; default: loads()) on `stream`; no sync.
  void plan(cudaStream_t stream, const count_t* loads = nullptr) const {
    detail::plan_kernel<<<1, 1, 0, stream>>>(planner_, loads != nullptr ? loads : t_.loads, topo_view(), t_.scratch,
                                             t_.view, t_.status);
    LLEP_CUDA_CHECK(cudaGetLastError());
  }

  /// Sums the device counts matrix C[P][N] into loads(), then plans, in one kernel; no sync.
  void plan_from_counts(cudaStream_t stream, const count_t* counts) const {
    CudaExec::launch_block(stream, PlanFromCounts<P>{planner_, counts, t_.loads, topo_view(), t_.scratch, t_.view,
                                                     t_.status});
  }

  /// Copies the last plan to the host (synchronises `stream`); throws llep::Error with the
  /// step's status when it failed.
  void download(cudaStream_t stream, Plan& out) const {
    PlanView v;
    StepStatus st;
    LLEP_CUDA_CHECK(cudaMemcpyAsync(&v, t_.view, sizeof v, cudaMemcpyDeviceToHost, stream));
    LLEP_CUDA_CHECK(cudaMemcpyAsync(&st, t_.status, sizeof st, cudaMemcpyDeviceToHost, stream));
    LLEP_CUDA_CHECK(cudaStreamSynchronize(stream));
    LLEP_EXPECTS(st.good(), "device plan failed: status ", st.code, " (expert ", st.expert, ", ", st.rows_left,
                 " rows left)");
    std::vector<Segment> segs(static_cast<std::size_t>(v.num_segments));
    std::vector<WeightTransfer> trs(static_cast<std::size_t>(v.num_transfers));
    std::vector<count_t> rl(static_cast<std::size_t>(v.ranks));
    if (!segs.empty())
      LLEP_CUDA_CHECK(cudaMemcpy(segs.data(), v.segments, segs.size() * sizeof(Segment), cudaMemcpyDeviceToHost));
    if (!trs.empty())
      LLEP_CUDA_CHECK(cudaMemcpy(trs.data(), v.transfers, trs.size() * sizeof(WeightTransfer), cudaMemcpyDeviceToHost));
    LLEP_CUDA_CHECK(cudaMemcpy(rl.data(), v.rank_loads, rl.size() * sizeof(count_t), cudaMemcpyDeviceToHost));
    out.assign(topo_, v.policy, v.capacity, segs, trs, rl);
  }

 private:
  [[nodiscard]] alg::TopoView topo_view() const noexcept { return t_.topo_view(topo_); }

  P planner_;
  Topology topo_;
  std::size_t bytes_ = 0;
  void* base_ = nullptr;
  PlanTables t_;
};

}  // namespace llep
