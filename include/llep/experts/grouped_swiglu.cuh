#pragma once
// GroupedSwiGlu: a device expert functor that runs all tasks of a rank in two kernel
// launches, whatever their number and sizes, reading the task list and its count from
// device memory: the device-sized contract (SizedExpertCompute, experts/expert_compute.hpp)
// that a step without host synchronisation needs, where cuBLAS would take its GEMM sizes
// from the host. The math and the weight layout are CublasSwiGlu's (per_expert mode):
//   launch 1   gu = x W_gu (fp32 accumulate, kept in fp32), h = Act(gu + b_gu) -> T
//   launch 2   out = h W_down + b_down (fp32 accumulate, one rounding to T)
// Each launch is a grouped GEMM over 128-row tiles of every task: block (x, y) takes row
// tiles x, x + gridDim.x, ... of all tasks' row tiles (experts/grouped_tiles.hpp finds
// which task and rows, and when there are no more) and column tile y (launch 1: 32 columns
// of h, from the matching gate and up columns of W_gu; launch 2: 64 columns of out). The
// grid is sized on the host from the bounds (never more row blocks than
// GroupedTiles::grid_bound) and the device (about two waves of resident blocks), so a
// loose bound costs no empty blocks. bf16 / fp16 run on tensor cores (WMMA 16x16x16,
// fp32 accumulation; sm_80 and later); float runs fp32 FMAs (no TF32, as cuBLAS's default).
// Operands are staged in shared memory, double-buffered through registers; 16-byte loads
// when D and H are multiples of 16 bytes and the pointers are aligned, element loads
// otherwise.
//
// Forward only: backward stays with CublasSwiGlu (the layer's backward asks for
// ExpertBackward, which this functor does not model). Scratch holds h for max_rows rows.
// Tasks past *count and tiles whose rows end past max_rows (a broken bound) are not
// computed and leave their out rows untouched; the caller keeps to the bounds.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <cub/block/block_scan.cuh>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

#include "llep/core/carve.hpp"
#include "llep/core/config.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/core/error.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/experts/activation.hpp"
#include "llep/experts/device_element.cuh"
#include "llep/experts/expert_compute.hpp"
#include "llep/experts/grouped_tiles.hpp"
#include "llep/experts/swiglu_base.hpp"
#include "llep/experts/weight_layout.hpp"

namespace llep {

namespace detail::grouped_swiglu {

/// Block tile and staging, as data. BK: the K step of one shared-memory stage (two WMMA
/// steps for 16-bit types); pads keep rows 16-byte aligned and spread shared-memory banks.
template <class T>
struct Tuning {
  static constexpr int threads = 256;  // 8 warps: 4 along M x 2 along N, 32 x 32 each
  static constexpr int bm = 128, bn = 64;
  static constexpr int bk = sizeof(T) == 2 ? 32 : 16;
  static constexpr int vec = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte load
  static constexpr int a_ld = bk + vec, b_ld = bn + vec, c_ld = bn + 4;
  static constexpr int a_elems = bm * a_ld, b_elems = bk * b_ld;
  static constexpr std::size_t stage_bytes = (a_elems + b_elems) * sizeof(T);
  static constexpr std::size_t c_bytes = static_cast<std::size_t>(bm) * c_ld * sizeof(float);
  static constexpr std::size_t smem_bytes = 2 * stage_bytes > c_bytes ? 2 * stage_bytes : c_bytes;
  static_assert(bm * bk / vec == 2 * threads && bk * bn / vec == threads, "one B and two A vectors per thread");
  static_assert(smem_bytes <= 48 * 1024, "static shared memory");
};

/// What both launches read. `h` is [max_rows x H]; a task's h rows start at the sum of
/// the rows of the tasks before it.
template <class T, class Act>
struct Args {
  const ExpertTask<T>* tasks;
  const std::int32_t* count;
  int max_tasks;
  count_t max_rows;
  T* h;
  ExpertShape shape;
  Act act;
};

template <class T>
struct TaskRowsOf {
  const ExpertTask<T>* tasks;
  __device__ count_t operator()(int i) const { return tasks[i].rows; }
};

struct AddTileCount {
  __device__ TileCount operator()(const TileCount& a, const TileCount& b) const {
    return {a.tiles + b.tiles, a.rows + b.rows};
  }
};

/// The block-wide scan of GroupedTiles::find: chunks of `threads` tasks.
template <class T, int Threads>
struct BlockTileScan {
  using Scan = cub::BlockScan<TileCount, Threads>;
  typename Scan::TempStorage* storage;
  TaskRowsOf<T> rows_of;
  GroupedTiles tiles;
  __device__ TileCount operator()(int base, int n, TileCount* prefix) const {
    __syncthreads();  // the previous chunk's prefix has been read
    TileCount mine;
    if (static_cast<int>(threadIdx.x) < n) {
      const count_t r = rows_of(base + static_cast<int>(threadIdx.x));
      mine = {tiles.tiles_of(r), r > 0 ? r : 0};
    }
    TileCount incl;
    Scan(*storage).InclusiveScan(mine, incl, AddTileCount{});
    if (static_cast<int>(threadIdx.x) < n) prefix[threadIdx.x] = incl;
    __syncthreads();
    return prefix[n - 1];
  }
};

/// One (row tile, column tile blockIdx.y) of a launch: the operands through shared memory
/// (`smem`, Tuning<T>::smem_bytes), fp32 accumulation, then the epilogue.
template <bool Gate, class T, class Act>
__device__ void gemm_tile(const Args<T, Act>& a, const TileSlot& slot, unsigned char* smem) {
  using Tn = Tuning<T>;
  using E = element<T>;
  constexpr int threads = Tn::threads, bm = Tn::bm, bn = Tn::bn, bk = Tn::bk, vec = Tn::vec, half_n = bn / 2;
  const ExpertTask<T> task = a.tasks[slot.task];
  const int D = a.shape.hidden, H = a.shape.intermediate;
  const auto Hz = static_cast<std::size_t>(H), Dz = static_cast<std::size_t>(D);
  const std::size_t h_row = static_cast<std::size_t>(slot.row_offset + slot.row_begin);
  const int rows = static_cast<int>(slot.rows);

  // A [rows x K] (lda = K), B [K x ldb]; local column c of the block maps to global column
  // col(c), valid while lim_index(c) < lim.
  const T* A = Gate ? task.in + static_cast<std::size_t>(slot.row_begin) * Dz : a.h + h_row * Hz;
  const T* B = task.weights + (Gate ? a.shape.gate_up_offset() : a.shape.down_offset());
  const int K = Gate ? D : H, ldb = Gate ? 2 * H : D, lim = Gate ? H : D;
  const int n0 = static_cast<int>(blockIdx.y) * (Gate ? half_n : bn);
  auto lim_index = [&](int c) { return Gate ? n0 + c % half_n : n0 + c; };
  auto col = [&](int c) { return Gate && c >= half_n ? H + n0 + c - half_n : n0 + c; };
  const bool vectors = D % vec == 0 && H % vec == 0 && reinterpret_cast<std::uintptr_t>(A) % 16 == 0 &&
                       reinterpret_cast<std::uintptr_t>(task.weights) % 16 == 0;

  T* As = reinterpret_cast<T*>(smem);
  T* Bs = As + 2 * Tn::a_elems;  // two A stages, then two B stages
  const int tid = static_cast<int>(threadIdx.x);
  uint4 ra[2], rb;
  const T zero = E::from_float(0.0f);

  auto load = [&](int k0) {
#pragma unroll
    for (int v = 0; v < 2; ++v) {
      const int idx = tid + v * threads, r = idx / (bk / vec), k = k0 + idx % (bk / vec) * vec;
      T* e = reinterpret_cast<T*>(&ra[v]);
      if (vectors) {
        ra[v] = r < rows && k < K ? *reinterpret_cast<const uint4*>(A + static_cast<std::size_t>(r) * K + k)
                                  : make_uint4(0, 0, 0, 0);
      } else {
#pragma unroll
        for (int i = 0; i < vec; ++i)
          e[i] = r < rows && k + i < K ? A[static_cast<std::size_t>(r) * K + k + i] : zero;
      }
    }
    const int kr = tid / (bn / vec), c = tid % (bn / vec) * vec, k = k0 + kr;
    if (vectors) {
      rb = k < K && lim_index(c) < lim ? *reinterpret_cast<const uint4*>(B + static_cast<std::size_t>(k) * ldb + col(c))
                                       : make_uint4(0, 0, 0, 0);
    } else {
      T* e = reinterpret_cast<T*>(&rb);
#pragma unroll
      for (int i = 0; i < vec; ++i)
        e[i] = k < K && lim_index(c + i) < lim ? B[static_cast<std::size_t>(k) * ldb + col(c + i)] : zero;
    }
  };
  auto store = [&](int s) {
#pragma unroll
    for (int v = 0; v < 2; ++v) {
      const int idx = tid + v * threads, r = idx / (bk / vec), k = idx % (bk / vec) * vec;
      *reinterpret_cast<uint4*>(As + s * Tn::a_elems + r * Tn::a_ld + k) = ra[v];
    }
    const int kr = tid / (bn / vec), c = tid % (bn / vec) * vec;
    *reinterpret_cast<uint4*>(Bs + s * Tn::b_elems + kr * Tn::b_ld + c) = rb;
  };

  const int warp = tid / 32, wm = warp % 4, wn = warp / 4;
  float* Cs = reinterpret_cast<float*>(smem);  // the epilogue reuses the stages
  constexpr bool tensor_cores = !std::is_same_v<T, float>;
  using namespace nvcuda;
  using AccFrag = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  using AFrag = std::conditional_t<tensor_cores, wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>, int>;
  using BFrag = std::conditional_t<tensor_cores, wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>, int>;
  AccFrag acc[2][2];
  float facc[8][4];  // float: 8 rows x 4 columns per thread
  if constexpr (tensor_cores) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) facc[i][j] = 0.0f;
  }
  auto compute = [&](int s) {
    const T* as = As + s * Tn::a_elems;
    const T* bs = Bs + s * Tn::b_elems;
    if constexpr (tensor_cores) {
#pragma unroll
      for (int kk = 0; kk < bk; kk += 16) {
        AFrag af[2];
        BFrag bf[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(af[i], as + (wm * 32 + i * 16) * Tn::a_ld + kk, Tn::a_ld);
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(bf[j], bs + kk * Tn::b_ld + wn * 32 + j * 16, Tn::b_ld);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], af[i], bf[j], acc[i][j]);
      }
    } else {
      const int ty = tid / 16, tx = tid % 16;
#pragma unroll
      for (int k = 0; k < bk; ++k) {
        float av[8], bv[4];
#pragma unroll
        for (int i = 0; i < 8; ++i) av[i] = as[(ty * 8 + i) * Tn::a_ld + k];
#pragma unroll
        for (int j = 0; j < 4; ++j) bv[j] = bs[k * Tn::b_ld + tx * 4 + j];
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) facc[i][j] = fmaf(av[i], bv[j], facc[i][j]);
      }
    }
  };

  // Main loop: the next K step's global loads are in flight while this one computes.
  const int steps = (K + bk - 1) / bk;
  load(0);
  store(0);
  __syncthreads();
  for (int t = 0; t < steps; ++t) {
    if (t + 1 < steps) load((t + 1) * bk);
    compute(t % 2);
    if (t + 1 < steps) store((t + 1) % 2);
    __syncthreads();
  }

  // Epilogue: the fp32 tile goes through shared memory, then out with the biases.
  if constexpr (tensor_cores) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * Tn::c_ld + wn * 32 + j * 16, acc[i][j], Tn::c_ld,
                                wmma::mem_row_major);
  } else {
    const int ty = tid / 16, tx = tid % 16;
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) Cs[(ty * 8 + i) * Tn::c_ld + tx * 4 + j] = facc[i][j];
  }
  __syncthreads();
  if constexpr (Gate) {
    const T* b_gu = Act::has_bias ? task.weights + a.shape.gate_up_bias_offset() : nullptr;
    for (int idx = tid; idx < bm * half_n; idx += threads) {
      const int r = idx / half_n, c = idx % half_n, j = n0 + c;
      if (r >= rows || j >= H) continue;
      float gate = Cs[r * Tn::c_ld + c], up = Cs[r * Tn::c_ld + half_n + c];
      if constexpr (Act::has_bias) {
        gate += E::to_float(b_gu[j]);
        up += E::to_float(b_gu[H + j]);
      }
      a.h[(h_row + static_cast<std::size_t>(r)) * Hz + static_cast<std::size_t>(j)] = E::from_float(a.act(gate, up));
    }
  } else {
    const T* b_down = Act::has_bias ? task.weights + a.shape.down_bias_offset() : nullptr;
    T* out = task.out + static_cast<std::size_t>(slot.row_begin) * Dz;
    for (int idx = tid; idx < bm * bn; idx += threads) {
      const int r = idx / bn, c = idx % bn, d = n0 + c;
      if (r >= rows || d >= D) continue;
      float v = Cs[r * Tn::c_ld + c];
      if constexpr (Act::has_bias) v += E::to_float(b_down[d]);
      out[static_cast<std::size_t>(r) * Dz + static_cast<std::size_t>(d)] = E::from_float(v);
    }
  }
}

/// One grouped GEMM launch; Gate: launch 1 (x W_gu, activation into h), else launch 2
/// (h W_down into out). Block (x, y) runs row tiles x, x + gridDim.x, ... of column tile y
/// until the scheduler says there are no more, so a grid smaller than the tile count (the
/// host caps it at a few waves) covers them all, and a loose bound costs one scan a block.
template <bool Gate, class T, class Act>
LLEP_KERNEL void __launch_bounds__(Tuning<T>::threads) grouped_swiglu_gemm(Args<T, Act> a) {
  using Tn = Tuning<T>;
  constexpr int threads = Tn::threads;
  __shared__ typename BlockTileScan<T, threads>::Scan::TempStorage scan_storage;
  __shared__ __align__(16) unsigned char prefix_bytes[threads * sizeof(TileCount)];
  auto* prefix = reinterpret_cast<TileCount*>(prefix_bytes);
  __shared__ __align__(128) unsigned char smem[Tn::smem_bytes];

  // Which rows: the tile scheduler, shared with the host tests. Every branch below is
  // block-uniform (the scan's result is in shared memory); the scan's barriers also order
  // one tile's epilogue before the next tile's loads into the same shared memory.
  const GroupedTiles tiles{Tn::bm};
  std::int32_t count = *a.count;
  count = count < 0 ? 0 : (count > a.max_tasks ? a.max_tasks : count);
  const TaskRowsOf<T> rows_of{a.tasks};
  for (count_t tile = blockIdx.x;; tile += gridDim.x) {
    const TileSlot slot =
        tiles.find(rows_of, count, tile, threads, prefix, BlockTileScan<T, threads>{&scan_storage, rows_of, tiles});
    if (slot.task < 0) return;
    if (slot.row_offset + slot.row_begin + slot.rows > a.max_rows) continue;  // past the bound: not computed
    gemm_tile<Gate>(a, slot, smem);
  }
}

}  // namespace detail::grouped_swiglu

template <class T, class Act = SiluGlu>
class GroupedSwiGlu : public SwiGluBase<T, Act> {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half> || std::is_same_v<T, float>,
                "llep: GroupedSwiGlu<T> supports T = __nv_bfloat16, __half or float");
  static_assert(std::is_trivially_copyable_v<Act>, "llep: the activation functor must be trivially copyable");
  using Tn = detail::grouped_swiglu::Tuning<T>;

 public:
  using value_type = T;
  /// Rows of one tile (GroupedTiles{tile_rows} schedules them).
  static constexpr int tile_rows = Tn::bm;

  /// `row_blocks`: at most this many blocks along the rows of each launch, each looping
  /// over row tiles; 0 (the default) sizes them to about two waves of the device's
  /// resident blocks. Every value gives the same bits (tests use 1-3 to exercise the loop).
  explicit GroupedSwiGlu(ExpertShape shape, Act act = Act{}, int row_blocks = 0)
      : SwiGluBase<T, Act>(shape, act), row_blocks_(row_blocks) {
    LLEP_EXPECTS(row_blocks >= 0, "row_blocks = ", row_blocks, " must be >= 0 (0: from the device)");
    LLEP_EXPECTS(2 * shape_.h() <= static_cast<std::size_t>(std::numeric_limits<int>::max()), "2H = ", 2 * shape_.h(),
                 " exceeds int");
    LLEP_EXPECTS(shape_.h() / (Tn::bn / 2) < 65535 && shape_.d() / Tn::bn < 65535, "D = ", shape_.d(), ", H = ",
                 shape_.h(), " need more than 65535 column tiles");
  }

  /// compute_sized's scratch: h for max_rows rows, plus 256 bytes to align it.
  [[nodiscard]] std::size_t sized_scratch_bytes(int max_tasks, count_t max_rows) const {
    LLEP_EXPECTS(max_tasks >= 0 && max_rows >= 0, "max_tasks = ", max_tasks, ", max_rows = ", max_rows,
                 " must be >= 0");
    if (max_tasks == 0 || max_rows == 0) return 0;
    return static_cast<std::size_t>(max_rows) * shape_.h() * sizeof(T) + 256;
  }

  /// compute's scratch: the task list it uploads (at most one task with rows per row) and
  /// its count, then compute_sized's.
  [[nodiscard]] std::size_t scratch_bytes(count_t max_task_rows, count_t total_rows) const {
    this->check_scratch_request(max_task_rows, total_rows);
    if (max_task_rows == 0) return 0;
    return 256 + task_image_bytes(static_cast<std::size_t>(total_rows)) +
           sized_scratch_bytes(static_cast<int>(std::min<count_t>(total_rows, std::numeric_limits<int>::max())),
                               total_rows);
  }

  /// Runs tasks[0, *count) on exec's stream in two launches, with no host synchronisation
  /// and no allocation (capturable in a CUDA graph). `sized.tasks`, `sized.count` and
  /// `scratch` (sized_scratch_bytes(max_tasks, max_rows)) are device memory.
  void compute_sized(CudaExec& exec, SizedTasks<T> sized, void* scratch) const {
    LLEP_EXPECTS(sized.max_tasks >= 0 && sized.max_rows >= 0 && sized.max_task_rows >= 0, "bounds max_tasks = ",
                 sized.max_tasks, ", max_rows = ", sized.max_rows, ", max_task_rows = ", sized.max_task_rows,
                 " must be >= 0");
    const count_t grid = GroupedTiles{tile_rows}.grid_bound(sized.max_tasks, sized.max_rows, sized.max_task_rows);
    if (grid == 0) return;
    LLEP_EXPECTS(sized.tasks != nullptr && sized.count != nullptr && scratch != nullptr,
                 "compute_sized needs the device task array, count and scratch (sized_scratch_bytes = ",
                 sized_scratch_bytes(sized.max_tasks, sized.max_rows), ")");
    auto* base = static_cast<std::byte*>(scratch);
    base += (256 - reinterpret_cast<std::uintptr_t>(base) % 256) % 256;
    const detail::grouped_swiglu::Args<T, Act> args{sized.tasks,      sized.count, sized.max_tasks, sized.max_rows,
                                                    reinterpret_cast<T*>(base), shape_,   act_};
    launch<true>(exec, args, grid, static_cast<unsigned>((shape_.h() + Tn::bn / 2 - 1) / (Tn::bn / 2)));
    launch<false>(exec, args, grid, static_cast<unsigned>((shape_.d() + Tn::bn - 1) / Tn::bn));
  }

  /// ExpertCompute: uploads the tasks with rows and their count to `scratch`
  /// (scratch_bytes(max rows of one task, total rows)), then compute_sized with the exact
  /// bounds. The pageable upload is staged before it returns; nothing waits for the device.
  void compute(CudaExec& exec, std::span<const ExpertTask<T>> tasks, void* scratch) const {
    count_t max_rows = 0, total = 0;
    this->scan_tasks(tasks, max_rows, total);
    if (max_rows == 0) return;
    LLEP_EXPECTS(scratch != nullptr, "compute needs scratch (scratch_bytes = ", scratch_bytes(max_rows, total),
                 ") but got a null pointer");
    std::vector<ExpertTask<T>> busy;
    for (const ExpertTask<T>& t : tasks)
      if (t.rows > 0) busy.push_back(t);
    const auto n = static_cast<std::int32_t>(busy.size());
    const std::size_t list = busy.size() * sizeof(ExpertTask<T>);
    std::vector<std::byte> image(list + sizeof(std::int32_t));
    std::memcpy(image.data(), busy.data(), list);
    std::memcpy(image.data() + list, &n, sizeof n);
    auto* base = static_cast<std::byte*>(scratch);
    base += (256 - reinterpret_cast<std::uintptr_t>(base) % 256) % 256;
    exec.from_host(base, image.data(), image.size());
    const SizedTasks<T> sized{reinterpret_cast<const ExpertTask<T>*>(base),
                              reinterpret_cast<const std::int32_t*>(base + list), n, total, max_rows};
    compute_sized(exec, sized, base + task_image_bytes(busy.size()));
  }

 private:
  using SwiGluBase<T, Act>::shape_;
  using SwiGluBase<T, Act>::act_;

  int row_blocks_ = 0;

  // Host calls only (attribute and occupancy queries, a launch): legal in stream capture.
  template <bool Gate>
  void launch(CudaExec& exec, const detail::grouped_swiglu::Args<T, Act>& args, count_t tiles, unsigned cols) const {
    auto* kernel = detail::grouped_swiglu::grouped_swiglu_gemm<Gate, T, Act>;
    count_t x = row_blocks_;
    if (x == 0) {
      int device = 0, sms = 0, per_sm = 0;
      LLEP_CUDA_CHECK(cudaGetDevice(&device));
      LLEP_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
      LLEP_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, Tn::threads, 0));
      const count_t resident = static_cast<count_t>(std::max(sms, 1)) * std::max(per_sm, 1);
      x = (2 * resident + cols - 1) / cols;
    }
    x = std::min(x, tiles);
    kernel<<<dim3(static_cast<unsigned>(x), cols), Tn::threads, 0, exec.stream()>>>(args);
    LLEP_CUDA_CHECK(cudaGetLastError());
  }

  static std::size_t task_image_bytes(std::size_t tasks) {
    return Carve::align(tasks * sizeof(ExpertTask<T>) + sizeof(std::int32_t));
  }
};

static_assert(check_sized_expert_compute<GroupedSwiGlu<__nv_bfloat16>, CudaExec>());
static_assert(SizedExpertCompute<GroupedSwiGlu<float, GptOssGlu>, CudaExec>);

}  // namespace llep
