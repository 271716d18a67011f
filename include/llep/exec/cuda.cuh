#pragma once
// CudaExec: the CUDA execution space. The same members as HostExec (exec/host.hpp), with
// every call enqueued on one CUDA stream and returning before the work is done:
//   for_each_n      a grid-stride kernel running the same __host__ __device__ functor
//   histogram       shared-memory histogram kernel, ids outside [0, bins) in the last bin
//   sort_by_expert  CUB radix sort of (id, index) pairs: stable, so equal ids keep their
//                   index order, exactly as HostExec's counting sort; in caller scratch
//                   (sort_scratch_bytes) or the exec's internal buffer
//   copy / to_host / from_host   cudaMemcpyAsync on the stream
// All pointers are device memory except the host side of to_host / from_host. Nothing is
// complete on the host until synchronize(): read to_host's destination only after it.
//
// Stream: the caller's (borrowed, never destroyed), or, from the default constructor, a
// non-blocking stream the exec creates and owns. The legacy default stream (0) is refused,
// so no work lands on it by accident; pass cudaStreamPerThread to choose it on purpose.
//
// Step memory (workspace) comes from one of three sources (CudaWorkspace):
//   stream_ordered  cudaMallocAsync on the stream (default)
//   fixed           a buffer the engine owns; a larger request throws llep::Error
//   callbacks       the engine's allocate / free functions
// It grows only when a larger request arrives and its contents are not kept on growth, so
// a warm exec allocates nothing. sort_by_expert's storage (sorted keys, indices, CUB's
// temporary storage; sort_scratch_bytes) comes from the caller's scratch: the layer lends
// its workspace's scratch region, sized for it by the limits, so a device step allocates
// nothing. Called without scratch, the sort uses a second, internal buffer that grows to
// the largest request (from the callbacks when given, otherwise cudaMallocAsync).
#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <functional>
#include <limits>
#include <span>
#include <string_view>
#include <type_traits>
#include <utility>

#include "llep/core/block.hpp"
#include "llep/core/carve.hpp"
#include "llep/core/config.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/core/error.hpp"
#include "llep/core/memory_space.hpp"
#include "llep/exec/execution_space.hpp"

/// Kernels defined in llep headers: hidden visibility, so two shared objects of an engine
/// that both include a header never bind to each other's copy (as CUB does).
#ifndef LLEP_KERNEL
#define LLEP_KERNEL __global__ __attribute__((visibility("hidden")))
#endif

namespace llep {

namespace detail::device_kernels {

template <class F>
LLEP_KERNEL void for_each_n(std::size_t n, F f) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

/// for_each_n over min(*n x scale, bound) items, n read on the device.
template <class C, class F>
LLEP_KERNEL void for_each_counted(const C* n, std::size_t scale, std::size_t bound, F f) {
  const C c = *n;
  const std::size_t want = c > 0 ? static_cast<std::size_t>(c) * scale : 0, m = want < bound ? want : bound;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < m; i += stride) f(i);
}

/// f(block) by every thread of one block (core/block.hpp).
template <class F>
LLEP_KERNEL void run_block(F f) {
  __shared__ int word;
  const CudaBlock block{static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x), &word};
  f(block);
}

// Kernels are templates (on the id type) so that the header can be included by several
// translation units: a non-template __global__ function cannot be inline.
// counts[bins + 1] must be zero on entry. Each block counts into shared memory (32-bit:
// one block never sees 2^32 ids, see CudaExec::histogram) and adds its bins once.
template <class Id>
LLEP_KERNEL void histogram_shared(const Id* ids, std::size_t n, int bins,
                                         unsigned long long* counts) {
  extern __shared__ unsigned int local[];
  for (int b = static_cast<int>(threadIdx.x); b <= bins; b += static_cast<int>(blockDim.x)) local[b] = 0;
  __syncthreads();
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const Id id = ids[i];
    atomicAdd(&local[(id >= 0 && id < bins) ? id : bins], 1u);
  }
  __syncthreads();
  for (int b = static_cast<int>(threadIdx.x); b <= bins; b += static_cast<int>(blockDim.x))
    if (local[b] != 0) atomicAdd(&counts[b], static_cast<unsigned long long>(local[b]));
}

// Too many bins for shared memory: count straight into global memory.
template <class Id>
LLEP_KERNEL void histogram_global(const Id* ids, std::size_t n, int bins,
                                         unsigned long long* counts) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const Id id = ids[i];
    atomicAdd(&counts[(id >= 0 && id < bins) ? id : bins], 1ull);
  }
}

struct Iota {
  std::int32_t* out;
  __device__ void operator()(std::size_t i) const { out[i] = static_cast<std::int32_t>(i); }
};

}  // namespace detail::device_kernels

/// Where CudaExec's step memory comes from (see exec/cuda.cuh's header comment).
class CudaWorkspace {
 public:
  enum class Kind { stream_ordered, fixed, callbacks };
  using Allocate = std::function<void*(std::size_t bytes)>;
  using Free = std::function<void(void* ptr, std::size_t bytes)>;

  /// cudaMallocAsync / cudaFreeAsync on the exec's stream (the default).
  static CudaWorkspace stream_ordered() { return CudaWorkspace{}; }

  /// `bytes` of device memory at `ptr`, owned by the engine and valid for the exec's
  /// lifetime. workspace(n) with n > bytes throws llep::Error naming both sizes.
  static CudaWorkspace fixed(void* ptr, std::size_t bytes) {
    LLEP_EXPECTS(ptr != nullptr || bytes == 0, "a fixed workspace of ", bytes, " bytes needs a non-null pointer");
    CudaWorkspace w;
    w.kind_ = Kind::fixed;
    w.ptr_ = ptr;
    w.bytes_ = bytes;
    return w;
  }

  /// The engine's allocator: `allocate(bytes)` returns device memory (nullptr = out of
  /// memory, reported as llep::Error); `free(ptr, bytes)` returns it. The exec
  /// synchronizes its stream before calling `free`, so the callbacks need not be
  /// stream-ordered.
  static CudaWorkspace callbacks(Allocate allocate, Free free) {
    LLEP_EXPECTS(static_cast<bool>(allocate) && static_cast<bool>(free),
                 "callback workspace needs both an allocate and a free function");
    CudaWorkspace w;
    w.kind_ = Kind::callbacks;
    w.allocate_ = std::move(allocate);
    w.free_ = std::move(free);
    return w;
  }

  [[nodiscard]] Kind kind() const noexcept { return kind_; }

 private:
  friend class CudaExec;
  Kind kind_ = Kind::stream_ordered;
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
  Allocate allocate_;
  Free free_;
};

class CudaExec {
 public:
  static constexpr MemorySpace memory = MemorySpace::device;
  static constexpr std::string_view name = "cuda";
  static constexpr unsigned threads_per_block = 256;

  /// Creates and owns a non-blocking stream on the current device (destroyed with the exec).
  CudaExec() : CudaExec(CudaWorkspace{}) {}

  /// Creates and owns a non-blocking stream; step memory from `workspace`.
  explicit CudaExec(CudaWorkspace workspace) : source_(std::move(workspace)) {
    init_device();
    LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    owns_stream_ = true;
  }

  /// Runs on `stream` (borrowed: it must outlive the exec and belong to the current device).
  explicit CudaExec(cudaStream_t stream, CudaWorkspace workspace = CudaWorkspace{})
      : stream_(stream), source_(std::move(workspace)) {
    LLEP_EXPECTS(stream != nullptr && stream != cudaStreamLegacy,
                 "CudaExec refuses the legacy default stream (0): pass a stream you created, "
                 "cudaStreamPerThread, or use CudaExec() to own one");
    init_device();
  }

  CudaExec(const CudaExec&) = delete;
  CudaExec& operator=(const CudaExec&) = delete;
  CudaExec(CudaExec&& o) noexcept
      : stream_(std::exchange(o.stream_, nullptr)),
        owns_stream_(std::exchange(o.owns_stream_, false)),
        max_blocks_(o.max_blocks_),
        source_(std::move(o.source_)),
        workspace_(std::exchange(o.workspace_, Buffer{})),
        scratch_(std::exchange(o.scratch_, Buffer{})) {}
  CudaExec& operator=(CudaExec&& o) noexcept {
    if (this != &o) {
      release();
      stream_ = std::exchange(o.stream_, nullptr);
      owns_stream_ = std::exchange(o.owns_stream_, false);
      max_blocks_ = o.max_blocks_;
      source_ = std::move(o.source_);
      workspace_ = std::exchange(o.workspace_, Buffer{});
      scratch_ = std::exchange(o.scratch_, Buffer{});
    }
    return *this;
  }
  ~CudaExec() { release(); }

  [[nodiscard]] cudaStream_t stream() const noexcept { return stream_; }

  /// Runs f(i) for i in [0, n) on the stream: one grid-stride kernel. F is copied to the
  /// device by value, so it holds device pointers and plain values only.
  template <class F>
  void for_each_n(std::size_t n, F f) const {
    static_assert(std::is_trivially_copyable_v<F>, "llep: CudaExec::for_each_n needs a trivially copyable functor");
    if (n == 0) return;
    clear_last_error();
    detail::device_kernels::for_each_n<<<blocks_for(n), threads_per_block, 0, stream_>>>(n, f);
    LLEP_CUDA_CHECK(cudaGetLastError());
  }

  /// Runs f(i) for i in [0, min(*n x scale, bound)) on the stream, n (device memory) read
  /// by the kernel: the grid is sized for `bound`, the work for the real count.
  template <class C, class F>
  void for_each_counted(const C* n, std::size_t scale, std::size_t bound, F f) const {
    static_assert(std::is_trivially_copyable_v<F>, "llep: CudaExec::for_each_counted needs a trivially copyable functor");
    if (bound == 0) return;
    clear_last_error();
    detail::device_kernels::for_each_counted<<<blocks_for(bound), threads_per_block, 0, stream_>>>(n, scale, bound, f);
    LLEP_CUDA_CHECK(cudaGetLastError());
  }

  /// Runs f(block) by the `threads` threads of one block on the stream (core/block.hpp): a
  /// single-block routine, such as the device planner's and the layout's.
  template <class F>
  void run_block(F f, unsigned threads = threads_per_block) const {
    launch_block(stream_, f, threads);
  }

  /// run_block on any stream (for the classes that hold a stream, not an exec).
  template <class F>
  static void launch_block(cudaStream_t stream, F f, unsigned threads = threads_per_block) {
    static_assert(std::is_trivially_copyable_v<F>, "llep: run_block needs a trivially copyable functor");
    (void)cudaGetLastError();
    detail::device_kernels::run_block<<<1, threads, 0, stream>>>(f);
    LLEP_CUDA_CHECK(cudaGetLastError());
  }

  /// counts[b] = #{i : ids[i] == b} for b in [0, bins); counts[bins] = ids outside [0, bins).
  /// Device arrays; counts has bins + 1 entries.
  void histogram(const std::int32_t* ids, std::size_t n, int bins, count_t* counts) const {
    LLEP_EXPECTS(bins >= 0, "histogram with ", bins, " bins; must be >= 0");
    static_assert(sizeof(count_t) == sizeof(unsigned long long));
    LLEP_CUDA_CHECK(cudaMemsetAsync(counts, 0, (static_cast<std::size_t>(bins) + 1) * sizeof(count_t), stream_));
    if (n == 0) return;
    auto* out = reinterpret_cast<unsigned long long*>(counts);  // non-negative counts: same bits
    const unsigned blocks = blocks_for(n);
    const std::size_t shared = (static_cast<std::size_t>(bins) + 1) * sizeof(unsigned int);
    // 48 KiB is the shared memory every block may use without opting in.
    clear_last_error();
    const bool fits = shared <= 48 * 1024 &&
                      n / blocks < static_cast<std::size_t>(std::numeric_limits<unsigned int>::max()) / 2;
    if (fits)
      detail::device_kernels::histogram_shared<<<blocks, threads_per_block, shared, stream_>>>(ids, n, bins, out);
    else
      detail::device_kernels::histogram_global<<<blocks, threads_per_block, 0, stream_>>>(ids, n, bins, out);
    LLEP_CUDA_CHECK(cudaGetLastError());
  }

  /// Stable sort of pair indices by expert id: order[j] is the flat index of the j-th pair
  /// in (expert, index) order. Every id must be in [0, bins) (histogram checks first);
  /// n must be < 2^31. Device arrays. Its storage (sorted keys, indices, CUB's temporary
  /// storage: sort_scratch_bytes) is `scratch`, device memory of the caller's (the layer
  /// passes its workspace's scratch region), so the sort allocates nothing; a smaller
  /// `scratch` throws llep::Error naming both sizes.
  void sort_by_expert(const std::int32_t* ids, std::size_t n, int bins, std::int32_t* order,
                      std::span<std::byte> scratch) {
    if (n == 0) return;
    const std::size_t need = sort_scratch_bytes(n, bins);
    LLEP_EXPECTS(scratch.size() >= need, "sort_by_expert of ", n, " pairs into ", bins, " bins needs ", need,
                 " bytes of scratch but was given ", scratch.size());
    sort_in(ids, n, bins, order, scratch.data(), need);
  }

  /// The same sort in the exec's internal buffer, which grows to the largest request (from
  /// the callbacks when given, otherwise cudaMallocAsync) and is kept: the default for
  /// callers without scratch to lend. internal_capacity() says what it holds.
  void sort_by_expert(const std::int32_t* ids, std::size_t n, int bins, std::int32_t* order) {
    if (n == 0) return;
    const std::size_t need = sort_scratch_bytes(n, bins);
    sort_in(ids, n, bins, order, grow(scratch_, need, "internal scratch"), need);
  }

  /// Bytes of scratch sort_by_expert needs for n pairs and `bins` ids: the sorted keys and
  /// the indices (256-byte aligned), then CUB's temporary storage. A host query: CUB
  /// computes its size without touching the device's memory. The limits size the layer's
  /// scratch with the most pairs of a step, which assumes the size never decreases with n
  /// (CUB's tiles only grow; checked on a device by tests/gpu/test_cuda_exec.cu).
  [[nodiscard]] static std::size_t sort_scratch_bytes(std::size_t n, int bins) {
    if (n == 0) return 0;
    check_sort(n, bins);
    std::size_t temp_bytes = 0;
    LLEP_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, static_cast<const std::uint32_t*>(nullptr),
                                                    static_cast<std::uint32_t*>(nullptr),
                                                    static_cast<const std::int32_t*>(nullptr),
                                                    static_cast<std::int32_t*>(nullptr), static_cast<int>(n), 0,
                                                    sort_end_bit(bins), cudaStream_t{}));
    return 2 * Carve::align(n * sizeof(std::int32_t)) + temp_bytes;
  }

  /// Device-to-device (any direction cudaMemcpyDefault resolves) copy on the stream.
  void copy(void* dst, const void* src, std::size_t bytes) const {
    if (bytes) LLEP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_));
  }
  /// Device -> host, asynchronous: call synchronize() before the host reads `dst`.
  void to_host(void* dst, const void* src, std::size_t bytes) const {
    if (bytes) LLEP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  }
  /// Host -> device. `src` may be reused once this returns only when it is pageable
  /// memory (the driver stages it); a pinned `src` must stay unchanged until the stream
  /// reaches the copy.
  void from_host(void* dst, const void* src, std::size_t bytes) const {
    if (bytes) LLEP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }
  /// Waits for everything enqueued on the stream; a failure of earlier asynchronous work
  /// surfaces here as llep::Error.
  void synchronize() const { LLEP_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  /// Step memory of at least `bytes` (device). Grows only when a larger request arrives;
  /// contents are not kept on growth. With a fixed source, a request larger than the
  /// buffer throws llep::Error naming the bytes needed and the bytes available.
  std::byte* workspace(std::size_t bytes) {
    if (source_.kind_ == CudaWorkspace::Kind::fixed) {
      LLEP_EXPECTS(bytes <= source_.bytes_, "the step needs ", bytes,
                   " bytes of workspace but the engine-supplied buffer holds ", source_.bytes_,
                   " bytes; supply a larger buffer or fewer tokens");
      return static_cast<std::byte*>(source_.ptr_);
    }
    return grow(workspace_, bytes, "workspace");
  }
  [[nodiscard]] std::size_t workspace_capacity() const noexcept {
    return source_.kind_ == CudaWorkspace::Kind::fixed ? source_.bytes_ : workspace_.bytes;
  }
  /// Bytes held by the internal buffer (sort_by_expert's CUB storage and indices).
  [[nodiscard]] std::size_t internal_capacity() const noexcept { return scratch_.bytes; }
  [[nodiscard]] const CudaWorkspace& workspace_source() const noexcept { return source_; }

 private:
  struct Buffer {
    void* ptr = nullptr;
    std::size_t bytes = 0;
    bool from_callbacks = false;
  };


  static void check_sort(std::size_t n, int bins) {
    LLEP_EXPECTS(bins >= 1, "sort_by_expert with ", bins, " bins; must be >= 1");
    LLEP_EXPECTS(n <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()), "sort_by_expert of ", n,
                 " pairs; at most 2^31 - 1");
  }
  // Ids are in [0, bins), so as unsigned keys they sort the same and only the low bits
  // that can differ need radix passes.
  static int sort_end_bit(int bins) {
    return std::max(1, static_cast<int>(std::bit_width(static_cast<unsigned>(bins - 1))));
  }

  // The sort in `s` (bytes = sort_scratch_bytes(n, bins)): keys, indices, CUB's storage.
  void sort_in(const std::int32_t* ids, std::size_t n, int bins, std::int32_t* order, std::byte* s, std::size_t bytes) {
    check_sort(n, bins);
    const int end_bit = sort_end_bit(bins);
    const auto* keys_in = reinterpret_cast<const std::uint32_t*>(ids);
    const int items = static_cast<int>(n);
    const std::size_t iota_off = Carve::align(n * sizeof(std::uint32_t)),
                      temp_off = iota_off + Carve::align(n * sizeof(std::int32_t));
    std::size_t temp_bytes = bytes - temp_off;
    auto* keys_out = reinterpret_cast<std::uint32_t*>(s);
    auto* iota = reinterpret_cast<std::int32_t*>(s + iota_off);
    for_each_n(n, detail::device_kernels::Iota{iota});
    LLEP_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(s + temp_off, temp_bytes, keys_in, keys_out, iota, order, items, 0,
                                                    end_bit, stream_));
  }
  // Growth granularity: slowly growing batches do not reallocate on every step.
  static constexpr std::size_t granule = std::size_t{64} << 10;

  void init_device() {
    int device = 0, sms = 0;
    LLEP_CUDA_CHECK(cudaGetDevice(&device));
    LLEP_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    // Enough resident blocks to fill the device; grid-stride loops cover the rest.
    max_blocks_ = static_cast<unsigned>(std::max(sms, 1)) * 8;
  }

  // cudaGetLastError after a launch also returns an earlier, unrelated failed call's
  // error; clear it first so a launch check reports only the launch. (Sticky errors make
  // the launch itself fail, so they are still reported.)
  static void clear_last_error() noexcept { (void)cudaGetLastError(); }

  [[nodiscard]] unsigned blocks_for(std::size_t n) const {
    const std::size_t want = (n + threads_per_block - 1) / threads_per_block;
    return static_cast<unsigned>(std::min<std::size_t>(want, max_blocks_));
  }

  std::byte* grow(Buffer& b, std::size_t bytes, const char* what) {
    if (bytes <= b.bytes && (b.ptr != nullptr || bytes == 0)) return static_cast<std::byte*>(b.ptr);
    const std::size_t want = (bytes + granule - 1) / granule * granule;
    free_buffer(b);
    if (source_.kind_ == CudaWorkspace::Kind::callbacks) {
      void* p = source_.allocate_(want);
      LLEP_EXPECTS(p != nullptr, "the workspace allocate callback returned null for ", want, " bytes of ", what);
      b = Buffer{p, want, true};
    } else {
      void* p = nullptr;
      LLEP_CUDA_CHECK(cudaMallocAsync(&p, want, stream_));
      b = Buffer{p, want, false};
    }
    return static_cast<std::byte*>(b.ptr);
  }

  // Never throws (used by the destructor); a failure here would only leak.
  void free_buffer(Buffer& b) noexcept {
    if (b.ptr != nullptr) {
      if (b.from_callbacks) {
        // The engine's free is not stream-ordered: earlier kernels may still use b.
        (void)cudaStreamSynchronize(stream_);
        try {
          source_.free_(b.ptr, b.bytes);
        } catch (...) {
        }
      } else {
        (void)cudaFreeAsync(b.ptr, stream_);
      }
    }
    b = Buffer{};
  }

  void release() noexcept {
    if (stream_ == nullptr) return;  // moved from
    free_buffer(workspace_);
    free_buffer(scratch_);
    if (owns_stream_) (void)cudaStreamDestroy(stream_);
    stream_ = nullptr;
    owns_stream_ = false;
  }

  cudaStream_t stream_ = nullptr;
  bool owns_stream_ = false;
  unsigned max_blocks_ = 1;
  CudaWorkspace source_;
  Buffer workspace_, scratch_;
};

static_assert(check_execution_space<CudaExec>());

/// Work captured once from a stream and replayed (a sync-free step, say): the constructor
/// runs f() under thread-local stream capture on `stream` and instantiates the graph; an
/// exception from f ends the capture first, so the stream stays usable. launch() replays it.
class CudaGraph {
 public:
  template <class F>
  CudaGraph(cudaStream_t stream, F&& f) {
    LLEP_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    cudaGraph_t graph = nullptr;
    try {
      f();
    } catch (...) {
      (void)cudaStreamEndCapture(stream, &graph);
      if (graph != nullptr) (void)cudaGraphDestroy(graph);
      throw;
    }
    LLEP_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    const cudaError_t made = cudaGraphInstantiate(&exec_, graph, 0);
    (void)cudaGraphDestroy(graph);
    LLEP_CUDA_CHECK(made);
  }
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  CudaGraph(CudaGraph&& o) noexcept : exec_(std::exchange(o.exec_, nullptr)) {}
  CudaGraph& operator=(CudaGraph&& o) noexcept {
    std::swap(exec_, o.exec_);
    return *this;
  }
  ~CudaGraph() {
    if (exec_ != nullptr) (void)cudaGraphExecDestroy(exec_);
  }

  /// Enqueues one replay on `stream`.
  void launch(cudaStream_t stream) const { LLEP_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace llep
