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
#include "llep/plan/plan_step.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

namespace detail {
template <class P>
__global__ void plan_kernel(P planner, const count_t* loads, alg::TopoView topo, std::byte* scratch, PlanView* out,
                            StepStatus* status) {
  if (blockIdx.x == 0 && threadIdx.x == 0) *status = plan_step(planner, loads, topo, scratch, *out);
}

/// loads[e] = sum over ranks of counts[p][e] (row-major P x N), one thread an expert; then
/// the plan, once every load is in.
template <class P>
__global__ void plan_from_counts_kernel(P planner, const count_t* counts, count_t* loads, alg::TopoView topo,
                                        std::byte* scratch, PlanView* out, StepStatus* status) {
  for (int e = static_cast<int>(threadIdx.x); e < topo.experts; e += static_cast<int>(blockDim.x)) {
    count_t l = 0;
    for (int p = 0; p < topo.ranks; ++p) l += counts[static_cast<std::size_t>(p) * topo.experts + e];
    loads[e] = l;
  }
  __syncthreads();
  if (threadIdx.x == 0) *status = plan_step(planner, loads, topo, scratch, *out);
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
    max_segments_ = static_cast<std::size_t>(max_plan_segments(R, N));
    scratch_bytes_ = plan_step_scratch_bytes<P>(R, N);
    std::vector<std::int32_t> native(static_cast<std::size_t>(N));
    for (int e = 0; e < N; ++e) native[static_cast<std::size_t>(e)] = topo.native_rank(e);
    bytes_ = 0;
    auto at = [&](std::size_t n) {
      const std::size_t o = bytes_;
      bytes_ += (n + 255) / 256 * 256;
      return o;
    };
    const std::size_t o_seg = at(max_segments_ * sizeof(Segment)), o_spare = at(max_segments_ * sizeof(Segment)),
                      o_tr = at(max_segments_ * sizeof(WeightTransfer)),
                      o_off = at((static_cast<std::size_t>(N) + 1) * sizeof(std::int32_t)),
                      o_rl = at(static_cast<std::size_t>(R) * sizeof(count_t)), o_view = at(sizeof(PlanView)),
                      o_status = at(sizeof(StepStatus)), o_native = at(native.size() * sizeof(std::int32_t)),
                      o_loads = at(static_cast<std::size_t>(N) * sizeof(count_t)), o_scratch = at(scratch_bytes_);
    LLEP_CUDA_CHECK(cudaMalloc(&base_, bytes_));
    auto* b = static_cast<std::byte*>(base_);
    PlanView v;
    v.segments = reinterpret_cast<Segment*>(b + o_seg);
    v.spare = reinterpret_cast<Segment*>(b + o_spare);
    v.transfers = reinterpret_cast<WeightTransfer*>(b + o_tr);
    v.expert_offsets = reinterpret_cast<std::int32_t*>(b + o_off);
    v.rank_loads = reinterpret_cast<count_t*>(b + o_rl);
    v.max_segments = static_cast<std::int32_t>(max_segments_);
    v.ranks = R;
    v.experts = N;
    view_ = reinterpret_cast<PlanView*>(b + o_view);
    status_ = reinterpret_cast<StepStatus*>(b + o_status);
    native_ = reinterpret_cast<std::int32_t*>(b + o_native);
    loads_ = reinterpret_cast<count_t*>(b + o_loads);
    scratch_ = b + o_scratch;
    LLEP_CUDA_CHECK(cudaMemcpy(view_, &v, sizeof v, cudaMemcpyHostToDevice));
    LLEP_CUDA_CHECK(cudaMemcpy(native_, native.data(), native.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));
  }
  DevicePlanner(const DevicePlanner&) = delete;
  DevicePlanner& operator=(const DevicePlanner&) = delete;
  ~DevicePlanner() { (void)cudaFree(base_); }

  /// Device memory this planner holds, in bytes.
  [[nodiscard]] std::size_t bytes() const noexcept { return bytes_; }
  /// Where plan() reads the loads (N entries) unless given others.
  [[nodiscard]] count_t* loads() const noexcept { return loads_; }
  /// The plan's view (device memory; its pointers are device pointers).
  [[nodiscard]] PlanView* view() const noexcept { return view_; }
  [[nodiscard]] StepStatus* status() const noexcept { return status_; }

  /// Plans from device loads (N entries; default: loads()) on `stream`; no sync.
  void plan(cudaStream_t stream, const count_t* loads = nullptr) const {
    detail::plan_kernel<<<1, 1, 0, stream>>>(planner_, loads != nullptr ? loads : loads_, topo_view(), scratch_,
                                             view_, status_);
    LLEP_CUDA_CHECK(cudaGetLastError());
  }

  /// Sums the device counts matrix C[P][N] into loads(), then plans, in one kernel; no sync.
  void plan_from_counts(cudaStream_t stream, const count_t* counts) const {
    detail::plan_from_counts_kernel<<<1, 256, 0, stream>>>(planner_, counts, loads_, topo_view(), scratch_, view_,
                                                           status_);
    LLEP_CUDA_CHECK(cudaGetLastError());
  }

  /// Copies the last plan to the host (synchronises `stream`); throws llep::Error with the
  /// step's status when it failed.
  void download(cudaStream_t stream, Plan& out) const {
    PlanView v;
    StepStatus st;
    LLEP_CUDA_CHECK(cudaMemcpyAsync(&v, view_, sizeof v, cudaMemcpyDeviceToHost, stream));
    LLEP_CUDA_CHECK(cudaMemcpyAsync(&st, status_, sizeof st, cudaMemcpyDeviceToHost, stream));
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
  [[nodiscard]] alg::TopoView topo_view() const noexcept {
    return alg::TopoView{topo_.ranks(), topo_.experts(), topo_.ranks_per_node(), native_,
                         topo_.default_placement() ? topo_.experts() / topo_.ranks() : 0};
  }

  P planner_;
  Topology topo_;
  std::size_t max_segments_ = 0;
  std::size_t scratch_bytes_ = 0;
  std::size_t bytes_ = 0;
  void* base_ = nullptr;
  PlanView* view_ = nullptr;
  StepStatus* status_ = nullptr;
  std::int32_t* native_ = nullptr;
  count_t* loads_ = nullptr;
  std::byte* scratch_ = nullptr;
};

}  // namespace llep
