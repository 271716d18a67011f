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
// along rows of row-major operands when strides, sizes and pointers allow, element loads
// otherwise (one building block, tile_product, serves every GEMM below).
//
// Backward (ExpertBackward, and the device-sized SizedExpertBackward: backward_sized)
// recomputes gate|up (nothing is saved in forward) and runs, over the same row tiles,
//   dh = dy W_down^T (fp32 scratch);  gu = x W_gu -> h = Act(gate, up), dgu = dh * Act'
//   (T scratch, as CublasSwiGlu);  grad_in = dgu W_gu^T
// and the weight gradients dW_down (+)= h^T dy, dW_gu (+)= x^T dgu and the bias column
// sums as tiles of the weights: the block of a tile sums the rows of every task sharing
// that gradient buffer in task order, in fp32, and writes once (no atomics: the same bits
// on every replay). Transposed operands use element loads: correct, not yet fast.
// Scratch holds h for max_rows rows (forward); links, dh, h and dgu (backward).
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
#include "llep/experts/expert_backward.hpp"
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

/// A matrix operand as a block tile reads it: element (i, j) at p[i * rs + j * cs], zero
/// outside [0, rows) x [0, cols). The same building block serves row-major operands (cs =
/// 1: 16-byte loads along j when the strides, the extent and p allow) and transposed ones
/// (element loads).
template <class T>
struct View {
  const T* p = nullptr;
  std::size_t rs = 0, cs = 1;
  int rows = 0, cols = 0;

  __device__ bool vectors() const {
    constexpr int vec = Tuning<T>::vec;
    return cs == 1 && rs % vec == 0 && cols % vec == 0 && reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
  }
  __device__ T at(int i, int j) const {
    return i < rows && j < cols ? p[static_cast<std::size_t>(i) * rs + static_cast<std::size_t>(j) * cs]
                                : element<T>::from_float(0.0f);
  }
  // Elements (i, j .. j + vec): j is a multiple of vec and vectors() holds.
  __device__ uint4 vec_at(int i, int j) const {
    return i < rows && j < cols ? *reinterpret_cast<const uint4*>(p + static_cast<std::size_t>(i) * rs + j)
                                : make_uint4(0, 0, 0, 0);
  }
};

/// The fp32 accumulators of one bm x bn block tile: WMMA fragments (16-bit T: 8 warps, 4
/// along M x 2 along N, 32 x 32 each) or per-thread FMA registers (float: 8 rows x 4 columns).
template <class T>
struct TileAcc {
  static constexpr bool tensor_cores = !std::is_same_v<T, float>;
  using Frag = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
  Frag acc[2][2];
  float facc[8][4];

  __device__ void zero() {
    if constexpr (tensor_cores) {
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(acc[i][j], 0.0f);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) facc[i][j] = 0.0f;
    }
  }

  // One shared-memory stage: as [bm x bk] (ld a_ld), bs [bk x bn] (ld b_ld).
  __device__ void mma(const T* as, const T* bs) {
    using Tn = Tuning<T>;
    const int tid = static_cast<int>(threadIdx.x);
    if constexpr (tensor_cores) {
      using namespace nvcuda;
      const int warp = tid / 32, wm = warp % 4, wn = warp / 4;
#pragma unroll
      for (int kk = 0; kk < Tn::bk; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> af[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bf[2];
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
      for (int k = 0; k < Tn::bk; ++k) {
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
  }

  /// The tile into shared memory as fp32 [bm x bn] (ld c_ld), visible to the whole block.
  /// `smem` must be free (tile_product ends with a barrier).
  __device__ float* store(unsigned char* smem) const {
    using Tn = Tuning<T>;
    auto* Cs = reinterpret_cast<float*>(smem);
    const int tid = static_cast<int>(threadIdx.x);
    if constexpr (tensor_cores) {
      const int warp = tid / 32, wm = warp % 4, wn = warp / 4;
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
          nvcuda::wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * Tn::c_ld + wn * 32 + j * 16, acc[i][j], Tn::c_ld,
                                          nvcuda::wmma::mem_row_major);
    } else {
      const int ty = tid / 16, tx = tid % 16;
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) Cs[(ty * 8 + i) * Tn::c_ld + tx * 4 + j] = facc[i][j];
    }
    __syncthreads();
    return Cs;
  }
};

/// acc += A B for one block tile, over K = a.cols: A(m, k) = a.at(m, k) for the tile's bm
/// rows, B(k, n) = n < split ? b_lo.at(k, n) : b_hi.at(k, n - split) for its bn columns
/// (split is a multiple of vec; forward's gate|up tile reads its gate and up halves from
/// two places). Operands go through shared memory (`smem`, Tuning<T>::smem_bytes), double
/// buffered: the next K step's global loads are in flight while this one computes. Adds
/// onto `acc`, so several calls sum a K that spans tasks. The first store to `smem` must
/// be ordered after its previous readers by the caller; it ends with a barrier.
template <class T>
__device__ void tile_product(const View<T>& a, const View<T>& b_lo, const View<T>& b_hi, int split,
                             unsigned char* smem, TileAcc<T>& acc) {
  using Tn = Tuning<T>;
  constexpr int threads = Tn::threads, bn = Tn::bn, bk = Tn::bk, vec = Tn::vec;
  const int K = a.cols;
  if (K <= 0) return;
  const bool va = a.vectors(), vb_lo = b_lo.vectors(), vb_hi = b_hi.vectors();
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = As + 2 * Tn::a_elems;  // two A stages, then two B stages
  const int tid = static_cast<int>(threadIdx.x);
  uint4 ra[2], rb;

  auto load = [&](int k0) {
#pragma unroll
    for (int v = 0; v < 2; ++v) {
      const int idx = tid + v * threads, r = idx / (bk / vec), k = k0 + idx % (bk / vec) * vec;
      if (va) {
        ra[v] = a.vec_at(r, k);
      } else {
        T* e = reinterpret_cast<T*>(&ra[v]);
#pragma unroll
        for (int i = 0; i < vec; ++i) e[i] = a.at(r, k + i);
      }
    }
    const int kr = tid / (bn / vec), c = tid % (bn / vec) * vec, k = k0 + kr;
    const bool lo = c < split;
    const View<T>& b = lo ? b_lo : b_hi;
    const int bc = lo ? c : c - split;
    if (lo ? vb_lo : vb_hi) {
      rb = b.vec_at(k, bc);
    } else {
      T* e = reinterpret_cast<T*>(&rb);
#pragma unroll
      for (int i = 0; i < vec; ++i) e[i] = b.at(k, bc + i);
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

  const int steps = (K + bk - 1) / bk;
  load(0);
  store(0);
  __syncthreads();
  for (int t = 0; t < steps; ++t) {
    if (t + 1 < steps) load((t + 1) * bk);
    acc.mma(As + (t % 2) * Tn::a_elems, Bs + (t % 2) * Tn::b_elems);
    if (t + 1 < steps) store((t + 1) % 2);
    __syncthreads();
  }
}

/// f(r, n0 + c, v) for every element v = Cs[r][c] of the fp32 tile in shared memory whose
/// row r < rows and column n0 + c < cols: the epilogues that store a tile.
template <class T, class F>
__device__ void tile_elements(const float* Cs, int rows, int n0, int cols, F f) {
  using Tn = Tuning<T>;
  for (int idx = static_cast<int>(threadIdx.x); idx < Tn::bm * Tn::bn; idx += Tn::threads) {
    const int r = idx / Tn::bn, c = idx % Tn::bn;
    if (r < rows && n0 + c < cols) f(r, n0 + c, Cs[r * Tn::c_ld + c]);
  }
}

/// gate|up of `rows` rows of x (row-major, D wide) for the columns [n0, n0 + bn / 2) of H:
/// x W_gu through the tile (gate and up columns side by side), then f(r, j, gate, up) with
/// the biases added, for every row r < rows and column j < H. Forward's first launch and
/// backward's recompute.
template <class T, class Act, class F>
__device__ void gate_up_tile(const T* weights, const T* x, int rows, const ExpertShape& shape, int n0,
                             unsigned char* smem, F f) {
  using Tn = Tuning<T>;
  constexpr int half_n = Tn::bn / 2;
  const int D = shape.hidden, H = shape.intermediate;
  const T* w_gu = weights + shape.gate_up_offset();
  const View<T> gate{w_gu + n0, 2 * shape.h(), 1, D, H - n0}, up{w_gu + H + n0, 2 * shape.h(), 1, D, H - n0};
  TileAcc<T> acc;
  acc.zero();
  tile_product(View<T>{x, shape.d(), 1, rows, D}, gate, up, half_n, smem, acc);
  const float* Cs = acc.store(smem);
  const T* b_gu = Act::has_bias ? weights + shape.gate_up_bias_offset() : nullptr;
  for (int idx = static_cast<int>(threadIdx.x); idx < Tn::bm * half_n; idx += Tn::threads) {
    const int r = idx / half_n, c = idx % half_n, j = n0 + c;
    if (r >= rows || j >= H) continue;
    float g = Cs[r * Tn::c_ld + c], u = Cs[r * Tn::c_ld + half_n + c];
    if constexpr (Act::has_bias) {
      g += element<T>::to_float(b_gu[j]);
      u += element<T>::to_float(b_gu[H + j]);
    }
    f(r, j, g, u);
  }
}

/// What both forward launches read. `h` is [max_rows x H]; a task's h rows start at the
/// sum of the rows of the tasks before it.
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

template <class Task>
struct TaskRowsOf {
  const Task* tasks;
  __device__ count_t operator()(int i) const { return tasks[i].rows; }
};

struct AddTileCount {
  __device__ TileCount operator()(const TileCount& a, const TileCount& b) const {
    return {a.tiles + b.tiles, a.rows + b.rows};
  }
};

/// The block-wide scan of GroupedTiles::find: chunks of `Threads` tasks.
template <class Task, int Threads>
struct BlockTileScan {
  using Scan = cub::BlockScan<TileCount, Threads>;
  typename Scan::TempStorage* storage;
  TaskRowsOf<Task> rows_of;
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

/// The count read from device memory, clamped to [0, max_tasks].
__device__ inline std::int32_t clamped_count(const std::int32_t* count, int max_tasks) {
  const std::int32_t n = *count;
  return n < 0 ? 0 : (n > max_tasks ? max_tasks : n);
}

/// Runs body(slot) for row tiles blockIdx.x, blockIdx.x + gridDim.x, ... of tasks[0,
/// count), until the scheduler (experts/grouped_tiles.hpp, shared with the host tests)
/// says there are no more; a tile whose rows end past max_rows (a broken bound) is
/// skipped. Every branch is block-uniform (the scan's result is in shared memory); the
/// scan's barriers also order one tile's epilogue before the next tile's loads.
template <class T, class Task, class Body>
__device__ void for_each_row_tile(const Task* tasks, const std::int32_t* count_ptr, int max_tasks, count_t max_rows,
                                  Body body) {
  constexpr int Threads = Tuning<T>::threads;
  __shared__ typename BlockTileScan<Task, Threads>::Scan::TempStorage scan_storage;
  __shared__ __align__(16) unsigned char prefix_bytes[Threads * sizeof(TileCount)];
  auto* prefix = reinterpret_cast<TileCount*>(prefix_bytes);
  const GroupedTiles tiles{Tuning<T>::bm};
  const std::int32_t count = clamped_count(count_ptr, max_tasks);
  const TaskRowsOf<Task> rows_of{tasks};
  for (count_t tile = blockIdx.x;; tile += gridDim.x) {
    const TileSlot slot = tiles.find(rows_of, count, tile, Threads, prefix,
                                     BlockTileScan<Task, Threads>{&scan_storage, rows_of, tiles});
    if (slot.task < 0) return;
    if (slot.row_offset + slot.row_begin + slot.rows > max_rows) continue;  // past the bound: not computed
    body(slot);
  }
}

/// One (row tile, column tile blockIdx.y) of a forward launch, then its epilogue.
template <bool Gate, class T, class Act>
__device__ void gemm_tile(const Args<T, Act>& a, const TileSlot& slot, unsigned char* smem) {
  using Tn = Tuning<T>;
  using E = element<T>;
  const ExpertTask<T> task = a.tasks[slot.task];
  const int D = a.shape.hidden, H = a.shape.intermediate;
  const auto Hz = static_cast<std::size_t>(H), Dz = static_cast<std::size_t>(D);
  const std::size_t h_row = static_cast<std::size_t>(slot.row_offset + slot.row_begin);
  const int rows = static_cast<int>(slot.rows);
  if constexpr (Gate) {  // h = Act(gate, up)
    gate_up_tile<T, Act>(task.weights, task.in + static_cast<std::size_t>(slot.row_begin) * Dz, rows, a.shape,
                         static_cast<int>(blockIdx.y) * (Tn::bn / 2), smem, [&](int r, int j, float gate, float up) {
                           a.h[(h_row + static_cast<std::size_t>(r)) * Hz + static_cast<std::size_t>(j)] =
                               E::from_float(a.act(gate, up));
                         });
  } else {  // out = h W_down + b_down
    const int n0 = static_cast<int>(blockIdx.y) * Tn::bn;
    const View<T> down{task.weights + a.shape.down_offset() + n0, Dz, 1, H, D - n0};
    TileAcc<T> acc;
    acc.zero();
    tile_product(View<T>{a.h + h_row * Hz, Hz, 1, rows, H}, down, down, Tn::bn, smem, acc);
    const T* b_down = Act::has_bias ? task.weights + a.shape.down_bias_offset() : nullptr;
    T* out = task.out + static_cast<std::size_t>(slot.row_begin) * Dz;
    tile_elements<T>(acc.store(smem), rows, n0, D, [&](int r, int d, float v) {
      if constexpr (Act::has_bias) v += E::to_float(b_down[d]);
      out[static_cast<std::size_t>(r) * Dz + static_cast<std::size_t>(d)] = E::from_float(v);
    });
  }
}

/// One grouped GEMM launch; Gate: launch 1 (x W_gu, activation into h), else launch 2
/// (h W_down into out). Block (x, y) runs row tiles x, x + gridDim.x, ... of column tile y,
/// so a grid smaller than the tile count (the host caps it at a few waves) covers them all,
/// and a loose bound costs one scan a block.
template <bool Gate, class T, class Act>
LLEP_KERNEL void __launch_bounds__(Tuning<T>::threads) grouped_swiglu_gemm(Args<T, Act> a) {
  __shared__ __align__(128) unsigned char smem[Tuning<T>::smem_bytes];
  for_each_row_tile<T>(a.tasks, a.count, a.max_tasks, a.max_rows,
                       [&](const TileSlot& slot) { gemm_tile<Gate>(a, slot, smem); });
}

// ---- backward (backward_sized) ----

/// Where task i's rows sit in the scratch rows (the sum of the rows of the tasks before
/// it), the next task after it with the same grad_weights buffer (-1: none), and whether
/// it leads its buffer (the first task with it; the leader's blocks write the buffer).
struct TaskLink {
  count_t row_offset = 0;
  std::int32_t next = -1;
  std::int32_t lead = 0;
};

/// What the backward launches read. Scratch rows (a task's start at its row_offset):
/// dh = dy W_down^T [max_rows x H] in fp32, h = Act(gate, up) [max_rows x H] and dgu =
/// dh * (d_gate | d_up) [max_rows x 2H] in T (the GEMM operands, as CublasSwiGlu).
template <class T, class G, class Act>
struct GradArgs {
  const ExpertGradTask<T, G>* tasks;
  const std::int32_t* count;
  int max_tasks;
  count_t max_rows;
  TaskLink* links;
  float* dh;
  T* h;
  T* dgu;
  ExpertShape shape;
  Act act;
  bool accumulate;
};

/// One block: the tasks' row offsets (a block-wide scan in chunks) and their links
/// (quadratic in the count: a few tasks per rank, as detail::first_writer on the host).
template <int Threads, class T, class G, class Act>
LLEP_KERNEL void __launch_bounds__(Threads) grouped_grad_links(GradArgs<T, G, Act> a) {
  using Scan = cub::BlockScan<count_t, Threads>;
  __shared__ typename Scan::TempStorage storage;
  const std::int32_t count = clamped_count(a.count, a.max_tasks);
  const int tid = static_cast<int>(threadIdx.x);
  count_t carry = 0;
  for (int base = 0; base < count; base += Threads) {
    const int i = base + tid;
    const count_t r = i < count ? a.tasks[i].rows : 0;
    count_t before = 0, total = 0;
    Scan(storage).ExclusiveSum(r > 0 ? r : 0, before, total);
    __syncthreads();  // storage is reused by the next chunk
    if (i < count) a.links[i].row_offset = carry + before;
    carry += total;
  }
  for (int i = tid; i < count; i += Threads) {
    const G* g = a.tasks[i].grad_weights;
    std::int32_t lead = g != nullptr, next = -1;
    for (int j = 0; j < i && lead; ++j) lead = a.tasks[j].grad_weights != g;
    for (int j = i + 1; j < count && g != nullptr && next < 0; ++j)
      if (a.tasks[j].grad_weights == g) next = j;
    a.links[i].lead = lead;
    a.links[i].next = next;
  }
}

/// The stages of backward over row tiles (GroupedTiles, as forward):
///   dh    dh = dy W_down^T                                columns of H, fp32 into scratch
///   gate  gu = x W_gu (recomputed) -> h, dgu                 columns of H (gate and up)
///   dx    grad_in = dgu W_gu^T                            columns of D, tasks with grad_in
enum class RowStage { dh, gate, dx };

template <RowStage Stage, class T, class G, class Act>
__device__ void grad_row_tile(const GradArgs<T, G, Act>& a, const TileSlot& slot, unsigned char* smem) {
  using Tn = Tuning<T>;
  using E = element<T>;
  const ExpertGradTask<T, G> task = a.tasks[slot.task];
  if (Stage == RowStage::dx && task.grad_in == nullptr) return;
  const int D = a.shape.hidden, H = a.shape.intermediate;
  const auto Hz = static_cast<std::size_t>(H), Dz = static_cast<std::size_t>(D), H2 = 2 * Hz;
  const std::size_t row = static_cast<std::size_t>(slot.row_offset + slot.row_begin);  // scratch row
  const std::size_t begin = static_cast<std::size_t>(slot.row_begin);                  // task row
  const int rows = static_cast<int>(slot.rows);

  if constexpr (Stage == RowStage::gate) {
    gate_up_tile<T, Act>(task.weights, task.in + begin * Dz, rows, a.shape, static_cast<int>(blockIdx.y) * (Tn::bn / 2),
                         smem, [&](int r, int j, float gate, float up) {
                           const GluGrad<float> q = a.act.template grad<float>(gate, up);
                           const std::size_t at = row + static_cast<std::size_t>(r), jz = static_cast<std::size_t>(j);
                           const float dh = a.dh[at * Hz + jz];
                           a.h[at * Hz + jz] = E::from_float(q.value);
                           a.dgu[at * H2 + jz] = E::from_float(dh * q.d_gate);
                           a.dgu[at * H2 + Hz + jz] = E::from_float(dh * q.d_up);
                         });
  } else {
    const int n0 = static_cast<int>(blockIdx.y) * Tn::bn;
    TileAcc<T> acc;
    acc.zero();
    if constexpr (Stage == RowStage::dh) {  // B(k = d, n = j) = W_down[j][d]: transposed
      const View<T> w_down_t{task.weights + a.shape.down_offset() + static_cast<std::size_t>(n0) * Dz, 1, Dz, D, H - n0};
      tile_product(View<T>{task.grad_out + begin * Dz, Dz, 1, rows, D}, w_down_t, w_down_t, Tn::bn, smem, acc);
      tile_elements<T>(acc.store(smem), rows, n0, H, [&](int r, int j, float v) {
        a.dh[(row + static_cast<std::size_t>(r)) * Hz + static_cast<std::size_t>(j)] = v;
      });
    } else {  // B(k = c, n = d) = W_gu[d][c]: transposed
      const View<T> w_gu_t{task.weights + a.shape.gate_up_offset() + static_cast<std::size_t>(n0) * H2, 1, H2, 2 * H,
                           D - n0};
      tile_product(View<T>{a.dgu + row * H2, H2, 1, rows, 2 * H}, w_gu_t, w_gu_t, Tn::bn, smem, acc);
      T* dx = task.grad_in + begin * Dz;
      tile_elements<T>(acc.store(smem), rows, n0, D, [&](int r, int d, float v) {
        dx[static_cast<std::size_t>(r) * Dz + static_cast<std::size_t>(d)] = E::from_float(v);
      });
    }
  }
}

template <RowStage Stage, class T, class G, class Act>
LLEP_KERNEL void __launch_bounds__(Tuning<T>::threads) grouped_grad_rows(GradArgs<T, G, Act> a) {
  __shared__ __align__(128) unsigned char smem[Tuning<T>::smem_bytes];
  for_each_row_tile<T>(a.tasks, a.count, a.max_tasks, a.max_rows,
                       [&](const TileSlot& slot) { grad_row_tile<Stage>(a, slot, smem); });
}

/// Whether the task after following links is computed: it has rows that end within the
/// bound (a task past a broken bound adds nothing, its scratch rows were not written).
template <class T, class G, class Act>
__device__ bool computed(const GradArgs<T, G, Act>& a, const ExpertGradTask<T, G>& t, const TaskLink& l) {
  return t.rows > 0 && l.row_offset + t.rows <= a.max_rows;
}

/// Weight-gradient tiles of the shared-buffer writers:
///   dW_down [H x D] (+)= h^T dy      dW_gu [D x 2H] (+)= x^T dgu
/// Work item w (blocks stride over them) is tile w % per of leader task w / per; its block
/// sums the tile over the rows of every task of the leader's chain in task order (fp32, in
/// registers), then writes sum (overwrite) or old + sum (accumulate) once. No atomics: the
/// same bits whatever the grid. A chain without rows still zeroes the buffer under
/// overwrite.
template <class T, class G, class Act>
LLEP_KERNEL void __launch_bounds__(Tuning<T>::threads) grouped_grad_weights(GradArgs<T, G, Act> a) {
  using Tn = Tuning<T>;
  constexpr int bm = Tn::bm, bn = Tn::bn;
  __shared__ __align__(128) unsigned char smem[Tn::smem_bytes];
  const std::int32_t count = clamped_count(a.count, a.max_tasks);
  const int D = a.shape.hidden, H = a.shape.intermediate;
  const auto Hz = static_cast<std::size_t>(H), Dz = static_cast<std::size_t>(D), H2 = 2 * Hz;
  const long long down_cols = (D + bn - 1) / bn, gu_cols = (2 * H + bn - 1) / bn;
  const long long down_tiles = (H + bm - 1) / bm * down_cols, per = down_tiles + (D + bm - 1) / bm * gu_cols;
  for (long long w = blockIdx.x; w < count * per; w += gridDim.x) {
    const auto i = static_cast<std::int32_t>(w / per);
    if (!a.links[i].lead) continue;
    const bool down = w % per < down_tiles;
    const long long t = down ? w % per : w % per - down_tiles, cols = down ? down_cols : gu_cols;
    const int m0 = static_cast<int>(t / cols) * bm, n0 = static_cast<int>(t % cols) * bn;
    const int M = down ? H : D, N = down ? D : 2 * H;
    __syncthreads();  // the previous item's epilogue has read smem
    TileAcc<T> acc;
    acc.zero();
    bool any = false;
    for (std::int32_t j = i; j >= 0; j = a.links[j].next) {
      const ExpertGradTask<T, G> task = a.tasks[j];
      const TaskLink l = a.links[j];
      if (!computed(a, task, l)) continue;
      any = true;
      const int rows = static_cast<int>(task.rows);
      const auto off = static_cast<std::size_t>(l.row_offset);
      if (down) {  // A(m = j, k = r) = h[r][j], B(k = r, n = d) = dy[r][d]
        const View<T> b{task.grad_out + n0, Dz, 1, rows, D - n0};
        tile_product(View<T>{a.h + off * Hz + m0, 1, Hz, H - m0, rows}, b, b, bn, smem, acc);
      } else {  // A(m = d, k = r) = x[r][d], B(k = r, n = c) = dgu[r][c]
        const View<T> b{a.dgu + off * H2 + n0, H2, 1, rows, 2 * H - n0};
        tile_product(View<T>{task.in + m0, 1, Dz, D - m0, rows}, b, b, bn, smem, acc);
      }
    }
    if (!any && a.accumulate) continue;  // nothing to add
    G* out = a.tasks[i].grad_weights + (down ? a.shape.down_offset() : a.shape.gate_up_offset());
    tile_elements<T>(acc.store(smem), M - m0, n0, N, [&](int r, int n, float v) {
      G* dst = out + static_cast<std::size_t>(m0 + r) * static_cast<std::size_t>(N) + static_cast<std::size_t>(n);
      *dst = element<G>::from_float(a.accumulate ? element<G>::to_float(*dst) + v : v);
    });
  }
}

/// Bias gradients (activations with biases): one thread per column of (b_gu [2H], b_down
/// [D]) of a leader's buffer, the column sums of dgu and dy over its chain's rows in task
/// then row order, fp32, written once as the weights are.
template <class T, class G, class Act>
LLEP_KERNEL void grouped_grad_bias(GradArgs<T, G, Act> a) {
  const std::int32_t count = clamped_count(a.count, a.max_tasks);
  const auto H2 = 2 * a.shape.h(), D = a.shape.d();
  const std::size_t c = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= H2 + D) return;
  const bool gate_up = c < H2;
  for (std::int32_t i = static_cast<std::int32_t>(blockIdx.y); i < count; i += static_cast<std::int32_t>(gridDim.y)) {
    if (!a.links[i].lead) continue;
    float s = 0.0f;
    bool any = false;
    for (std::int32_t j = i; j >= 0; j = a.links[j].next) {
      const ExpertGradTask<T, G> task = a.tasks[j];
      const TaskLink l = a.links[j];
      if (!computed(a, task, l)) continue;
      any = true;
      const T* src = gate_up ? a.dgu + static_cast<std::size_t>(l.row_offset) * H2 + c : task.grad_out + (c - H2);
      const std::size_t stride = gate_up ? H2 : D;
      for (count_t r = 0; r < task.rows; ++r) s += element<T>::to_float(src[static_cast<std::size_t>(r) * stride]);
    }
    if (!any && a.accumulate) continue;
    G* dst = a.tasks[i].grad_weights + (gate_up ? a.shape.gate_up_bias_offset() + c : a.shape.down_bias_offset() + c - H2);
    *dst = element<G>::from_float(a.accumulate ? element<G>::to_float(*dst) + s : s);
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
    return 256 + task_image_bytes<ExpertTask<T>>(static_cast<std::size_t>(total_rows)) +
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
    launch(exec, detail::grouped_swiglu::grouped_swiglu_gemm<true, T, Act>, args, grid,
           static_cast<unsigned>((shape_.h() + Tn::bn / 2 - 1) / (Tn::bn / 2)));
    launch(exec, detail::grouped_swiglu::grouped_swiglu_gemm<false, T, Act>, args, grid,
           static_cast<unsigned>((shape_.d() + Tn::bn - 1) / Tn::bn));
  }

  /// ExpertCompute: uploads the tasks with rows and their count to `scratch`
  /// (scratch_bytes(max rows of one task, total rows)), then compute_sized with the exact
  /// bounds. The pageable upload is staged before it returns; nothing waits for the device.
  /// `saved` is accepted for ExpertBackward and not written: this functor keeps nothing
  /// (saved_row_bytes() == 0), its backward recomputes gate|up.
  void compute(CudaExec& exec, std::span<const ExpertTask<T>> tasks, void* scratch, void* saved = nullptr) const {
    (void)saved;
    count_t max_rows = 0, total = 0;
    this->scan_tasks(tasks, max_rows, total);
    if (max_rows == 0) return;
    LLEP_EXPECTS(scratch != nullptr, "compute needs scratch (scratch_bytes = ", scratch_bytes(max_rows, total),
                 ") but got a null pointer");
    std::vector<ExpertTask<T>> busy;
    for (const ExpertTask<T>& t : tasks)
      if (t.rows > 0) busy.push_back(t);
    const Uploaded<ExpertTask<T>> up = upload(exec, busy, scratch);
    compute_sized(exec, SizedTasks<T>{up.tasks, up.count, up.n, total, max_rows}, up.rest);
  }

  /// Nothing is kept in forward for backward (it recomputes gate|up).
  [[nodiscard]] std::size_t saved_row_bytes() const noexcept { return 0; }

  /// backward_sized's scratch: per task a link record, and per row dh (fp32), h and dgu
  /// (T): (4 + 3 sizeof(T)) H bytes a row, plus 256 bytes to align it.
  [[nodiscard]] std::size_t sized_backward_scratch_bytes(int max_tasks, count_t max_rows) const {
    LLEP_EXPECTS(max_tasks >= 0 && max_rows >= 0, "max_tasks = ", max_tasks, ", max_rows = ", max_rows,
                 " must be >= 0");
    if (max_tasks == 0) return 0;
    return carve_backward(max_tasks, max_rows).size + 256;
  }

  /// Input and weight gradients of tasks[0, *count) on exec's stream, as backward (see
  /// ExpertGradTask) with G = T or float (a fp32 main gradient): with no host
  /// synchronisation and no allocation (capturable in a CUDA graph). `sized.tasks`,
  /// `sized.count` and `scratch` (sized_backward_scratch_bytes(max_tasks, max_rows)) are
  /// device memory. gate|up is recomputed (tasks' `saved` is not read). Six launches: task
  /// links, dh, gate|up -> (h, dgu), weight gradients, bias gradients (gpt-oss), grad_in.
  /// Weight gradients are summed over the rows of all tasks sharing a buffer in task order
  /// in fp32 and written once (old + sum under accumulate): the same bits on every call
  /// and for every grid. A task whose rows end past max_rows (a broken bound) adds nothing
  /// to its weight gradient, and its grad_in rows past the bound are not written.
  template <class G>
  void backward_sized(CudaExec& exec, SizedGradTasks<T, G> sized, GradMode mode, void* scratch) const {
    static_assert(std::is_same_v<G, T> || std::is_same_v<G, float>,
                  "llep: GroupedSwiGlu weight gradients are in the weight type or float");
    namespace gs = detail::grouped_swiglu;
    LLEP_EXPECTS(sized.max_tasks >= 0 && sized.max_rows >= 0 && sized.max_task_rows >= 0, "bounds max_tasks = ",
                 sized.max_tasks, ", max_rows = ", sized.max_rows, ", max_task_rows = ", sized.max_task_rows,
                 " must be >= 0");
    if (sized.max_tasks == 0) return;  // empty tasks still zero their buffers: only with no tasks at all
    LLEP_EXPECTS(sized.tasks != nullptr && sized.count != nullptr && scratch != nullptr,
                 "backward_sized needs the device task array, count and scratch (sized_backward_scratch_bytes = ",
                 sized_backward_scratch_bytes(sized.max_tasks, sized.max_rows), ")");
    auto* base = static_cast<std::byte*>(scratch);
    base += (256 - reinterpret_cast<std::uintptr_t>(base) % 256) % 256;
    const BackwardCarve c = carve_backward(sized.max_tasks, sized.max_rows);
    const gs::GradArgs<T, G, Act> args{sized.tasks,
                                       sized.count,
                                       sized.max_tasks,
                                       sized.max_rows,
                                       reinterpret_cast<gs::TaskLink*>(base + c.links),
                                       reinterpret_cast<float*>(base + c.dh),
                                       reinterpret_cast<T*>(base + c.h),
                                       reinterpret_cast<T*>(base + c.dgu),
                                       shape_,
                                       act_,
                                       mode == GradMode::accumulate};
    constexpr int link_threads = 256;
    gs::grouped_grad_links<link_threads><<<1, link_threads, 0, exec.stream()>>>(args);
    LLEP_CUDA_CHECK(cudaGetLastError());
    const count_t tiles = GroupedTiles{tile_rows}.grid_bound(sized.max_tasks, sized.max_rows, sized.max_task_rows);
    const auto h_cols = static_cast<unsigned>((shape_.h() + Tn::bn - 1) / Tn::bn);
    const auto gate_cols = static_cast<unsigned>((shape_.h() + Tn::bn / 2 - 1) / (Tn::bn / 2));
    const auto d_cols = static_cast<unsigned>((shape_.d() + Tn::bn - 1) / Tn::bn);
    if (tiles > 0) {
      launch(exec, gs::grouped_grad_rows<gs::RowStage::dh, T, G, Act>, args, tiles, h_cols);
      launch(exec, gs::grouped_grad_rows<gs::RowStage::gate, T, G, Act>, args, tiles, gate_cols);
    }
    // Weight tiles of every task slot (only leaders work), then the bias columns.
    const auto tiles_of = [](std::size_t n, int b) { return static_cast<count_t>((n + b - 1) / b); };
    const count_t per_task = tiles_of(shape_.h(), Tn::bm) * tiles_of(shape_.d(), Tn::bn) +
                             tiles_of(shape_.d(), Tn::bm) * tiles_of(2 * shape_.h(), Tn::bn);
    launch(exec, gs::grouped_grad_weights<T, G, Act>, args, static_cast<count_t>(sized.max_tasks) * per_task, 1);
    if constexpr (Act::has_bias) {
      const auto cols = 2 * shape_.h() + shape_.d();
      const dim3 grid(static_cast<unsigned>((cols + 255) / 256), static_cast<unsigned>(std::min(sized.max_tasks, 65535)));
      gs::grouped_grad_bias<<<grid, 256, 0, exec.stream()>>>(args);
      LLEP_CUDA_CHECK(cudaGetLastError());
    }
    if (tiles > 0) launch(exec, gs::grouped_grad_rows<gs::RowStage::dx, T, G, Act>, args, tiles, d_cols);
  }

  /// backward's scratch: the task list it uploads (at most one task with rows per row) and
  /// its count, then backward_sized's.
  [[nodiscard]] std::size_t backward_scratch_bytes(count_t max_task_rows, count_t total_rows) const {
    this->check_scratch_request(max_task_rows, total_rows);
    if (max_task_rows == 0) return 0;
    return 256 + task_image_bytes<ExpertGradTask<T, float>>(static_cast<std::size_t>(total_rows)) +
           sized_backward_scratch_bytes(
               static_cast<int>(std::min<count_t>(total_rows, std::numeric_limits<int>::max())), total_rows);
  }

  /// ExpertBackward: uploads the tasks with rows and their count to `scratch`
  /// (backward_scratch_bytes(max rows of one task, total rows)), then backward_sized with
  /// the exact bounds; a buffer only empty tasks write is zeroed here under overwrite.
  /// `saved` is not read (saved_row_bytes() == 0). Nothing waits for the device.
  template <class G>
  void backward(CudaExec& exec, std::span<const ExpertGradTask<T, G>> tasks, GradMode mode, void* scratch) const {
    count_t max_rows = 0, total = 0;
    this->scan_grad_tasks(tasks, max_rows, total);
    std::vector<ExpertGradTask<T, G>> busy;
    for (const ExpertGradTask<T, G>& t : tasks)
      if (t.rows > 0) busy.push_back(t);
    for (std::size_t i = 0; i < tasks.size(); ++i) {
      G* g = tasks[i].grad_weights;
      if (g == nullptr || mode == GradMode::accumulate || !detail::first_writer(tasks, i)) continue;
      bool busy_writes = false;
      for (const ExpertGradTask<T, G>& b : busy) busy_writes = busy_writes || b.grad_weights == g;
      if (!busy_writes)  // all-zero bits are 0 in every G
        LLEP_CUDA_CHECK(cudaMemsetAsync(g, 0, shape_.elems() * sizeof(G), exec.stream()));
    }
    if (max_rows == 0) return;
    LLEP_EXPECTS(scratch != nullptr, "backward needs scratch (backward_scratch_bytes = ",
                 backward_scratch_bytes(max_rows, total), ") but got a null pointer");
    const Uploaded<ExpertGradTask<T, G>> up = upload(exec, busy, scratch);
    backward_sized(exec, SizedGradTasks<T, G>{up.tasks, up.count, up.n, total, max_rows}, mode, up.rest);
  }

 private:
  using SwiGluBase<T, Act>::shape_;
  using SwiGluBase<T, Act>::act_;

  int row_blocks_ = 0;

  // Blocks along the rows of a launch over `tiles` row tiles (or work items) and `cols`
  // column tiles: row_blocks_, or about two waves of resident blocks. Host calls only
  // (attribute and occupancy queries, a launch): legal in stream capture.
  template <class Args>
  void launch(CudaExec& exec, void (*kernel)(Args), const Args& args, count_t tiles, unsigned cols) const {
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

  template <class Task>
  static std::size_t task_image_bytes(std::size_t tasks) {
    return Carve::align(tasks * sizeof(Task) + sizeof(std::int32_t));
  }

  // A host task list copied to the aligned start of scratch, its count after it; `rest`:
  // where the remaining scratch starts.
  template <class Task>
  struct Uploaded {
    const Task* tasks;
    const std::int32_t* count;
    std::int32_t n;
    std::byte* rest;
  };
  template <class Task>
  static Uploaded<Task> upload(CudaExec& exec, const std::vector<Task>& busy, void* scratch) {
    const auto n = static_cast<std::int32_t>(busy.size());
    const std::size_t list = busy.size() * sizeof(Task);
    std::vector<std::byte> image(list + sizeof(std::int32_t));
    std::memcpy(image.data(), busy.data(), list);
    std::memcpy(image.data() + list, &n, sizeof n);
    auto* base = static_cast<std::byte*>(scratch);
    base += (256 - reinterpret_cast<std::uintptr_t>(base) % 256) % 256;
    exec.from_host(base, image.data(), image.size());
    return {reinterpret_cast<const Task*>(base), reinterpret_cast<const std::int32_t*>(base + list), n,
            base + task_image_bytes<Task>(busy.size())};
  }

  // Byte offsets of backward_sized's scratch regions, each 256-aligned.
  struct BackwardCarve {
    std::size_t links = 0, dh = 0, h = 0, dgu = 0, size = 0;
  };
  [[nodiscard]] BackwardCarve carve_backward(int max_tasks, count_t max_rows) const {
    const auto rows = static_cast<std::size_t>(max_rows), H = shape_.h();
    Carve carve;
    BackwardCarve c;
    c.links = carve.take(static_cast<std::size_t>(max_tasks) * sizeof(detail::grouped_swiglu::TaskLink));
    c.dh = carve.take(rows * H * sizeof(float));
    c.h = carve.take(rows * H * sizeof(T));
    c.dgu = carve.take(rows * 2 * H * sizeof(T));
    c.size = carve.bytes;
    return c;
  }
};

static_assert(check_sized_expert_compute<GroupedSwiGlu<__nv_bfloat16>, CudaExec>());
static_assert(SizedExpertCompute<GroupedSwiGlu<float, GptOssGlu>, CudaExec>);
static_assert(check_sized_expert_backward<GroupedSwiGlu<__nv_bfloat16>, CudaExec>());
static_assert(SizedExpertBackward<GroupedSwiGlu<float, GptOssGlu>, CudaExec>);

}  // namespace llep
