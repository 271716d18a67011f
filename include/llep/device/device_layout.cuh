#pragma once
// The layout on the device (issue 14 item 3): BuildLayout (layer/layout.hpp), the routine
// Layout::build runs on the host on one thread, run by one block
// after the device planner, from the counts matrix and the plan in device memory, into
// worst-case buffers allocated once. No host round trip: the send and receive counts and
// offsets it writes are what a device-sized all-to-all reads (device/peer_all_to_all.cuh).
//
// Include from .cu files only. Topologies without replicas (as the device planner).
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "llep/core/cuda_check.hpp"
#include "llep/core/error.hpp"
#include "llep/core/plan_view.hpp"
#include "llep/core/topology.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/layer/layout.hpp"
#include "llep/plan/plan_step.hpp"
#include "llep/plan/planner.hpp"

namespace llep {

/// One rank's layout in device memory, sized once for plans of at most `max_segments`
/// segments (default: max_plan_segments(P, N), what DevicePlanner allocates).
class DeviceLayout {
 public:
  /// The layout tables as host vectors (download()).
  struct Host {
    count_t pairs = 0, compute_rows = 0;
    std::vector<count_t> send_counts, send_offsets, recv_counts, recv_offsets;
    std::vector<SendBlock> send_blocks;
    std::vector<ComputeTask> tasks;
    std::vector<RecvChunk> recv_chunks;
  };

  DeviceLayout(const Topology& topo, int rank, std::int64_t max_segments = -1) : topo_(topo), rank_(rank) {
    LLEP_EXPECTS(!topo.has_replicas(), "the device layout takes topologies without replicas (S = ",
                 topo.replicas_per_rank(), ")");
    LLEP_EXPECTS(rank >= 0 && rank < topo.ranks(), "rank ", rank, " is outside [0, ", topo.ranks(), ")");
    const int P = topo.ranks(), N = topo.experts();
    if (max_segments < 0) max_segments = max_plan_segments(P, N);
    LLEP_EXPECTS(layout_capacity(P, N, max_segments).recv_chunks <= INT32_MAX, "a layout of ",
                 layout_capacity(P, N, max_segments).recv_chunks, " receive chunks needs 32-bit room");
    bytes_ = LayoutTables::carve(nullptr, P, N, max_segments, rank).bytes;
    LLEP_CUDA_CHECK(cudaMalloc(&base_, bytes_));
    const LayoutTables t = LayoutTables::carve(static_cast<std::byte*>(base_), P, N, max_segments, rank);
    fields_ = t.fields;
    view_ = t.view;
    status_ = t.status;
    native_ = t.native;
    std::vector<std::int32_t> native(static_cast<std::size_t>(N));
    native_ranks(topo, native.data());
    const LayoutStatus none{LayoutStatus::no_plan, rank, 0};
    LLEP_CUDA_CHECK(cudaMemcpy(view_, &fields_, sizeof fields_, cudaMemcpyHostToDevice));
    LLEP_CUDA_CHECK(cudaMemcpy(status_, &none, sizeof none, cudaMemcpyHostToDevice));
    LLEP_CUDA_CHECK(cudaMemcpy(native_, native.data(), native.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));
  }
  DeviceLayout(const DeviceLayout&) = delete;
  DeviceLayout& operator=(const DeviceLayout&) = delete;
  ~DeviceLayout() { (void)cudaFree(base_); }

  /// Builds the layout on `stream` from device counts C[P][N] and a finished device plan
  /// (`plan_status`, when given, is checked first on the device); no sync.
  void build(cudaStream_t stream, const count_t* counts, const PlanView* plan,
             const StepStatus* plan_status = nullptr) const {
    CudaExec::launch_block(stream, BuildLayout<NativeHolds>{counts, plan, plan_status, NativeHolds{native_, rank_},
                                                            view_, status_});
  }

  /// Plans from the device counts with `planner` (DevicePlanner, device/device_planner.cuh),
  /// then builds this layout from its plan: two kernels on `stream`, no sync.
  template <class DP>
  void plan_and_build(cudaStream_t stream, const DP& planner, const count_t* counts) const {
    planner.plan_from_counts(stream, counts);
    build(stream, counts, planner.view(), planner.status());
  }

  /// Device pointers to the layout (valid once `stream` passed build()).
  [[nodiscard]] LayoutView* view() const noexcept { return view_; }
  [[nodiscard]] LayoutStatus* status() const noexcept { return status_; }
  [[nodiscard]] const count_t* send_counts() const noexcept { return fields_.send_counts; }
  [[nodiscard]] const count_t* send_offsets() const noexcept { return fields_.send_offsets; }
  [[nodiscard]] const count_t* recv_counts() const noexcept { return fields_.recv_counts; }
  [[nodiscard]] const count_t* recv_offsets() const noexcept { return fields_.recv_offsets; }
  [[nodiscard]] std::size_t bytes() const noexcept { return bytes_; }
  [[nodiscard]] int rank() const noexcept { return rank_; }

  /// Copies the last layout to the host (synchronises `stream`); a failed build throws the
  /// llep::Error Layout::build would (check_layout_status).
  [[nodiscard]] Host download(cudaStream_t stream) const {
    LayoutView v;
    LayoutStatus st;
    LLEP_CUDA_CHECK(cudaMemcpyAsync(&v, view_, sizeof v, cudaMemcpyDeviceToHost, stream));
    LLEP_CUDA_CHECK(cudaMemcpyAsync(&st, status_, sizeof st, cudaMemcpyDeviceToHost, stream));
    LLEP_CUDA_CHECK(cudaStreamSynchronize(stream));
    check_layout_status(st);
    const auto P = static_cast<std::size_t>(topo_.ranks());
    Host h;
    h.pairs = v.pairs;
    h.compute_rows = v.compute_rows;
    std::vector<count_t> c(4 * P);
    get(c.data(), v.send_counts, 4 * P);  // the four arrays are contiguous
    h.send_counts.assign(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(P));
    h.send_offsets.assign(c.begin() + static_cast<std::ptrdiff_t>(P), c.begin() + static_cast<std::ptrdiff_t>(2 * P));
    h.recv_counts.assign(c.begin() + static_cast<std::ptrdiff_t>(2 * P), c.begin() + static_cast<std::ptrdiff_t>(3 * P));
    h.recv_offsets.assign(c.begin() + static_cast<std::ptrdiff_t>(3 * P), c.end());
    h.send_blocks.resize(static_cast<std::size_t>(v.num_send_blocks));
    h.tasks.resize(static_cast<std::size_t>(v.num_tasks));
    h.recv_chunks.resize(static_cast<std::size_t>(v.num_recv_chunks));
    get(h.send_blocks.data(), v.send_blocks, h.send_blocks.size());
    get(h.tasks.data(), v.tasks, h.tasks.size());
    get(h.recv_chunks.data(), v.recv_chunks, h.recv_chunks.size());
    return h;
  }

 private:
  template <class U>
  static void get(U* dst, const U* src, std::size_t n) {
    if (n != 0) LLEP_CUDA_CHECK(cudaMemcpy(dst, src, n * sizeof(U), cudaMemcpyDeviceToHost));
  }

  Topology topo_;
  int rank_ = 0;
  std::size_t bytes_ = 0;
  void* base_ = nullptr;
  LayoutView fields_;  // the device pointers, as the device's copy holds them
  LayoutView* view_ = nullptr;
  LayoutStatus* status_ = nullptr;
  std::int32_t* native_ = nullptr;
};

}  // namespace llep
