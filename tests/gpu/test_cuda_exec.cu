// CudaExec against HostExec, the reference execution space: histogram (ids outside
// [0, bins) included), the stable sort_by_expert, every row_ops functor through
// for_each_n (bit-equal), CombineTopK's determinism, and the workspace sources (a too
// small engine buffer throws naming both sizes; a warm exec allocates nothing).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "device_array.hpp"
#include "llep/core/cuda_check.hpp"
#include "llep/exec/cuda.cuh"
#include "llep/exec/host.hpp"
#include "llep/layer/layout.hpp"
#include "llep/layer/row_ops.hpp"

namespace {

using gputest::DeviceArray;

class Stream {
 public:
  Stream() { LLEP_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() { (void)cudaStreamDestroy(s_); }
  operator cudaStream_t() const { return s_; }

 private:
  cudaStream_t s_ = nullptr;
};

// Ids skewed towards low experts (hot experts give long runs of equal keys, which is what
// stability is about); `bad` of every 1000 ids are outside [0, bins), extremes included.
std::vector<std::int32_t> random_ids(std::mt19937& rng, std::size_t n, int bins, int bad_per_mille) {
  std::vector<std::int32_t> ids(n);
  std::geometric_distribution<int> hot(std::min(0.5, 4.0 / bins));  // p must be in (0, 1)
  std::uniform_int_distribution<int> uniform(0, bins - 1), coin(0, 999), kind(0, 3);
  for (auto& id : ids) {
    if (coin(rng) < bad_per_mille) {
      const int k = kind(rng);
      id = k == 0 ? -1 : k == 1 ? bins : k == 2 ? std::numeric_limits<std::int32_t>::min()
                                               : std::numeric_limits<std::int32_t>::max();
    } else {
      id = coin(rng) < 500 ? std::min(hot(rng), bins - 1) : uniform(rng);
    }
  }
  return ids;
}

}  // namespace

TEST_CASE("LLEP_CUDA_CHECK and LLEP_CUBLAS_CHECK name the call, the error, the file and line") {
  try {
    LLEP_CUDA_CHECK(cudaSetDevice(-1));
    FAIL("cudaSetDevice(-1) did not fail");
  } catch (const llep::Error& e) {
    const std::string what = e.what();
    CHECK(what.find("cudaSetDevice(-1)") != std::string::npos);
    CHECK(what.find("cudaErrorInvalidDevice") != std::string::npos);
    CHECK(what.find("test_cuda_exec.cu:") != std::string::npos);
  }
  // The failed call left a (non-sticky) last error: a later kernel launch must not report it.
  llep::CudaExec exec;
  DeviceArray<std::int32_t> out(10);
  exec.for_each_n(10, llep::detail::device_kernels::Iota{out.get()});
  exec.synchronize();
  CHECK(out.download() == std::vector<std::int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  auto unsupported = [] { return CUBLAS_STATUS_NOT_SUPPORTED; };
  try {
    LLEP_CUBLAS_CHECK(unsupported());
    FAIL("LLEP_CUBLAS_CHECK did not throw");
  } catch (const llep::Error& e) {
    const std::string what = e.what();
    CHECK(what.find("unsupported()") != std::string::npos);
    CHECK(what.find("CUBLAS_STATUS_NOT_SUPPORTED") != std::string::npos);
    CHECK(what.find("test_cuda_exec.cu:") != std::string::npos);
  }
}

TEST_CASE("CudaExec refuses the legacy default stream and owns a stream when given none") {
  CHECK_THROWS_AS(llep::CudaExec(cudaStream_t{nullptr}), llep::Error);
  CHECK_THROWS_AS(llep::CudaExec(cudaStreamLegacy), llep::Error);
  llep::CudaExec owned;
  CHECK(owned.stream() != nullptr);
  Stream s;
  llep::CudaExec borrowed(s);
  CHECK(borrowed.stream() == static_cast<cudaStream_t>(s));
  llep::CudaExec moved(std::move(owned));  // the moved-from exec must not destroy the stream
  CHECK(moved.stream() != nullptr);
  moved.synchronize();
}

TEST_CASE("CudaExec::histogram equals HostExec's, ids outside [0, bins) in the last bin") {
  std::mt19937 rng(7);
  Stream s;
  llep::CudaExec dev(s);
  llep::HostExec host;
  // 20000 bins do not fit in shared memory: the global-atomics kernel.
  for (int bins : {1, 7, 64, 1000, 20000})
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{1000}, std::size_t{300001}}) {
      CAPTURE(bins);
      CAPTURE(n);
      const auto ids = random_ids(rng, n, bins, 50);
      std::vector<llep::count_t> want(static_cast<std::size_t>(bins) + 1);
      host.histogram(ids.data(), n, bins, want.data());
      DeviceArray<std::int32_t> d_ids(ids);
      DeviceArray<llep::count_t> d_counts(want.size());
      // Poison: the exec must zero the counts itself.
      d_counts.fill_bytes(0x5a);
      dev.histogram(d_ids.get(), n, bins, d_counts.get());
      dev.synchronize();
      CHECK(d_counts.download() == want);
    }
}

TEST_CASE("CudaExec::sort_by_expert is the same stable order as HostExec's") {
  std::mt19937 rng(11);
  Stream s;
  llep::CudaExec dev(s);
  llep::HostExec host;
  for (int bins : {1, 2, 5, 256, 1000, 70000})
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{777}, std::size_t{200003}}) {
      CAPTURE(bins);
      CAPTURE(n);
      const auto ids = random_ids(rng, n, bins, 0);
      std::vector<std::int32_t> want(n);
      host.sort_by_expert(ids.data(), n, bins, want.data());
      DeviceArray<std::int32_t> d_ids(ids), d_order(n);
      dev.sort_by_expert(d_ids.get(), n, bins, d_order.get());
      dev.synchronize();
      CHECK(d_order.download() == want);
    }
}

namespace {

// A random partition of [0, n) into blocks of 1..max_block entries, in order, and a
// random placement of those blocks: place[b] is the start of block b in the permuted
// order. Stands in for the layout's send blocks / receive chunks.
struct Blocks {
  std::vector<std::int32_t> begin, size, place;
};
Blocks random_blocks(std::mt19937& rng, std::int32_t n, std::int32_t max_block) {
  Blocks b;
  std::uniform_int_distribution<std::int32_t> len(1, max_block);
  for (std::int32_t at = 0; at < n;) {
    const std::int32_t l = std::min(len(rng), n - at);
    b.begin.push_back(at);
    b.size.push_back(l);
    at += l;
  }
  std::vector<std::size_t> perm(b.begin.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  b.place.assign(perm.size(), 0);
  std::int32_t at = 0;
  for (std::size_t i : perm) {
    b.place[i] = at;
    at += b.size[i];
  }
  return b;
}

}  // namespace

TEST_CASE("AssignSendRows and AssignComputeRows through CudaExec equal HostExec") {
  std::mt19937 rng(3);
  Stream s;
  llep::CudaExec dev(s);
  llep::HostExec host;
  for (std::int32_t n : {1, 100, 65537}) {
    CAPTURE(n);
    const Blocks b = random_blocks(rng, n, 300);
    std::vector<llep::SendBlock> blocks(b.begin.size());
    std::vector<llep::RecvChunk> chunks(b.begin.size());
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      blocks[i] = llep::SendBlock{static_cast<std::int32_t>(i % 5), static_cast<std::int32_t>(i % 3), b.begin[i],
                                  b.place[i], b.size[i]};
      chunks[i] = llep::RecvChunk{static_cast<std::int32_t>(i % 3), static_cast<std::int32_t>(i % 5), b.begin[i],
                                  b.place[i], b.size[i]};
    }
    std::vector<std::int32_t> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    const auto un = static_cast<std::size_t>(n);
    const auto nb = static_cast<std::int32_t>(blocks.size());

    std::vector<std::int32_t> pair_row(un, -1), row_pair(un, -1), crow(un, -1);
    host.for_each_n(un, llep::AssignSendRows{blocks.data(), nb, order.data(), pair_row.data(), row_pair.data()});
    host.for_each_n(un, llep::AssignComputeRows{chunks.data(), nb, crow.data()});

    DeviceArray<llep::SendBlock> d_blocks(blocks);
    DeviceArray<llep::RecvChunk> d_chunks(chunks);
    DeviceArray<std::int32_t> d_order(order), d_pair_row(un), d_row_pair(un), d_crow(un);
    dev.for_each_n(un, llep::AssignSendRows{d_blocks.get(), nb, d_order.get(), d_pair_row.get(), d_row_pair.get()});
    dev.for_each_n(un, llep::AssignComputeRows{d_chunks.get(), nb, d_crow.get()});
    dev.synchronize();
    CHECK(d_pair_row.download() == pair_row);
    CHECK(d_row_pair.download() == row_pair);
    CHECK(d_crow.download() == crow);
  }
}

TEST_CASE("copy_rows through CudaExec (every word width, gather and scatter) is bit-equal to HostExec") {
  std::mt19937 rng(5);
  Stream s;
  llep::CudaExec dev(s);
  llep::HostExec host;
  const std::int32_t K = 3, tokens = 513, pairs = tokens * K;
  std::vector<std::int32_t> index(static_cast<std::size_t>(pairs));
  std::iota(index.begin(), index.end(), 0);
  std::shuffle(index.begin(), index.end(), rng);
  DeviceArray<std::int32_t> d_index(index);
  std::uniform_int_distribution<int> byte(0, 255);
  // Row sizes for 16-, 8-, 4-, 2- and 1-byte words; the byte offset misaligns the buffers
  // so the narrower words are chosen on the device as well.
  for (std::size_t row_bytes : {std::size_t{160}, std::size_t{24}, std::size_t{28}, std::size_t{10}, std::size_t{3}})
    for (std::size_t offset : {std::size_t{0}, std::size_t{1}}) {
      CAPTURE(row_bytes);
      CAPTURE(offset);
      const std::size_t big = static_cast<std::size_t>(pairs) * row_bytes + offset;
      std::vector<unsigned char> src(big);
      for (auto& c : src) c = static_cast<unsigned char>(byte(rng));
      DeviceArray<unsigned char> d_src(src), d_dst(big);
      for (bool gather : {true, false}) {
        CAPTURE(gather);
        // Gather reads token rows (index / K); scatter writes every pair row.
        const std::int32_t divisor = gather ? K : 1;
        std::vector<unsigned char> dst(big, 0xee);
        llep::copy_rows(host, gather, dst.data() + offset, src.data() + offset, index.data(),
                        static_cast<std::size_t>(pairs), row_bytes, divisor);
        d_dst.fill_bytes(0xee);
        llep::copy_rows(dev, gather, d_dst.get() + offset, d_src.get() + offset, d_index.get(),
                        static_cast<std::size_t>(pairs), row_bytes, divisor);
        dev.synchronize();
        CHECK(d_dst.download() == dst);
      }
    }
}

namespace {

float to_float(float v) { return v; }
float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
void check_combine(std::mt19937& rng, double tolerance) {
  Stream s;
  llep::CudaExec dev(s);
  llep::HostExec host;
  const std::int32_t K = 4;
  const std::size_t tokens = 300, D = 136, pairs = tokens * K;
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), g(0.0f, 1.0f);
  std::vector<T> rows(pairs * D);
  for (auto& v : rows) v = static_cast<T>(u(rng));
  std::vector<float> weights(pairs);
  for (auto& w : weights) w = g(rng);
  std::vector<std::int32_t> pair_row(pairs);
  std::iota(pair_row.begin(), pair_row.end(), 0);
  std::shuffle(pair_row.begin(), pair_row.end(), rng);

  std::vector<T> want(tokens * D);
  host.for_each_n(tokens * D, llep::CombineTopK<T, float>{want.data(), rows.data(), pair_row.data(), weights.data(), K, D});

  DeviceArray<T> d_rows(rows), d_out(tokens * D);
  DeviceArray<float> d_weights(weights);
  DeviceArray<std::int32_t> d_pair_row(pair_row);
  const llep::CombineTopK<T, float> combine{d_out.get(), d_rows.get(), d_pair_row.get(), d_weights.get(), K, D};
  dev.for_each_n(tokens * D, combine);
  dev.synchronize();
  const auto first = d_out.download();
  dev.for_each_n(tokens * D, combine);
  dev.synchronize();
  const auto second = d_out.download();
  // Fixed order, no atomics: the same bits every run.
  CHECK(std::memcmp(first.data(), second.data(), first.size() * sizeof(T)) == 0);
  // Against the host the order is the same, but nvcc may fuse multiply-adds, and the
  // final rounding to T can then differ by one unit: a relative tolerance.
  double worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double w = to_float(want[i]), d = to_float(first[i]);
    worst = std::max(worst, std::abs(w - d) / std::max(1.0, std::abs(w)));
  }
  CHECK(worst <= tolerance);
}

}  // namespace

TEST_CASE("CombineTopK through CudaExec is deterministic and matches HostExec") {
  std::mt19937 rng(9);
  SUBCASE("float") { check_combine<float>(rng, 1e-5); }
  // bf16 output: one unit in the last place is 2^-7 relative at most.
  SUBCASE("bf16") { check_combine<__nv_bfloat16>(rng, 1.0 / 128); }
}

TEST_CASE("CudaExec fixed workspace: a request above the buffer throws naming both sizes") {
  Stream s;
  DeviceArray<std::byte> buffer(4096);
  llep::CudaExec exec(s, llep::CudaWorkspace::fixed(buffer.get(), 4096));
  CHECK(exec.workspace_capacity() == 4096);
  CHECK(exec.workspace(4096) == buffer.get());
  CHECK(exec.workspace(10) == buffer.get());
  try {
    (void)exec.workspace(10000);
    FAIL("workspace(10000) on a 4096-byte buffer did not throw");
  } catch (const llep::Error& e) {
    const std::string what = e.what();
    CHECK(what.find("10000") != std::string::npos);
    CHECK(what.find("4096") != std::string::npos);
  }
  CHECK_THROWS_AS(llep::CudaWorkspace::fixed(nullptr, 16), llep::Error);
}

namespace {

// One "step" of device work that touches both buffers: workspace (counts, then order),
// histogram, sort.
std::size_t step_bytes(std::size_t n, int bins) {
  return (static_cast<std::size_t>(bins) + 1) * sizeof(llep::count_t) / 256 * 256 + 256 + n * sizeof(std::int32_t);
}
void step(llep::CudaExec& exec, const std::int32_t* ids, std::size_t n, int bins) {
  std::byte* ws = exec.workspace(step_bytes(n, bins));
  auto* counts = reinterpret_cast<llep::count_t*>(ws);
  auto* order = reinterpret_cast<std::int32_t*>(ws + step_bytes(0, bins));
  exec.histogram(ids, n, bins, counts);
  exec.sort_by_expert(ids, n, bins, order);
}

}  // namespace

TEST_CASE("CudaExec callback workspace: warm steps call the allocator no more, all memory is returned") {
  std::mt19937 rng(13);
  const int bins = 64;
  const std::size_t n = 50000;
  const auto ids = random_ids(rng, n, bins, 0);
  DeviceArray<std::int32_t> d_ids(ids);
  const std::size_t ws_bytes = step_bytes(n, bins);
  int allocs = 0, frees = 0;
  std::size_t live = 0;
  {
    Stream s;
    llep::CudaExec exec(s, llep::CudaWorkspace::callbacks(
                               [&](std::size_t bytes) -> void* {
                                 void* p = nullptr;
                                 if (cudaMalloc(&p, bytes) != cudaSuccess) return nullptr;
                                 ++allocs;
                                 live += bytes;
                                 return p;
                               },
                               [&](void* p, std::size_t bytes) {
                                 ++frees;
                                 live -= bytes;
                                 (void)cudaFree(p);
                               }));
    step(exec, d_ids.get(), n, bins);  // warm-up: the largest step
    exec.synchronize();
    const int warm_allocs = allocs;
    CHECK(warm_allocs >= 1);
    CHECK(exec.workspace_capacity() >= ws_bytes);
    std::byte* const ws = exec.workspace(ws_bytes);
    for (int i = 0; i < 5; ++i) step(exec, d_ids.get(), i % 2 ? n : n / 2, bins);
    exec.synchronize();
    CHECK(allocs == warm_allocs);
    CHECK(exec.workspace(ws_bytes) == ws);
    // A larger request grows (and frees the old buffer).
    CHECK(exec.workspace(10 * ws_bytes) != nullptr);
    CHECK(exec.workspace_capacity() >= 10 * ws_bytes);
    CHECK(allocs == warm_allocs + 1);
    CHECK(frees == 1);
  }
  CHECK(frees == allocs);
  CHECK(live == 0);
}

TEST_CASE("CudaExec stream-ordered workspace: warm steps allocate nothing from the device pool") {
  std::mt19937 rng(17);
  const int bins = 256;
  const std::size_t n = 80000;
  const auto ids = random_ids(rng, n, bins, 0);
  DeviceArray<std::int32_t> d_ids(ids);
  int device = 0;
  LLEP_CUDA_CHECK(cudaGetDevice(&device));
  cudaMemPool_t pool{};
  LLEP_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  auto used = [&] {
    std::uint64_t bytes = 0;
    LLEP_CUDA_CHECK(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &bytes));
    return bytes;
  };
  const std::uint64_t before = used();
  {
    Stream s;
    llep::CudaExec exec(s);
    const std::size_t ws_bytes = step_bytes(n, bins);
    step(exec, d_ids.get(), n, bins);
    exec.synchronize();
    const std::uint64_t warm = used();
    CHECK(warm > before);
    std::byte* const ws = exec.workspace(ws_bytes);
    for (int i = 0; i < 5; ++i) step(exec, d_ids.get(), i % 2 ? n : n / 3, bins);
    exec.synchronize();
    CHECK(used() == warm);
    CHECK(exec.workspace(ws_bytes) == ws);
    CHECK(exec.workspace_capacity() >= ws_bytes);

    llep::CudaExec moved(std::move(exec));  // buffers move with it; nothing is freed twice
    CHECK(moved.workspace(ws_bytes) == ws);
    moved.synchronize();
  }
  LLEP_CUDA_CHECK(cudaDeviceSynchronize());
  CHECK(used() == before);
}
